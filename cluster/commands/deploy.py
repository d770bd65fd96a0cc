"""`cpn` for deployments described by a cluster file: ``--config``, ``keys``, ``health`` (SHELL).

:func:`config_option` adds ``--config FILE`` (or ``$CPN_CONFIG``) to ``cpn up``,
``cpn router`` and ``cpn shard``: the file's values become the command's defaults
(options given on the command line still win, which is how the local supervisor
passes each child its port), and :func:`router_settings` / :func:`shard_settings`
add what has no option: the cluster id, the CURVE keys, the rate limits. Before a
process uses a data directory with a cluster file, :func:`claim_data_dir` checks
(or, the first time, records) whose directory it is.

``cpn up --config`` exports ``CPN_CONFIG`` so that the supervisor and every child it
starts read the same file.

Errors are :class:`~nets.errors.CpnError`; ``cluster/cli.py`` turns them into one line
and an exit code. ``cpn health`` is the exception that proves it: it is a check, so an
unhealthy process is exit code 1 with one line saying why.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from cluster.client import ShardClient, use_client_keys
from cluster.config import (
    ClusterFile,
    ConfigError,
    DataIdentity,
    ProcessSpec,
    identity_mismatch,
    load_config,
)
from cluster.layout import ClusterLayout, live_endpoint
from cluster.security import client_keys, generate_keypair, server_keys
from nets.errors import CpnError
from router.shell.metrics import METRICS_DEFAULT
from router.wire import GetTable, Statistics, Stats, Table

CONFIG_ENV: Final = "CPN_CONFIG"
CONFIG_META: Final = "cpn.cluster_file"
IDENTITY_FILE: Final = "identity.json"
EXIT_UNHEALTHY: Final = 1
HEALTH_TIMEOUT_MS_DEFAULT: Final = 2_000

F = TypeVar("F", bound=Callable[..., Any])


def config_option(role: str) -> Callable[[F], F]:
    """``--config FILE``: take this command's defaults from a cluster file.

    ``role`` is ``up``, ``router``, ``shard``, ``client`` (commands that only talk
    to the cluster) or ``worker`` (a crawl worker, which finds the router by the file).
    """
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        envvar=CONFIG_ENV,
        is_eager=True,
        expose_value=False,
        callback=functools.partial(_read_config, role),
        help=f"The cluster file (TOML) describing the deployment (also ${CONFIG_ENV}).",
    )


def _read_config(
    role: str, ctx: click.Context, _param: click.Parameter, value: Path | None
) -> None:
    if value is None:
        return
    path = value.resolve()
    config = load_config(path)
    ctx.meta[CONFIG_META] = config
    if role in ("up", "client", "worker"):
        use_client_keys(client_keys(config))
    defaults: dict[str, Any] = {"net_path": config.net, "shard_count": config.shard_count}
    secured = config.security is not None
    if role == "up":
        _check_one_host(config)
        os.environ[CONFIG_ENV] = str(path)  # the supervisor and its children read it too
        defaults |= {
            "data_dir": str(config.data_dir),
            "durability": config.durability,
            "seed": config.seed,
            "bind": config.router.bind,
        }
    elif role == "client":
        defaults["data_dir"] = str(config.data_dir)
    elif role == "router":
        defaults |= {
            "data_dir": str(config.router.data_dir),
            "bind": config.router.bind,
            "allow_remote": secured,
            "seed": config.seed,
            "heartbeat_timeout_ms": config.heartbeat_timeout_ms,
            "metrics": config.router.metrics,
        }
    elif role == "shard":

        def of_this_shard() -> ProcessSpec:
            shard_id = ctx.params.get("shard_id")
            if shard_id is None:
                raise click.UsageError("`cpn shard --config FILE` needs --shard-id N")
            return config.shard(shard_id)

        defaults |= {
            "durability": config.durability,
            "seed": config.seed,
            "allow_remote": secured,
            "router": config.router.endpoint,
            # Called once --shard-id is known (click resolves defaults after given options).
            "data_dir": lambda: str(of_this_shard().data_dir),
            "bind": lambda: of_this_shard().bind,
            "metrics": lambda: of_this_shard().metrics,
        }
    elif role == "worker":

        def metrics_of_this_role() -> str:
            role_name = ctx.params.get("role")
            found = [w.metrics for w in config.workers if w.role == role_name]
            return found[0] if found else METRICS_DEFAULT

        # Called once --role is known; `cpn worker run` has no role: the default.
        defaults |= {"metrics": metrics_of_this_role, "allow_remote": secured}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def active_config() -> ClusterFile | None:
    """The cluster file of the running command, if it was given one."""
    ctx = click.get_current_context(silent=True)
    found = None if ctx is None else ctx.find_root().meta.get(CONFIG_META)
    assert found is None or isinstance(found, ClusterFile)
    return found


def _check_one_host(config: ClusterFile) -> None:
    """`cpn up --config` runs every process here, under the file's cluster data_dir."""
    layout = ClusterLayout(config.data_dir)
    expected = [layout.router_dir, *(layout.shard_dir(s.shard_id) for s in config.shards)]
    for spec, wanted in zip(config.processes(), expected, strict=True):
        if spec.data_dir != wanted:
            raise ConfigError(
                f"{config.source}: `cpn up --config` runs every process on this host under "
                f"cluster.data_dir, but {spec.name}'s data_dir is {spec.data_dir}, not "
                f"{wanted}; use the per-host commands (`cpn router`, `cpn shard`) instead"
            )
        if spec.bind != spec.endpoint:
            raise ConfigError(
                f"{config.source}: `cpn up --config` needs {spec.name} to bind its endpoint "
                f"({spec.endpoint}), not {spec.bind}"
            )


def shard_binds() -> tuple[str, ...]:
    """Where the cluster file's shards bind (empty without a file): for the supervisor."""
    config = active_config()
    return () if config is None else tuple(s.bind for s in config.shards)


def allows_remote() -> bool:
    """Whether the running command may bind off loopback (a cluster file with keys)."""
    config = active_config()
    return config is not None and config.security is not None


def _limits(config: ClusterFile) -> tuple[int, int]:
    return (config.limits.requests_per_s, config.limits.burst)


def router_settings(data_dir: Path, shard_count: int) -> dict[str, Any]:
    """RouterConfig's cluster-file fields (none without a file); claims ``data_dir``."""
    config = active_config()
    if config is None:
        return {}
    identity = DataIdentity(config.cluster_id, config.net, "router", -1, shard_count)
    claim_data_dir(data_dir, identity)
    return {
        "cluster_id": config.cluster_id,
        "curve": server_keys(config),
        "rate_limit": _limits(config),
    }


def shard_settings(data_dir: Path, shard_id: int, shard_count: int) -> dict[str, Any]:
    """ShardConfig's cluster-file fields (none without a file); claims ``data_dir``."""
    config = active_config()
    if config is None:
        return {}
    spec = config.shard(shard_id)
    identity = DataIdentity(config.cluster_id, config.net, "shard", shard_id, shard_count)
    claim_data_dir(data_dir, identity)
    return {
        "cluster_id": config.cluster_id,
        "curve": server_keys(config),
        "rate_limit": _limits(config),
        "advertise": spec.endpoint if spec.endpoint != spec.bind else "",
    }


def claim_data_dir(data_dir: Path, wanted: DataIdentity) -> None:
    """Record ``wanted`` in ``data_dir`` at its first use; later, refuse another identity.

    Raises:
        ConfigError: the directory belongs to another cluster, net, role or shard.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / IDENTITY_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        partial = path.with_name(f".{IDENTITY_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(wanted.to_dict(), indent=2) + "\n")
        partial.replace(path)
        return
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON ({exc}); restore it or remove it") from exc
    recorded = DataIdentity.from_dict(data, where=str(path))
    problem = identity_mismatch(recorded, wanted, data_dir=data_dir)
    if problem is not None:
        raise ConfigError(problem)


# -- cpn keys -------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """CURVE keys: the cluster's server keypair and its clients' keypairs."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--name",
    default="server",
    show_default=True,
    help="Files DIRECTORY/NAME.key (public) and NAME.key_secret (secret, mode 0600).",
)
def generate(directory: Path, name: str) -> None:
    """Write a new CURVE keypair into DIRECTORY (never overwriting one)."""
    public, secret = generate_keypair(directory, name)
    click.echo(f"wrote {public} (public: share it) and {secret} (secret: keep it on this host)")


# -- cpn health -----------------------------------------------------------------------------


def probe_endpoint(spec: ProcessSpec) -> str:
    """Where to reach ``spec``'s process: what it published here, else the file's endpoint.

    On the process's own host (a probe in its container), the endpoint it published in
    its data directory is the one it bound; a wildcard address is reached on loopback.
    """
    published = live_endpoint(spec.data_dir)
    if published is None:
        return spec.endpoint
    return published[0].replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")


@click.command()
@config_option("client")
@click.option("--router", "is_router", is_flag=True, help="Check the router.")
@click.option("--shard-id", type=click.IntRange(min=0), default=None, help="Check shard N.")
@click.option(
    "--timeout-ms",
    type=click.IntRange(min=1),
    default=HEALTH_TIMEOUT_MS_DEFAULT,
    show_default=True,
    help="How long to wait for the answer.",
)
def health(is_router: bool, shard_id: int | None, timeout_ms: int) -> None:
    """Ask one process of the cluster file's cluster whether it serves; exit 0 or 1.

    For readiness and liveness probes: exit 0 and one line when the process answers as
    a healthy member of the cluster, else exit 1 and one line on stderr saying why.
    """
    config = active_config()
    if config is None:
        raise click.UsageError("cpn health needs --config FILE (or $CPN_CONFIG)")
    if is_router == (shard_id is not None):
        raise click.UsageError("give exactly one of --router and --shard-id N")
    spec: ProcessSpec = config.router if shard_id is None else config.shard(shard_id)
    endpoint = probe_endpoint(spec)
    role = "router" if is_router else "shard"
    try:
        with ShardClient(endpoint, timeout_ms=timeout_ms, retries=0, role=role) as client:
            if is_router:
                line = _router_health(config, client.request(GetTable(), Table))
            else:
                line = _shard_health(client.request(Stats(), Statistics).values)
    except CpnError as exc:
        click.echo(f"cpn: unhealthy: {spec.name} at {endpoint}: {exc}", err=True)
        sys.exit(EXIT_UNHEALTHY)
    click.echo(f"healthy: {spec.name} of cluster {config.cluster_id!r} at {endpoint}: {line}")


def _router_health(config: ClusterFile, table: Table) -> str:
    if table.cluster_id != config.cluster_id:
        raise CpnError(f"it serves cluster {table.cluster_id!r}, not {config.cluster_id!r}")
    known = sum(1 for e in table.endpoints if e)
    return f"net {table.net!r}, epoch {table.epoch}, {known} of {table.shard_count} shards known"


def _shard_health(stats: dict[str, Any]) -> str:
    if stats.get("read_only"):
        raise CpnError(f"it is read-only: {stats['read_only']}")
    return (
        f"net {stats.get('net')!r}, epoch {stats.get('epoch')}, incarnation "
        f"{stats.get('incarnation')}, outbox {stats.get('outbox_tokens', 0)} tokens"
    )
