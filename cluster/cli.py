"""The ``cpn`` command line: the one place where errors become messages and exit codes.

Every operating error (:class:`nets.errors.CpnError` and click's own usage errors)
ends as a single line on stderr and a non-zero exit code; a traceback means a bug.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from nets.errors import CpnError
from nets.loader import load_net
from nets.simulation import simulate
from router.table import SHARDS_MAX
from shard.process import ShardConfig, serve
from shard.store import MAP_SIZE_BYTES_INITIAL, Durability

EXIT_USER_ERROR = 2

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1}


class Duration(click.ParamType[int]):
    """A duration such as ``500ms``, ``30s``, ``10m``, ``2h`` (a bare number is ms)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration such as 500ms, 30s, 10m or 2h", param, ctx)
        return int(match.group(1)) * _UNIT_MS[match.group(2)]


DURATION = Duration()


def _fail(message: str) -> NoReturn:
    click.echo(f"cpn: error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def run(net_path: str, until_ms: int, seed: int, tie_break: str, max_steps: int) -> None:
    """Run NET (package.module:attr) in one process under virtual time and summarise it."""
    net = load_net(net_path, seed=seed)
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
    help="How many shards the cluster has (1: a standalone shard that owns every slot).",
)
@click.option(
    "--router",
    default="",
    help="The router's endpoint (cluster mode): heartbeats, the partition table, peers.",
)
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
) -> None:
    """Run one shard: recover NET's marking from DATA, then serve and fire."""
    if shard_id >= shard_count:
        raise click.BadParameter(
            f"shard id {shard_id} is not below --shards {shard_count}", param_hint="--shard-id"
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
    )
    serve(config)


def main() -> None:
    """Entry point of the ``cpn`` console script."""
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
