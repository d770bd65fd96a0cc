"""The marking a shard's core starts from: the store's, or its share of the initial one.

A core is built whole from what its store recovered (:class:`~shard.batch.Recovered`).
Its engine starts from one of two markings:

* :func:`restore_marking`: a store that was initialised holds the marking; the tokens of
  slots sealed for a move stay in the store for the shipment and leave the engine, and
  the deferred places' tokens of those slots are never loaded;
* :func:`initial_share`: a store never initialised gets this shard's share of the net's
  initial marking, in the first batch, which the shell commits as the store's
  initialisation.

These rules run once per core, never per turn, and read the exchange's ownership and
the store's sealed slots; they are apart from the core so that the core's module holds
what every turn runs through, and the two ways a shard starts are read in one page.
"""

from __future__ import annotations

from nets.engine import Engine
from shard.batch import Batch, Recovered
from shard.deferred import DeferredLoad
from shard.exchange import Exchange
from shard.shard_setup import ShardSetup, StoredSlots


def restore_marking(
    engine: Engine,
    exchange: Exchange,
    recovered: Recovered,
    slots: StoredSlots,
    deferred: DeferredLoad,
    deferred_places: frozenset[str],
) -> None:
    """Put the recovered marking in ``engine``, less the slots sealed for a move."""
    engine.restore(recovered.marking)
    for slot in sorted(exchange.sealed):
        # Sealed for a move: kept in the store for the shipment, never fired.
        entries = slots.slot_entries(slot)
        engine.extract([e for e in entries if e[0] not in deferred_places])
        for place, _time_ms, _token in entries:
            if place in deferred_places:
                deferred.not_loaded(place, 1)


def initial_share(setup: ShardSetup, exchange: Exchange, engine: Engine) -> Batch:
    """This shard's share of the net's initial marking, put in ``engine``; the first
    batch, holding it (the store's initialisation).

    Keyed and fixed tokens start at the shard that owns their slot (every shard
    computes the same initial table); pool tokens are dealt round robin, token ``i``
    to shard ``i % shard_count``, so they start spread over the cluster.
    """
    batch = Batch()
    me, count = setup.shard_id, setup.shard_count
    now = engine.now
    for place in setup.net.places:
        if place.pool:
            tokens = [t for i, t in enumerate(place.initial) if i % count == me]
        else:
            tokens = [t for t in place.initial if exchange.owns(place, t)]
        # In bulk: the Place checked its initial tokens, and one merge per index
        # keeps its buckets sorted, where token by token most landed out of order
        # (an insort each: about 0.9 s of a 100,000-target shard's start).
        engine.add_checked(place.name, [(now, token) for token in tokens])
        for token in tokens:
            batch.add(place.name, now, token)
    return batch
