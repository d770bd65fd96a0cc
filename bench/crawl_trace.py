"""Where the time between an answer and the next start at one host goes (docs/scraper.md,
"Per request"): ``python -m bench.crawl_trace [--hosts 40 --pages 10 --delay-ms 50]``.

Runs ``cpn crawl`` once on a fresh mock web (the sweep's point 2 by default, the sweep's
limits: ``bench/crawl_sweep.py``), keeps its data directory, and puts side by side the
fetch workers' timing logs (``DATA/crawl/workers/fetch-*.timings.jsonl``: leased, start,
sent, answered) and the mock web's request log (parsed, answered). Every figure is in ms,
measured from the previous answer at the same host:

* **next request**: when the net gave the next fetch its start time, when a worker
  leased it, sent it, and when the server parsed it (p10 and median over all requests);
* **discovery**: the same for the first page after a host's root (a seed): that page is
  known only once the root's answer went through the net's admission, so its lease
  measures the discovery path (answer -> links -> admitted -> decided -> leased).

The last line is one JSON object of these figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.crawl_sweep import SweepPoint, _read_log, describe, ours, run_crawler

STEPS = ("start_at_ms", "leased_ms", "sent_ms", "server_ms")


def _quantiles(values: Sequence[int]) -> tuple[int, int]:
    ordered = sorted(values)
    if not ordered:
        return (0, 0)
    return (ordered[len(ordered) // 10], int(statistics.median(ordered)))


def trace(root: Path) -> dict[str, Any]:
    """The per-request figures of the crawl kept under ``root``."""
    timings: list[dict[str, Any]] = []
    for path in sorted((root / "crawl").glob("**/fetch-*.timings.jsonl")):
        timings += [json.loads(line) for line in path.read_text().splitlines() if line]
    server = {
        (r.netloc, r.path, r.attempt): r for r in _read_log(root / "web-ours" / "requests.jsonl")
    }
    by_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in timings:
        if t["sent_ms"]:
            by_host[t["domain"]].append(t)
    gaps: dict[str, list[int]] = {s: [] for s in STEPS}
    discovery: dict[str, list[int]] = {s: [] for s in STEPS}
    for host, requests in by_host.items():
        requests.sort(key=lambda t: t["sent_ms"])
        attempts: dict[str, int] = defaultdict(int)
        stamped = []
        for t in requests:
            url_path = t["url"].split(host, 1)[1] or "/"
            attempts[url_path] += 1
            record = server.get((host, url_path, attempts[url_path]))
            stamped.append(t | {"server_ms": record.start_wall_ms if record else 0})
        for before, after in itertools.pairwise(stamped):
            for step in STEPS:
                if after[step]:
                    gaps[step].append(after[step] - before["ended_ms"])
        roots = [i for i, t in enumerate(stamped) if t["url"].endswith("/") and t["kind"] == "page"]
        if roots and roots[0] + 1 < len(stamped):
            root_answer, nxt = stamped[roots[0]], stamped[roots[0] + 1]
            for step in STEPS:
                if nxt[step]:
                    discovery[step].append(nxt[step] - root_answer["ended_ms"])
    return {
        "requests": sum(len(r) for r in by_host.values()),
        "next_request": {s: _quantiles(v) for s, v in gaps.items()},
        "discovery": {s: _quantiles(v) for s, v in discovery.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crawl_trace", description=__doc__)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--retry-after-fraction", type=float, default=0.05)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run here")
    parser.add_argument("--shards", type=int, default=0, help="0: cpn crawl's auto rule")
    parser.add_argument("--workers", type=int, default=0, help="fetch workers; 0: auto")
    parser.add_argument(
        "--net-param", action="append", default=[], metavar="KEY=VALUE", help="to cpn crawl"
    )
    args = parser.parse_args(argv)
    point = SweepPoint(
        args.hosts, args.pages, args.delay_ms, retry_after_fraction=args.retry_after_fraction
    )
    with tempfile.TemporaryDirectory(prefix="cpn-bench-trace-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        out = root / "ours.jsonl"
        command = ours(point, out, root / "crawl")
        command += ["--shards", str(args.shards), "--workers", str(args.workers)]
        command += [arg for param in args.net_param for arg in ("--net-param", param)]
        run = run_crawler("ours", point, root, command, out)
        print(describe(run))
        figures = trace(root)
    print(f"{'ms after the previous answer at the host':44} {'p10':>6} {'median':>7}")
    for title, key in (("next request", "next_request"), ("discovery (after a root)", "discovery")):
        print(title)
        for step in STEPS:
            p10, median = figures[key][step]
            print(f"  {step:42} {p10:6d} {median:7d}")
    print(json.dumps(figures | {"span_over_bound": round(run.span_over_bound, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
