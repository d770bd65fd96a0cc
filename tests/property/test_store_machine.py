"""The LMDB-backed shard against an in-memory engine, on the same random operations.

A Hypothesis state machine drives a real :class:`shard.shell.runtime.ShardRuntime` (its
core, the core's batch and its :class:`shard.shell.store.Store` under a temporary
directory) in-process, with
a virtual clock in place of the system clock, and a plain in-memory :class:`Engine`
(the model) side by side. Puts, leases and completions go through ``ShardCore.handle``
exactly as decoded requests would; the model applies the same operations by the rules
of docs/shard.md, "Requests": a put adds tokens at ``now + delay_ms``, a lease moves
the first available tokens of a work queue into its held place and starts their
timers, a completion swaps the held tokens for its results, a repeated request is
answered from the client table. Firing happens at an advancing virtual ``now``; the
shard records its steps into its batch through its engine hook.

"Catch up" folds part of the store's batch log into its marking table (schema 8), so
recovery reads every mix of table and log. "Crash and recover" closes the store without
committing the pending batch (what a SIGKILL leaves on disk) and opens a new
:class:`Shard` on the same directory: a new incarnation whose engine is rebuilt by
``Store.recover`` and ``Engine.restore``. The model then rolls back to its marking
(re-added token by token, not restored) and client table as of the last commit, or, if
nothing was pending, simply carries on (so a restored engine must keep agreeing with one
that never stopped).

Invariants after every step: the shard's engine and the model hold the same marking at
the same ``now``; what the store holds (marking, clock, client table) is exactly what
the model held at the last commit; every reopen is the next incarnation.
"""

import dataclasses
import gc
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import shard.shell.runtime
from nets import Engine, Net, Place, Step, Transition, variables
from nets.clock import VirtualClock
from nets.codec import token_from_fields
from nets.errors import TokenError
from nets.model import Token
from router.wire import (
    Complete,
    Completed,
    Envelope,
    Lease,
    Leased,
    Message,
    Put,
    PutAck,
    decode,
    encode,
)
from shard.core import FIRINGS_PER_BATCH_MAX
from shard.leases import WorkQueue, with_work_queues
from shard.reading import token_counts
from shard.request_checks import RequestError
from shard.shell.runtime import ShardConfig, ShardRuntime
from shard.shell.store import Durability

EXAMPLES_MAX = int(os.environ.get("CPN_STORE_MACHINE_EXAMPLES", "60"))
STEPS_MAX = 50
CLOCK_START_MS = 1_000

# -- the net ------------------------------------------------------------------------------


class Domain(NamedTuple):
    name: str
    path: tuple[str, ...]  # a tuple-typed field: must survive LMDB as a tuple


class Proxy(NamedTuple):
    name: str


class Job(NamedTuple):
    domain: str
    n: int


class Result(NamedTuple):
    domain: str
    n: int
    ok: bool


DOMAINS = ("a.example", "b.example", "c.example")
DISPATCH_DELAY_MS = 20
RETRY_DELAY_MS = 15


def _job(dom: Domain) -> Job:
    return Job(dom.name, len(dom.path))


def _proxy_rest_ms(dom: Domain) -> int:
    return 10 + 5 * len(dom.path)


def _retried(r: Result) -> Domain:
    return Domain(r.domain, ("retry", str(r.n)))


def _failed(r: Result) -> bool:
    return not r.ok


def _succeeded(r: Result) -> bool:
    return r.ok


def _build_net() -> Net:
    dom, d, p, r = variables("dom d p r")
    domains = Place("domains", Domain, key="name", initial=[Domain(DOMAINS[0], ("/",))])
    proxies = Place("proxies", Proxy, pool=True, initial=[Proxy("p1"), Proxy("p2")])
    jobs = Place("jobs", Job, key="domain", work_queue=True, results=("results",))
    results = Place("results", Result, key="domain")
    dispatch = Transition(
        "dispatch",
        consume=[domains(dom, name=d), proxies(p)],
        produce=[
            jobs.produce(_job, delay=DISPATCH_DELAY_MS),
            proxies.produce(p, delay=_proxy_rest_ms),
        ],
    )
    # Nothing reads `finished`: a shard loads its tokens after it starts firing.
    finished = Place("finished", Result, key="domain")
    retry = Transition(
        "retry",
        consume=[results(r, domain=d)],
        produce=[domains.produce(_retried, delay=RETRY_DELAY_MS)],
        guard=_failed,
    )
    finish = Transition(
        "finish", consume=[results(r, domain=d)], produce=[finished.produce(r)], guard=_succeeded
    )
    return Net(
        "store_machine",
        places=[domains, proxies, jobs, results, finished],
        transitions=[dispatch, retry, finish],
    )


NET = _build_net()
NET_PATH = f"{__name__}:NET"  # what the shard loads, as `cpn shard --net` would


class _VirtualSystemClock:
    """Stands in for ``shard.shell.runtime.SystemClock``: the machine's virtual time, floored."""

    source: ClassVar[VirtualClock] = VirtualClock(CLOCK_START_MS)

    def __init__(self, floor_ms: int = 0) -> None:
        self._floor_ms = floor_ms

    def now_ms(self) -> int:
        return max(self._floor_ms, self.source.now_ms())


class _Unbounded:
    """A firing budget that never runs out: the batch ends when nothing is enabled."""

    def exhausted(self) -> bool:
        return False


# -- helpers ------------------------------------------------------------------------------

Normal = dict[str, list[tuple[int, str, tuple[Any, ...]]]]


def _normal(marking: Mapping[str, Iterable[tuple[int, Token]]]) -> Normal:
    """A marking as comparable data: non-empty places, sorted (time, colour, fields)."""
    out: Normal = {}
    for place, entries in marking.items():
        items = sorted((t, type(tok).__name__, tuple(tok)) for t, tok in entries)
        if items:
            out[place] = items
    return out


def _normal_step(step: Step) -> tuple[Any, ...]:
    def placed(entries: Iterable[tuple[str, int, Token]]) -> list[tuple[Any, ...]]:
        return sorted((p, t, tuple(tok)) for p, t, tok in entries)

    return (step.transition, step.time, placed(step.consumed), placed(step.produced))


class _Refused(NamedTuple):
    """A request answered with an error reply (``RequestError.code``)."""

    code: str


Outcome = Message | _Refused

_fields_of_place: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "domains": st.tuples(
        st.sampled_from(DOMAINS),
        st.lists(st.sampled_from(["/", "x", "y/z"]), max_size=2).map(tuple),
    ),
    "proxies": st.tuples(st.sampled_from(["p1", "p2", "p3"])),
    "jobs": st.tuples(st.sampled_from(DOMAINS), st.integers(0, 3)),
    "results": st.tuples(st.sampled_from(DOMAINS), st.integers(0, 3), st.booleans()),
    "finished": st.tuples(st.sampled_from(DOMAINS), st.integers(0, 3), st.booleans()),
}
_puts = st.sampled_from(
    ["domains", "proxies", "jobs", "jobs", "results", "finished", "finished"]
).flatmap(
    lambda place: st.tuples(
        st.just(place),
        st.lists(_fields_of_place[place], min_size=1, max_size=3).map(tuple),
    )
)
_bad_puts = st.sampled_from(
    [
        ("nowhere", (("a.example", 1),)),  # unknown place
        ("proxies", (("a.example", 1),)),  # a Job's fields in a Proxy place
        ("domains", (("a.example", ["/"]),)),  # a list where a tuple is declared
        ("jobs", (("a.example", True),)),  # bool is not int
        ("jobs__timer", (("1.1", 0, "a.example"),)),  # the lease machinery's own place
    ]
)
CLIENTS = ("c1", "c2")


class StoreMachine(RuleBasedStateMachine):
    """One data directory, one shard at a time, one in-memory model."""

    base_dir: ClassVar[Path]  # set by the test (under its tmp_path)

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base_dir))
        self.clock = _VirtualSystemClock.source = VirtualClock(CLOCK_START_MS)
        self.model_net, queues = with_work_queues(NET)
        self.queue: WorkQueue = queues["jobs"]
        self.watch = list(queues)
        self.shard: ShardRuntime | None = None
        # Client side (never rolls back): the next sequence number, the last request.
        self.next_seq = dict.fromkeys(CLIENTS, 1)
        self.last_sent: dict[str, Put | Lease | Complete] = {}
        self.lease_ids: list[str] = []
        # The model of the shard (rolls back to the last commit on a crash).
        self.model = Engine(self.model_net, initial_marking=False, watch=self.watch)
        self.clients: dict[str, tuple[int, bytes]] = {}
        self.leases: dict[str, list[tuple[str, int, Token]]] = {}
        self.pending = False  # something happened since the last commit
        self.committed: dict[str, list[tuple[int, Token]]] = {}
        self.committed_clients: dict[str, tuple[int, bytes]] = {}
        self.committed_leases: dict[str, list[tuple[str, int, Token]]] = {}
        self.committed_clock_ms = 0
        self.shard_steps: list[Step] = []

    # -- plumbing -----------------------------------------------------------------------

    def _open(self) -> ShardRuntime:
        config = ShardConfig(NET_PATH, self.dir, durability=Durability.PROCESS)
        opened = ShardRuntime(config)
        opened.core.engine.hooks.append(self.shard_steps.append)
        return opened

    @property
    def incarnation(self) -> int:
        assert self.shard is not None
        return self.shard.core.incarnation

    def _snapshot(self) -> None:
        self.committed = self.model.marking()
        self.committed_clients = dict(self.clients)
        self.committed_leases = {k: list(v) for k, v in self.leases.items()}
        self.committed_clock_ms = self.model.now

    def _send(self, message: Message) -> Outcome:
        assert self.shard is not None
        try:
            return self.shard.core.handle(self.shard.clock.now_ms(), Envelope(message, 0, 0))
        except RequestError as exc:
            return _Refused(exc.code)

    def _remember(self, client: str, seq: int, reply: Message) -> Message:
        self.clients[client] = (seq, encode(reply, message_id=0, incarnation=self.incarnation))
        self.pending = True
        return reply

    def _request(self, message: Put | Lease | Complete) -> None:
        """Send ``message`` to the shard and check the reply against the model's.

        As in the shard's loop, the engine first moves to the current time.
        """
        assert self.shard is not None
        self.model.advance(self.clock.now_ms())
        actual = self._send(message)
        expected = self._model_request(message, actual)
        note(f"{message} -> {actual}")
        assert actual == expected, f"{message}: shard replied {actual}, model expects {expected}"

    # -- the model ----------------------------------------------------------------------

    def _model_request(self, message: Put | Lease | Complete, actual: Outcome) -> Outcome:
        known = self.clients.get(message.client_id)
        if known is not None and message.request_seq <= known[0]:
            assert message.request_seq == known[0], "the client only ever repeats its last"
            reply = decode(known[1]).message
            if isinstance(reply, PutAck | Completed):
                reply = dataclasses.replace(reply, duplicate=True)
            elif isinstance(reply, Leased) and reply.entries and not self._live(reply.lease_id):
                reply = dataclasses.replace(reply, entries=())  # its tokens may be leased anew
            return reply
        if isinstance(message, Put):
            return self._model_put(message)
        if isinstance(message, Lease):
            return self._model_lease(message, actual)
        return self._model_complete(message)

    def _tokens(self, place: str, items: Iterable[tuple[Any, ...]]) -> list[Token] | _Refused:
        if not self.model_net.has_place(place):
            return _Refused("unknown_place")
        if place in (self.queue.held.name, self.queue.timer.name):
            return _Refused("reserved_place")
        colour = self.model_net.place(place).colour_set
        try:
            return [token_from_fields(colour, fields, where=place) for fields in items]
        except TokenError:
            return _Refused("wrong_colour")

    def _model_put(self, put: Put) -> Outcome:
        tokens = self._tokens(put.place, put.tokens)
        if isinstance(tokens, _Refused):
            return tokens
        for token in tokens:
            self.model.add(put.place, token, time=self.model.now + put.delay_ms)
        reply = PutAck(put.request_seq, len(tokens), False)
        return self._remember(put.client_id, put.request_seq, reply)

    def _model_lease(self, lease: Lease, actual: Outcome) -> Outcome:
        if lease.place != self.queue.queue.name:
            return _Refused("not_a_work_queue")
        assert isinstance(actual, Leased), f"lease refused: {actual}"
        lease_id = actual.lease_id
        assert lease_id not in self.lease_ids, f"lease id {lease_id} given out twice"
        assert lease_id.startswith(f"0.{self.incarnation}."), "ids carry shard and incarnation"
        self.lease_ids.append(lease_id)
        now, expires = self.model.now, self.model.now + lease.lease_ms
        taken = self.model.available(lease.place, lease.max_tokens)
        held_entries = []
        for index, (time_ms, token) in enumerate(taken):
            self.model.remove(lease.place, token, time=time_ms)
            held = self.queue.held_token(lease_id, index, token)
            self.model.add(self.queue.held.name, held, time=now)
            self.model.add(
                self.queue.timer.name, self.queue.timer_token(lease_id, index, token), time=expires
            )
            held_entries.append((self.queue.held.name, now, held))
        if held_entries:
            self.leases[lease_id] = held_entries
        entries = tuple((t, tuple(tok)) for t, tok in taken)
        reply = Leased(lease.request_seq, lease_id, expires, entries)
        return self._remember(lease.client_id, lease.request_seq, reply)

    def _live(self, lease_id: str) -> bool:
        held = self.leases.get(lease_id)
        return held is not None and all(self.model.holds(p, tok, time=t) for p, t, tok in held)

    def _model_complete(self, complete: Complete) -> Outcome:
        held = self.leases.get(complete.lease_id)
        if held is None or not all(self.model.holds(p, tok, time=t) for p, t, tok in held):
            self.leases.pop(complete.lease_id, None)
            return _Refused("lease_expired")
        results: list[tuple[str, Token]] = []
        for place, fields in complete.results:
            tokens = self._tokens(place, [fields])
            if isinstance(tokens, _Refused):
                return tokens
            if place not in (self.queue.queue.results or ()):
                return _Refused("wrong_place")
            results += [(place, token) for token in tokens]
        for place, time_ms, token in held:
            self.model.remove(place, token, time=time_ms)
        for place, token in results:
            self.model.add(place, token, time=self.model.now)
        del self.leases[complete.lease_id]
        reply = Completed(complete.request_seq, complete.lease_id, False)
        return self._remember(complete.client_id, complete.request_seq, reply)

    def _next(self, client: str) -> int:
        seq = self.next_seq[client]
        self.next_seq[client] = seq + 1
        return seq

    # -- rules --------------------------------------------------------------------------

    @initialize()
    def open_fresh_store(self) -> None:
        self.shard = self._open()
        assert self.shard.core.incarnation == 1
        self.model.advance(self.clock.now_ms())
        for place in self.model_net.places:
            for token in place.initial:
                self.model.add(place.name, token)
        self._snapshot()

    @rule(client=st.sampled_from(CLIENTS), put=_puts, delay_ms=st.sampled_from([0, 0, 5, 40]))
    def put(self, client: str, put: tuple[str, tuple[Any, ...]], delay_ms: int) -> None:
        place, tokens = put
        message = Put(client, self._next(client), place, tokens, delay_ms)
        self.last_sent[client] = message
        self._request(message)

    @rule(
        client=st.sampled_from(CLIENTS),
        jobs=st.lists(_fields_of_place["jobs"], min_size=1, max_size=4).map(tuple),
    )
    def put_jobs(self, client: str, jobs: tuple[Any, ...]) -> None:
        """Work for the leases (a put that is available at once)."""
        message = Put(client, self._next(client), "jobs", jobs, 0)
        self.last_sent[client] = message
        self._request(message)

    @rule(client=st.sampled_from(CLIENTS), put=_bad_puts)
    def put_refused(self, client: str, put: tuple[str, tuple[Any, ...]]) -> None:
        place, tokens = put
        message = Put(client, self._next(client), place, tokens, 0)
        self.last_sent[client] = message
        self._request(message)

    @rule(
        client=st.sampled_from(CLIENTS),
        place=st.sampled_from(["jobs", "jobs", "jobs", "proxies"]),
        max_tokens=st.integers(1, 3),
        lease_ms=st.sampled_from([5, 50, 500]),
    )
    def lease(self, client: str, place: str, max_tokens: int, lease_ms: int) -> None:
        message = Lease(client, self._next(client), place, max_tokens, lease_ms)
        self.last_sent[client] = message
        self._request(message)

    def _complete(self, client: str, lease_id: str, data: st.DataObject) -> None:
        held = self.leases.get(lease_id, [])
        outcome = data.draw(
            st.sampled_from(["results", "results", "none", "wrong", "reserved", "undeclared"])
        )
        results: list[tuple[str, tuple[Any, ...]]] = []
        for _place, _time, token in held:
            domain, n = self.queue.original(token)
            if outcome == "results":
                ok = data.draw(st.booleans(), label="ok")
                results.append(("results", (domain, n, ok)))
        if outcome == "wrong":
            results.append(("results", ("a.example", "not an int", True)))
        elif outcome == "reserved":
            results.append(("jobs__held", ("1.1", 0, "a.example", 0)))
        elif outcome == "undeclared":
            results.append(("finished", ("a.example", 0, True)))  # not in jobs' results
        message = Complete(client, self._next(client), lease_id, tuple(results))
        self.last_sent[client] = message
        self._request(message)

    @rule(client=st.sampled_from(CLIENTS), max_tokens=st.integers(1, 3), data=st.data())
    def lease_and_complete(self, client: str, max_tokens: int, data: st.DataObject) -> None:
        """A quick worker: leases and completes before anything else happens."""
        lease = Lease(client, self._next(client), "jobs", max_tokens, 500)
        self.last_sent[client] = lease
        self._request(lease)
        if self.lease_ids and self.lease_ids[-1] in self.leases:
            self._complete(client, self.lease_ids[-1], data)

    @precondition(lambda self: bool(self.leases))
    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def complete(self, client: str, data: st.DataObject) -> None:
        """Complete a lease the model still knows (it may have expired meanwhile)."""
        lease_id = data.draw(st.sampled_from(sorted(self.leases)), label="lease_id")
        self._complete(client, lease_id, data)

    @precondition(lambda self: bool(self.lease_ids))
    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def complete_any(self, client: str, data: st.DataObject) -> None:
        """Complete any lease ever granted (completed, expired, lost in a crash) or none."""
        lease_id = data.draw(st.sampled_from([*self.lease_ids, "0.404"]), label="lease_id")
        self._complete(client, lease_id, data)

    @precondition(lambda self: bool(self.last_sent))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A client that missed its reply sends the same request (same sequence) again."""
        client = data.draw(st.sampled_from(sorted(self.last_sent)), label="client")
        self._request(self.last_sent[client])

    @rule(dt_ms=st.sampled_from([1, 5, 10, 25, 60]))
    def wait(self, dt_ms: int) -> None:
        """Time passes; requests see it, firing waits for the next ``fire``."""
        self.clock.advance_to(self.clock.now_ms() + dt_ms)

    @rule(dt_ms=st.sampled_from([0, 1, 5, 10, 25, 60, 200]))
    def fire(self, dt_ms: int) -> None:
        assert self.shard is not None
        self.clock.advance_to(self.clock.now_ms() + dt_ms)
        now = self.clock.now_ms()
        self.shard_steps.clear()
        fired = self.shard.core.fire(now, _Unbounded())
        expected: list[Step] = []
        while len(expected) < FIRINGS_PER_BATCH_MAX and (step := self.model.fire(now)) is not None:
            expected.append(step)
        assert fired == len(self.shard_steps)
        assert [_normal_step(s) for s in self.shard_steps] == [_normal_step(s) for s in expected]
        self.pending = self.pending or bool(expected)

    @precondition(lambda self: self.shard is not None and self.shard.core.deferred.active)
    @rule(entries_max=st.sampled_from([1, 2, 5, 1_000]))
    def load_deferred(self, entries_max: int) -> None:
        """One chunk of the places the shard loads after it starts (as its loop does)."""
        assert self.shard is not None
        core = self.shard.core
        loaded = core.deferred.step(core.engine, self.clock.now_ms(), entries_max)
        event(f"deferred load: {min(loaded, 2)} or more entries in a step")

    @rule(fold=st.booleans())
    def commit(self, fold: bool) -> None:
        """Commit the batch; with ``fold`` (a batch that answers nothing, in the loop),
        the log's oldest records are folded in the same transaction when it is long."""
        assert self.shard is not None
        folds_before = self.shard.store.statistics().catch_ups
        assert self.shard.commit(fold=fold), self.shard.read_only_reason
        if self.shard.store.statistics().catch_ups > folds_before:
            event("commit: folded the log's oldest records in its transaction")
        if self.pending:
            self._snapshot()
        self.pending = False

    @precondition(lambda self: self.shard is not None and self.shard.store.log_records > 0)
    @rule(entries_max=st.sampled_from([1, 3, 10, 1 << 30]))
    def catch_up(self, entries_max: int) -> None:
        """Fold the oldest records of the store's batch log into its marking table (the
        loop does so when the log is long): nothing anyone reads may change."""
        assert self.shard is not None
        folded = self.shard.store.catch_up(entries_max)
        event(f"catch-up: {'all' if not self.shard.store.log_records else 'part'} of the log")
        assert folded > 0

    @rule(downtime_ms=st.sampled_from([0, 0, 7, 50]), chunks=st.sampled_from([0, 0, 1, 3, 100]))
    def crash_and_recover(self, downtime_ms: int, chunks: int) -> None:
        """Close the store without committing the batch (all a SIGKILL leaves), reopen,
        and load ``chunks`` chunks of 2 entries of the deferred place (more may follow)."""
        assert self.shard is not None
        before = self.shard.core.incarnation
        self.shard.close()
        self.shard = None
        self.clock.advance_to(self.clock.now_ms() + downtime_ms)
        self.shard = self._open()
        assert self.shard.core.incarnation == before + 1, "each start is a new incarnation"
        if self.pending:
            self.model = Engine(self.model_net, initial_marking=False, watch=self.watch)
            self.model.advance(self.clock.now_ms())
            # Token by token through add(), not restore(): the shard uses restore().
            for place, entries in self.committed.items():
                for time_ms, token in entries:
                    self.model.add(place, token, time=time_ms)
            self.clients = dict(self.committed_clients)
            self.leases = {k: list(v) for k, v in self.committed_leases.items()}
        else:
            self.model.advance(self.clock.now_ms())
        self.pending = False
        for _chunk in range(chunks):
            self.shard.core.deferred.step(self.shard.core.engine, self.clock.now_ms(), 2)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def shard_engine_agrees_with_the_model(self) -> None:
        if self.shard is None:
            return
        core = self.shard.core
        assert core.engine.now == self.model.now
        assert core.deferred_places == {"finished"}
        actual, expected = core.engine.marking(), self.model.marking()
        if core.deferred.active:
            # Still loading: what is loaded is part of the place, and counts are whole.
            loaded = Counter(_normal(actual).get("finished", []))
            assert not loaded - Counter(_normal(expected).get("finished", []))
            actual["finished"] = expected["finished"] = []
        assert _normal(actual) == _normal(expected)
        assert token_counts(core.net, core.engine, core.deferred) == {
            p: len(e) for p, e in self.model.marking().items()
        }
        assert core.client_table.clients == self.clients

    @invariant()
    def store_holds_the_last_commit(self) -> None:
        if self.shard is None:
            return
        recovered = self.shard.store.recover()
        assert recovered.initialised
        assert _normal(recovered.marking) == _normal(self.committed)
        assert dict(recovered.clients) == self.committed_clients
        assert recovered.clock_ms == self.committed_clock_ms
        # Left out and read afterwards, in chunks, the deferred place is all there too.
        partial = self.shard.store.recover(frozenset({"finished"}))
        assert partial.deferred_counts == {"finished": len(self.committed["finished"])}
        marking = {p: list(e) for p, e in partial.marking.items()}
        assert marking["finished"] == []
        while partial.deferred is not None and not partial.deferred.done:
            for place, entries in partial.deferred.read(2).items():
                marking[place] += entries
        assert _normal(marking) == _normal(self.committed)

    def teardown(self) -> None:
        if self.shard is not None:
            self.shard.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_SETTINGS = settings(
    max_examples=EXAMPLES_MAX,
    stateful_step_count=STEPS_MAX,
    deadline=None,  # steps touch LMDB
    suppress_health_check=[HealthCheck.too_slow],
)


def test_store_agrees_with_the_in_memory_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard.shell.runtime, "SystemClock", _VirtualSystemClock)
    monkeypatch.setattr(StoreMachine, "base_dir", tmp_path, raising=False)
    # A log this long is "long" (ShardRuntime.commit(fold=True) folds in the commit).
    monkeypatch.setattr(shard.shell.runtime, "LOG_ENTRIES_KEPT", 2)
    try:
        run_state_machine_as_test(StoreMachine, settings=_SETTINGS)
    finally:
        gc.unfreeze()  # every Shard recovery calls gc.freeze(); give this process its gc back
