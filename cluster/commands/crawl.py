"""The crawler's commands: ``cpn crawl`` and ``cpn demo``.

``cpn demo`` alone runs the crawl demo; it is a group so that other applications' demos
are its subcommands (``cpn demo jobs``, :mod:`cluster.commands.jobs`, added by
:mod:`cluster.cli`).

Registered on the ``cpn`` group by :mod:`cluster.cli` (which turns their errors into
one-line messages and exit codes); the work is done by :mod:`cluster.crawler.crawl`,
:mod:`cluster.crawler.demo` and :mod:`cluster.crawler.workers`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cluster.commands.options import DURATION, NetParam
from cluster.commands.terminate import sigterm_unwinds
from nets.scraper import SCOPES
from router.table import SHARDS_MAX

# The crawl modules (aiohttp, the mock web) are imported inside the commands that use them:
# every `cpn` process, shards and routers included, imports this module, and a shard
# restarted after a crash should not pay for an HTTP client it never uses.

DIRECTORY = click.Path(file_okay=False, path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)


@click.command()
@click.argument("seeds", nargs=-1, required=True, metavar="SEEDS_FILE_OR_URL...")
@click.option("--out", type=FILE, required=True, help="The JSON Lines file of stored pages.")
@click.option(
    "--shards", type=click.IntRange(0, SHARDS_MAX), default=0, show_default=True,
    help="Shards of the cluster this crawl starts (0: 1 while its domains over --delay "
    "allow at most 1,000 requests/s, else 2).",
)  # fmt: skip
@click.option(
    "--workers", type=click.IntRange(0, 64), default=0, show_default=True,
    help="Fetch worker processes, each running many fetches (0: as --shards 0).",
)  # fmt: skip
@click.option(
    "--parse-workers", type=click.IntRange(0, 64), default=0, show_default=True,
    help="Parse workers (0: one, started only if a page waits to be parsed).",
)  # fmt: skip
@click.option("--store-workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option(
    "--delay", "delay_ms", type=DURATION, default="1s", show_default=True,
    help="Minimum gap between two request starts at one domain (Crawl-delay wins if larger).",
)  # fmt: skip
@click.option("--proxies", "proxies_file", type=FILE, help="A file of proxy URLs, one a line.")
@click.option("--max-pages", type=click.IntRange(min=0), help="Pages admitted per domain at most.")
@click.option("--max-depth", type=click.IntRange(min=0), help="Link depth from a seed at most.")
@click.option("--scope", type=click.Choice(SCOPES), default="same-domains", show_default=True)
@click.option("--allow", multiple=True, help="A domain in scope (with --scope allow-list).")
@click.option(
    "--cluster", "cluster_dir", type=DIRECTORY,
    help="Join the running crawler cluster in this directory instead of starting one.",
)  # fmt: skip
@click.option(
    "--data", "data_dir", type=DIRECTORY,
    help="Keep the crawl's cluster and worker logs here (default: a temporary directory).",
)  # fmt: skip
@click.option(
    "--net-param", "net_params", type=NetParam(), multiple=True,
    help="Any other crawl policy field, KEY=VALUE (see nets/scraper.py CrawlPolicy).",
)  # fmt: skip
@click.option(
    "--timeout", "timeout_ms", type=DURATION, default="1h", show_default=True,
    help="Stop the crawl after this long, finished or not.",
)  # fmt: skip
@click.option(
    "--fetch-timeout", "fetch_timeout_ms", type=DURATION, default="10s", show_default=True,
    help="Connect/read timeout of one request.",
)  # fmt: skip
@click.option(
    "--durability", type=click.Choice(["fsync", "process"]), default="process",
    show_default=True, help="The shards' and the output file's durability.",
)  # fmt: skip
@click.option("--report-json", type=FILE, help="Also write the report to this file as JSON.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def crawl(
    seeds: tuple[str, ...],
    out: Path,
    shards: int,
    workers: int,
    parse_workers: int,
    store_workers: int,
    delay_ms: int,
    proxies_file: Path | None,
    max_pages: int | None,
    max_depth: int | None,
    scope: str,
    allow: tuple[str, ...],
    cluster_dir: Path | None,
    data_dir: Path | None,
    net_params: tuple[tuple[str, Any], ...],
    timeout_ms: int,
    fetch_timeout_ms: int,
    durability: str,
    report_json: Path | None,
    quiet: bool,
) -> None:
    """Crawl from SEEDS (URLs, or files with one URL a line) politely, on a cluster.

    Starts a cluster of the crawler net (or joins one with --cluster), starts fetch and
    store workers (and parse workers if asked, or once a page waits to be parsed),
    shows progress, and prints a report at the end.
    """
    if scope == "allow-list" and not allow:
        raise click.BadParameter("--scope allow-list needs at least one --allow DOMAIN")
    from cluster.crawler.crawl import Crawl, CrawlOptions  # noqa: PLC0415 - see the note above

    options = CrawlOptions(
        seeds=seeds,
        out=out,
        shards=shards,
        fetch_workers=workers,
        parse_workers=parse_workers,
        store_workers=store_workers,
        delay_ms=delay_ms,
        proxies_file=proxies_file,
        max_pages=max_pages,
        max_depth=max_depth,
        scope=scope,
        allow=allow,
        cluster_dir=cluster_dir,
        data_dir=data_dir,
        net_params=dict(net_params),
        timeout_ms=timeout_ms,
        durability=durability,
        fetch_timeout_ms=fetch_timeout_ms,
        progress=not quiet,
    )
    with sigterm_unwinds():
        report = Crawl(options).run()
    for line in report.lines():
        click.echo(line)
    if report_json is not None:
        report_json.write_text(json.dumps(report.to_json(), indent=2) + "\n")


@click.group(invoke_without_command=True)
@click.option("--hosts", type=click.IntRange(2, 500), default=30, show_default=True)
@click.option("--pages", type=click.IntRange(2, 1000), default=15, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the mock web.")
@click.option("--latency", "latency_ms", type=DURATION, default="10ms", show_default=True)
@click.option("--delay", "delay_ms", type=DURATION, default="100ms", show_default=True)
@click.option(
    "--failing",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Fraction of pages that answer 503 twice, then 200.",
)
@click.option(
    "--retry-after-pages",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of the other pages that always answer 503 with Retry-After.",
)
@click.option(
    "--retry-after",
    "retry_after_ms",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Their Retry-After (whole seconds, 1s to 1h).",
)
@click.option("--shards", type=click.IntRange(1, SHARDS_MAX), default=2, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Fetch worker processes.",
)
@click.option("--out", type=FILE, help="Keep the stored pages in this file.")
@click.option("--data", "data_dir", type=DIRECTORY, help="Keep the cluster and logs here.")
@click.option("--report-json", type=FILE, help="Also write the figures to this file as JSON.")
@click.pass_context
def demo(
    ctx: click.Context,
    hosts: int,
    pages: int,
    seed: int,
    latency_ms: int,
    delay_ms: int,
    failing: float,
    retry_after_pages: float,
    retry_after_ms: int,
    shards: int,
    workers: int,
    out: Path | None,
    data_dir: Path | None,
    report_json: Path | None,
) -> None:
    """Crawl an embedded mock web on loopback and check politeness at the server.

    `cpn demo jobs` runs the job runner instead (see `cpn demo jobs --help`)."""
    if ctx.invoked_subcommand is not None:
        _refuse_crawl_options(ctx)
        return
    if retry_after_ms % 1_000 or not 1_000 <= retry_after_ms <= 3_600_000:
        raise click.BadParameter(
            f"{retry_after_ms} ms: Retry-After is whole seconds, 1s to 1h",
            param_hint="--retry-after",
        )
    refusing = (
        f", {retry_after_pages:.0%} always 503 with Retry-After {retry_after_ms // 1000} s"
        if retry_after_pages
        else ""
    )
    click.echo(
        f"demo: mock web of {hosts} hosts x {pages} pages on loopback (latency {latency_ms} "
        f"ms, {failing:.0%} of pages failing twice{refusing}, one host resetting connections, "
        f"a 50 MB page); crawling with {shards} shards, delay {delay_ms} ms",
        err=True,
    )
    from cluster.crawler.demo import DemoOptions, run_demo  # noqa: PLC0415 - see the note above

    options = DemoOptions(
        hosts=hosts,
        pages=pages,
        seed=seed,
        latency_ms=latency_ms,
        delay_ms=delay_ms,
        failing_fraction=failing,
        retry_after_fraction=retry_after_pages,
        retry_after_s=retry_after_ms // 1000,
        shards=shards,
        fetch_workers=workers,
        out=out,
        data_dir=data_dir,
    )
    with sigterm_unwinds():
        result = run_demo(options)
    for line in result.lines():
        click.echo(line)
    if report_json is not None:
        figures = {key: value for key, value in vars(result).items() if key != "report"}
        report_json.write_text(
            json.dumps({**figures, "report": result.report.to_json()}, indent=2) + "\n"
        )


def _refuse_crawl_options(ctx: click.Context) -> None:
    """The crawl demo's options mean nothing to another demo: say so, not ignore them."""
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name is not None
        and ctx.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT
    ]
    if given:
        raise click.UsageError(
            f"{', '.join(given)}: options of the crawl demo (`cpn demo`); give "
            f"`cpn demo {ctx.invoked_subcommand}` its own options after its name"
        )


def crawl_commands() -> list[click.Command]:
    """The commands this module adds to ``cpn`` (``cpn worker --role`` is in
    cluster/commands/workers.py, with ``cpn worker run``)."""
    return [crawl, demo]
