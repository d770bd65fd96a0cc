"""Effect models: the finite environment that closes a work-queue place.

A place marked ``work_queue=True`` is open: workers outside the net lease its tokens,
do an effect (an HTTP request, a parse, a write) and complete the lease with result
tokens, or let the lease expire. To verify a net, or to simulate it without workers,
each work-queue place is closed by an :class:`EffectModel`: a pure function from the
leased token (and the delivery attempt) to the finite set of outcomes a worker could
report.

Theory of operation:

* An :class:`Outcome` is what one completion does: ``"ok"`` or ``"fail"`` complete the
  lease and produce ``results`` (``(place, token)`` pairs, exactly what a real worker
  would send); ``"stall"`` completes nothing, so the lease expires and the token goes
  back to its queue.
* The state-space explorer (nets/explore.py) branches over *every* outcome; weights,
  latencies and start times matter only to a simulator, which draws one outcome with a
  seeded ``random.Random``. A latency *distribution* is several outcomes with the same
  results and different ``latency_ms``, their weights the distribution's.
* Models are deterministic and finite: the same ``(token, attempt)`` always gives the
  same tuple of outcomes, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from nets.errors import NetDefinitionError

Token = tuple[Any, ...]

OUTCOME_KINDS: tuple[str, ...] = ("ok", "fail", "stall")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One way a leased token's effect can end.

    Args:
        kind: ``"ok"``, ``"fail"`` or ``"stall"`` (the worker never answers: the lease
            expires and the token returns to its queue).
        results: ``(place, token)`` pairs produced when the lease is completed (empty
            for a stall).
        weight: relative likelihood, for a simulator's seeded draw (ignored by the
            explorer, which takes every outcome).
        latency_ms: how long the effect takes, for a simulator.
        start_ms: the earliest time the effect may begin (0: as soon as leased), for a
            simulator: the worker completes at ``max(lease time, start_ms) +
            latency_ms``. A fetch that waits for its planned start says so here.
    """

    kind: str
    results: tuple[tuple[str, Token], ...] = ()
    weight: float = 1.0
    latency_ms: int = 0
    start_ms: int = 0

    def __post_init__(self) -> None:
        if self.kind not in OUTCOME_KINDS:
            raise NetDefinitionError(
                f"outcome kind must be one of {', '.join(OUTCOME_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "stall" and self.results:
            raise NetDefinitionError("a stall outcome produces nothing: its lease expires")
        if not (self.weight > 0):
            raise NetDefinitionError(f"outcome weight must be > 0, got {self.weight!r}")
        if type(self.latency_ms) is not int or self.latency_ms < 0:
            raise NetDefinitionError(
                f"outcome latency_ms must be a non-negative int, got {self.latency_ms!r}"
            )
        if type(self.start_ms) is not int or self.start_ms < 0:
            raise NetDefinitionError(
                f"outcome start_ms must be a non-negative int, got {self.start_ms!r}"
            )
        object.__setattr__(self, "results", tuple(self.results))


@runtime_checkable
class EffectModel(Protocol):
    """The finite, deterministic outcomes of leasing ``token`` for the ``attempt``-th time.

    ``attempt`` counts deliveries of this token by the environment, from 0; the explorer
    does not count expired leases in its states (that would make every state space
    infinite), so it always passes 0 and a model that retries reads the attempt from the
    token's own fields, as the crawler's tokens carry it.
    """

    def outcomes(self, token: Token, attempt: int) -> tuple[Outcome, ...]: ...


def validate_effects(
    net_name: str, effects: Mapping[str, object], work_queues: Mapping[str, object]
) -> dict[str, EffectModel]:
    """Check that each key names a work-queue place and each value is an effect model.

    Raises:
        NetDefinitionError: naming the place or the model at fault.
    """
    checked: dict[str, EffectModel] = {}
    for name, model in effects.items():
        if name not in work_queues:
            raise NetDefinitionError(
                f"net {net_name!r}: effects name {name!r}, which is not a work-queue place "
                f"(work queues: {', '.join(work_queues) or 'none'})"
            )
        if not isinstance(model, EffectModel):
            raise NetDefinitionError(
                f"net {net_name!r}: the effect model of {name!r} has no "
                f"outcomes(token, attempt) method: {model!r}"
            )
        checked[name] = model
    return checked
