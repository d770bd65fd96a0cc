"""Named mutations: real bugs this project had and fixed, put back for `cpn sim` to find.

Each :class:`Mutation` re-introduces one bug on the current code by monkeypatching it
(:meth:`Mutation.apply`, a context manager that restores the production code on leaving,
even on an error); production code has no flag for any of them. Each patch ports the
bug's essence from its fixing commit to where that code lives now (``shard/process.py``
became ``shard/core.py``, ``shard/mover.py``, ``shard/link.py``...).

docs/simulation.md, "Named mutations", tables them: the bug, the commit that fixed it,
what catches it, the faults it is searched under and the seed that found it
(``tests/simulation/test_mutations.py`` checks that table against :data:`MUTATIONS`).

API (what ``bench/sim.py`` and ``tests/simulation/test_mutations.py`` use)::

    from tests.simulation.mutations import MUTATIONS, failure_of, search

    for mutation in MUTATIONS.values():
        with mutation.apply():
            assert failure_of(mutation.recorded_seed, mutation.config)  # caught
        assert not failure_of(mutation.recorded_seed, mutation.config)  # off: it passes

The configurations run a smaller crawl than the benchmark's for 20 s of virtual time
(10 s of faults, then the heal phase), so that a replay takes one or two seconds. A fault
plan is narrowed only to the faults the bug needs (slot moves come from scaling; a peer
on a new port from a crash); seeds of an unnarrowed plan draw those rarely.
:data:`UNREACHED` keeps the patches of bugs the simulator does not reach (the docs say
why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from unittest import mock

from cluster.sim.campaign import seed_failure
from cluster.sim.cluster_run import SimConfig
from router import handoff
from router.control import ControlPlane, Outcome, RouterWrite
from router.handoff import LaneEvent, LaneState, Outbox, ProtocolError
from router.table import PartitionTable
from router.wire import Leased
from shard.link import Link
from shard.mover import Mover
from shard.parked import LongPolls

NET: Final = "nets.scraper:net"
UNTIL_MS: Final = 20_000
SMALL_SITE: Final = {"site_domains": 20, "site_pages": 3}
MANY_SLOTS: Final = {"site_domains": 100, "site_pages": 2}  # more slots carry tokens
# A crawl over in a second or two: the slot moves that follow find the outboxes empty.
TINY_SITE: Final = {"site_domains": 4, "site_pages": 1}

Patches = Callable[[], Iterable[contextlib.AbstractContextManager[Any]]]


@dataclass(frozen=True, slots=True)
class Mutation:
    """One bug put back (see the module docstring)."""

    name: str
    description: str  # the bug, as its fixing commit tells it
    fixed_in: str  # the fixing commit's short hash
    config: SimConfig
    recorded_seed: int
    patches: Patches

    @contextlib.contextmanager
    def apply(self) -> Iterator[None]:
        """Patch the bug in for the ``with`` block; the production code is back after it."""
        with contextlib.ExitStack() as stack:
            for patch in self.patches():
                stack.enter_context(patch)
            yield


# What fails in a seed ('' if it passes): the one definition the benchmark uses too.
failure_of = seed_failure


def search(mutation: Mutation, seeds: Iterable[int]) -> int | None:
    """The first of ``seeds`` that fails with ``mutation`` applied (None: none did)."""
    with mutation.apply():
        for seed in seeds:
            if failure_of(seed, mutation.config):
                return seed
    return None


# -- the bugs, as patches ----------------------------------------------------------------


def _stale_stage_order() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # Mover._order without the ``move_orders_stale`` guard: a stage order is carried
    # out even when this shard's table already gives it the slot.
    original = Mover._order

    def _order(self: Mover, order: Any, now_ms: int, exchange: Any, batch: Any, host: Any) -> None:
        move_id, kind, slot, _source, _target, _count, _digest, epoch = order
        if kind != "stage" or epoch > exchange.table.epoch:
            original(self, order, now_ms, exchange, batch, host)
            return
        staged = exchange.staged.get(slot)
        if staged is not None and staged.move_id == move_id:
            self._answer(move_id, "staged", staged.count, staged.digest)
            return
        self.stage_orders[move_id] = order
        self._fetch(order, now_ms, exchange)

    return [mock.patch.object(Mover, "_order", _order)]


def _redirect_waits_for_newer_epoch() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # Outbox._redirect as before 9d362e4: wait for a table newer than our own, even
    # when ours already names the lane's owner (the epoch waited for may never come).
    def _redirect(self: Outbox, lane: int, epoch: int) -> None:
        out = self.lanes.get(lane)
        if out is None:
            raise ProtocolError(f"redirect for lane {lane}, which was never used")
        self._step(out, LaneEvent.REDIRECT)
        if out.state is LaneState.IDLE:
            return
        out.wait_epoch = max(out.wait_epoch, epoch, self.table_epoch + 1)
        out.sent = out.acked

    return [mock.patch.object(Outbox, "_redirect", _redirect)]


def _loopback_refused() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # Inbox.receive as before 9d362e4: ``_malformed(me, sender, runs)`` refused a run
    # from this shard to itself, and refused the sender incarnation for good.
    original = handoff.Inbox.receive

    def receive(self: handoff.Inbox, *, sender: int, incarnation: int, **rest: Any) -> Any:
        if sender == self.me:
            problem = f"a run from shard {sender} to itself"
            self.failed[(sender, incarnation)] = problem
            raise ProtocolError(f"shard {sender} (incarnation {incarnation}): {problem}")
        return original(self, sender=sender, incarnation=incarnation, **rest)

    return [mock.patch.object(handoff.Inbox, "receive", receive)]


def _ack_error_drops_done() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # Outbox.acknowledged as before c7f5a50: a fault in one lane raised, and the runs
    # the other lanes acknowledged were neither returned nor deleted.
    original = Outbox.acknowledged

    def acknowledged(self: Outbox, **kwargs: Any) -> list[handoff.Run]:
        try:
            return original(self, **kwargs)
        except handoff.AcknowledgementError as exc:
            raise handoff.AcknowledgementError(str(exc), done=[]) from None

    return [mock.patch.object(Outbox, "acknowledged", acknowledged)]


def _no_table_refresh_while_pending() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # shard/link.py before eff1e8e: the table was asked for again only when a send
    # failed or an epoch was heard of, never because tokens waited.
    def waiting_on_peers(exchange: Any, mover: Any) -> bool:
        del exchange, mover
        return False

    return [mock.patch.object(Link, "waiting_on_peers", staticmethod(waiting_on_peers))]


def _no_table_refresh_while_fetching() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # shard/link.py before f142ff2: the refresh waited on the outbox only, not on a
    # move's shipment being fetched from its source.
    def waiting_on_peers(exchange: Any, mover: Any) -> bool:
        del mover
        return bool(exchange.outbox.pending_tokens())

    return [mock.patch.object(Link, "waiting_on_peers", staticmethod(waiting_on_peers))]


def _lease_taken_back_despite_repeat() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # LongPolls.undelivered as before f6f5001: every lease whose reply failed is taken
    # back, though a repeat in the same batch delivered it.
    def undelivered(replies: list[Any]) -> list[str]:
        lost: list[str] = []
        for (_peer, reply, _mid), ok in replies:
            if ok or not isinstance(reply, Leased) or not reply.entries:
                continue
            if reply.lease_id not in lost:
                lost.append(reply.lease_id)
        return lost

    return [mock.patch.object(LongPolls, "undelivered", staticmethod(undelivered))]


def _router_commit_split() -> Iterable[contextlib.AbstractContextManager[Any]]:
    # The router's commit in two transactions: the moves' new state (``activating`` at
    # the new epoch) is written first, the table at that epoch only with the next
    # write. A router that dies in between restarts with moves committed at an epoch
    # its table never reached.
    original = ControlPlane._outcome
    written: weakref.WeakKeyDictionary[ControlPlane, PartitionTable] = weakref.WeakKeyDictionary()

    def _outcome(self: ControlPlane, reply: Any, message_id: int) -> Outcome:
        outcome = original(self, reply, message_id)
        write = outcome.write
        if write is None:
            return outcome
        table = written.get(self, write.table)
        written[self] = write.table
        if table is not write.table:
            self.unsaved = True  # the second transaction comes with the next input
        return dataclasses.replace(
            outcome, write=RouterWrite(table, write.control, write.endpoints)
        )

    return [mock.patch.object(ControlPlane, "_outcome", _outcome)]


# The crawler's planning times, pinned: a seed's schedule depends on them, and the bugs
# here are the cluster's, not the crawler's, so tuning the crawler's defaults must not
# move the seeds that catch them (these are the defaults the seeds were found with).
CRAWLER_TIMES: Final = {"direct_lead_ms": 40, "ready_ms": 20}


def _config(params: dict[str, int], faults: str = "", *, shards: int = 3) -> SimConfig:
    return SimConfig(
        NET, params={**CRAWLER_TIMES, **params}, shards=shards, until_ms=UNTIL_MS, faults=faults
    )


def _registry(*mutations: Mutation) -> dict[str, Mutation]:
    return {m.name: m for m in mutations}


MUTATIONS: Final[dict[str, Mutation]] = _registry(
    Mutation(
        "stale_stage_order",
        "A late copy of a move's stage order (duplicated or reordered) made the target, "
        "whose table already gave it the slot, fetch and activate the shipment a second "
        "time: the slot's tokens twice. The simulator's first find; the mover now counts "
        "such an order as stale (move_orders_stale).",
        "8ecb7ba",
        _config(SMALL_SITE),
        11,
        _stale_stage_order,
    ),
    Mutation(
        "loopback_refused",
        "A shard refused its own old runs after a slot moved to it: its inbox judged a "
        "run from the shard to itself malformed, so the loopback never applied them and "
        "they stayed in its outbox. Found by the handoff's state-machine test.",
        "9d362e4",
        _config(SMALL_SITE),
        6,
        _loopback_refused,
    ),
    Mutation(
        "router_commit_split",
        "A move's commit split across two transactions: the moves' committed state "
        "(activating at epoch + 1) written apart from the table at that epoch, so a "
        "router killed in between restarts with moves committed at an epoch its table "
        "never reached, and they wait for it forever. The design's one-transaction "
        "commit point (72cd6f7) put back as two.",
        "72cd6f7",
        _config(MANY_SLOTS, "crash_router=0.3,scale_out=0.3,scale_in=0.3,duplicate,reorder"),
        0,
        _router_commit_split,
    ),
    Mutation(
        "redirect_waits_for_newer_epoch",
        "A redirected lane waited for a table newer than its own, though its own "
        "already named the lane's owner (the redirect answered a run sent before its "
        "table changed): an epoch that may never come, and the lane's runs stay in the "
        "outbox. Found by the handoff's state-machine test.",
        "9d362e4",
        _config(MANY_SLOTS, "one_way_partition=0.3,scale_out=0.3,scale_in=0.3,delay=0.05"),
        536,
        _redirect_waits_for_newer_epoch,
    ),
    Mutation(
        "no_table_refresh_while_pending",
        "A shard restarted on a new port that its peers never found: sends to its old "
        "address neither fail nor arrive (ZeroMQ keeps them for a reconnection), and "
        "nothing made the peers ask the router for the table again.",
        "eff1e8e",
        _config(MANY_SLOTS, "crash_shard,drop=0.05,reorder=0.05"),
        1,
        _no_table_refresh_while_pending,
    ),
    Mutation(
        "no_table_refresh_while_fetching",
        "A move's target fetched the slot's shipment from the source's old port after "
        "the source restarted on another one, and the move never finished: the table was "
        "asked for again while the outbox held tokens, not while a shipment was being "
        "fetched. Found by cpn sim (seed 182 of the crawler, 60 s, at the time). "
        "Searched on a site crawled before the moves, so that no outbox holds tokens "
        "then, on two shards that scale and crash, with frame loss (a restarted shard's "
        "move report may reach the router before its heartbeat, and the fencing table "
        "still names its old port).",
        "f142ff2",
        _config(
            TINY_SITE, "crash_shard=0.5,scale_in=0.3,scale_out=0.3,drop=0.2,reorder=0.2", shards=2
        ),
        10,
        _no_table_refresh_while_fetching,
    ),
)

UNREACHED: Final[dict[str, Patches]] = {
    "ack_error_drops_done": _ack_error_drops_done,
    "lease_taken_back_despite_repeat": _lease_taken_back_despite_repeat,
}
