"""A shard's core with its store and its clock: recovery, commits and timings (SHELL).

:class:`ShardRuntime` is what a shard process owns besides its sockets: the LMDB
store, the one clock, and the :class:`~shard.core.ShardCore` built from what the store
recovered. It commits the core's batches (one write transaction each), measures them,
and when a commit fails (a full disk) recovers the store again and builds a new,
read-only core from it. :mod:`shard.shell.serve` runs it behind a ZeroMQ socket.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Final

from nets.loader import load_net
from router.shell.curve import CurveKeys
from router.shell.datadir import fault_point
from router.shell.metrics import METRICS_DEFAULT
from shard.batch import Batch, Recovered
from shard.core import ShardCore
from shard.reading import ReadingMark, ShardReading, quantile
from shard.shard_setup import ShardSetup
from shard.shell.store import MAP_SIZE_BYTES_INITIAL, Durability, Store, StoreError
from shard.shell.store_log import CATCH_UP_ENTRIES_MAX, LOG_ENTRIES_KEPT

LATENCIES_KEPT_MAX: Final = 4_096
BATCH_MS_MAX: Final = 20  # while requests wait for the batch's commit
BATCH_MS_MAX_IDLE: Final = 200  # while none do
REQUESTS_LOOKED_AT_S: Final = 0.001  # the sockets are looked at once a millisecond at most

log = logging.getLogger("cpn.shard")


def wall_ms() -> int:
    """Milliseconds since the Unix epoch (recovery steps are reported in these)."""
    return time.time_ns() // 1_000_000


class SystemClock:
    """Milliseconds since the Unix epoch, never going backwards within a process."""

    def __init__(self, floor_ms: int = 0) -> None:
        self._last_ms = floor_ms

    def now_ms(self) -> int:
        self._last_ms = max(self._last_ms, wall_ms())
        return self._last_ms


@dataclass(frozen=True, slots=True)
class ShardConfig:
    net_path: str
    data_dir: Path
    bind: str = "tcp://127.0.0.1:0"
    durability: Durability = Durability.FSYNC
    allow_remote: bool = False
    seed: int = 0
    map_size_bytes: int = MAP_SIZE_BYTES_INITIAL
    shard_id: int = 0
    shard_count: int = 1
    router: str = ""  # the router's endpoint; "" for a standalone shard
    # Net parameters for the net's builder (`--net-param`); every shard gets the same.
    params: Mapping[str, Any] = field(default_factory=dict)
    cluster_id: str = ""  # from a cluster file: the router and peers must agree
    curve: CurveKeys | None = None  # CURVE keys for the shard's socket and its peers
    rate_limit: tuple[int, int] | None = None  # (requests per s, burst) per peer
    advertise: str = ""  # the endpoint the others reach it at, if not the bound one
    log_json: bool = False  # `--log-json`: shard.log as JSON lines (router/shell/logsetup.py)
    metrics: str = METRICS_DEFAULT  # HOST:PORT of /metrics (shard/shell/metrics.py), or "off"


class BatchTimer:
    """The firing budget of one batch on the real clock (:class:`shard.shard_setup.FiringBudget`).

    A batch runs up to ``BATCH_MS_MAX`` while requests are waiting (they are answered
    only after the commit) and up to ``BATCH_MS_MAX_IDLE`` otherwise: a longer batch
    lets more tokens be produced and consumed within it, which never reach LMDB.
    Whether requests wait is asked of ``requests_waiting`` (it polls sockets) at most
    once a millisecond.
    """

    def __init__(self, requests_waiting: Any = None) -> None:
        self._started_s = time.perf_counter()
        self._asked_s = 0.0
        self._requests_waiting = requests_waiting

    def exhausted(self) -> bool:
        now_s = time.perf_counter()
        elapsed_ms = (now_s - self._started_s) * 1000
        if elapsed_ms > BATCH_MS_MAX_IDLE:
            return True
        if (
            self._requests_waiting is not None
            and elapsed_ms > BATCH_MS_MAX
            and now_s - self._asked_s > REQUESTS_LOOKED_AT_S
        ):
            self._asked_s = now_s
            return bool(self._requests_waiting())
        return False


class ShardRuntime:
    """The store, the clock and the core of one shard (see the module docstring).

    Raises:
        CpnError: the net does not load, or the data directory is locked or holds
            another net's store.
    """

    def __init__(self, config: ShardConfig, *, endpoint: str = "") -> None:
        # Recovery steps, wall-clock ms (statistics): this process began building the
        # shard, read its store back, and (set by the loop) began serving.
        self.started_ms = wall_ms()
        self.recovered_ms = 0
        self.serving_ms = 0  # set by the loop once the socket is bound and published
        self.config = config
        base = load_net(config.net_path, seed=config.seed, params=config.params)
        self.setup = ShardSetup.of(
            base,
            shard_id=config.shard_id,
            shard_count=config.shard_count,
            router=config.router,
            cluster_id=config.cluster_id,
            endpoint=endpoint,
        )
        self.store = Store(
            config.data_dir,
            net=self.setup.net,
            durability=config.durability,
            map_size_bytes=config.map_size_bytes,
            shard_id=config.shard_id,
            shard_count=config.shard_count,
            fault=functools.partial(fault_point, config.data_dir),
        )
        self.counters: Counter[str] = Counter()
        self.commit_latencies_ms: deque[float] = deque(maxlen=LATENCIES_KEPT_MAX)
        self.batch_sizes: deque[int] = deque(maxlen=LATENCIES_KEPT_MAX)
        self.commits_done = 0  # by this process, whatever core committed them
        self.core_generation = 0  # cores built after failed commits (a reading's mark)
        # Whether the last commit folded the busy loop's slice of the batch log in its
        # own transaction (commit(fold=True)): this turn's catch_up then folds no more.
        self._slice_committed = False
        recovered = self._recover()
        self.clock = SystemClock(floor_ms=recovered.clock_ms)
        self.core = ShardCore(
            self.setup,
            recovered,
            incarnation=self.store.incarnation,
            now_ms=self.clock.now_ms(),
            slots=self.store,
            fault=functools.partial(fault_point, config.data_dir),
            shell_statistics=self._statistics,
        )
        if not self.core.initialised:
            self._commit(self.core.take_batch(), initialised=True)
        self.recovered_ms = wall_ms()
        self._deferred_done = not self.core.deferred.active

    def _recover(self) -> Recovered:
        # Recovery creates up to millions of long-lived tuples and no cycles: the cyclic
        # collector is paused meanwhile (it would run hundreds of times over the growing
        # heap) and the result is frozen out of later collections.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self.store.recover(self.setup.deferred_places)
        finally:
            gc.freeze()
            if gc_was_enabled:
                gc.enable()

    @property
    def read_only_reason(self) -> str | None:
        return self.core.read_only_reason

    def commit(self, *, fold: bool = False) -> bool:
        """Commit the core's batch; on failure, rebuild the core read-only from what is
        committed (its engine must match what is on disk again).

        With ``fold`` (the batch answers nothing: no acknowledgement waits for it), the
        slice of the batch log that :meth:`catch_up` would fold next because the log is
        long goes into the batch's own transaction: one fsync a turn instead of two."""
        now_ms = self.clock.now_ms()
        batch = self.core.take_batch()
        self._slice_committed = False
        if batch.is_empty():
            return True
        fold_entries_max = CATCH_UP_ENTRIES_MAX if fold and self._slice_due(idle=False) else 0
        try:
            self._commit(batch, fold_entries_max=fold_entries_max)
            self._slice_committed = fold_entries_max > 0
        except StoreError as exc:
            log.error("commit failed, the shard is now read-only: %s", exc)
            self.counters["commits_failed"] += 1
            reason = f"the shard's store failed and refuses writes: {exc}"
            self.core = self.core.after_failed_commit(self._recover(), reason, now_ms)
            self.core_generation += 1
            return False
        return True

    def _commit(
        self, batch: Batch, *, initialised: bool = False, fold_entries_max: int = 0
    ) -> None:
        started = time.perf_counter()
        self.store.commit(batch, initialised=initialised, fold_entries_max=fold_entries_max)
        self.commit_latencies_ms.append((time.perf_counter() - started) * 1000)
        self.batch_sizes.append(len(batch.marking))
        self.commits_done += 1
        self.core.committed(wall_ms())

    def reading(self, since: ReadingMark) -> ShardReading:
        """The core's reading with this shell's figures, and what is new since
        ``since`` (the mark of the previous reading): the metrics' one input."""
        core = self.core.reading()
        same_core = since.generation == self.core_generation
        commits = min(self.commits_done - since.commits, len(self.commit_latencies_ms))
        timed = core.handoffs_timed - since.handoffs_timed if same_core else core.handoffs_timed
        return ShardReading(
            core=core,
            shell_counters=dict(self.counters),
            recovery_ms=max(0, self.recovered_ms - self.started_ms),
            commit_latencies_ms=tuple(islice(reversed(self.commit_latencies_ms), commits)),
            batch_entries=tuple(islice(reversed(self.batch_sizes), commits)),
            handoff_latencies_ms=self.core.newest_handoff_latencies(timed),
            mark=ReadingMark(self.core_generation, self.commits_done, core.handoffs_timed),
        )

    def catch_up(self, *, idle: bool) -> bool:
        """Fold one slice of the batch log into the marking table (docs/shard.md, "The
        store"): while the loop is ``idle`` (nothing to fire or answer now) and a whole
        slice is logged, or when the log is longer than it is kept. The loop calls this
        every turn, after the replies went, so a slice never delays an acknowledgement;
        a busy shard leaves its log alone, and the tokens a later batch consumes cancel
        out in the slice that folds both instead of costing the table a put and a pop.

        Returns whether a whole slice is left to fold (the loop then polls without
        waiting, so an idle shard folds slice after slice until a request comes)."""
        if not self._slice_due(idle=idle) or (self._slice_committed and not idle):
            return False
        try:
            self.store.catch_up()
        except StoreError as exc:  # the next commit meets this failure too
            log.error("could not fold the batch log into the marking table: %s", exc)
            self.counters["catch_ups_failed"] += 1
            return False
        return self.store.log_entries > CATCH_UP_ENTRIES_MAX

    def _slice_due(self, *, idle: bool) -> bool:
        """Whether a slice of the batch log is to be folded now (see :meth:`catch_up`)."""
        return not (
            self.store.log_entries <= (CATCH_UP_ENTRIES_MAX if idle else LOG_ENTRIES_KEPT)
            or self.core.read_only_reason
            # The deferred places load first: a restarted shard holds its whole marking
            # sooner, and its read transaction does not pin the pages a slice frees.
            or self.core.deferred.active
        )

    def load_deferred(self) -> None:
        """One chunk of the deferred places' tokens; when the last is in, the stored
        counts are corrected if they were off and the loaded tokens frozen out of gc."""
        if not self.core.deferred.active:
            self._finish_deferred()
            return
        # As for the startup read, the collector is paused while the chunk's tuples are
        # made, and they are frozen out of later collections at once (rather than when
        # the last chunk is in): otherwise the collections they set off walk every token
        # loaded so far, about a quarter of a million-token load's time. What else the
        # turn left in the young generations is frozen with them, as at the end.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.core.load_deferred(self.clock.now_ms())
        finally:
            gc.freeze()
            if gc_was_enabled:
                gc.enable()
        self._finish_deferred()

    def _finish_deferred(self) -> None:
        if self._deferred_done or self.core.deferred.active:
            return
        self._deferred_done = True
        deferred = self.core.deferred
        if deferred.recount:
            # The stored counts and entries disagree (a bug, or a store edited by hand):
            # they are counted again from the entries, for the next start.
            log.error(
                "deferred places loaded; their stored counts were off by %s", deferred.wrong_counts
            )
            try:
                self.store.recount()
            except StoreError as exc:  # the shard's next commit meets this failure too
                log.error("could not count the places again: %s", exc)

    def statistics(self) -> dict[str, Any]:
        """The core's figures with the shell's (what a ``Stats`` request answers)."""
        return self.core.statistics()

    def _statistics(self) -> dict[str, Any]:
        # The shell's part: commits and their latency, the map, the recovery steps.
        store = self.store.statistics()
        latencies = sorted(self.commit_latencies_ms)
        sizes = list(self.batch_sizes)
        return {
            "counters": dict(self.counters),
            "started_ms": self.started_ms,
            "recovered_ms": self.recovered_ms,
            "serving_ms": self.serving_ms,
            "commits": store.commits,
            "commit_entries": store.entries_written,
            "commit_batch_mean": (sum(sizes) / len(sizes)) if sizes else 0.0,
            "commit_batch_max": max(sizes, default=0),
            "commit_ms_p50": quantile(latencies, 0.50),
            "commit_ms_p99": quantile(latencies, 0.99),
            "map_size_bytes": store.map_size_bytes,
            "map_resizes": store.map_resizes,
            "log_entries": store.log_entries,
            "log_records": store.log_records,
            "catch_ups": store.catch_ups,
            "log_entries_folded": store.entries_folded,
        }

    def close(self) -> None:
        self.core.deferred.close()
        self.store.close()
