"""``cpn worker``: run a worker process against a cluster.

* ``cpn worker run MODULE:FUNCTION --data DIR | --config FILE``: a function declared
  with the worker SDK (``@worker(place=...)``, :mod:`cluster.sdk`), leased from every
  shard until SIGTERM;
* ``cpn worker --role fetch|parse|store``: the crawler's workers
  (:mod:`cluster.crawler.workers`, written on the same SDK) with their settings.

The SDK and the crawler are imported inside the commands: every ``cpn`` process imports
this module, and a restarted shard should not pay for an HTTP client it never uses.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cluster.commands.deploy import active_config, config_option
from cluster.commands.options import DURATION, log_json_option, worker_metrics_options
from cluster.layout import parse_net_param
from nets.errors import CpnError

if TYPE_CHECKING:
    from cluster.sdk.spec import WorkerSpec

# cluster.crawler.workers.ROLES, spelled out here for the reason above (a test checks it).
WORKER_ROLES = ("fetch", "parse", "store")

DIRECTORY = click.Path(file_okay=False, path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)


def _cluster_choice(data_dir: Path | None) -> None:
    if (data_dir is None) == (active_config() is None):
        raise click.UsageError("give the cluster as exactly one of --data DIR or --config FILE")


@click.group(invoke_without_command=True)
@click.option(
    "--role", type=click.Choice(WORKER_ROLES),
    help="Run one of the crawler's workers (or use `cpn worker run MODULE:FUNCTION`).",
)  # fmt: skip
@click.option(
    "--data", "data_dir", type=DIRECTORY,
    help="The crawler cluster's data directory (a local cluster; or give --config).",
)  # fmt: skip
@config_option("worker")
@click.option(
    "--net-param", "net_params", multiple=True, metavar="KEY=VALUE",
    help="A crawler net parameter the worker uses (user_agent, body_max_bytes).",
)  # fmt: skip
@click.option("--out", type=FILE, help="The JSON Lines output (store workers).")
@click.option(
    "--concurrency", type=click.IntRange(1, 1024),
    help="Leases worked on at once (default: fetch 32, parse 1, store 1).",
)  # fmt: skip
@click.option("--lease", "lease_ms", type=DURATION, default="30s", show_default=True)
@click.option("--timings", type=FILE, help="Append each request's timing here (fetch workers).")
@click.option(
    "--timeout", "timeout_ms", type=DURATION, default="10s", show_default=True,
    help="Connect/read timeout of one request (fetch workers).",
)  # fmt: skip
@click.option("--no-fsync", is_flag=True, help="Store workers: skip fsync after each write.")
@click.option(
    "--ready-file", type=FILE,
    help="Create this file once the worker is leasing (cpn crawl waits for it to seed).",
)  # fmt: skip
@worker_metrics_options
@click.pass_context
def worker(
    ctx: click.Context,
    role: str | None,
    data_dir: Path | None,
    out: Path | None,
    concurrency: int | None,
    lease_ms: int,
    timings: Path | None,
    timeout_ms: int,
    no_fsync: bool,
    ready_file: Path | None,
    metrics: str,
    metrics_file: Path | None,
    allow_remote: bool,
    net_params: tuple[str, ...],
) -> None:
    """Run a worker: lease work from every shard, do it, complete it.

    `cpn worker run MODULE:FUNCTION` runs your own worker function; `cpn worker --role`
    runs one of the crawler's. The worker finds the cluster by --data (a local cluster)
    or by --config (the cluster file: the router's endpoint, the shard count, the net
    and the client key)."""
    if ctx.invoked_subcommand is not None:
        return
    if role is None:
        raise click.UsageError("give --role fetch|parse|store, or `cpn worker run MODULE:FUNCTION`")
    if role == "store" and out is None:
        raise click.BadParameter("a store worker needs --out FILE", param_hint="--out")
    _cluster_choice(data_dir)
    cluster_file = active_config()
    params = dict(parse_net_param(text) for text in net_params)
    timeout_s = timeout_ms / 1000
    # httpcore imports trio, when it is installed (selenium, a test dependency, brings
    # it), only to tell whether it runs under trio: a crawler worker runs on asyncio, and
    # the import is a third of its start-up. This process is the worker's alone.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    from cluster.crawler.fetch import FetchSettings  # noqa: PLC0415 - see the docstring
    from cluster.crawler.workers import (  # noqa: PLC0415
        FETCH_LEASE_SLACK_MS,
        WorkerConfig,
        run_worker,
    )

    config = WorkerConfig(
        role=role,
        data_dir=data_dir,
        out=out,
        concurrency=concurrency or 0,
        # A fetch lease covers the fetch's deadline (twice its timeout), see _within_lease.
        lease_ms=max(lease_ms, 2 * timeout_ms + FETCH_LEASE_SLACK_MS)
        if role == "fetch"
        else lease_ms,
        timings=timings,
        fetch=FetchSettings(timeout_s=timeout_s, connect_timeout_s=min(timeout_s, 5.0)),
        durable=not no_fsync,
        router_endpoint="" if cluster_file is None else cluster_file.router.endpoint,
        shards=0 if cluster_file is None else cluster_file.shard_count,
        params=params,
        ready_file=ready_file,
        metrics=metrics,
        metrics_file=metrics_file,
        allow_remote=allow_remote,
    )
    run_worker(config)


@worker.command("run")
@click.argument("function_path", metavar="MODULE:FUNCTION")
@click.option(
    "--data", "data_dir", type=DIRECTORY,
    help="The cluster's data directory (a local cluster; or give --config).",
)  # fmt: skip
@config_option("worker")
@click.option(
    "--net-param", "net_params", multiple=True, metavar="KEY=VALUE",
    help="A net parameter (with --config: the net is built with these).",
)  # fmt: skip
@click.option(
    "--concurrency", type=click.IntRange(1, 4096),
    help="Leases worked on at once (default: the worker's, from @worker(concurrency=...)).",
)  # fmt: skip
@click.option("--lease", "lease_ms", type=DURATION, help="Lease length (default: the worker's).")
@click.option(
    "--drain", "drain_ms", type=DURATION, default="10s", show_default=True,
    help="On SIGTERM, how long running calls may finish before their tokens are handed back.",
)  # fmt: skip
@click.option("--ready-file", type=FILE, help="Create this file once the worker is leasing.")
@log_json_option
@worker_metrics_options
def run_command(
    function_path: str,
    data_dir: Path | None,
    net_params: tuple[str, ...],
    concurrency: int | None,
    lease_ms: int | None,
    drain_ms: int,
    ready_file: Path | None,
    log_json: bool,
    metrics: str,
    metrics_file: Path | None,
    allow_remote: bool,
) -> None:
    """Run the worker MODULE:FUNCTION (declared with `@worker(place=...)`) until SIGTERM.

    MODULE is imported from the working directory first, as `python -m` would."""
    _cluster_choice(data_dir)
    spec = load_worker(function_path)
    from cluster.sdk.runner import RunOptions, run  # noqa: PLC0415 - see the docstring
    from cluster.sdk.target import target_for, target_from_file  # noqa: PLC0415

    params = dict(parse_net_param(text) for text in net_params)
    cluster_file = active_config()
    target = (
        target_for(data_dir, params=params)
        if data_dir is not None
        else target_from_file(cluster_file, params=params)  # type: ignore[arg-type]
    )
    options = RunOptions(
        concurrency=concurrency or 0,
        lease_ms=lease_ms or 0,
        drain_s=drain_ms / 1000,
        ready_file=ready_file,
        log_json=log_json,
        metrics=metrics,
        metrics_file=metrics_file,
        allow_remote=allow_remote,
    )
    run(spec, target, options)


def load_worker(path: str) -> WorkerSpec:
    """The worker ``MODULE:FUNCTION`` names.

    Raises:
        CpnError: the path is malformed, the module does not import, or the attribute
            is missing or not declared with ``@worker``.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise CpnError(f"worker {path!r} must look like MODULE:FUNCTION (e.g. jobs:resize)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CpnError(f"worker {path!r}: cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, attr, None)
    from cluster.sdk.spec import WorkerSpec  # noqa: PLC0415 - see the docstring

    if found is None:
        raise CpnError(f"worker {path!r}: module {module_name!r} has no {attr!r}")
    if not isinstance(found, WorkerSpec):
        raise CpnError(
            f"worker {path!r} is a {type(found).__name__}, not a worker; declare it with "
            "@worker(place=...) from cluster"
        )
    return found
