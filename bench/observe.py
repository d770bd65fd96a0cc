"""Benchmark: what observing a shard costs it, and what a scrape of a busy shard costs.

``python -m bench.observe [--quick]`` runs:

1. **Metrics on and off.** The ``bench.shard`` firing workload (the zero-delay scraper
   decision net, ``bench/shard_nets.py``; durability ``process``) on one real ``cpn
   shard`` process with ``--metrics 127.0.0.1:0`` and with ``--metrics off``,
   alternated ``ROUNDS`` times (on, off, on, off, ...; the first of each pair changes
   from round to round, so a drift of the machine's load hits both alike). The rate is
   firings over the time from the shard publishing its endpoint to the first
   statistics reply showing every target done (polled every ``STATS_POLL_S``), as in
   ``bench.shard``; its CPU time (``/proc``) is reported too. The figure is the ratio of
   the medians, with each side's spread (min..max). While the metrics-on shard fires,
   nothing scrapes it but the one scrape at the end: the cost measured is the
   per-batch sampling, which every batch pays; a scrape's cost is part 2's.
2. **Scrapes of a busy shard.** One more metrics-on run, scraped every
   ``SCRAPE_EVERY_S`` while it fires: the latency of each scrape (HTTP GET to the last
   byte, p50/p99) and the samples a scrape returns (the series per shard).
3. **The dashboard**: ``measure_dashboard(quick)`` from ``bench/observe_dashboard.py``
   (a real two-shard cluster, ``cpn dashboard`` and headless Chromium from Debian's
   packages): first paint and snapshots applied per second.

Targets: metrics ratio >= 0.97 (median), series per shard <= 1,000, scrape p99 <=
50 ms. The last line of output is one JSON object with keys ``metrics_ratio``,
``series_per_shard``, ``scrape_p99_ms``, ``dashboard_first_paint_ms`` and
``dashboard_updates_per_s`` first. Every shard runs in its own temporary directory on
127.0.0.1 and is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from bench.observe_dashboard import measure_dashboard
from bench.shard import SCRAPER_NET, _cpu_s, _finished, _stop, _wait_ready
from bench.shard_nets import TARGETS_ENV
from cluster.client import ShardClient
from cluster.processes import ShardProcess, start_shard
from nets.errors import CpnError
from router.shell.metrics import read_metrics_url
from shard.reading import ReadingMark
from shard.shell.metrics import ShardMetrics
from shard.shell.runtime import BatchTimer, ShardConfig, ShardRuntime
from shard.shell.store import Durability

ROOT: Final = Path(__file__).resolve().parent.parent
TARGETS_FULL: Final = 100_000
TARGETS_QUICK: Final = 20_000
ROUNDS_FULL: Final = 9
ROUNDS_QUICK: Final = 7
STATS_POLL_S: Final = 0.01
SCRAPE_EVERY_S: Final = 0.05
WORKLOAD_TIMEOUT_S: Final = 600.0
CLIENT_TIMEOUT_MS: Final = 60_000
SCRAPE_TIMEOUT_S: Final = 10.0

METRICS_RATIO_MIN: Final = 0.97
SERIES_PER_SHARD_MAX: Final = 1_000
SCRAPE_P99_MS_MAX: Final = 50.0


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape(url: str) -> tuple[float, int]:
    """One scrape of ``url``: (seconds to the last byte, samples it returned)."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode()
    elapsed_s = time.perf_counter() - started
    samples = sum(len(f.samples) for f in text_string_to_metric_families(text))
    return elapsed_s, samples


@dataclass(frozen=True, slots=True)
class Run:
    """One run of the workload on one shard."""

    metrics: bool
    firings: int
    run_s: float
    cpu_s: float | None
    commits: int
    scrapes_s: list[float] = field(default_factory=list)
    samples: int = 0

    @property
    def per_s(self) -> float:
        return self.firings / self.run_s


def _start(data_dir: Path, targets: int, *, metrics: bool) -> ShardProcess:
    return start_shard(
        SCRAPER_NET,
        data_dir,
        durability="process",
        extra_args=("--metrics", "127.0.0.1:0" if metrics else "off"),
        env={"PYTHONPATH": str(ROOT), TARGETS_ENV: str(targets)},
        wait=False,
    )


def _scraper(url: str, stop: threading.Event, latencies: list[float]) -> Callable[[], None]:
    def run() -> None:
        while not stop.wait(SCRAPE_EVERY_S):
            latencies.append(scrape(url)[0])

    return run


def time_run(tmp: Path, serial: int, targets: int, *, metrics: bool, scraped: bool) -> Run:
    """The workload on a fresh shard (metrics on or off; scraped while busy or not)."""
    handle = _start(tmp / f"shard-{serial}", targets, metrics=metrics)
    stop = threading.Event()
    latencies: list[float] = []
    scraper = None
    try:
        ready = _wait_ready(handle)
        cpu_ready = _cpu_s(handle.pid)
        url = None
        if metrics:
            published = read_metrics_url(handle.data_dir)
            if published is None:
                raise CpnError(f"the shard in {handle.data_dir} published no metrics URL")
            url = published[0]
            if scraped:
                scraper = threading.Thread(target=_scraper(url, stop, latencies), daemon=True)
                scraper.start()
        with ShardClient(handle.endpoint, timeout_ms=CLIENT_TIMEOUT_MS) as client:
            while True:
                stats = client.stats()
                now = time.perf_counter()
                if _finished(stats, targets):
                    cpu_done = _cpu_s(handle.pid)
                    break
                if now - ready > WORKLOAD_TIMEOUT_S:
                    raise CpnError(f"the shard did not finish {targets:,} targets in time")
                time.sleep(STATS_POLL_S)
        stop.set()
        if scraper is not None:
            scraper.join(timeout=SCRAPE_TIMEOUT_S)
        samples = scrape(url)[1] if url is not None else 0
    finally:
        stop.set()
        _stop(handle)
    cpu_s = None if cpu_ready is None or cpu_done is None else cpu_done - cpu_ready
    firings = sum(stats["firings"].values())
    return Run(metrics, firings, now - ready, cpu_s, stats["commits"], latencies, samples)


def sampling_cost_us(tmp: Path, *, repeats: int = 2_000) -> float:
    """Microseconds one batch's sampling takes (the runtime's reading and
    ``ShardMetrics.after_batch``), timed in
    this process on a shard runtime of the same net (its data directory in ``tmp``)."""
    os.environ[TARGETS_ENV] = "1000"
    config = ShardConfig(SCRAPER_NET, tmp / "in-process", durability=Durability.PROCESS)
    runtime = ShardRuntime(config)
    try:
        metrics = ShardMetrics(runtime.reading(ReadingMark()))
        runtime.core.fire(runtime.clock.now_ms(), BatchTimer())
        runtime.commit()
        started = time.perf_counter()
        for _ in range(repeats):
            metrics.after_batch(runtime.reading(metrics.mark))
        return (time.perf_counter() - started) / repeats * 1e6
    finally:
        runtime.close()


def _dashboard(quick: bool) -> dict[str, float | None]:
    """The dashboard's figures, measured in headless Chromium (bench/observe_dashboard.py)."""
    figures = measure_dashboard(quick)
    return {
        "dashboard_first_paint_ms": figures.get("dashboard_first_paint_ms"),
        "dashboard_updates_per_s": figures.get("dashboard_updates_per_s"),
    }


def _spread(runs: list[Run], rate: Callable[[Run], float | None]) -> tuple[float, float, float]:
    values = [v for v in (rate(r) for r in runs) if v is not None]
    return statistics.median(values), min(values), max(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observe", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer targets and rounds (< 60 s)")
    args = parser.parse_args(argv)
    targets = TARGETS_QUICK if args.quick else TARGETS_FULL
    rounds = ROUNDS_QUICK if args.quick else ROUNDS_FULL
    wall_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cpn-bench-observe-") as tmp_name:
        tmp = Path(tmp_name)
        runs: list[Run] = []
        for index in range(rounds):
            order = (True, False) if index % 2 == 0 else (False, True)
            for metrics in order:
                runs.append(time_run(tmp, len(runs), targets, metrics=metrics, scraped=False))
        busy = time_run(tmp, len(runs), targets, metrics=True, scraped=True)
        cost_us = sampling_cost_us(tmp)
    on = [r for r in runs if r.metrics]
    off = [r for r in runs if not r.metrics]
    if len({r.firings for r in runs}) != 1:
        print(f"error: runs fired differently: {[r.firings for r in runs]}", file=sys.stderr)
        return 1
    on_wall = _spread(on, lambda r: r.per_s)
    off_wall = _spread(off, lambda r: r.per_s)
    ratio = on_wall[0] / off_wall[0]
    on_cpu = _spread(on, lambda r: r.firings / r.cpu_s if r.cpu_s else None)
    off_cpu = _spread(off, lambda r: r.firings / r.cpu_s if r.cpu_s else None)
    cpu_ratio = on_cpu[0] / off_cpu[0]
    print(
        f"firing workload ({targets:,} targets, {runs[0].firings:,} firings, durability "
        f"process), {rounds} rounds of metrics on/off alternated:"
    )
    for label, wall, cpu in (("on: ", on_wall, on_cpu), ("off:", off_wall, off_cpu)):
        print(
            f"  metrics {label} median {wall[0]:,.0f} firings/s (spread {wall[1]:,.0f}.."
            f"{wall[2]:,.0f}); per CPU-s {cpu[0]:,.0f} ({cpu[1]:,.0f}..{cpu[2]:,.0f})"
        )
    pairs = statistics.median(a.per_s / b.per_s for a, b in zip(on, off, strict=True))
    print(
        f"  ratio on/off (medians): {ratio:.3f} [target >= {METRICS_RATIO_MIN}: "
        f"{_verdict(ratio >= METRICS_RATIO_MIN)}]; per CPU-s {cpu_ratio:.3f}; median of "
        f"the rounds' ratios {pairs:.3f}"
    )
    commits = statistics.median(r.commits for r in on)
    run_s = statistics.median(r.run_s for r in on)
    share = cost_us * commits / (run_s * 1e6)
    print(
        f"  sampling cost: {cost_us:.1f} us per batch (timed in-process) x {commits:.0f} "
        f"batches per run / {run_s:.2f} s = {share:.5%} of a run (the loop's cost of metrics;"
        " the rest of the difference above is the machine's noise)"
    )
    if not busy.scrapes_s:
        print("error: the busy shard was never scraped", file=sys.stderr)
        return 1
    p50_ms = _quantile(busy.scrapes_s, 0.5) * 1000
    p99_ms = _quantile(busy.scrapes_s, 0.99) * 1000
    print(
        f"scrapes of a busy shard (every {SCRAPE_EVERY_S * 1000:.0f} ms while it fired, "
        f"{len(busy.scrapes_s)} scrapes): p50 {p50_ms:.2f} ms, p99 {p99_ms:.2f} ms "
        f"[target <= {SCRAPE_P99_MS_MAX:g}: {_verdict(p99_ms <= SCRAPE_P99_MS_MAX)}], max "
        f"{max(busy.scrapes_s) * 1000:.2f} ms; its rate {busy.per_s:,.0f} firings/s"
    )
    print(
        f"series per shard (samples in one scrape, the scraper net): {busy.samples} "
        f"[target <= {SERIES_PER_SHARD_MAX:,}: {_verdict(busy.samples <= SERIES_PER_SHARD_MAX)}]"
    )
    dashboard = _dashboard(args.quick)
    wall_s = time.perf_counter() - wall_start
    print(
        f"benchmark wall time: {wall_s:.1f} s; load average (1 min) {load_start:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} CPUs"
    )
    result: dict[str, Any] = {
        "metrics_ratio": round(ratio, 4),
        "series_per_shard": busy.samples,
        "scrape_p99_ms": round(p99_ms, 3),
        **dashboard,
        "metrics_ratio_cpu": round(cpu_ratio, 4),
        "metrics_ratio_rounds_median": round(pairs, 4),
        "sampling_us_per_batch": round(cost_us, 1),
        "sampling_share": round(share, 6),
        "metrics_on_per_s": [round(r.per_s) for r in on],
        "metrics_off_per_s": [round(r.per_s) for r in off],
        "scrape_p50_ms": round(p50_ms, 3),
        "scrapes": len(busy.scrapes_s),
        "busy_per_s": round(busy.per_s),
        "targets": targets,
        "rounds": rounds,
        "quick": args.quick,
        "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(wall_s, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
