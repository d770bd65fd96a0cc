"""What a shard's core is built from, and what the shell plugs into it.

A :class:`shard.core.ShardCore` is built whole, never wired afterwards: from a
:class:`ShardSetup` (the net with its lease machinery, and the shard's place in the
cluster: the same for every incarnation), from what the store recovered, and from the
ports the shell provides: a :class:`FiringBudget` that ends a batch of firings, the
:class:`StoredSlots` it reads sealed slots from, and a :data:`FaultPoint` where chaos
tests end the process. When a commit fails, the core is rebuilt from the store and
given what the old one :class:`Carried`: counters, ids and conversations that must go
on. These records are apart from the core so that its shell, the simulator and the
tests build cores from one module of plain definitions, without the core's behaviour.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nets.engine import unread_places
from nets.firing import PlacedEntry
from nets.model import Net
from shard.leases import WorkQueue, with_work_queues
from shard.link import Link
from shard.mover import Mover
from shard.parked import LongPolls


class FiringBudget(Protocol):
    """The shell's bound on one batch of firings (wall time, waiting requests); asked
    every :data:`shard.core.FIRINGS_PER_BUDGET_CHECK` firings. A simulator counts instead."""

    def exhausted(self) -> bool: ...


class StoredSlots(Protocol):
    """What the core reads from its store outside recovery: a slot's committed entries
    (a slot sealed for a move keeps its tokens there, not in the engine)."""

    def slot_entries(self, slot: int) -> list[PlacedEntry]: ...


FaultPoint = Callable[[str], None]  # the shell may end the process at a named step


def no_fault(_name: str) -> None:
    """The fault point of a shell that injects no faults."""


@dataclass(frozen=True, slots=True)
class ShardSetup:
    """What every incarnation of one shard is built from: its net, with the lease
    machinery added, and its place in the cluster."""

    net: Net
    queues: Mapping[str, WorkQueue]
    shard_id: int = 0
    shard_count: int = 1
    router: str = ""  # the router's endpoint ("": standalone); a routed shard is fenced
    cluster_id: str = ""  # a table from another cluster's router is refused
    endpoint: str = ""  # where the others reach it (its heartbeat says so)

    @classmethod
    def of(cls, net: Net, **identity: Any) -> ShardSetup:
        """The setup of a shard of ``net`` (its work queues get their companions)."""
        with_queues, queues = with_work_queues(net)
        return cls(with_queues, queues, **identity)

    @property
    def companions(self) -> frozenset[str]:
        """The places of the lease machinery: only leases and completions change them."""
        return frozenset(
            place.name for queue in self.queues.values() for place in (queue.held, queue.timer)
        )

    @property
    def deferred_places(self) -> frozenset[str]:
        """Places whose tokens only accumulate: read after the shard starts firing."""
        return frozenset(
            name for name in unread_places(self.net, self.queues) if not self.net.place(name).pool
        )


@dataclass(slots=True)
class Carried:
    """What a core passes on to the core rebuilt after a failed commit: the counters,
    the conversations in progress and the ids already handed out."""

    counters: Counter[str]
    lease_seq: int
    sender_incarnations: dict[int, int]
    polls: LongPolls
    mover: Mover
    link: Link

    @classmethod
    def fresh(cls, setup: ShardSetup, *, incarnation: int, fault: FaultPoint) -> Carried:
        """What the first core of an incarnation starts from: nothing counted yet, no
        conversation in progress."""
        return cls(
            Counter(),
            0,
            {},
            LongPolls(),
            Mover(incarnation=incarnation, routed=bool(setup.router), fault=fault),
            Link(
                me=setup.shard_id,
                incarnation=incarnation,
                endpoint=setup.endpoint,
                cluster_id=setup.cluster_id,
                router=setup.router,
            ),
        )
