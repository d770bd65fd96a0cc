"""A shard in the simulated world: the production :class:`~shard.core.ShardCore` on a
simulated store, driven by the world's frames and timers.

Theory of operation: :class:`ShardActor` is the shell of a shard process, without a
socket, a clock or a file. Each call of the world (a frame delivered, a deadline come)
is one turn of the real loop (docs/shard.md, "The loop"): hand the input to the core,
fire (bounded by a count of firings instead of milliseconds), grant the parked leases,
commit the batch to the store, and only then return the replies and the core's sends.
The committed batch is turned into the token ledger's events (cluster/sim/ledger.py)
from its journal: the marking delta as the engine sees it, the runs offered to the
outbox and applied from peers, acknowledgements, and slot moves.

The store is :class:`MemoryShardStore` (what committed batches built, in memory: a crash
loses exactly the batch not committed) or, as an option, the real LMDB store in a
temporary directory (:class:`LmdbShardStore`). Both give the core what recovery gives a
real shard. A crash drops the core; a restart builds a new one from the store, on the
endpoint the network assigns.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, Protocol

from cluster.sim.ledger import LedgerEvent, Present, Recovered, batch_events
from cluster.sim.network import Delivered
from cluster.sim.world import CrashPoint, Directory, Send, Step
from nets.errors import CpnError
from nets.firing import PlacedEntry
from nets.model import Net, Place, Token
from router.slots import slot_of_token
from router.wire import REQUESTS, Error, Lease, Message, WireFormatError, decode, encode
from shard.batch import Batch
from shard.batch import Recovered as StoreRecovered
from shard.core import ShardCore, writes
from shard.link import ROUTER
from shard.link import Send as CoreSend
from shard.request_checks import RequestError
from shard.shard_setup import ShardSetup
from shard.shell.store import Durability, Store, StoreError
from shard.shell.store_log import Delta, fold_run

FIRINGS_PER_TURN_MAX: Final = 2_000  # a simulated batch ends after this many firings
CATCH_UP_EVERY_TURNS: Final = 8  # a slice of the store's log is folded this often
SLOTS_KNOWN_MAX: Final = 100_000
ROUTER_NODE: Final = "router"
_REQUEST_TYPES: Final = frozenset(REQUESTS)


def shard_node(shard_id: int) -> str:
    """The world's name of shard ``shard_id``."""
    return f"shard-{shard_id}"


@functools.lru_cache(maxsize=1_024)
def shard_id_of(node: str) -> int | None:
    """Shard ``K`` of node ``shard-K`` (None for another node)."""
    prefix, _, number = node.partition("-")
    return int(number) if prefix == "shard" and number.isdigit() else None


class SlotOf:
    """The slot of a token, remembered per (place, key): hashing a key is most of the
    cost, and a simulated run asks for the same keys over and over."""

    def __init__(self, net: Net) -> None:
        self._places = {p.name: p for p in net.places}
        self._positions = {
            p.name: -1 if p.key is None else p.colour_set.field_index(p.key) for p in net.places
        }
        self._known: dict[tuple[str, object], int] = {}

    def __call__(self, place: str, token: Token) -> int:
        position = self._positions[place]
        key = (place, None if position < 0 else token[position])
        slot = self._known.get(key)
        if slot is None:
            if len(self._known) >= SLOTS_KNOWN_MAX:
                self._known.clear()
            slot = self._known[key] = slot_of_token(self._places[place], token)
        return slot


class ShardStoreLike(Protocol):
    """What the actor needs of a shard's store (the real one's API)."""

    def open(self) -> int:
        """Open the store for a new incarnation; returns the incarnation (1, 2, ...)."""
        ...

    def recover(self, deferred: frozenset[str] = frozenset()) -> StoreRecovered:
        """What a restart reads back; the ``deferred`` places' entries come later, from
        the returned reader (docs/shard.md, "Deferred places")."""
        ...

    def committed_view(self) -> Counter[tuple[str, Token]]:
        """The committed marking as the token ledger counts it: untimed, without the
        entries of slots sealed for a move (they are in a shipment)."""
        ...

    def commit(self, batch: Batch, *, initialised: bool = False) -> None: ...

    def slot_entries(self, slot: int) -> list[PlacedEntry]: ...

    def catch_up(self) -> int:
        """Fold a slice of the store's log into its marking table (no visible change)."""
        ...

    def close(self) -> None: ...


class MemoryShardStore:
    """A shard's durable state in memory: what the committed batches built.

    As the LMDB store (schema 8, shard/shell/store_log.py), a commit appends the batch's
    marking change to a log, and :meth:`catch_up` folds the oldest records into the
    marking table; what a restart reads is the table plus the log. Each commit applies
    a batch whole (it is checked first, so a bad batch changes nothing); a crash loses
    only what was never committed, and a crash before a slice is folded (the actor's
    fault point ``store_catch_up``) loses nothing but the slice's work.
    """

    def __init__(self, net: Net) -> None:
        self._slot_of = SlotOf(net)
        self._places = {p.name: p for p in net.places}
        self.folded: Counter[PlacedEntry] = Counter()  # the marking table
        self.log: list[Counter[PlacedEntry]] = []  # one marking change per commit
        self.marking: Counter[PlacedEntry] = Counter()  # table + log: what is committed
        self.clients: dict[str, tuple[int, bytes]] = {}
        self.clock_ms = 0
        self.runs: dict[tuple[int, int], tuple[int, bytes]] = {}  # (lane, first) -> run
        self.next_seqs: dict[int, int] = {}
        self.hwms: dict[tuple[int, int], int] = {}
        self.table: bytes | None = None
        self.endpoints: tuple[str, ...] = ()
        self.phases: dict[int, bytes] = {}
        self.staged: dict[int, bytes] = {}
        self.initialised = False
        self.incarnation = 0
        self.commits = 0
        # Committed firings per transition, as the LMDB store keeps them (a restarted
        # shard reports them to the router).
        self.firings_total: Counter[str] = Counter()

    def open(self) -> int:
        self.incarnation += 1
        return self.incarnation

    def recover(self, deferred: frozenset[str] = frozenset()) -> StoreRecovered:
        marking: dict[str, list[tuple[int, Token]]] = {}
        later: dict[str, list[tuple[int, Token]]] = {}
        counts = dict.fromkeys(sorted(deferred), 0)
        # What a restart reads: the marking table with the log replayed over it.
        replayed = Counter(self.folded)
        for change_set in self.log:
            _apply(replayed, change_set)
        assert replayed == self.marking, "the table and the log lost a committed change"
        for (place, time_ms, token), count in replayed.items():
            if place not in deferred:
                marking.setdefault(place, []).extend([(time_ms, token)] * count)
                continue
            # As the LMDB store: the stored count covers every entry, the reader skips
            # the slots sealed for a move (the core takes those out of the count).
            counts[place] += count
            if self._slot_of(place, token) not in self.phases:
                later.setdefault(place, []).extend([(time_ms, token)] * count)
        return StoreRecovered(
            marking=marking,
            clock_ms=self.clock_ms,
            clients=dict(self.clients),
            initialised=self.initialised,
            runs=[(lane, first, count, e) for (lane, first), (count, e) in self.runs.items()],
            next_seqs=dict(self.next_seqs),
            hwms=dict(self.hwms),
            table=self.table,
            endpoints=self.endpoints,
            phases=dict(self.phases),
            staged=dict(self.staged),
            deferred_counts=counts,
            deferred=MemoryDeferredReader(later) if deferred else None,
            firings_total=dict(sorted(self.firings_total.items())),  # as LMDB orders them
        )

    def committed_view(self) -> Counter[tuple[str, Token]]:
        view: Counter[tuple[str, Token]] = Counter()
        for (place, _time_ms, token), count in self.marking.items():
            if not self.phases or self._slot_of(place, token) not in self.phases:
                view[(place, tuple(token))] += count
        return view

    def commit(self, batch: Batch, *, initialised: bool = False) -> None:
        change_set = _batch_change(batch, self._places)
        for entry, change in change_set.items():
            assert self.marking[entry] + change >= 0, f"the batch removes absent {entry!r}"
        for key in batch.runs_removed:
            assert key in self.runs, f"the batch deletes an outbox run it never stored: {key}"
        _apply(self.marking, change_set)
        if change_set:
            self.log.append(change_set)
        self.clients.update(batch.clients)
        self.clock_ms = batch.clock_ms
        for lane, first, count, entries in batch.runs_added:
            self.runs[(lane, first)] = (count, entries)
        for key in batch.runs_removed:
            del self.runs[key]
        self.next_seqs.update(batch.next_seqs)
        self.hwms.update(batch.hwms)
        for key in batch.hwms_removed:
            self.hwms.pop(key, None)
        if batch.table is not None:
            self.table = batch.table
        if batch.endpoints is not None:
            self.endpoints = batch.endpoints
        for slot, phase in batch.phases.items():
            _set_or_delete(self.phases, slot, phase)
        for slot, staged in batch.staged.items():
            _set_or_delete(self.staged, slot, staged)
        self.initialised = self.initialised or initialised
        self.firings_total.update(batch.firings)
        self.commits += 1

    def catch_up(self, records_max: int = 1) -> int:
        """Fold the oldest ``records_max`` log records into the table; returns how many."""
        folded, self.log = self.log[:records_max], self.log[records_max:]
        for change_set in folded:
            _apply(self.folded, change_set)
        return len(folded)

    def slot_entries(self, slot: int) -> list[PlacedEntry]:
        found: list[PlacedEntry] = []
        slot_of = self._slot_of
        for (place, time_ms, token), count in self.marking.items():
            if slot_of(place, token) == slot:
                found.extend([(place, time_ms, token)] * count)
        return found

    def close(self) -> None:
        """Nothing to release: the state is the disk."""


class MemoryDeferredReader:
    """The deferred places' entries as recovery saw them, handed out in chunks."""

    def __init__(self, entries: dict[str, list[tuple[int, Token]]]) -> None:
        self._left = [(place, entry) for place, found in entries.items() for entry in found]
        self._next = 0

    @property
    def done(self) -> bool:
        return self._next >= len(self._left)

    def read(self, entries_max: int) -> dict[str, list[tuple[int, Token]]]:
        chunk: dict[str, list[tuple[int, Token]]] = {}
        for place, entry in self._left[self._next : self._next + entries_max]:
            chunk.setdefault(place, []).append(entry)
        self._next = min(len(self._left), self._next + entries_max)
        return chunk

    def close(self) -> None:
        self._next = len(self._left)


class LmdbShardStore:
    """The real LMDB store of shard/shell/store.py under ``data_dir`` (the option that
    runs a simulation on real files): each :meth:`open` is a new incarnation."""

    def __init__(self, net: Net, data_dir: Path, *, shard_id: int, shard_count: int) -> None:
        self._net = net
        self._dir = data_dir
        self._shard_id = shard_id
        self._shard_count = shard_count
        self._store: Store | None = None

    def open(self) -> int:
        assert self._store is None, "opened twice"
        self._store = Store(
            self._dir,
            net=self._net,
            durability=Durability.PROCESS,
            shard_id=self._shard_id,
            shard_count=self._shard_count,
        )
        return self._store.incarnation

    def _opened(self) -> Store:
        assert self._store is not None, "the store is closed"
        return self._store

    def recover(self, deferred: frozenset[str] = frozenset()) -> StoreRecovered:
        return self._opened().recover(deferred)

    def committed_view(self) -> Counter[tuple[str, Token]]:
        store = self._opened()
        sealed = frozenset(store.recover().phases)
        places = {p.name: p for p in self._net.places}
        view: Counter[tuple[str, Token]] = Counter()
        for place, _time_ms, token in store.entries():
            if not sealed or slot_of_token(places[place], token) not in sealed:
                view[(place, tuple(token))] += 1
        return view

    def commit(self, batch: Batch, *, initialised: bool = False) -> None:
        self._opened().commit(batch, initialised=initialised)

    def slot_entries(self, slot: int) -> list[PlacedEntry]:
        return self._opened().slot_entries(slot)

    def catch_up(self) -> int:
        # Every turn (the real loop waits for a long log): the simulation exercises
        # folding, and recovery from every mix of table and log.
        return self._opened().catch_up()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _set_or_delete(records: dict[int, bytes], slot: int, record: bytes | None) -> None:
    if record is None:
        records.pop(slot, None)
    else:
        records[slot] = record


class FiringCount:
    """The simulator's firing budget: a number of firings, not milliseconds."""

    def __init__(self, firings_max: int, per_check: int) -> None:
        self._checks_left = max(1, firings_max // per_check)

    def exhausted(self) -> bool:
        self._checks_left -= 1
        return self._checks_left <= 0


class ShardActor:
    """One shard node of the simulated cluster (see the module docstring).

    Args:
        node: the node's name (``shard-K``).
        setup: the shard's net and identity (its endpoint and the router's are filled
            in at each start).
        store: the shard's durable state, kept across crashes.
        fault_rate: the chance that the shard dies at a named fault point it passes
            (``shard-ship``, ``shard-sealed``...), as ``CPN_FAULT_POINTS`` would kill
            it: each point at most once per node and run (as a real one fires once per
            data directory), and never from ``faults_end_ms`` on (the heal phase).
        rng: the stream of those draws and of the down times.
        store_crash_rate: the chance that the shard dies at its store's crash point,
            ``store_catch_up`` (a slice of the batch log folded into the marking table:
            the slice is lost, nothing committed is), each time it passes it before
            ``faults_end_ms``; ``store_rng`` is the stream of those draws.
    """

    def __init__(
        self,
        node: str,
        setup: ShardSetup,
        store: ShardStoreLike,
        *,
        rng: random.Random,
        fault_rate: float = 0.0,
        down_ms_max: int = 2_000,
        faults_end_ms: int = 0,
        store_crash_rate: float = 0.0,
        store_rng: random.Random | None = None,
    ) -> None:
        self.node = node
        # The store's crash point draws from its own stream, so that switching it on
        # leaves every other draw of a seed as it was.
        self._store_crash_rate = store_crash_rate
        self._store_rng = store_rng or random.Random(0)
        self.setup = setup
        self._places = {p.name: p for p in setup.net.places}
        self._deferred_places = setup.deferred_places
        self.store = store
        self._rng = rng
        self._fault_rate = fault_rate
        self._down_ms_max = down_ms_max
        self._faults_end_ms = faults_end_ms
        self._now_ms = 0  # the time of the call in progress (fault points read it)
        self._committed: list[LedgerEvent] = []  # ledger events committed in this call
        self.core: ShardCore | None = None
        self.router_endpoint = ""  # pinned: learnt at the first start
        self.endpoint = ""
        self.firings = 0
        self.handoffs = 0  # tokens applied from other shards' outboxes, committed
        self.turns = 0
        self.fault_points_hit: Counter[str] = Counter()
        self._run_counts: dict[tuple[int, int], int] = {}  # outbox runs: (lane, first) -> n

    # -- the world's calls -----------------------------------------------------------------

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        return self._guarded(now_ms, lambda: self._start(now_ms, endpoint, directory))

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        return self._guarded(now_ms, lambda: self._receive(now_ms, frame))

    def wake(self, now_ms: int) -> Step:
        return self._guarded(now_ms, lambda: self._turn(now_ms, []))

    def _guarded(self, now_ms: int, call: Callable[[], Step]) -> Step:
        """Run one call; at a fault point, keep the ledger of what it committed."""
        self._now_ms = now_ms
        self._committed = []
        try:
            return call()
        except CrashPoint as crash:
            raise CrashPoint(crash.point, crash.down_ms, tuple(self._committed)) from crash

    def _start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        self.router_endpoint = self.router_endpoint or (directory(ROUTER_NODE) or "")
        self.endpoint = endpoint
        incarnation = self.store.open()
        recovered = self.store.recover(self._deferred_places)
        self._run_counts = {(lane, first): count for lane, first, count, _e in recovered.runs}
        setup = dataclasses.replace(self.setup, endpoint=endpoint, router=self.router_endpoint)
        core = ShardCore(
            setup,
            recovered,
            incarnation=incarnation,
            now_ms=now_ms,
            slots=self.store,
            fault=self._fault_point,
        )
        self.core = core
        # What the store gave back (a sealed slot's tokens are in the store but not the
        # engine: the ledger counts them in the shipment), deferred places included
        # though the engine loads them later. A new store gave nothing: the initial
        # marking comes in the first batch.
        marking = _listed(self.store.committed_view()) if recovered.initialised else ()
        self._committed.append(Recovered(self.node, marking))
        if not core.initialised:
            batch = core.take_batch()
            self.store.commit(batch, initialised=True)
            core.committed(now_ms)
            self._committed += self._events(batch, via="initial")
        return self._turn(now_ms, [])

    def _receive(self, now_ms: int, frame: Delivered) -> Step:
        core = self._core()
        try:
            envelope = decode(frame.payload)
        except WireFormatError as exc:
            core.counters["frames_malformed"] += 1
            refusal = Error("malformed_frame", str(exc))
            return self._turn(now_ms, [(frame.reply_to, refusal, exc.message_id)])
        message = envelope.message
        if type(message) not in _REQUEST_TYPES:
            source = ROUTER if frame.src == ROUTER_NODE else shard_id_of(frame.src)
            if source is None:
                core.counters["peer_replies_unexpected"] += 1
            else:
                core.peer_message(now_ms, source, envelope)
            return self._turn(now_ms, [])
        replies: list[tuple[str, Message, int]] = []
        try:
            answer = core.handle(now_ms, envelope)
            if answer is None:
                assert isinstance(message, Lease)
                core.park(now_ms, frame.reply_to.encode(), message, envelope.message_id)
            else:
                replies.append((frame.reply_to, answer, envelope.message_id))
        except RequestError as exc:
            core.counters[f"errors_{exc.code}"] += 1
            replies.append((frame.reply_to, Error(exc.code, str(exc)), envelope.message_id))
        except CpnError as exc:
            core.counters["errors_request"] += 1
            replies.append((frame.reply_to, Error("bad_request", str(exc)), envelope.message_id))
        return self._turn(now_ms, replies)

    def next_deadline_ms(self) -> int | None:
        return None if self.core is None else self.core.next_deadline_ms()

    def crash(self) -> None:
        if self.core is not None:
            self.core.deferred.close()
        self.core = None
        self.store.close()

    def present(self) -> Iterable[LedgerEvent]:
        # Every step ends committed: the store holds what the node holds (with the
        # deferred places whether loaded yet or not).
        return [
            Present(self.node, place, value, count)
            for place, value, count in _listed(self.store.committed_view())
        ]

    # -- one turn of the loop --------------------------------------------------------------

    def _turn(self, now_ms: int, replies: list[tuple[str, Message, int]]) -> Step:
        core = self._core()
        self.turns += 1
        core.loop_back()
        self.firings += core.fire(now_ms, FiringCount(FIRINGS_PER_TURN_MAX, 16))
        replies += [
            (peer.decode(), reply, message_id)
            for peer, reply, message_id in core.answer_parked(now_ms)
        ]
        batch = core.take_batch()
        committed = False
        if not batch.is_empty():
            try:
                self.store.commit(batch)
            except StoreError as exc:
                reason = f"the shard's store failed and refuses writes: {exc}"
                core = self.core = core.after_failed_commit(self.store.recover(), reason, now_ms)
                replies = [
                    (to, Error("store_unavailable", reason), mid)
                    if not isinstance(reply, Error) and writes(reply)
                    else (to, reply, mid)
                    for to, reply, mid in replies
                ]
            else:
                core.committed(now_ms)
                committed = True
                self._committed += self._events(batch, via="batch")
        sends = [
            Send(to, encode(reply, message_id=mid, incarnation=core.incarnation))
            for to, reply, mid in replies
        ]
        # In the simulator a reply always leaves (the network may lose it later).
        core.replies_sent([((to.encode(), reply, mid), True) for to, reply, mid in replies])
        for send in core.sends(now_ms):
            endpoint = self._endpoint_of(send, core)
            if endpoint:
                sends.append(Send(endpoint, send.frame))
            else:
                core.send_failed(send)
        core.load_deferred(now_ms)  # one chunk a turn, as the real loop does
        # A slice of the store's log every few turns, as the real loop folds one when
        # its log is long; a crash there (the slice's transaction dies) loses nothing
        # committed, which recovery checks (MemoryShardStore.recover).
        if self.turns % CATCH_UP_EVERY_TURNS == 0:
            if self._store_rng.random() < self._store_crash_rate and now_ms < self._faults_end_ms:
                self.fault_points_hit["store_catch_up"] += 1
                raise CrashPoint("store_catch_up", self._store_rng.randint(10, self._down_ms_max))
            self.store.catch_up()
        return Step(committed, tuple(self._committed), tuple(sends))

    def _endpoint_of(self, send: CoreSend, core: ShardCore) -> str:
        if send.target == ROUTER:
            return self.router_endpoint
        endpoints = core.peer_endpoints()
        return endpoints[send.target] if 0 <= send.target < len(endpoints) else ""

    def _core(self) -> ShardCore:
        assert self.core is not None, f"{self.node} is down"
        return self.core

    def _fault_point(self, name: str) -> None:
        if not self._fault_rate or self._now_ms >= self._faults_end_ms:
            return
        if name in self.fault_points_hit or self._rng.random() >= self._fault_rate:
            return
        self.fault_points_hit[name] += 1
        raise CrashPoint(name, self._rng.randint(10, self._down_ms_max))

    # -- the ledger ------------------------------------------------------------------------

    def _events(self, batch: Batch, *, via: str) -> list[LedgerEvent]:
        """The ledger's view of a committed batch (module docstring)."""
        marking: Counter[tuple[str, Token]] = Counter()
        for (place, _time_ms, token), change in _batch_change(batch, self._places).items():
            marking[(place, tuple(token))] += change
        moves: dict[str, list[tuple[int, str, Token]]] = {
            "sealed": [],
            "unsealed": [],
            "activated": [],
        }
        for kind, move_id, entries in batch.moved:
            for place, _time_ms, token in entries:
                if kind == "forgotten":
                    # Deleted from the store, long gone from the engine: no change here.
                    marking[(place, tuple(token))] += 1
                    continue
                if kind == "sealed":
                    marking[(place, tuple(token))] -= 1  # left the engine, not the store
                elif kind == "unsealed":
                    marking[(place, tuple(token))] += 1  # back in the engine
                moves[kind].append((move_id, place, tuple(token)))
        exported = [
            (lane, first + i, place, tuple(token))
            for lane, first, entries in batch.offered
            for i, (place, _time_ms, token) in enumerate(entries)
        ]
        me = self.node
        applied = [
            (me if sender == self.setup.shard_id else shard_node(sender), lane, first + i, place,
             tuple(token))
            for sender, lane, first, entries in batch.received
            for i, (place, _time_ms, token) in enumerate(entries)
        ]  # fmt: skip
        self.handoffs += sum(
            len(entries)
            for sender, _lane, _first, entries in batch.received
            if sender != self.setup.shard_id
        )
        for lane, first, count, _entries in batch.runs_added:
            self._run_counts[(lane, first)] = count
        acked = []
        for lane, first in batch.runs_removed:
            count = self._run_counts.pop((lane, first))
            acked.append((lane, first + count - 1))
        return batch_events(
            me,
            marking=list(marking.items()),
            exported=exported,
            applied=applied,
            acked=sorted(acked),
            sealed=moves["sealed"],
            unsealed=moves["unsealed"],
            activated=moves["activated"],
            via=via,
        )


def _batch_change(batch: Batch, places: dict[str, Place]) -> Counter[PlacedEntry]:
    """A batch's whole marking change: its delta and the handoff runs it logged as they
    arrived (decoded as the LMDB store decodes them)."""
    change_set: Counter[PlacedEntry] = Counter({e: n for e, n in batch.marking.items() if n})
    arrived: Delta = {}
    for run in batch.arrived:
        fold_run(run.skip, run.blob, arrived, places)
    for place, changes in arrived.items():
        change_set.update({(place, time, token): n for (time, token), n in changes.items()})
    return change_set


def _apply(marking: Counter[PlacedEntry], change_set: Counter[PlacedEntry]) -> None:
    for entry, change in change_set.items():
        left = marking[entry] + change
        if left:
            marking[entry] = left
        else:
            del marking[entry]


def _listed(view: Counter[tuple[str, Token]]) -> tuple[tuple[str, Token, int], ...]:
    return tuple((place, value, n) for (place, value), n in view.items() if n)
