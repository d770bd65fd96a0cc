"""The nemesis: when each fault of a plan strikes, and whom it strikes.

Theory of operation: the run loop calls :meth:`Nemesis.tick` every
:data:`~cluster.sim.faults.NEMESIS_TICK_MS` of virtual time until its heal phase. For each
episode fault of the plan (unit ``per_s``), in menu order, the nemesis draws one number
from its own generator (``derived_random(seed, "nemesis")``) and starts an episode when
it falls below the fault's per-tick probability; only then does it draw the episode's
details (victims, groups, durations). The number of draws per tick is therefore fixed
by the plan, not by what happened, and the same seed strikes at the same moments.

Each episode fault of the plan strikes at least once: at its construction the nemesis
draws, for each with a rate above 0, a tick of the fault phase (``ticks``, the number of
ticks before the heal); a fault that no draw has started by that tick starts there (or at
the first tick after it with a victim). A plan of five rare faults would otherwise
inject fewer than five in some seeds, and a seed is meant to exercise what its plan
names. A scale is asked for then, and counted only if the run carries it out
(:meth:`Nemesis.carried_out`): the operator does not scale while another scale goes on,
so a plan's scaling may strike less often than asked. Retrying it until it happens
would put it late in the fault phase, with too little time left to drain.

The network's faults it carries out itself, on the :class:`~cluster.sim.network.Network`:

* ``partition``: the nodes that are up are split into two random non-empty groups, cut
  both ways for ``PARTITION_MS_MIN .. PARTITION_MS_MAX``;
* ``one_way_partition``: the same, one way;
* ``swizzle_clog``: :meth:`~cluster.sim.network.Network.swizzle` among the nodes up.

Each partition is lifted by its own :class:`PartitionEnds` event (partitions may
overlap). The faults that need the cores it returns as actions for the run loop to
carry out: :class:`Crash` (``crash_shard``, ``crash_router``, and
``crash_between_commit_and_send``, which the loop carries out at the victim's next
commit: the batch is committed, its messages are dropped, the node stops),
:class:`Skew` (``clock_skew``) and :class:`Scale` (``scale_out``, ``scale_in``). The
per-lease faults (``stall_worker``, ``expire_lease``) are drawn by
:meth:`Nemesis.lease_fault` for each lease a simulated worker takes. Every fault
started is counted in the run's :class:`~cluster.sim.faults.FaultCounts`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from cluster.sim.faults import FAULTS, FaultCounts, FaultPlan
from cluster.sim.network import Link, Network
from cluster.sim.schedule import PRIORITY_FAULT, Schedule

PARTITION_MS_MIN: Final = 100
PARTITION_MS_MAX: Final = 3_000
DOWN_MS_MIN: Final = 10
DOWN_MS_MAX: Final = 2_000
SKEW_MS_MAX: Final = 500
SWIZZLE_STEP_MS: Final = 50


@dataclass(frozen=True, slots=True)
class PartitionEnds:
    """A schedule event: lift the partition that blocked ``links``."""

    links: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Crash:
    """Kill ``node`` (at once, or after its next commit), restart it ``down_ms`` later."""

    node: str
    down_ms: int
    after_commit: bool  # crash_between_commit_and_send


@dataclass(frozen=True, slots=True)
class Skew:
    """Move ``node``'s clock by ``skew_ms`` (kept monotone by the node's clock)."""

    node: str
    skew_ms: int


@dataclass(frozen=True, slots=True)
class Scale:
    """Grow (``+1``) or shrink (``-1``) the cluster by one shard."""

    delta: int


Action = Crash | Skew | Scale
LeaseFault = Literal["stall_worker", "expire_lease"]


class Nemesis:
    """The fault schedule of one run.

    Args:
        plan: the run's faults and rates.
        rng: the nemesis's own generator (``derived_random(seed, "nemesis")``).
        network: the run's network (partitions and clogs are applied to it).
        schedule: the run's schedule (for the ends of partitions and the clogs).
        counts: where the faults started are counted.
        ticks: the ticks of the fault phase, among which each episode fault's first
            episode is placed (0: no first episode is forced).
    """

    def __init__(
        self,
        plan: FaultPlan,
        rng: random.Random,
        network: Network,
        schedule: Schedule[Any],
        counts: FaultCounts,
        *,
        ticks: int = 0,
    ) -> None:
        self.plan = plan
        self._rng = rng
        self._network = network
        self._schedule = schedule
        self._counts = counts
        self._episodes = [
            (name, plan.per_tick(name)) for name in plan.names() if FAULTS[name].unit == "per_s"
        ]
        # episode fault -> the tick by which it must have struck once
        self._first_by: dict[str, int] = (
            {name: rng.randint(1, ticks) for name, p in self._episodes if p > 0}
            if ticks > 0
            else {}
        )
        self._ticks = 0

    def tick(self, *, shards: Sequence[str], routers: Sequence[str] = ()) -> list[Action]:
        """One nemesis tick among the nodes that are up; return what the loop must do.

        ``shards`` and ``routers`` are the nodes up now (in a fixed order); a fault with
        no possible victim (every shard down) is skipped, and not counted. A node that
        a crash of this tick took is no victim for the rest of the tick.
        """
        rng = self._rng
        shards, routers = list(shards), list(routers)
        actions: list[Action] = []
        self._ticks += 1
        first_by = self._first_by
        for name, probability in self._episodes:
            drawn = rng.random() < probability
            if not drawn and first_by.get(name, self._ticks + 1) > self._ticks:
                continue
            started, action = self._start(name, shards, routers)
            if not started:
                continue
            first_by.pop(name, None)
            if isinstance(action, Scale):
                # Counted only once the operator carried it out (carried_out): a scale
                # asked for while another goes on does not happen.
                actions.append(action)
                continue
            self._counts.record(name)
            if action is not None:
                actions.append(action)
            if isinstance(action, Crash):  # a node dies once per tick
                for up in (shards, routers):
                    if action.node in up:
                        up.remove(action.node)
        return actions

    def carried_out(self, scale: Scale) -> None:
        """The run carried out ``scale`` (a :class:`Scale` the tick returned): count it."""
        self._counts.record("scale_out" if scale.delta > 0 else "scale_in")

    def lease_fault(self) -> LeaseFault | None:
        """What befalls the lease a simulated worker just took (two draws, always)."""
        stall = self._rng.random() < self.plan.rate("stall_worker")
        late = self._rng.random() < self.plan.rate("expire_lease")
        fault: LeaseFault | None = "stall_worker" if stall else "expire_lease" if late else None
        if fault is not None:
            self._counts.record(fault)
        return fault

    def partition_ends(self, event: PartitionEnds) -> None:
        """Carry out a scheduled :class:`PartitionEnds`."""
        self._network.unblock(event.links)

    def _start(
        self, name: str, shards: list[str], routers: list[str]
    ) -> tuple[bool, Action | None]:
        """Start an episode of ``name``: (False, None) when it has no victim, else
        (True, the action for the loop, or None when it was carried out here)."""
        rng = self._rng
        nodes = [*routers, *shards]
        if name in ("partition", "one_way_partition"):
            if len(nodes) < 2:
                return False, None
            shuffled = rng.sample(nodes, len(nodes))
            cut = rng.randint(1, len(nodes) - 1)
            side_a, side_b = shuffled[:cut], shuffled[cut:]
            if name == "partition":
                links = self._network.partition(side_a, side_b)
            else:
                links = self._network.one_way_partition(side_a, side_b)
            lasts_ms = rng.randint(PARTITION_MS_MIN, PARTITION_MS_MAX)
            self._schedule.after(lasts_ms, PartitionEnds(links), priority=PRIORITY_FAULT)
            return True, None
        if name == "swizzle_clog":
            if len(nodes) < 2:
                return False, None
            hold_ms = rng.randint(PARTITION_MS_MIN, PARTITION_MS_MAX)
            self._network.swizzle(rng, nodes, step_ms=SWIZZLE_STEP_MS, hold_ms=hold_ms)
            return True, None
        if name in ("crash_shard", "crash_router", "crash_between_commit_and_send"):
            victims = {"crash_shard": shards, "crash_router": routers}.get(name, nodes)
            if not victims:
                return False, None
            victim = rng.choice(victims)
            down_ms = rng.randint(DOWN_MS_MIN, DOWN_MS_MAX)
            return True, Crash(
                victim, down_ms, after_commit=name == "crash_between_commit_and_send"
            )
        if name == "clock_skew":
            if not shards:
                return False, None
            return True, Skew(rng.choice(shards), rng.randint(-SKEW_MS_MAX, SKEW_MS_MAX))
        assert name in ("scale_out", "scale_in"), f"no episode for fault {name!r}"
        return True, Scale(1 if name == "scale_out" else -1)
