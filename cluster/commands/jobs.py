"""The job runner's command: ``cpn demo jobs``.

A subcommand of ``cpn demo`` (:mod:`cluster.commands.crawl`, whose ``cpn demo`` alone
runs the crawl demo), registered by :mod:`cluster.cli`; the work is done by
:mod:`cluster.jobs.demo`, imported inside the command (every ``cpn`` process, shards
included, imports this module).

Exit codes: 0 every promise held; 1 one was broken (a job lost or ended twice, a limit
violation, a job the API executed twice, more calls in flight than the cap, or a
timeout), and the report says which; 2 usage or input error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cluster.commands.options import DURATION
from cluster.commands.terminate import sigterm_unwinds
from router.table import SHARDS_MAX

EXIT_FAILED = 1

DIRECTORY = click.Path(file_okay=False, path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("jobs")
@click.option(
    "--customers", type=click.IntRange(1, 100_000), default=2_000, show_default=True,
    help="Customers, each with its own rate limit.",
)  # fmt: skip
@click.option(
    "--jobs", "jobs_max", type=click.IntRange(1, 100), default=3, show_default=True,
    help="Jobs per customer: 1 to this many, drawn from the seed.",
)  # fmt: skip
@click.option(
    "--rate", type=click.IntRange(1, 1_000), default=2, show_default=True,
    help="Calls per customer in any sliding window (--window); low enough to be reached.",
)  # fmt: skip
@click.option("--window", "window_ms", type=DURATION, default="1s", show_default=True)
@click.option(
    "--concurrency", type=click.IntRange(1, 1_024), default=64, show_default=True,
    help="Calls in progress at once, cluster-wide (the API's cap).",
)  # fmt: skip
@click.option(
    "--late", "late_ms", type=DURATION, default="500ms", show_default=True,
    help="A worker refuses to call later than this after a job's start time.",
)  # fmt: skip
@click.option(
    "--workers", type=click.IntRange(1, 16), default=2, show_default=True,
    help="Worker processes (each can carry the whole cap).",
)  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of jobs and failures.")
@click.option(
    "--latency", "latency_ms", type=DURATION, default="5ms", show_default=True,
    help="The mock API's answer time.",
)  # fmt: skip
@click.option(
    "--flaky", "flaky_rate", type=click.FloatRange(0, 1), default=0.1, show_default=True,
    help="Share of jobs whose first two calls fail with 503 (retried).",
)  # fmt: skip
@click.option(
    "--broken", "broken_rate", type=click.FloatRange(0, 1), default=0.01, show_default=True,
    help="Share of jobs whose every call fails (they end dead).",
)  # fmt: skip
@click.option("--shards", type=click.IntRange(1, SHARDS_MAX), default=2, show_default=True)
@click.option(
    "--timeout", "timeout_ms", type=DURATION, default="120s", show_default=True,
    help="Stop after this long, every job ended or not (then exit 1).",
)  # fmt: skip
@click.option("--data", "data_dir", type=DIRECTORY, help="Keep the cluster, logs and API log here.")
@click.option("--report-json", type=FILE, help="Also write the report to this file as JSON.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def jobs_demo(
    customers: int,
    jobs_max: int,
    rate: int,
    window_ms: int,
    concurrency: int,
    late_ms: int,
    workers: int,
    seed: int,
    latency_ms: int,
    flaky_rate: float,
    broken_rate: float,
    shards: int,
    timeout_ms: int,
    data_dir: Path | None,
    report_json: Path | None,
    quiet: bool,
) -> None:
    """Run jobs of many customers against a mock API under per-customer rate limits and
    a global cap, on a real cluster, and check the promises at the API.

    Exit 0: every job ended in done or dead exactly once, with no limit violation, no
    job executed twice by the API (a replayed key is no execution) and never more calls
    in flight than the cap; 1: one was broken."""
    if flaky_rate + broken_rate > 1:
        raise click.BadParameter("--flaky and --broken together may not exceed 1")
    click.echo(
        f"demo jobs: 1-{jobs_max} jobs for each of {customers:,} customers against a mock "
        f"API on loopback (latency {latency_ms} ms, {flaky_rate:.0%} of jobs failing twice, "
        f"{broken_rate:.0%} always); {rate} calls per customer per {window_ms} ms, "
        f"{concurrency} at once, late after {late_ms} ms, {shards} shards, {workers} workers",
        err=True,
    )
    from cluster.jobs.demo import JobsDemo, JobsDemoOptions  # noqa: PLC0415 - see the docstring

    options = JobsDemoOptions(
        customers=customers,
        jobs=jobs_max,
        rate=rate,
        window_ms=window_ms,
        concurrency=concurrency,
        late_ms=late_ms,
        workers=workers,
        seed=seed,
        latency_ms=latency_ms,
        flaky_rate=flaky_rate,
        broken_rate=broken_rate,
        shards=shards,
        timeout_ms=timeout_ms,
        data_dir=data_dir,
        progress=not quiet,
    )
    with sigterm_unwinds():
        report = JobsDemo(options).run()
    for line in report.lines():
        click.echo(line)
    if report_json is not None:
        report_json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if not report.ok:
        sys.exit(EXIT_FAILED)
