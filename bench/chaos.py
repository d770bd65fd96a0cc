"""Benchmark: the scraper decision workload under SIGKILLs, a scale-out and a scale-in.

``python -m bench.chaos [--quick] [--seed S]`` runs, in one invocation:

1. ``cpn up`` of a 3-shard cluster (durability ``process``) of the scraper decision
   net with real delays (``bench.shard_nets:scraper_real_delays``: politeness 1 s, a
   proxy every 250 ms, 200 ms fetches, 10% failures with retries), 300,000 targets
   (``--quick``: 11,000), in a temporary directory.
2. **Fault-free** phase (60 s; quick: 8 s): the fetch rate, from the growth of
   ``done`` + ``fail_log`` (every finished fetch adds exactly one token to one of them).
3. **Chaos** phase (240 s; quick: 32 s): a SIGKILL every 2 s of a seeded choice among
   the router and the shards (never the supervisor), each only once the previous
   victim is back; ``cpn scale`` to 4 shards a quarter in and (not with ``--quick``)
   back to 3 at the half. The fetch rate of this phase, over the time work was left
   (until fewer than 5% of the targets wait), divided by the fault-free one is
   ``throughput_ratio``. A killed shard's recovery time runs from its SIGKILL to its
   first firing at the new epoch (the shard's ``first_fired_ms``: it fires only once
   its table reaches the epoch at which the router fenced its new incarnation).
4. **Drain and check**: wait until every target finished, every move is done and
   every outbox drained, then read every shard's marking: each target's url must be in
   exactly one of ``targets``, ``in_flight``, ``done`` or a final ``fail_log`` entry
   (``lost`` counts urls in none, and domains missing from ``domains``/``in_flight``;
   ``duplicated`` counts extra copies), and ``violations`` counts every other finding
   of ``cluster.invariants.check`` (proxies conserved, one owner per slot at the
   router's epoch, no token misplaced, no epoch backwards, outboxes drained, no move
   half-done), plus one if the workload did not complete.

Every process runs on 127.0.0.1 and is stopped with ``cpn down`` (then by pid). The
last line is one JSON object with the keys ``kills``, ``lost``, ``duplicated``,
``violations``, ``recover_s_median``, ``recover_s_max``, ``throughput_ratio``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cluster.chaos import ChaosRun
from cluster.client import ClusterClient, ShardClient
from cluster.invariants import ShardSnapshot, check, slot_of_net
from cluster.layout import ClusterLayout
from cluster.pids import pid_running, process_args
from cluster.processes import run_cpn
from nets.errors import CpnError
from nets.scraper_sim import ScraperParams, initial_targets, scraper_net
from router.table import PartitionTable

ROOT: Final = Path(__file__).resolve().parent.parent
NET: Final = "bench.shard_nets:scraper_real_delays"
SHARDS: Final = 3
KILL_EVERY_S: Final = 2.0
SAMPLE_S: Final = 0.5
FIRST_FIRING_WAIT_S: Final = 5.0
WORK_LEFT_MIN: Final = 0.05  # the chaos rate counts while more than this share waits
PLACES: Final = ("targets", "in_flight", "done", "fail_log", "domains", "proxies")
# A killed shard's recovery, step by step, from the marks in its statistics: the
# supervisor sees the death and a standby takes over; the store is read back; the
# socket is bound and the endpoint published; the router fences the new incarnation
# (its answer, then the table at that epoch); the first firing.
PHASES: Final = (
    ("restart", "killed_ms", "started_ms"),
    ("read store", "started_ms", "recovered_ms"),
    ("bind", "recovered_ms", "serving_ms"),
    ("router answers", "serving_ms", "fence_known_ms"),
    ("table at epoch", "fence_known_ms", "fenced_ms"),
    ("first firing", "fenced_ms", "first_fired_ms"),
)


@dataclass(frozen=True, slots=True)
class Plan:
    targets: int
    domains: int
    proxies: int
    baseline_s: float
    chaos_s: float
    scale_out_at_s: float  # into the chaos phase
    scale_in_at_s: float | None
    drain_timeout_s: float


FULL: Final = Plan(300_000, 3_000, 300, 60.0, 240.0, 60.0, 120.0, 180.0)
QUICK: Final = Plan(11_000, 1_500, 100, 8.0, 32.0, 6.0, None, 8.0)


@dataclass
class Samples:
    """(monotonic s, fetches finished, targets waiting) whenever every shard answered."""

    points: list[tuple[float, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rate(self, start_s: float, end_s: float, *, work_min: int = 0) -> float:
        with self.lock:
            window = [p for p in self.points if start_s <= p[0] <= end_s and p[2] > work_min]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return 0.0
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


def _sampler(root: Path, samples: Samples, stop: threading.Event) -> None:
    with contextlib.closing(ClusterClient.for_data_dir(root, timeout_ms=400, retries=0)) as client:
        while not stop.wait(SAMPLE_S):
            try:
                counts = client.counts()
            except CpnError:
                with contextlib.suppress(CpnError):
                    client.table(refresh=True)  # a shard moved or the cluster grew
                continue
            with samples.lock:
                samples.points.append(
                    (
                        time.monotonic(),
                        counts.get("done", 0) + counts.get("fail_log", 0),
                        counts.get("targets", 0) + counts.get("in_flight", 0),
                    )
                )


class Bench:
    """One run: the cluster in ``root``, its kills and their recovery times."""

    def __init__(self, root: Path, plan: Plan, seed: int) -> None:
        self.root = root
        self.layout = ClusterLayout(root)
        self.plan = plan
        self.rng = random.Random(seed)
        self.env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")]))
        }
        self.kills: list[str] = []
        self.recover_s: list[float] = []
        self.phases_s: dict[str, list[float]] = {name: [] for name, _s, _e in PHASES}
        # Each measured recovery: (seconds, victim, SIGKILL ms, its steps in seconds).
        self.recoveries: list[tuple[float, str, int, dict[str, float]]] = []
        self.pids: set[int] = set()
        self.shards = SHARDS
        self.pending: dict[str, tuple[str, int]] = {}  # victim -> (endpoint, SIGKILL ms)

    def cpn(self, *args: str, timeout_s: float = 120.0) -> str:
        result = run_cpn(*args, "--data", str(self.root), env=self.env, timeout_s=timeout_s)
        if result.returncode != 0:
            raise CpnError(f"cpn {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def up(self) -> None:
        self.cpn(
            "up", "--net", NET, "--shards", str(SHARDS), "--durability", "process",
            "--net-param", f"targets={self.plan.targets}",
            "--net-param", f"domains={self.plan.domains}",
            "--net-param", f"proxies={self.plan.proxies}",
            timeout_s=180.0,
        )  # fmt: skip

    def record(self, pid: int) -> None:
        self.pids.add(pid)

    def kill_one(self, chaos: ChaosRun) -> None:
        """SIGKILL a seeded victim and wait until it is back (serving again).

        Its recovery (to its first firing) is read later, without holding up the kills:
        by :meth:`resolve`, at the latest before the same shard is killed again.
        """
        victim = self.rng.choice(["router", *(f"shard {k}" for k in range(self.shards))])
        if victim in self.pending:
            self.resolve(victim, wait_s=FIRST_FIRING_WAIT_S)
        found = chaos.current(victim)
        if found is None:
            return
        self.record(found[1])
        killed_ms = time.time_ns() // 1_000_000
        with contextlib.suppress(ProcessLookupError):
            os.kill(found[1], signal.SIGKILL)  # verified ours by chaos.current
        self.kills.append(victim)
        deadline = time.monotonic() + 30.0
        while (back := chaos.current(victim)) is None or back[1] == found[1]:
            if time.monotonic() > deadline:
                raise CpnError(f"{victim} is not back 30 s after its SIGKILL")
            time.sleep(0.01)
        self.record(back[1])
        if victim != "router":
            self.pending[victim] = (back[0], killed_ms)

    def _phases(self, victim: str, stats: dict[str, Any], killed_ms: int) -> None:
        marks = {"killed_ms": killed_ms, **stats}
        steps: dict[str, float] = {}
        for name, start, end in PHASES:
            if marks.get(start) and marks.get(end):
                steps[name] = (marks[end] - marks[start]) / 1000
                self.phases_s[name].append(steps[name])
        recovered_s = (stats["first_fired_ms"] - killed_ms) / 1000
        self.recover_s.append(recovered_s)
        self.recoveries.append((recovered_s, victim, killed_ms, steps))

    def resolve(self, victim: str, *, wait_s: float = 0.0) -> None:
        """Read a restarted shard's first firing (a shard with nothing to do does not
        fire within ``wait_s``: such a kill has no recovery time)."""
        endpoint, killed_ms = self.pending.pop(victim)
        deadline = time.monotonic() + wait_s
        with ShardClient(endpoint, timeout_ms=300, retries=0) as shard:
            while True:
                with contextlib.suppress(CpnError):
                    stats = shard.stats()
                    if stats["first_fired_ms"]:
                        self._phases(victim, stats, killed_ms)
                        return
                if time.monotonic() >= deadline:
                    self.pending[victim] = (endpoint, killed_ms)
                    return
                time.sleep(0.01)

    def resolve_all(self, *, wait_s: float) -> None:
        for victim in list(self.pending):
            self.resolve(victim, wait_s=wait_s)
            self.pending.pop(victim, None)  # never fired: no recovery time

    def scale(self, shards: int) -> None:
        self.cpn("scale", "--shards", str(shards), "--no-wait")
        self.shards = max(self.shards, shards)

    def down(self) -> None:
        with contextlib.suppress(CpnError):
            self.cpn("down")
        for pid in sorted(self.pids):
            if pid_running(pid) and str(self.root) in " ".join(process_args(pid)):
                os.kill(pid, signal.SIGKILL)


def _drained(client: ClusterClient, members: int) -> bool:
    try:
        table = client.table(refresh=True)
        router = client.router_statistics()
        counts = client.counts()
        stats = client.statistics()
    except CpnError:
        return False
    return (
        table.shard_count == members
        and not router["moves_active"]
        and counts.get("targets", 0) == 0
        and counts.get("in_flight", 0) == 0
        and all(s["outbox_tokens"] == 0 and s["epoch"] == table.epoch for s in stats.values())
    )


def _judge(client: ClusterClient, plan: Plan, seed: int, completed: bool) -> dict[str, int]:
    """lost, duplicated and violations (see the module docstring)."""
    table = client.table(refresh=True)
    snapshots = []
    for shard_id in range(table.shard_count):
        shard = client.shard(shard_id)
        marking = {place: shard.all_tokens(place) for place in PLACES}
        snapshots.append(ShardSnapshot.from_statistics(shard.stats(), marking))
    params = ScraperParams(
        domains=plan.domains, targets=plan.targets, proxies=plan.proxies, seed=seed
    )
    urls: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    for snapshot in snapshots:
        m = snapshot.marking
        urls.update(t[2] for _time, t in m["targets"])
        urls.update(f[2] for _time, f in m["in_flight"])
        urls.update(t[2] for _time, t in m["done"])
        urls.update(f[1] for _time, f in m["fail_log"] if f[3])
        domains.update(d[0] for _time, d in m["domains"])
        domains.update(f[0] for _time, f in m["in_flight"])
    want_urls = Counter(t.url for t in initial_targets(params))
    want_domains = Counter({t.domain: 1 for t in initial_targets(params)})
    lost = sum((want_urls - urls).values()) + sum((want_domains - domains).values())
    duplicated = sum((urls - want_urls).values()) + sum((domains - want_domains).values())
    partition = PartitionTable(table.epoch, table.shard_count, table.owners, table.slot_epochs)
    report = check(
        snapshots,
        partition,
        conserved={"proxies": plan.proxies},
        slot_of=slot_of_net(scraper_net(params)),
        moves_active=client.router_statistics()["moves_active"],
    )
    findings = sum(
        len(getattr(report, name))
        for name in (
            "not_conserved", "misplaced", "slot_owner_problems", "shards_off_epoch",
            "epochs_backwards", "outboxes_not_drained", "failed_lanes", "moves_unfinished",
            "slots_mid_move",
        )
    )  # fmt: skip
    if not report.ok:
        print(f"  invariants: {report}", file=sys.stderr)
    return {"lost": lost, "duplicated": duplicated, "violations": findings + (not completed)}


def _print_slowest(bench: Bench, chaos_start_ms: int, count: int = 3) -> None:
    """The slowest recoveries, step by step: where a long one spent its time."""
    for recovered_s, victim, killed_ms, steps in sorted(bench.recoveries, reverse=True)[:count]:
        print(
            f"  slow: {victim} killed at {(killed_ms - chaos_start_ms) / 1000:.1f} s into the "
            f"chaos, first firing after {recovered_s:.2f} s: "
            + ", ".join(f"{name} {s:.3f}" for name, s in steps.items()),
            file=sys.stderr,
        )


def run(plan: Plan, seed: int, *, keep: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="cpn-chaos-"))
    bench = Bench(root / "cluster", plan, seed)
    samples = Samples()
    stop = threading.Event()
    try:
        bench.up()
        print(f"cluster up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        sampler = threading.Thread(target=_sampler, args=(bench.root, samples, stop), daemon=True)
        sampler.start()
        baseline_start = time.monotonic()
        time.sleep(plan.baseline_s)
        chaos_start = time.monotonic()
        chaos_start_ms = time.time_ns() // 1_000_000
        baseline = samples.rate(baseline_start + 1.0, chaos_start)
        print(f"fault-free: {baseline:,.0f} fetches/s", file=sys.stderr)
        chaos = ChaosRun(bench.layout)
        scaled_out = scaled_in = False
        try:
            while (now := time.monotonic() - chaos_start) < plan.chaos_s:
                if not scaled_out and now >= plan.scale_out_at_s:
                    bench.scale(SHARDS + 1)
                    scaled_out = True
                if plan.scale_in_at_s is not None and not scaled_in and now >= plan.scale_in_at_s:
                    bench.scale(SHARDS)
                    scaled_in = True
                kill_at = time.monotonic() + KILL_EVERY_S
                bench.kill_one(chaos)
                for victim in list(bench.pending):
                    bench.resolve(victim)  # a look, no wait
                time.sleep(max(0.0, kill_at - time.monotonic()))
            bench.resolve_all(wait_s=1.0)
        finally:
            chaos.close()
        chaos_end = time.monotonic()
        print(f"chaos ended at {chaos_end - started:.1f} s", file=sys.stderr)
        work_min = int(plan.targets * WORK_LEFT_MIN)
        under_chaos = samples.rate(chaos_start, chaos_end, work_min=work_min)
        print(
            f"chaos: {len(bench.kills)} kills ({dict(Counter(bench.kills))}), "
            f"{under_chaos:,.0f} fetches/s",
            file=sys.stderr,
        )
        members = SHARDS if plan.scale_in_at_s is not None else SHARDS + 1
        completed = False
        with contextlib.closing(
            ClusterClient.for_data_dir(bench.root, timeout_ms=2_000, retries=3)
        ) as client:
            deadline = time.monotonic() + plan.drain_timeout_s
            while time.monotonic() < deadline:
                if _drained(client, members):
                    completed = True
                    break
                time.sleep(0.25)
            print(
                f"drained: {completed} after {time.monotonic() - chaos_end:.1f} s", file=sys.stderr
            )
            verdict = _judge(client, plan, seed, completed)
        print(f"judged at {time.monotonic() - started:.1f} s", file=sys.stderr)
    finally:
        stop.set()
        bench.down()
        if keep:
            print(f"the cluster's directory (logs) is kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    recover = bench.recover_s or [0.0]
    print(
        "shard recovery by step, median / max s: "
        + ", ".join(
            f"{name} {statistics.median(s):.3f} / {max(s):.3f}"
            for name, s in bench.phases_s.items()
            if s
        ),
        file=sys.stderr,
    )
    if bench.recoveries:
        _print_slowest(bench, chaos_start_ms)
    print(f"total {time.monotonic() - started:.1f} s", file=sys.stderr)
    return {
        "kills": len(bench.kills),
        **verdict,
        "recover_s_median": round(statistics.median(recover), 3),
        "recover_s_max": round(max(recover), 3),
        "throughput_ratio": round(under_chaos / baseline, 3) if baseline else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="40 s of measurement, not 5 min")
    parser.add_argument("--seed", type=int, default=0, help="seed of the victims and the net")
    parser.add_argument(
        "--keep", action="store_true", help="keep the cluster's directory (its logs) afterwards"
    )
    args = parser.parse_args()
    result = run(QUICK if args.quick else FULL, args.seed, keep=args.keep)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
