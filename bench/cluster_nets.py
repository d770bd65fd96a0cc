"""Nets for the cluster benchmark (``bench/cluster.py``), importable by ``cpn shard``.

* :func:`relay`: a client puts ``Burst`` tokens into ``bursts`` (keyed by an origin
  that shard 0 of a two-shard cluster owns); the one transition ``spray`` turns each
  burst into ``size`` ``Parcel`` tokens in ``arrived``, keyed by destinations that
  shard 1 owns, so every parcel crosses from shard 0 to shard 1 through the handoff
  protocol. Nothing consumes ``arrived``: the receiver's count of it is the number of
  parcels it committed. One firing makes many parcels, so that the sender's engine
  (tens of thousands of firings per second) does not bound the handoff rate.
* :func:`relay_consumed`: the same, plus a transition ``absorb`` on the receiver that
  consumes each parcel as it arrives (one firing per parcel): handed-off tokens must be
  in the receiver's marking, indexed, and enable ``absorb`` before they count.
  :func:`absorber` is the receiver's part alone (``arrived`` and ``absorb``), for the
  local baseline: the same transition firing on the same tokens put into one engine.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from nets.model import Net, Place, Transition, variables
from router.slots import slot_of_key
from router.table import PartitionTable

DESTINATIONS: Final = 64  # keys (so lanes) the parcels spread over
_TABLE: Final = PartitionTable.initial(2)


def _keys_of(shard: int, prefix: str, count: int) -> tuple[str, ...]:
    keys = (f"{prefix}{i}" for i in range(100 * count))
    return tuple(k for k in keys if _TABLE.owner(slot_of_key(k)) == shard)[:count]


ORIGINS: Final = _keys_of(0, "origin-", 8)
DESTINATION_KEYS: Final = _keys_of(1, "dest-", DESTINATIONS)


class Burst(NamedTuple):
    origin: str
    burst_id: int
    size: int


class Parcel(NamedTuple):
    key: str
    burst_id: int
    n: int


def burst(burst_id: int, size: int) -> Burst:
    """A burst that shard 0 (of two) owns and sprays into ``size`` parcels."""
    return Burst(ORIGINS[burst_id % len(ORIGINS)], burst_id, size)


def parcels(b: Burst) -> list[Parcel]:
    """The parcels ``spray`` makes of a burst."""
    keys = DESTINATION_KEYS
    return [Parcel(keys[(b.burst_id + i) % len(keys)], b.burst_id, i) for i in range(b.size)]


def _relay(name: str, *, consumed: bool) -> Net:
    bursts = Place("bursts", Burst, key="origin")
    arrived = Place("arrived", Parcel, key="key")
    b, o, p, k = variables("b o p k")
    spray = Transition(
        "spray", consume=[bursts(b, origin=o)], produce=[arrived.produce_all(parcels)]
    )
    transitions = [spray]
    if consumed:
        transitions.append(Transition("absorb", consume=[arrived(p, key=k)], produce=[]))
    return Net(name, places=[bursts, arrived], transitions=transitions)


def relay() -> Net:
    """Bursts at shard 0 become parcels at shard 1 (see the module docstring)."""
    return _relay("bench_relay", consumed=False)


def relay_consumed() -> Net:
    """:func:`relay`, and shard 1 consumes every parcel that arrives (``absorb``)."""
    return _relay("bench_relay_consumed", consumed=True)
