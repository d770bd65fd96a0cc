"""Benchmark: one durable shard process against the bare engine, puts, and recovery.

``python -m bench.shard [--quick] [--py-spy DIR]`` runs, in one invocation:

1. the scraper decision workload with every delay set to 0 (``bench/shard_nets.py``:
   100,000 targets, or 20,000 with ``--quick``; 500 domains; 50 proxies), so that the
   clock never bounds the rate:

   a. fired by the bare engine in this process (``Engine.run`` in virtual time;
      construction timed apart from the run);
   b. fired by one real ``cpn shard`` process with durability ``process``, and
   c. with durability ``fsync``. A shard fires its initial marking on its own as soon
      as it starts; the rate is all firings divided by the time from the shard being
      ready (it published its endpoint; polled every millisecond) to the commit of the
      batch that finished the last target, which the shard's statistics date
      (``firings_committed_ms``, wall clock) in the first reply showing every target
      finished (``fetched`` + ``give_up`` firings equal the targets; polled every
      ``STATS_POLL_S``): timed to the reply instead, a quick run of a few batches read
      the poll's and the batch's granularity more than the shard. Both shards must make
      exactly the engine's firings per transition: a fetch's outcome depends only on
      (seed, url, attempt), never on the order of firings. The CPU time each run used
      (the shard's read from ``/proc``) is reported too: on a shared machine it says
      how much of a slow run was waiting rather than working.

   The three run back to back as one round, ``--rounds`` times (3 unless told), and
   each ratio is the median of the rounds' own ratios: the engine and the shard are
   timed moments apart, not minutes, so a load that comes and goes on a shared
   machine moves both sides of a ratio alike rather than one of them.

2. put throughput from one client against a shard in ``fsync`` mode whose net has one
   keyed place that no transition consumes (the marking only grows): sequential
   requests of one token each (unbatched) and of ``PUT_BATCH_TOKENS`` tokens each
   (batched), in requests/s and tokens/s; the acknowledgement latency p50/p99 comes
   from the unbatched run. The same runs against a ``process`` shard show how much of
   the latency is the flush.

3. recovery of a shard holding 1,000,000 tokens (also with ``--quick``), with its batch
   log at the largest length allowed (``LOG_ENTRIES_MAX`` entries, shard/shell/store_log.py):
   the store is built by starting a shard (durability ``process``) whose net has
   1,000,000 - ``LOG_ENTRIES_MAX`` initial tokens, which it commits to the marking table
   before it serves (faster to set up than put tokens); the shard is SIGKILLed; this
   process then commits the other ``LOG_ENTRIES_MAX`` tokens to the store's log, in
   records of ``PUT_BATCH_TOKENS`` (as a shard's puts would), and the shard is restarted
   (durability ``fsync``) on the same net *without* the initial tokens, as a shard
   whose marking grew by puts would be. The figure is the time from the SIGKILL to the
   restarted shard holding all 1,000,000 tokens in memory, less the time this process
   took to fill the log (reported apart, ``recovery_log_fill_s``). Nothing reads the
   place, so the shard serves before it loads them (docs/shard.md, "Deferred places"):
   its first ``counts()`` answer, with every token counted, is reported too
   (``recovery_answer_s_1m``).

Every shard runs in its own temporary data directory on 127.0.0.1 and is stopped by
its pid before the benchmark ends. ``--py-spy DIR`` attaches ``py-spy record`` to each
shard (raw collapsed stacks in ``DIR/<phase>.txt``); the figures of such a run are
slowed by the sampling. The load average is printed with the wall time, since other
processes on the machine move every figure. The last line of output is one JSON
object whose first keys are ``engine_per_s``, ``process_per_s``, ``fsync_per_s``,
``process_ratio``, ``fsync_ratio``, ``put_ack_p99_ms`` and ``recovery_s_1m``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.shard_nets import (
    DOMAINS,
    PROXIES,
    SINK_TOKENS_ENV,
    TARGETS_ENV,
    sink,
    sink_item,
    zero_delay_params,
)
from cluster.client import ShardClient
from cluster.processes import ShardProcess, start_shard
from nets import Engine
from nets.errors import CpnError
from nets.scraper_sim import scraper_net
from router.shell.datadir import read_endpoint
from shard.batch import Batch
from shard.shell.store import Durability, Store
from shard.shell.store_log import LOG_ENTRIES_MAX

ROOT: Final = Path(__file__).resolve().parent.parent
SCRAPER_NET: Final = "bench.shard_nets:scraper_zero_delay"
SINK_NET: Final = "bench.shard_nets:sink"
SINK_PLACE: Final = "items"

TARGETS_FULL: Final = 100_000
TARGETS_QUICK: Final = 20_000
UNTIL_MS: Final = 2**62  # "run until nothing is left to do"
STATS_POLL_S: Final = 0.05
READY_POLL_S: Final = 0.001
READY_TIMEOUT_S: Final = 120.0
WORKLOAD_TIMEOUT_S: Final = 600.0
CLIENT_TIMEOUT_MS: Final = 60_000

PUTS_UNBATCHED_FULL: Final = 5_000
PUTS_UNBATCHED_QUICK: Final = 1_000
PUTS_BATCHED_FULL: Final = 1_000
PUTS_BATCHED_QUICK: Final = 200
PUT_BATCH_TOKENS: Final = 100
PUTS_WARMUP: Final = 20
RECOVERY_TOKENS: Final = 1_000_000

PROCESS_RATIO_MIN: Final = 0.85
FSYNC_RATIO_MIN: Final = 0.7
PUT_ACK_P99_MS_MAX: Final = 5.0
RECOVERY_S_MAX: Final = 2.0
ROUNDS: Final = 3


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _quantile_ms(latencies_s: Sequence[float], q: float) -> float:
    ordered = sorted(latencies_s)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# -- shard processes ----------------------------------------------------------------------


@contextlib.contextmanager
def _profiled(pid: int, profile_dir: Path | None, phase: str) -> Iterator[None]:
    """Sample ``pid`` with ``py-spy record`` while the block runs (if asked to)."""
    if profile_dir is None:
        yield
        return
    out = profile_dir / f"{phase}.txt"
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def _start(
    net: str, data_dir: Path, *, durability: str, env: dict[str, str] | None = None
) -> ShardProcess:
    """Start ``cpn shard`` without waiting (the caller times the wait)."""
    return start_shard(
        net,
        data_dir,
        durability=durability,
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        wait=False,
    )


def _wait_ready(handle: ShardProcess) -> float:
    """Poll for the shard's endpoint every millisecond; return when it was seen."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        published = read_endpoint(handle.data_dir)
        if published is not None and published[1] == handle.pid:
            handle.endpoint = published[0]
            return time.perf_counter()
        if not handle.alive():
            log = (handle.data_dir / "stderr.log").read_text(errors="replace").strip()
            raise CpnError(f"shard in {handle.data_dir} exited: {log[-2000:]}")
        time.sleep(READY_POLL_S)
    raise CpnError(f"shard in {handle.data_dir} was not ready in {READY_TIMEOUT_S} s")


def _cpu_s(pid: int) -> float | None:
    """CPU time (user + system) that process ``pid`` used so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(handle: ShardProcess) -> None:
    """Stop a shard we started (SIGTERM, then SIGKILL), by its pid."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        handle.terminate()
    if handle.alive():
        handle.kill()


# -- 1. the firing workload ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FiringRun:
    """One run of the zero-delay scraper workload."""

    label: str
    firings: int
    per_transition: dict[str, int]
    run_s: float
    build_s: float  # engine construction; for a shard, from spawn to ready
    cpu_s: float | None  # CPU time the run used (the shard's, for a shard)
    shard_stats: dict[str, Any]
    stats_rtt_s: list[float]  # round trips of the statistics requests during the run

    @property
    def per_s(self) -> float:
        return self.firings / self.run_s

    @property
    def per_cpu_s(self) -> float | None:
        return None if not self.cpu_s else self.firings / self.cpu_s


def time_engine(targets: int) -> FiringRun:
    """The bare engine, in this process, in virtual time."""
    params = zero_delay_params(targets)
    gc.collect()
    start = time.perf_counter()
    engine = Engine(scraper_net(params))
    build_s = time.perf_counter() - start
    gc.collect()
    fired = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    for _step in engine.run(until=UNTIL_MS):
        fired += 1
    run_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    firings = dict(engine.statistics().firings)
    assert sum(firings.values()) == fired, (firings, fired)
    return FiringRun("engine", fired, firings, run_s, build_s, cpu_s, {}, [])


@dataclass(frozen=True, slots=True)
class FiringRound:
    """The engine, then a ``process`` shard, then an ``fsync`` shard, back to back."""

    engine: FiringRun
    process: FiringRun
    fsync: FiringRun

    def ratio(self, durability: str) -> float:
        return self.shard(durability).per_s / self.engine.per_s

    def cpu_ratio(self, durability: str) -> float:
        return (self.shard(durability).per_cpu_s or 0) / (self.engine.per_cpu_s or 1)

    def shard(self, durability: str) -> FiringRun:
        return self.process if durability == "process" else self.fsync


def time_round(targets: int, tmp: Path, index: int, *, profile_dir: Path | None) -> FiringRound:
    """One round of the firing workload (each shard in a data directory of its own)."""
    engine = time_engine(targets)
    process, fsync = (
        time_shard(
            targets,
            d,
            tmp / f"scraper-{d}-{index}",
            # Round 0 keeps the phase names a profile had before there were rounds.
            phase=f"firing_{d}" if index == 0 else f"firing_{d}_{index}",
            profile_dir=profile_dir,
        )
        for d in ("process", "fsync")
    )
    return FiringRound(engine, process, fsync)


def median(values: Sequence[float]) -> float:
    """The middle value (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _finished(stats: dict[str, Any], targets: int) -> bool:
    firings = stats["firings"]
    return bool(firings.get("fetched", 0) + firings.get("give_up", 0) == targets)


def time_shard(
    targets: int, durability: str, data_dir: Path, *, phase: str, profile_dir: Path | None
) -> FiringRun:
    """A real shard process, in ``data_dir``, firing the workload from its initial marking
    (sampled into ``profile_dir/<phase>.txt`` if asked)."""
    spawned = time.perf_counter()
    handle = _start(SCRAPER_NET, data_dir, durability=durability, env={TARGETS_ENV: str(targets)})
    try:
        with _profiled(handle.pid, profile_dir, phase):
            ready = _wait_ready(handle)
            ready_wall_s = time.time()
            cpu_ready = _cpu_s(handle.pid)
            rtt_s = []
            with ShardClient(handle.endpoint, timeout_ms=CLIENT_TIMEOUT_MS) as client:
                deadline = ready + WORKLOAD_TIMEOUT_S
                while True:
                    sent = time.perf_counter()
                    stats = client.stats()
                    now = time.perf_counter()
                    rtt_s.append(now - sent)
                    if _finished(stats, targets):
                        cpu_done = _cpu_s(handle.pid)
                        break
                    if now > deadline:
                        raise CpnError(
                            f"{durability} shard did not finish {targets:,} targets in "
                            f"{WORKLOAD_TIMEOUT_S} s: {stats['firings']}"
                        )
                    time.sleep(STATS_POLL_S)
    finally:
        _stop(handle)
    firings = dict(stats["firings"])
    cpu_s = None if cpu_ready is None or cpu_done is None else cpu_done - cpu_ready
    committed_s = stats.get("firings_committed_ms", 0) / 1000 - ready_wall_s
    return FiringRun(
        f"shard ({durability})",
        sum(firings.values()),
        firings,
        committed_s if 0 < committed_s <= now - ready else now - ready,
        ready - spawned,
        cpu_s,
        stats,
        rtt_s,
    )


# -- 2. puts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutRun:
    requests: int
    tokens: int
    run_s: float
    latencies_s: list[float]
    shard_stats: dict[str, Any]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.run_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.run_s

    def latency_ms(self, q: float) -> float:
        return _quantile_ms(self.latencies_s, q)


def _put_run(client: ShardClient, batches: list[list[Any]]) -> tuple[float, list[float]]:
    latencies_s = []
    start = time.perf_counter()
    for batch in batches:
        sent = time.perf_counter()
        client.put(SINK_PLACE, batch)
        latencies_s.append(time.perf_counter() - sent)
    return time.perf_counter() - start, latencies_s


def time_puts(
    durability: str,
    tmp: Path,
    *,
    unbatched: int,
    batched: int,
    profile_dir: Path | None,
) -> tuple[PutRun, PutRun]:
    """Sequential puts into a sink place: one token each, then many each."""
    handle = _start(SINK_NET, tmp / f"sink-{durability}", durability=durability)
    try:
        _wait_ready(handle)
        with ShardClient(handle.endpoint, timeout_ms=CLIENT_TIMEOUT_MS) as client:
            n = 0

            def next_batches(count: int, size: int) -> list[list[Any]]:
                nonlocal n
                batches = [[sink_item(n + i * size + j) for j in range(size)] for i in range(count)]
                n += count * size
                return batches

            _put_run(client, next_batches(PUTS_WARMUP, 1))  # connect, first commits
            with _profiled(handle.pid, profile_dir, f"puts_unbatched_{durability}"):
                run_s, latencies_s = _put_run(client, next_batches(unbatched, 1))
            single = PutRun(unbatched, unbatched, run_s, latencies_s, client.stats())
            with _profiled(handle.pid, profile_dir, f"puts_batched_{durability}"):
                run_s, latencies_s = _put_run(client, next_batches(batched, PUT_BATCH_TOKENS))
            many = PutRun(batched, batched * PUT_BATCH_TOKENS, run_s, latencies_s, client.stats())
            held = client.counts()[SINK_PLACE]
            assert held == n, (held, n)
    finally:
        _stop(handle)
    return single, many


# -- 3. recovery --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryRun:
    tokens: int
    setup_s: float
    kill_s: float  # SIGKILL sent and the process reaped
    ready_s: float  # from the SIGKILL to the restarted shard's endpoint
    answer_s: float  # from the SIGKILL to counts() showing every token
    recovery_s: float  # from the SIGKILL to every token loaded into the engine
    log_entries: int  # entries in the store's log at the restart
    log_fill_s: float  # this process filling the log (not counted in the figures)


def _fill_log(data_dir: Path, first: int, count: int) -> int:
    """Commit sink tokens ``first`` .. ``first + count - 1`` to the store's batch log, in
    records of ``PUT_BATCH_TOKENS``; returns the log's length after."""
    os.environ[SINK_TOKENS_ENV] = "0"
    store = Store(data_dir, net=sink(), durability=Durability.PROCESS)
    try:
        for start in range(first, first + count, PUT_BATCH_TOKENS):
            batch = Batch(clock_ms=time.time_ns() // 1_000_000)
            for n in range(start, min(start + PUT_BATCH_TOKENS, first + count)):
                batch.add(SINK_PLACE, 0, sink_item(n))
            store.commit(batch)
        return store.log_entries
    finally:
        store.close()


def time_recovery(tokens: int, tmp: Path, *, profile_dir: Path | None) -> RecoveryRun:
    """Fill a store with ``tokens`` tokens, SIGKILL its shard, time the restart."""
    data_dir = tmp / "recovery"
    start = time.perf_counter()
    in_table = tokens - LOG_ENTRIES_MAX
    first = _start(SINK_NET, data_dir, durability="process", env={SINK_TOKENS_ENV: str(in_table)})
    second: ShardProcess | None = None
    try:
        _wait_ready(first)
        with ShardClient(first.endpoint, timeout_ms=CLIENT_TIMEOUT_MS) as client:
            held = client.counts()[SINK_PLACE]
        assert held == in_table, (held, in_table)
        setup_s = time.perf_counter() - start

        killed = time.perf_counter()
        killed_ms = time.time_ns() // 1_000_000
        first.kill()
        reaped = time.perf_counter()
        log_entries = _fill_log(data_dir, in_table, LOG_ENTRIES_MAX)
        assert log_entries == LOG_ENTRIES_MAX, (log_entries, LOG_ENTRIES_MAX)
        log_fill_s = time.perf_counter() - reaped
        # The clock of the figures runs from the SIGKILL, without the filling.
        kill_s = reaped - killed
        killed += log_fill_s
        killed_ms += round(log_fill_s * 1000)
        # The same net without its initial tokens: the store is initialised, so the
        # shard recovers the marking and would ignore them anyway.
        second = _start(SINK_NET, data_dir, durability="fsync", env={SINK_TOKENS_ENV: "0"})
        with _profiled(second.pid, profile_dir, "recovery"):
            ready = _wait_ready(second)
            with ShardClient(second.endpoint, timeout_ms=CLIENT_TIMEOUT_MS) as client:
                held = client.counts()[SINK_PLACE]
                answered = time.perf_counter()
                loaded_ms = 0
                deadline = time.monotonic() + CLIENT_TIMEOUT_MS / 1000
                while not loaded_ms and time.monotonic() < deadline:
                    loaded_ms = client.stats()["deferred_loaded_ms"]
                    time.sleep(0.01)
        assert held == tokens, f"recovered {held:,} tokens, expected {tokens:,}"
        assert loaded_ms, "the shard did not finish loading its tokens"
    finally:
        if second is not None:
            _stop(second)
        _stop(first)
    return RecoveryRun(
        tokens,
        setup_s,
        kill_s,
        ready - killed,
        answered - killed,
        (loaded_ms - killed_ms) / 1000,
        log_entries,
        log_fill_s,
    )


# -- main ---------------------------------------------------------------------------------


def _cpu_rate(run: FiringRun) -> str:
    per_cpu_s = run.per_cpu_s
    if per_cpu_s is None or run.cpu_s is None:
        return "CPU time unknown"
    return f"{run.cpu_s:.2f} s CPU, {per_cpu_s:,.0f} firings per CPU-second"


def _report_firing(run: FiringRun, engine: FiringRun) -> None:
    """A line for the engine's run; two for a shard's, with its ratio to ``engine``'s."""
    ratio = run.per_s / engine.per_s
    line = (
        f"{run.label:<16} {run.firings:,} firings in {run.run_s:6.3f} s: "
        f"{run.per_s:>9,.0f} firings/s"
    )
    if run is engine:
        print(f"{line} (build {run.build_s:.2f} s; {_cpu_rate(run)})")
        return
    s = run.shard_stats
    rtt_ms = sorted(t * 1000 for t in run.stats_rtt_s)
    print(
        f"{line}, ratio to engine {ratio:.3f}\n"
        f"{'':<17}spawn to ready {run.build_s:.2f} s; {_cpu_rate(run)} "
        f"({run.cpu_s / run.run_s if run.cpu_s else 0:.0%} of the run busy); "
        f"{s['commits']:,} commits, {s['commit_entries']:,} entries written, batch mean "
        f"{s['commit_batch_mean']:,.0f} / max {s['commit_batch_max']:,} entries, commit p50 "
        f"{s['commit_ms_p50']:.2f} ms p99 {s['commit_ms_p99']:.2f} ms; {len(rtt_ms)} stats "
        f"requests, round trip median {rtt_ms[len(rtt_ms) // 2]:.1f} ms, max {rtt_ms[-1]:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.shard", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{TARGETS_QUICK:,} targets instead of {TARGETS_FULL:,}, fewer puts",
    )
    parser.add_argument(
        "--py-spy",
        dest="profile_dir",
        type=Path,
        metavar="DIR",
        help="record each shard with py-spy into DIR/<phase>.txt (slows the figures)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help=f"rounds of engine, process shard, fsync shard (default {ROUNDS}); ratios are "
        "the median of the rounds'",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    profile_dir: Path | None = args.profile_dir
    if profile_dir is not None:
        if shutil.which("py-spy") is None:
            parser.error("--py-spy needs py-spy on PATH")
        profile_dir.mkdir(parents=True, exist_ok=True)

    wall_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    targets = TARGETS_QUICK if args.quick else TARGETS_FULL
    unbatched = PUTS_UNBATCHED_QUICK if args.quick else PUTS_UNBATCHED_FULL
    batched = PUTS_BATCHED_QUICK if args.quick else PUTS_BATCHED_FULL
    print(
        f"scraper workload, all delays 0: {targets:,} targets, {DOMAINS} domains, "
        f"{PROXIES} proxies; shards on 127.0.0.1, stats polled every "
        f"{STATS_POLL_S * 1000:.0f} ms"
        + (f"; py-spy profiles in {profile_dir} (figures slowed)" if profile_dir else "")
    )
    with tempfile.TemporaryDirectory(prefix="cpn-bench-shard-") as tmp_name:
        tmp = Path(tmp_name)
        rounds: list[FiringRound] = []
        for index in range(args.rounds):
            print(f"round {index + 1}/{args.rounds}:")
            firing = time_round(targets, tmp, index, profile_dir=profile_dir)
            for run in (firing.process, firing.fsync):
                if run.per_transition != firing.engine.per_transition:
                    print(
                        f"error: {run.label} fired {run.per_transition}, the engine "
                        f"{firing.engine.per_transition}",
                        file=sys.stderr,
                    )
                    return 1
            for run in (firing.engine, firing.process, firing.fsync):
                _report_firing(run, firing.engine)
            rounds.append(firing)
        ratios = {d: [r.ratio(d) for r in rounds] for d in ("process", "fsync")}
        process_ratio, fsync_ratio = median(ratios["process"]), median(ratios["fsync"])
        for durability, target in (("process", PROCESS_RATIO_MIN), ("fsync", FSYNC_RATIO_MIN)):
            ratio = median(ratios[durability])
            print(
                f"{durability} ratio to engine, median of {len(rounds)} rounds: {ratio:.3f} "
                f"({', '.join(f'{r:.3f}' for r in ratios[durability])}) "
                f"[target >= {target}: {_verdict(ratio >= target)}]"
            )
        # The round whose process ratio is the median stands for the rest in the keys
        # that describe one run (commits, log entries, run times).
        middle = sorted(rounds, key=lambda r: r.ratio("process"))[len(rounds) // 2]
        engine, runs = middle.engine, {"process": middle.process, "fsync": middle.fsync}

        puts = {
            d: time_puts(d, tmp, unbatched=unbatched, batched=batched, profile_dir=profile_dir)
            for d in ("fsync", "process")
        }
        single, many = puts["fsync"]
        p99_ms = single.latency_ms(0.99)
        for durability, (one, hundred) in puts.items():
            s = one.shard_stats
            verdict = (
                f" [target <= {PUT_ACK_P99_MS_MAX:g}: {_verdict(p99_ms <= PUT_ACK_P99_MS_MAX)}]"
                if durability == "fsync"
                else " (for comparison)"
            )
            print(
                f"puts ({durability}), 1 token each: {one.requests:,} requests, "
                f"{one.requests_per_s:,.0f} requests/s = tokens/s; ack p50 "
                f"{one.latency_ms(0.5):.2f} ms, p99 {one.latency_ms(0.99):.2f} ms{verdict}, max "
                f"{one.latency_ms(1.0):.2f} ms; shard commit p50 {s['commit_ms_p50']:.2f} ms, "
                f"p99 {s['commit_ms_p99']:.2f} ms"
            )
            print(
                f"puts ({durability}), {PUT_BATCH_TOKENS} tokens each: {hundred.requests:,} "
                f"requests, {hundred.requests_per_s:,.0f} requests/s, "
                f"{hundred.tokens_per_s:,.0f} tokens/s; ack p50 {hundred.latency_ms(0.5):.2f} ms, "
                f"p99 {hundred.latency_ms(0.99):.2f} ms"
            )

        recovery = time_recovery(RECOVERY_TOKENS, tmp, profile_dir=profile_dir)
        print(
            f"recovery of {recovery.tokens:,} tokens ({recovery.tokens - recovery.log_entries:,} "
            f"in the marking table from an initial marking, durability process, in "
            f"{recovery.setup_s:.1f} s; {recovery.log_entries:,} in the batch log, its largest "
            f"length, filled in {recovery.log_fill_s:.1f} s; restarted with fsync): "
            f"SIGKILL to every token loaded {recovery.recovery_s:.2f} s "
            f"[target <= {RECOVERY_S_MAX:g}: {_verdict(recovery.recovery_s <= RECOVERY_S_MAX)}] "
            f"(killed and reaped {recovery.kill_s:.3f} s, endpoint published "
            f"{recovery.ready_s:.2f} s, counts() answered {recovery.answer_s:.2f} s)"
        )

    wall_s = time.perf_counter() - wall_start
    print(
        f"benchmark wall time: {wall_s:.1f} s; load average (1 min) {load_start:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} CPUs"
    )
    process, fsync = runs["process"], runs["fsync"]
    print(
        json.dumps(
            {
                "engine_per_s": round(median([r.engine.per_s for r in rounds])),
                "process_per_s": round(median([r.process.per_s for r in rounds])),
                "fsync_per_s": round(median([r.fsync.per_s for r in rounds])),
                "process_ratio": round(process_ratio, 4),
                "fsync_ratio": round(fsync_ratio, 4),
                "put_ack_p99_ms": round(p99_ms, 3),
                "recovery_s_1m": round(recovery.recovery_s, 3),
                "quick": args.quick,
                "targets": targets,
                "firings": engine.firings,
                "engine_build_s": round(engine.build_s, 3),
                "engine_run_s": round(engine.run_s, 3),
                "process_run_s": round(process.run_s, 3),
                "fsync_run_s": round(fsync.run_s, 3),
                "process_commits": process.shard_stats["commits"],
                "fsync_commits": fsync.shard_stats["commits"],
                "put_ack_p50_ms": round(single.latency_ms(0.5), 3),
                "puts_unbatched_per_s": round(single.requests_per_s),
                "puts_batched_per_s": round(many.requests_per_s),
                "put_tokens_batched_per_s": round(many.tokens_per_s),
                "put_batch_tokens": PUT_BATCH_TOKENS,
                "put_ack_p99_ms_process": round(puts["process"][0].latency_ms(0.99), 3),
                "puts_batched_per_s_process": round(puts["process"][1].requests_per_s),
                "engine_per_cpu_s": round(engine.per_cpu_s or 0),
                # Per CPU-second, the ratios a loaded machine moves least (a shared
                # machine takes the CPU from the shard or the engine at random).
                "process_cpu_ratio": round(median([r.cpu_ratio("process") for r in rounds]), 4),
                "fsync_cpu_ratio": round(median([r.cpu_ratio("fsync") for r in rounds]), 4),
                "process_per_cpu_s": round(process.per_cpu_s or 0),
                "fsync_per_cpu_s": round(fsync.per_cpu_s or 0),
                "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                "recovery_ready_s_1m": round(recovery.ready_s, 3),
                "recovery_answer_s_1m": round(recovery.answer_s, 3),
                "recovery_setup_s": round(recovery.setup_s, 1),
                "profiled": profile_dir is not None,
                "wall_s": round(wall_s, 1),
                "recovery_log_entries": recovery.log_entries,
                "recovery_log_fill_s": round(recovery.log_fill_s, 2),
                "process_log_entries": process.shard_stats.get("log_entries", 0),
                "process_catch_ups": process.shard_stats.get("catch_ups", 0),
                "process_entries_written": process.shard_stats["commit_entries"],
                "rounds": len(rounds),
                "process_ratios": [round(r, 4) for r in ratios["process"]],
                "fsync_ratios": [round(r, 4) for r in ratios["fsync"]],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
