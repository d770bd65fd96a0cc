"""The ``cpn`` command line: the one place where errors become messages and exit codes.

Every operating error (:class:`nets.errors.CpnError` and click's own usage errors)
ends as a single line on stderr and a non-zero exit code; a traceback means a bug.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click

from cluster import scaling, totals
from cluster.chaos import DRAIN_TIMEOUT_S, TARGETS, ChaosRun, plan, victims
from cluster.client import ClusterClient
from cluster.commands.crawl import crawl_commands, demo
from cluster.commands.deploy import (
    allows_remote,
    config_option,
    health,
    keys,
    router_settings,
    shard_binds,
    shard_settings,
)
from cluster.commands.jobs import jobs_demo
from cluster.commands.options import (
    DURATION,
    allow_impure_option,
    cluster_data_option,
    log_json_option,
    net_params_option,
    refuse_impure,
)
from cluster.commands.workers import worker
from cluster.launch import down as stop_cluster
from cluster.launch import record_config, settle_config
from cluster.launch import up as start_cluster
from cluster.layout import ClusterConfig, ClusterLayout, live_endpoint, supervisor_pid
from cluster.logtail import tail
from cluster.processes import STDERR_FILE
from cluster.standby import STANDBY, await_order
from cluster.supervisor import supervise
from nets.errors import CpnError
from nets.loader import load_net
from nets.simulation import simulate
from router.endpoints import listen_address
from router.shell.daemon import LOG_FILE as ROUTER_LOG_FILE
from router.shell.daemon import RouterConfig
from router.shell.daemon import serve as serve_router
from router.shell.metrics import METRICS_DEFAULT
from router.table import SHARDS_MAX
from shard.shell.runtime import ShardConfig
from shard.shell.serve import LOG_FILE as SHARD_LOG_FILE
from shard.shell.serve import serve
from shard.shell.store import MAP_SIZE_BYTES_INITIAL, Durability

EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 1  # `cpn chaos --check` found the cluster's invariants violated


def _fail(message: str) -> NoReturn:
    click.echo(f"cpn: error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


# Commands whose modules are imported only when they run (or their help is shown): a
# shard or router process starts without the simulator's and the verifier's imports
# (about 0.1 s of every start).
LAZY_COMMANDS: dict[str, str] = {
    "check": "cluster.commands.check:check",
    "dashboard": "cluster.commands.dashboard:dashboard",
    "draw": "cluster.commands.draw:draw",
    "sim": "cluster.commands.sim:sim",
    "top": "cluster.commands.top:top",
    "verify": "cluster.commands.verify:verify",
}


class _LazyGroup(click.Group):
    """A command group that imports the modules of :data:`LAZY_COMMANDS` on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command), target
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cpn-cluster")
def cli() -> None:
    """cpn-cluster: coordination code as Coloured Petri Nets, on a sharded cluster."""


@cli.command()
@click.argument("net_path", metavar="NET")
@click.option(
    "--until",
    "until_ms",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Stop at this virtual time (e.g. 10m, 2h, or milliseconds).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for the random tie break and any seeded choice.",
)
@click.option(
    "--tie-break",
    type=click.Choice(["ordered", "random"]),
    default="ordered",
    show_default=True,
    help="How ties between equal-priority transitions are broken.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=10_000_000,
    show_default=True,
    help="Stop after this many firings.",
)
@click.option(
    "--replay",
    "replay_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Play a counterexample trace of `cpn verify` step by step instead.",
)
@allow_impure_option
def run(
    net_path: str,
    until_ms: int,
    seed: int,
    tie_break: str,
    max_steps: int,
    replay_path: Path | None,
    allow_impure: bool,
) -> None:
    """Run NET (package.module:attr, or a .pnml file) under virtual time and summarise it."""
    if replay_path is not None:
        from cluster.commands.verify import replay_trace  # noqa: PLC0415 - see LAZY_COMMANDS

        replay_trace(net_path, replay_path)
        return
    if net_path.endswith(".pnml"):
        from nets.pnml import load as load_pnml  # noqa: PLC0415 - see LAZY_COMMANDS

        net = load_pnml(Path(net_path))
    else:
        net = load_net(net_path, seed=seed)
    refuse_impure(net, allow_impure=allow_impure)
    started = time.perf_counter()
    summary = simulate(net, until_ms=until_ms, seed=seed, tie_break=tie_break, steps_max=max_steps)
    wall_s = time.perf_counter() - started
    rate = summary.steps / wall_s if wall_s > 0 else 0.0
    if summary.dead:
        state = "dead (nothing enabled, nothing pending)"
    elif summary.step_limit_reached:
        state = f"stopped at --max-steps {max_steps}"
    else:
        state = f"stopped at --until {until_ms} ms"
    click.echo(
        f"net {summary.net!r}, seed {summary.seed}: {summary.steps:,} firings, "
        f"virtual time {summary.virtual_ms / 1000:,.3f} s, wall time {wall_s:.3f} s "
        f"({rate:,.0f} firings/s); {state}"
    )
    width = max(len(n) for n in (*summary.firings, *summary.tokens))
    click.echo("firings per transition:")
    for name, count in summary.firings.items():
        click.echo(f"  {name:<{width}}  {count:>12,}")
    click.echo("tokens per place:")
    for name, count in summary.tokens.items():
        click.echo(f"  {name:<{width}}  {count:>12,}")


@cli.command()
@config_option("shard")
@click.option(
    "--net", "net_path", required=True, metavar="NET", help="The net, as package.module:attr."
)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The shard's data directory (LMDB store, endpoint file, log).",
)
@click.option(
    "--bind",
    default="tcp://127.0.0.1:0",
    show_default=True,
    help="Endpoint to serve on; port 0 picks a free port, published in DATA/endpoint.",
)
@click.option(
    "--durability",
    type=click.Choice([d.value for d in Durability]),
    default=Durability.FSYNC.value,
    show_default=True,
    help="fsync: commits survive power loss; process: they survive a killed process.",
)
@click.option(
    "--allow-remote", is_flag=True, help="Allow binding to an address other than loopback."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Passed to the net's builder, if it takes a seed.",
)
@click.option(
    "--map-size",
    "map_size_bytes",
    type=click.IntRange(min=1 << 16),
    default=MAP_SIZE_BYTES_INITIAL,
    show_default=True,
    help="Initial LMDB map size in bytes; the map grows by itself when full.",
)
@click.option(
    "--shard-id",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="This shard's id in the cluster (0 .. --shards - 1).",
)
@click.option(
    "--shards",
    "shard_count",
    type=click.IntRange(min=1, max=SHARDS_MAX),
    default=1,
    show_default=True,
    help=(
        "How many shards the cluster started with (1: a standalone shard that owns every "
        "slot); a shard added by `cpn scale` has an id at or beyond it."
    ),
)
@click.option(
    "--router",
    default="",
    help="The router's endpoint (cluster mode): heartbeats, the partition table, peers.",
)
@click.option(
    "--metrics",
    default=METRICS_DEFAULT,
    show_default=True,
    help="HOST:PORT of its Prometheus /metrics (port 0: a free one, in DATA/metrics), or off.",
)
@net_params_option
@log_json_option
def shard(
    net_path: str,
    data_dir: Path,
    bind: str,
    durability: str,
    allow_remote: bool,
    seed: int,
    map_size_bytes: int,
    shard_id: int,
    shard_count: int,
    router: str,
    metrics: str,
    net_params: tuple[tuple[str, Any], ...],
    log_json: bool,
) -> None:
    """Run one shard: recover NET's marking from DATA, then serve and fire."""
    if shard_id >= shard_count and not router:
        raise click.BadParameter(
            f"shard id {shard_id} is not below --shards {shard_count} (only a shard of a "
            "cluster, with --router, joins beyond its first shards)",
            param_hint="--shard-id",
        )
    config = ShardConfig(
        net_path,
        data_dir,
        bind,
        Durability(durability),
        allow_remote,
        seed,
        map_size_bytes,
        shard_id=shard_id,
        shard_count=shard_count,
        router=router,
        params=dict(net_params),
        log_json=log_json,
        metrics=metrics,
        **shard_settings(data_dir, shard_id, shard_count),
    )
    serve(config)


# -- the cluster --------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
STATUS_TIMEOUT_MS = 2_000


def _net_option(help_text: str) -> Callable[[F], F]:
    return click.option("--net", "net_path", required=True, metavar="NET", help=help_text)


DIRECTORY = click.Path(file_okay=False, path_type=Path)


def _data_option(help_text: str) -> Callable[[F], F]:
    return click.option("--data", "data_dir", type=DIRECTORY, required=True, help=help_text)


def _cluster_data(command: F) -> F:
    return cast(F, cluster_data_option(command))


def _shards_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--shards",
        "shard_count",
        type=click.IntRange(min=1, max=SHARDS_MAX),
        required=True,
        help=help_text,
    )


@cli.command()
@config_option("router")
@_net_option("The net, as package.module:attr (the router learns its places).")
@_data_option("The router's data directory (its LMDB file, lock, endpoint file, log).")
@_shards_option("How many shards the cluster has (fixed once the data directory exists).")
@click.option(
    "--bind",
    default="tcp://127.0.0.1:0",
    show_default=True,
    help="The router's endpoint; port 0 picks a free one, published in DATA/endpoint.",
)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --bind address.")
@click.option("--seed", type=int, default=0, show_default=True, help="Passed to the net builder.")
@click.option(
    "--heartbeat-timeout",
    "heartbeat_timeout_ms",
    type=DURATION,
    default="3s",
    show_default=True,
    help="A shard is alive while its last heartbeat is younger than this.",
)
@click.option(
    "--metrics",
    default=METRICS_DEFAULT,
    show_default=True,
    help="HOST:PORT of its Prometheus /metrics (port 0: a free one, in DATA/metrics), or off.",
)
@net_params_option
@log_json_option
def router(
    net_path: str,
    data_dir: Path,
    shard_count: int,
    bind: str,
    allow_remote: bool,
    seed: int,
    heartbeat_timeout_ms: int,
    metrics: str,
    net_params: tuple[tuple[str, Any], ...],
    log_json: bool,
) -> None:
    """Run the router: the partition table, the shards' endpoints, their heartbeats."""
    config = RouterConfig(
        net_path,
        data_dir,
        shard_count,
        bind,
        allow_remote,
        seed,
        heartbeat_timeout_ms,
        params=dict(net_params),
        log_json=log_json,
        metrics=metrics,
        **router_settings(data_dir, shard_count),
    )
    serve_router(config)


@cli.command()
@config_option("up")
@_net_option("The net, as package.module:attr.")
@_shards_option("How many shards (fixed at the first `cpn up` of a data directory).")
@_cluster_data
@click.option("--foreground", is_flag=True, help="Supervise in this process until stopped.")
@click.option(
    "--durability",
    type=click.Choice([d.value for d in Durability]),
    default=None,
    help="The shards' durability mode (default: as recorded, else fsync).",
)
@click.option("--seed", type=int, default=None, help="Passed to the net (default: as recorded).")
@click.option(
    "--bind",
    default="tcp://127.0.0.1:0",
    show_default=True,
    help="The router's endpoint (port 0: a free port, kept across restarts).",
)
@click.option(
    "--timeout",
    "timeout_ms",
    type=DURATION,
    default="60s",
    show_default=True,
    help="How long to wait for every shard to be alive.",
)
@click.option(
    "--stuck-timeout",
    "stuck_timeout_ms",
    type=DURATION,
    default="5s",
    show_default=True,
    help="Kill and restart a shard that runs but makes no progress this long (0: never).",
)
@click.option(
    "--spares-after",
    "spares_after_ms",
    type=DURATION,
    default="0s",
    show_default=True,
    help="Warm the spare interpreters kept for restarts this long after every child serves.",
)
@click.option(
    "--fork-children", is_flag=True, hidden=True,
    help="With --foreground: fork the children's first starts (cluster/supervisor.py).",
)  # fmt: skip
@net_params_option
@allow_impure_option
@log_json_option
def up(
    net_path: str,
    shard_count: int,
    data_dir: Path,
    foreground: bool,
    durability: str | None,
    seed: int | None,
    bind: str,
    timeout_ms: int,
    stuck_timeout_ms: int,
    spares_after_ms: int,
    fork_children: bool,
    net_params: tuple[tuple[str, Any], ...],
    allow_impure: bool,
    log_json: bool,
) -> None:
    """Start a cluster (a supervised router and shards) in DATA and wait until it is ready."""
    layout = ClusterLayout(data_dir.resolve())
    listen_address(bind, allow_remote=allows_remote())
    config = settle_config(
        layout,
        net=net_path,
        shards=shard_count,
        seed=seed,
        durability=durability,
        params=dict(net_params) if net_params else None,
    )
    # Fails here, in one line, not in a child.
    refuse_impure(
        load_net(config.net, seed=config.seed, params=config.params), allow_impure=allow_impure
    )
    record_config(layout, config)
    if foreground:
        click.echo(
            f"supervising net {config.net!r} with {config.shards} shards in {layout.root}; "
            f"log in {layout.supervisor_log}; stop with Ctrl-C or `cpn down --data "
            f"{layout.root}`"
        )
        supervise(
            layout,
            config,
            bind=bind,
            stuck_timeout_s=stuck_timeout_ms / 1000,
            shard_binds=shard_binds(),
            log_json=log_json,
            spares_after_s=spares_after_ms / 1000,
            fork_first=fork_children,
        )
        return
    info = start_cluster(
        layout,
        config,
        bind=bind,
        timeout_s=timeout_ms / 1000,
        stuck_timeout_s=stuck_timeout_ms / 1000,
        extra_args=tuple(
            flag
            for flag, given in (("--allow-impure", allow_impure), ("--log-json", log_json))
            if given
        )
        + (("--spares-after", f"{spares_after_ms}ms") if spares_after_ms else ()),
    )
    click.echo(
        f"cluster of net {info.net!r} is up in {layout.root}: {config.shards} shards, "
        f"supervisor pid {info.supervisor_pid}"
    )
    width = max(len(p.name) for p in info.processes)
    for process in info.processes:
        click.echo(f"  {process.name:<{width}}  {process.endpoint}  pid {process.pid}")


@cli.command()
@_cluster_data
def down(data_dir: Path) -> None:
    """Stop the cluster in DATA (its supervisor stops the router and the shards)."""
    layout = ClusterLayout(data_dir.resolve())
    pids = stop_cluster(layout)
    click.echo(f"cluster in {layout.root} stopped (pid {', '.join(map(str, pids))})")


def _client(layout: ClusterLayout) -> ClusterClient:
    return ClusterClient.for_data_dir(layout.root, timeout_ms=STATUS_TIMEOUT_MS, retries=1)


def _sample(client: ClusterClient, shard_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Each shard's statistics; a shard that does not answer is left out."""
    found = {}
    for shard_id in shard_ids:
        try:
            found.update(client.statistics([shard_id]))
        except CpnError:
            continue
    return found


def _rows(rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(f"{cell!s:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


@cli.command()
@_cluster_data
@config_option("client")
@click.option(
    "--sample",
    "sample_ms",
    type=DURATION,
    default="500ms",
    show_default=True,
    help="Measure firing rates over this interval (0: skip rates).",
)
def status(data_dir: Path, sample_ms: int) -> None:
    """Show the cluster's shards, firings, tokens per place and tokens in flight."""
    layout = ClusterLayout(data_dir.resolve())
    with _client(layout) as client:
        state = client.status()
        table = client.table()
        router_stats = client.router_statistics()
        alive = [k for k, shard in enumerate(state.shards) if shard["alive"]]
        first = _sample(client, alive)
        second = first
        if sample_ms > 0 and first:
            time.sleep(sample_ms / 1000)
            second = _sample(client, first)
    supervisor = supervisor_pid(layout)
    click.echo(
        f"cluster of net {state.net!r} in {layout.root}: epoch {state.epoch}, "
        f"{len(state.shards)} shards, {len(alive)} alive"
    )
    router_pid = live_endpoint(layout.router_dir)
    click.echo(
        f"supervisor pid {supervisor or '- (not running)'}; router {client.router_endpoint} "
        f"pid {router_pid[1] if router_pid else '-'}"
    )
    slots = Counter(table.owners)
    rows: list[Sequence[object]] = [
        ("shard", "endpoint", "pid", "alive", "slots", "epoch", "firings", "firings/s", "outbox")
    ]
    for shard_id, shard in enumerate(state.shards):
        stats = second.get(shard_id, {})
        published = live_endpoint(layout.shard_dir(shard_id))
        fired = sum(stats.get("firings", {}).values()) if stats else None
        rate = "-"
        if shard_id in first and stats and stats["now_ms"] > first[shard_id]["now_ms"]:
            before = sum(first[shard_id]["firings"].values())
            elapsed_ms = stats["now_ms"] - first[shard_id]["now_ms"]
            rate = f"{((fired or 0) - before) / elapsed_ms * 1000:,.1f}"
        rows.append(
            (
                shard_id,
                shard["endpoint"] or "-",
                published[1] if published else "-",
                ("yes" if shard["progressing"] else "stuck") if shard["alive"] else "no",
                stats.get("owned_slots", slots.get(shard_id, 0)),
                stats.get("epoch", shard["epoch"]),
                "-" if fired is None else f"{fired:,}",
                rate,
                stats.get("outbox_tokens", "-"),
            )
        )
    for line in _rows(rows):
        click.echo(line)
    # Totals over the stores' lives (docs/operations.md, "What the totals mean"); the
    # per-shard column above is this incarnation's, which the rates are taken from.
    for line in totals.describe_totals(
        totals.firing_totals(len(state.shards), second, router_stats)
    ):
        click.echo(line)
    view = totals.marking_view(second, len(state.shards))
    for line in totals.describe_marking(view):
        click.echo(line)
    outbox = sum(stats.get("outbox_tokens", 0) for stats in second.values())
    click.echo(f"outbox tokens (in flight between shards): {outbox:,}")
    _moves(router_stats)


def _moves(router_stats: dict[str, Any]) -> None:
    """The slot moves in progress (docs/handoff.md, "Slot moves") and the scale target."""
    active = router_stats.get("moves_active", [])
    heading = router_stats.get("members", 0)
    click.echo(
        f"slot moves: {len(active)} in progress, {router_stats.get('moves_done', 0):,} done, "
        f"{router_stats.get('moves_aborted', 0):,} aborted; heading for {heading} shards"
    )
    for line in _rows(
        [("move", "slot", "from", "to", "state")]
        + [(m["move_id"], m["slot"], m["source"], m["target"], m["state"]) for m in active[:20]]
    )[1 if not active else 0 :]:
        click.echo(f"  {line}")
    if len(active) > 20:
        click.echo(f"  ... and {len(active) - 20} more")


def _tuples(value: Any) -> Any:
    """JSON arrays to tuples, all the way down (tuple-typed fields are tuples)."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _parse_tokens(layout: ClusterLayout, place: str, texts: Sequence[str]) -> list[tuple[Any, ...]]:
    """TOKEN_JSON arguments as tuples of field values (objects are ordered by the net)."""
    fields_of: tuple[str, ...] | None = None
    tokens = []
    for number, text in enumerate(texts, start=1):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CpnError(f"token {number} ({text[:60]!r}) is not JSON: {exc.msg}") from exc
        if isinstance(value, dict):
            if fields_of is None:
                fields_of = _fields_of(layout, place)
            unknown = sorted(set(value) - set(fields_of))
            missing = [name for name in fields_of if name not in value]
            if unknown or missing:
                raise CpnError(
                    f"token {number} {text[:60]}: place {place!r} has fields "
                    f"{', '.join(fields_of)}"
                    + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                    + (f"; missing: {', '.join(missing)}" if missing else "")
                )
            value = [value[name] for name in fields_of]
        if not isinstance(value, list):
            raise CpnError(
                f"token {number} ({text[:60]!r}) must be a JSON array of field values or "
                "an object by field name"
            )
        tokens.append(_tuples(value))
    return tokens


def _fields_of(layout: ClusterLayout, place: str) -> tuple[str, ...]:
    config = ClusterConfig.read(layout)
    if config is None:
        raise CpnError(f"no cluster in {layout.root} (no {layout.cluster_file.name})")
    net = load_net(config.net, seed=config.seed, params=config.params)
    if not net.has_place(place):
        raise CpnError(
            f"net {net.name!r} has no place {place!r} "
            f"(places: {', '.join(p.name for p in net.places)})"
        )
    return net.place(place).colour_set.fields


@cli.command()
@_cluster_data
@config_option("client")
@click.argument("place")
@click.argument("token_texts", metavar="TOKEN_JSON...", nargs=-1, required=True)
@click.option(
    "--delay",
    "delay_ms",
    type=DURATION,
    default="0",
    show_default=True,
    help="The tokens become available this much later.",
)
def put(data_dir: Path, place: str, token_texts: tuple[str, ...], delay_ms: int) -> None:
    """Put tokens into PLACE, each on the shard that owns it.

    Each TOKEN_JSON is a JSON array of field values, e.g. '["a.example", 3]', or an
    object by field name, e.g. '{"domain": "a.example", "depth": 3}'.
    """
    layout = ClusterLayout(data_dir.resolve())
    tokens = _parse_tokens(layout, place, token_texts)
    with _client(layout) as client:
        summary = client.put(place, tokens, delay_ms=delay_ms)
    parts = ", ".join(f"shard {k}: {n}" for k, n in summary.by_shard.items())
    redirects = f", {summary.redirects} redirects followed" if summary.redirects else ""
    noun = "token" if summary.accepted == 1 else "tokens"
    click.echo(f"put {summary.accepted} {noun} into {place!r} ({parts}{redirects})")


@cli.command()
@_cluster_data
@config_option("client")
@click.argument("place", required=False)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Show at most this many tokens of PLACE.",
)
def marking(data_dir: Path, place: str | None, limit: int) -> None:
    """Show how many tokens each place holds, or (with PLACE) the tokens of one place."""
    layout = ClusterLayout(data_dir.resolve())
    with _client(layout) as client:
        view = totals.read_marking(client)
        if place is None:
            for line in totals.describe_marking(view):
                click.echo(line)
            return
        entries = client.tokens(place, limit=limit)
    flying = view.in_flight.get(place, 0)
    click.echo(
        f"place {place!r}: {view.counts.get(place, len(entries)):,} tokens (showing "
        f"{len(entries):,})" + (f", {flying:,} more in flight between shards" if flying else "")
    )
    for note in totals.marking_notes(view):
        click.echo(note)
    for shard_id, time_ms, fields in entries:
        click.echo(f"  shard {shard_id}  t={time_ms}  {json.dumps(list(fields), default=repr)}")


@cli.command()
@_cluster_data
@click.option(
    "--lines", type=click.IntRange(min=0), default=20, show_default=True, help="Lines per log."
)
def logs(data_dir: Path, lines: int) -> None:
    """Show the end of each process's log: the supervisor, the router, every shard."""
    layout = ClusterLayout(data_dir.resolve())
    config = ClusterConfig.read(layout)
    if config is None:
        raise CpnError(f"no cluster in {layout.root} (no {layout.cluster_file.name})")
    paths = [layout.supervisor_log, layout.router_dir / ROUTER_LOG_FILE]
    paths += [layout.shard_dir(k) / SHARD_LOG_FILE for k in range(config.shards)]
    paths += [
        d / "stderr.log" for d in (layout.router_dir, *map(layout.shard_dir, range(config.shards)))
    ]
    for path in paths:
        found = tail(path, lines)
        if path.name == STDERR_FILE and not found:
            continue  # a child's stderr is empty unless it failed
        click.echo(f"==> {path} <==" + ("" if path.exists() else " (no log yet)"))
        for line in found:
            click.echo(line)


@cli.command()
@_cluster_data
@click.option(
    "--kill-every",
    "interval_ms",
    type=DURATION,
    default="2s",
    show_default=True,
    help="Kill one process this often (the next kill also waits until the last victim is back).",
)
@click.option(
    "--duration",
    "duration_ms",
    type=DURATION,
    default="60s",
    show_default=True,
    help="Run this long.",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="shards",
    show_default=True,
    help="Which processes may be killed (never the supervisor).",
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the schedule (default: random, printed)."
)
@click.option(
    "--check",
    "check_after",
    is_flag=True,
    help="Afterwards, wait until the cluster drains and check its invariants (exit 1 if violated).",
)
@click.option(
    "--drain-timeout",
    "drain_timeout_ms",
    type=DURATION,
    default=f"{DRAIN_TIMEOUT_S:.0f}s",
    show_default=True,
    help="With --check: how long to wait for the cluster to drain.",
)
def chaos(
    data_dir: Path,
    interval_ms: int,
    duration_ms: int,
    target: str,
    seed: int | None,
    check_after: bool,
    drain_timeout_ms: int,
) -> None:
    """SIGKILL random processes of the running cluster in DATA on a seeded schedule."""
    layout = ClusterLayout(data_dir.resolve())
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    run = ChaosRun(layout)
    try:
        names = victims(target, run.config.shards)
        kills = plan(seed=seed, duration_ms=duration_ms, interval_ms=interval_ms, targets=names)
        click.echo(
            f"chaos on the cluster in {layout.root}: SIGKILL every {interval_ms / 1000:g} s for "
            f"{duration_ms / 1000:g} s among {', '.join(names)} (supervisor pid "
            f"{run.supervisor} restarts them), seed {seed}, {len(kills)} kills planned"
        )
        summary = run.run(kills, on_kill=lambda record: click.echo(str(record)))
        click.echo(f"chaos done: {summary}")
        if check_after:
            result = run.check(timeout_s=drain_timeout_ms / 1000)
            click.echo(str(result))
            if not result.ok:
                sys.exit(EXIT_CHECK_FAILED)
    finally:
        run.close()


@cli.command()
@_cluster_data
@_shards_option("How many shards the cluster should have from now on.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until every slot move is done and the slots are spread evenly.",
)
@click.option(
    "--timeout",
    "timeout_ms",
    type=DURATION,
    default="300s",
    show_default=True,
    help="With --wait: how long to wait for the moves.",
)
def scale(data_dir: Path, shard_count: int, wait: bool, timeout_ms: int) -> None:
    """Grow or shrink the running cluster in DATA to --shards shards, moving slots live."""
    layout = ClusterLayout(data_dir.resolve())
    config = scaling.scale(layout, shard_count)
    click.echo(
        f"scaling the cluster in {layout.root} to {config.shards} shards (it started with "
        f"{config.first_shards}); the router moves the slots while the net keeps firing"
    )
    if not wait:
        return
    done = scaling.wait_scaled(
        layout, timeout_s=timeout_ms / 1000, on_progress=lambda p: click.echo(f"  {p}")
    )
    click.echo(f"scaled to {done.members} shards: {done}")


cli.add_command(keys)  # cluster/commands/deploy.py: `cpn keys generate`
cli.add_command(health)  # cluster/commands/deploy.py: `cpn health`
for _command in crawl_commands():  # cluster/commands/crawl.py: `cpn crawl`, `demo`
    cli.add_command(_command)
demo.add_command(jobs_demo)  # cluster/commands/jobs.py: `cpn demo jobs`
cli.add_command(worker)  # cluster/commands/workers.py: `cpn worker run`, `cpn worker --role`


def main() -> None:
    """Entry point of the ``cpn`` console script."""
    # Nets are loaded by import path; like `python -m`, look in the working directory
    # first, so that `cpn run mymodule:net` finds ./mymodule.py (the console script's
    # own directory is what Python puts on the path otherwise).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if sys.argv[1:2] == [STANDBY] and not await_order():
        return  # a spare that was never needed (cluster/standby.py)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as exc:
        # Usage errors: click formats them (with the usage line) and exits 2.
        exc.show()
        sys.exit(EXIT_USER_ERROR)
    except CpnError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
