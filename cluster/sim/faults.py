"""The fault menu of `cpn sim`: named knobs with rates, parsed, chosen per seed, counted.

Theory of operation: each fault is a :class:`Fault` with a name, a default rate and the
unit of its rate:

* ``per_frame``: a probability per frame sent (``drop``, ``duplicate``, ``reorder``,
  ``delay``); these go into the network's :class:`~cluster.sim.network.LinkModel`;
* ``per_s``: episodes per virtual second (partitions, clogs, crashes, clock skew,
  scaling); the run's nemesis draws, every :data:`NEMESIS_TICK_MS`, whether one starts
  (probability ``rate * tick / 1000``), so episodes arrive as a Poisson process;
* ``per_lease``: a probability per lease a simulated worker takes (``stall_worker``,
  ``expire_lease``).

A :class:`FaultPlan` is the faults switched on for one run, each with its rate. It comes
from the command line (:func:`parse_faults`: ``drop=0.01,partition,...``; a name alone
takes its default rate) or from the seed (:func:`choose`: at least ``minimum`` faults,
each rate its default scaled by a factor between :data:`SCALE_MIN` and
:data:`SCALE_MAX`, drawn from ``derived_random(seed, "faults")``). Faults never named
are off. An unknown name is a :class:`UnknownFault`, one line that lists the known
names. :class:`FaultCounts` counts what a run actually injected, by kind, for the
report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from cluster.sim.network import LinkModel
from cluster.sim.rng import derived_random
from nets.errors import CpnError

Unit = Literal["per_frame", "per_s", "per_lease"]

NEMESIS_TICK_MS: Final = 100
SCALE_MIN: Final = 0.5
SCALE_MAX: Final = 2.0
FAULTS_MIN_DEFAULT: Final = 3
FAULT_SPEC_CHARS_MAX: Final = 4_096


class FaultError(CpnError):
    """A ``--faults`` value that does not parse."""


class UnknownFault(FaultError):
    """A fault name that is not on the menu."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One knob of the menu."""

    name: str
    default_rate: float
    unit: Unit
    what: str


MENU: Final[tuple[Fault, ...]] = (
    Fault("drop", 0.01, "per_frame", "a frame is lost"),
    Fault("duplicate", 0.01, "per_frame", "a frame arrives twice"),
    Fault("reorder", 0.02, "per_frame", "a frame is held back and overtaken by later ones"),
    Fault("delay", 0.01, "per_frame", "a frame and those behind it on its link wait longer"),
    Fault("partition", 0.05, "per_s", "two groups of nodes cannot reach each other"),
    Fault("one_way_partition", 0.05, "per_s", "one group cannot reach another, only one way"),
    Fault("swizzle_clog", 0.03, "per_s", "links stop one by one, then restart in random order"),
    Fault("crash_shard", 0.1, "per_s", "a shard is killed at any step and restarted"),
    Fault("crash_router", 0.03, "per_s", "the router is killed at any step and restarted"),
    Fault(
        "crash_between_commit_and_send",
        0.05,
        "per_s",
        "a node is killed after a commit, before it sends what the commit released",
    ),
    Fault("clock_skew", 0.05, "per_s", "a shard's clock jumps ahead of the others'"),
    Fault("scale_out", 0.02, "per_s", "a shard joins while handoffs and faults are in flight"),
    Fault("scale_in", 0.02, "per_s", "a shard leaves while handoffs and faults are in flight"),
    Fault("stall_worker", 0.02, "per_lease", "a worker holds a lease and never answers"),
    Fault("expire_lease", 0.02, "per_lease", "a worker answers after its lease expired"),
)
FAULTS: Final[Mapping[str, Fault]] = {fault.name: fault for fault in MENU}
NAMES: Final[tuple[str, ...]] = tuple(fault.name for fault in MENU)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults switched on for one run: ``(name, rate)`` in menu order."""

    rates: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        names = [name for name, _ in self.rates]
        assert names == [n for n in NAMES if n in set(names)], f"not in menu order: {names}"

    @classmethod
    def of(cls, rates: Mapping[str, float]) -> FaultPlan:
        """A plan from ``name -> rate``, checked.

        Raises:
            UnknownFault: a name not on the menu.
            FaultError: a rate that is negative, or a probability above 1.
        """
        for name in sorted(rates):
            _check(name, rates[name])
        return cls(tuple((name, float(rates[name])) for name in NAMES if name in rates))

    def rate(self, name: str) -> float:
        """The rate of ``name`` in this plan (0.0: off)."""
        assert name in FAULTS, f"unknown fault {name!r}"
        return dict(self.rates).get(name, 0.0)

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.rates)

    def per_tick(self, name: str, tick_ms: int = NEMESIS_TICK_MS) -> float:
        """The probability that an episode of ``name`` starts in one nemesis tick."""
        assert FAULTS[name].unit == "per_s", f"{name} is not an episode fault"
        return min(1.0, self.rate(name) * tick_ms / 1_000)

    def link_model(self, base: LinkModel | None = None) -> LinkModel:
        """``base`` (or the default model) with this plan's per-frame rates."""
        base = base or LinkModel()
        return LinkModel(
            latency_ms_min=base.latency_ms_min,
            latency_ms_max=base.latency_ms_max,
            drop_rate=self.rate("drop"),
            duplicate_rate=self.rate("duplicate"),
            reorder_rate=self.rate("reorder"),
            reorder_ms_max=base.reorder_ms_max,
            delay_rate=self.rate("delay"),
            delay_ms_max=base.delay_ms_max,
        )

    def describe(self) -> str:
        """``drop=0.01,partition=0.05`` (what :func:`parse_faults` reads back)."""
        return ",".join(f"{name}={rate:g}" for name, rate in self.rates)


def parse_faults(text: str) -> FaultPlan:
    """Parse ``--faults``: comma-separated ``name`` or ``name=rate``; ``none`` is no fault.

    Raises:
        UnknownFault: a name not on the menu (the message lists the menu).
        FaultError: a rate that is not a number, negative, or a probability above 1;
            a name given twice; a value longer than :data:`FAULT_SPEC_CHARS_MAX`.
    """
    if len(text) > FAULT_SPEC_CHARS_MAX:
        raise FaultError(f"--faults is {len(text)} characters long, more than any menu needs")
    text = text.strip()
    if text in ("", "none"):
        return FaultPlan()
    rates: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip()
        if name not in FAULTS:
            raise UnknownFault(_unknown(name))
        if name in rates:
            raise FaultError(f"fault {name!r} is given twice in --faults")
        if not sep:
            rates[name] = FAULTS[name].default_rate
            continue
        try:
            rates[name] = float(value)
        except ValueError:
            raise FaultError(
                f"fault {name!r}: rate {value.strip()!r} is not a number "
                f"(e.g. {name}={FAULTS[name].default_rate:g})"
            ) from None
    return FaultPlan.of(rates)


def choose(
    seed: int, *, minimum: int = FAULTS_MIN_DEFAULT, allowed: Iterable[str] | None = None
) -> FaultPlan:
    """The faults of the run of ``seed``: at least ``minimum`` of ``allowed`` (default all).

    A pure function of its arguments: the count is drawn between ``minimum`` and the
    number allowed, the names are a sample of the allowed ones (in menu order), and each
    rate is its default scaled by a factor drawn in ``SCALE_MIN .. SCALE_MAX`` (a
    probability is capped at 1).

    Raises:
        UnknownFault: an allowed name not on the menu.
        FaultError: fewer names allowed than ``minimum``.
    """
    pool = list(NAMES) if allowed is None else sorted(set(allowed), key=_menu_index)
    if len(pool) < minimum:
        raise FaultError(
            f"{minimum} faults per seed asked for, but only {len(pool)} allowed: {pool}"
        )
    rng = derived_random(seed, "faults")
    count = rng.randint(minimum, len(pool))
    picked = sorted(rng.sample(pool, count), key=_menu_index)
    rates = {}
    for name in picked:
        rate = FAULTS[name].default_rate * rng.uniform(SCALE_MIN, SCALE_MAX)
        rates[name] = min(rate, 1.0) if FAULTS[name].unit != "per_s" else rate
    return FaultPlan.of(rates)


class FaultCounts:
    """Faults a run injected, by kind (the report's ``faults``)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def record(self, name: str, count: int = 1) -> None:
        assert name in FAULTS, f"unknown fault {name!r}"
        assert count >= 0
        self._counts[name] += count

    def merge(self, other: FaultCounts) -> None:
        self._counts.update(other._counts)

    def total(self) -> int:
        return sum(self._counts.values())

    def by_kind(self) -> dict[str, int]:
        """Counts in menu order, kinds never injected left out."""
        return {name: self._counts[name] for name in NAMES if self._counts[name]}


def _menu_index(name: str) -> int:
    if name not in FAULTS:
        raise UnknownFault(_unknown(name))
    return NAMES.index(name)


def _check(name: str, rate: float) -> None:
    if name not in FAULTS:
        raise UnknownFault(_unknown(name))
    if not rate >= 0.0:  # also refuses NaN
        raise FaultError(f"fault {name!r}: rate {rate} is negative")
    if FAULTS[name].unit != "per_s" and rate > 1.0:
        raise FaultError(
            f"fault {name!r}: rate {rate} is a probability {FAULTS[name].unit.replace('_', ' ')}"
            ", at most 1"
        )


def _unknown(name: str) -> str:
    return f"unknown fault {name!r}; known faults: {', '.join(NAMES)}"
