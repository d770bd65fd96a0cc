"""How the simulator picks a work-queue outcome from a place's effect model.

A work-queue place needs a pure effect model (``nets/effects.py``, written alongside
the cores): ``outcomes(token, attempt)`` lists what can happen to a leased token on a
given attempt (``ok`` with result tokens, ``fail``, ``stall``), each with a weight and a
latency. This module only *chooses* among them; it codes against the two structural
types below, which the real ``Outcome`` (a frozen dataclass) and ``EffectModel``
satisfy, so it does not import ``nets.effects``.

Theory of operation: the choice is a pure function of ``(run seed, place, token,
attempt)``: a generator seeded with ``derive_seed(seed, "effect", place,
pack(token_fields(token)), attempt)`` (:mod:`cluster.sim.rng`; the token enters as its
canonical msgpack bytes, never through Python's ``hash``, so ``PYTHONHASHSEED`` does not
matter) draws one uniform number ``u`` in ``[0, total weight)``, and the outcome is the
first whose running sum of weights exceeds ``u``, in the order the model listed them.
Firing order, other tokens and other seeds' runs change nothing: the same token on the
same attempt meets the same fate in every run of that seed, and a retry (the next
attempt) draws afresh: randomness comes from the seed and the event, never from order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

from cluster.sim.rng import derived_random
from nets.codec import pack, token_fields
from nets.errors import CpnError
from nets.model import Token

KINDS: Final = ("ok", "fail", "stall")
OUTCOMES_MAX: Final = 64


class EffectModelError(CpnError):
    """An effect model that gave outcomes the simulator cannot choose from."""


class OutcomeLike(Protocol):
    """What the simulator reads of an ``Outcome`` (``nets.effects.Outcome``)."""

    @property
    def kind(self) -> str: ...

    @property
    def results(self) -> tuple[tuple[str, Token], ...]: ...

    @property
    def weight(self) -> float: ...

    @property
    def latency_ms(self) -> int: ...

    @property
    def start_ms(self) -> int:
        """The earliest time the effect may begin (0: when leased)."""
        ...


OutcomeT_co = TypeVar("OutcomeT_co", bound=OutcomeLike, covariant=True)
OutcomeT = TypeVar("OutcomeT", bound=OutcomeLike)


class EffectModelLike(Protocol[OutcomeT_co]):
    """What the simulator calls of an ``EffectModel`` (``nets.effects.EffectModel``)."""

    def outcomes(self, token: Token, attempt: int) -> tuple[OutcomeT_co, ...]: ...


def draw_outcome(
    model: EffectModelLike[OutcomeT], *, seed: int, place: str, token: Token, attempt: int
) -> OutcomeT:
    """The outcome of ``attempt`` (1, 2, ...) at ``token`` of work-queue ``place``.

    Raises:
        EffectModelError: the model gave no outcome, more than :data:`OUTCOMES_MAX`, an
            unknown kind, a weight that is negative or not finite, weights that sum to
            zero, or a negative latency (the message names the place, token and
            attempt).
    """
    outcomes = model.outcomes(token, attempt)
    return choose_outcome(outcomes, seed=seed, place=place, token=token, attempt=attempt)


def choose_outcome(
    outcomes: Sequence[OutcomeT], *, seed: int, place: str, token: Token, attempt: int
) -> OutcomeT:
    """The weighted, seeded choice among ``outcomes`` (see the theory of operation).

    Raises:
        EffectModelError: as :func:`draw_outcome`.
    """
    where = f"effect model of place {place!r}, token {tuple(token)!r}, attempt {attempt}"
    if not outcomes:
        raise EffectModelError(f"{where}: no outcome; list at least one (ok, fail or stall)")
    if len(outcomes) > OUTCOMES_MAX:
        raise EffectModelError(f"{where}: {len(outcomes)} outcomes, at most {OUTCOMES_MAX}")
    total = 0.0
    for index, outcome in enumerate(outcomes):
        if outcome.kind not in KINDS:
            raise EffectModelError(
                f"{where}: outcome {index} has kind {outcome.kind!r}, expected one of {KINDS}"
            )
        if not (math.isfinite(outcome.weight) and outcome.weight >= 0):
            raise EffectModelError(f"{where}: outcome {index} has weight {outcome.weight}")
        if outcome.latency_ms < 0:
            raise EffectModelError(
                f"{where}: outcome {index} has latency {outcome.latency_ms} ms, below 0"
            )
        total += outcome.weight
    if total <= 0:
        raise EffectModelError(f"{where}: every outcome has weight 0")
    rng = derived_random(seed, "effect", place, pack(token_fields(token)), attempt)
    u = rng.random() * total
    running = 0.0
    for outcome in outcomes:
        running += outcome.weight
        if u < running:
            return outcome
    # Rounding can leave u at the very top: the last outcome that has a weight takes it.
    return next(o for o in reversed(outcomes) if o.weight > 0)
