"""The cluster file: one TOML document describing a whole deployment (pure parsing).

One file says which net a cluster runs, where its router and each shard listen and
keep their data, how durable the shards are, where its CURVE keys are and which
client keys are allowed. ``cpn up --config``, ``cpn router --config`` and ``cpn shard
--config --shard-id N`` read the same file, so every host of a deployment agrees on
it. See docs/operations.md for the format, with an example (``deploy/cluster.toml``).

Theory of operation: :func:`parse_config` takes the text and the file's directory
(relative paths are relative to it) and returns a frozen :class:`ClusterFile`, or
raises :class:`ConfigError` naming the file, the key and what was expected. It does
no I/O beyond what it is handed: key files are only named here and read by
:mod:`cluster.security`. Validation is complete at this edge: endpoints parse, shard
ids are exactly ``0..count-1``, no two processes on one host share an endpoint, and
anything bound off loopback has keys (``ConfigError`` otherwise), so the processes
trust what they are handed.

:func:`identity_mismatch` compares what a data directory recorded at its first start
(:class:`DataIdentity`) with what the file says now.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nets.errors import CpnError
from router.endpoints import is_loopback
from router.shell.metrics import METRICS_DEFAULT, METRICS_OFF
from router.table import SHARDS_MAX

DURABILITIES: Final = ("fsync", "process")
CLUSTER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
NET_PATH_PATTERN: Final = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_ENDPOINT: Final = re.compile(
    r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})"
)
_METRICS: Final = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})")
REQUESTS_PER_S_DEFAULT: Final = 20_000
REQUEST_BURST_DEFAULT: Final = 5_000
HEARTBEAT_TIMEOUT_MS_DEFAULT: Final = 3_000
WORKERS_MAX: Final = 1_000


class ConfigError(CpnError):
    """The cluster file is not valid (the message names the file and the key)."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """Where one process (the router or a shard) runs, listens and keeps its data.

    ``endpoint`` is how the others reach it; ``bind`` is what it binds (by default the
    same; ``tcp://0.0.0.0:PORT`` in a container whose address others do not know).
    """

    name: str  # "router" or "shard K", for messages
    host: str
    endpoint: str
    bind: str
    data_dir: Path
    metrics: str = METRICS_DEFAULT  # HOST:PORT of its /metrics, or "off" (docs/observability.md)

    @property
    def off_loopback(self) -> bool:
        return not (_is_loopback_endpoint(self.endpoint) and _is_loopback_endpoint(self.bind))


@dataclass(frozen=True, slots=True)
class ShardSpec(ProcessSpec):
    shard_id: int = 0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A group of worker processes (fetch workers, ...); run by `cpn worker --role ROLE`."""

    role: str
    count: int
    host: str
    metrics: str = METRICS_DEFAULT  # each process's /metrics HOST:PORT, or "off"


@dataclass(frozen=True, slots=True)
class SecuritySpec:
    """The CURVE key files (see :mod:`cluster.security`).

    ``server_key``: the cluster's secret key file; the router and the shards serve with
    it and present it to each other. ``client_key``: the secret key file this host's
    ``cpn`` commands (and workers) present. ``allowed``: public key files, or
    directories of ``*.key`` files, whose keys may connect (the cluster's own key is
    always allowed).
    """

    server_key: Path
    client_key: Path | None
    allowed: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    """Per-peer request rate limit (token bucket): ``requests_per_s`` and ``burst``."""

    requests_per_s: int = REQUESTS_PER_S_DEFAULT
    burst: int = REQUEST_BURST_DEFAULT


@dataclass(frozen=True, slots=True)
class ClusterFile:
    """A parsed, validated cluster file."""

    source: Path
    cluster_id: str
    net: str
    seed: int
    durability: str
    data_dir: Path  # the base directory (``cpn up``'s cluster directory)
    router: ProcessSpec
    shards: tuple[ShardSpec, ...]
    workers: tuple[WorkerSpec, ...] = ()
    security: SecuritySpec | None = None
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS_DEFAULT

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def shard(self, shard_id: int) -> ShardSpec:
        """Shard ``shard_id``'s part of the file.

        Raises:
            ConfigError: the file describes no such shard.
        """
        if not 0 <= shard_id < len(self.shards):
            raise ConfigError(
                f"{self.source}: --shard-id {shard_id} is not one of 0..{len(self.shards) - 1} "
                f"(the file describes {len(self.shards)} shards)"
            )
        return self.shards[shard_id]

    def processes(self) -> tuple[ProcessSpec, ...]:
        return (self.router, *self.shards)


@dataclass(frozen=True, slots=True)
class DataIdentity:
    """What a data directory belongs to (recorded at its first start with a file)."""

    cluster_id: str
    net: str
    role: str  # "router" or "shard"
    shard_id: int  # -1 for the router
    shard_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "net": self.net,
            "role": self.role,
            "shard_id": self.shard_id,
            "shard_count": self.shard_count,
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> DataIdentity:
        try:
            return cls(
                str(data["cluster_id"]),
                str(data["net"]),
                str(data["role"]),
                int(data["shard_id"]),
                int(data["shard_count"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where} is not a data directory identity ({exc})") from exc


def identity_mismatch(
    recorded: DataIdentity, wanted: DataIdentity, *, data_dir: Path
) -> str | None:
    """Why ``data_dir`` (which recorded ``recorded``) cannot serve as ``wanted``; None if it can."""
    what = (
        "the router" if recorded.role == "router" else f"shard {recorded.shard_id}"
    ) + f" of cluster {recorded.cluster_id!r} (net {recorded.net}, {recorded.shard_count} shards)"
    checks = (
        ("cluster id", recorded.cluster_id, wanted.cluster_id),
        ("net", recorded.net, wanted.net),
        ("role", recorded.role, wanted.role),
        ("shard id", recorded.shard_id, wanted.shard_id),
        ("shard count", recorded.shard_count, wanted.shard_count),
    )
    for name, had, want in checks:
        if had != want:
            return (
                f"data directory {data_dir} holds {what}, but the cluster file asks for "
                f"{name} {want!r}; fix the file or use another data_dir"
            )
    return None


# -- parsing ------------------------------------------------------------------------------


def load_config(path: Path) -> ClusterFile:
    """Read and parse the cluster file at ``path``.

    Raises:
        ConfigError: it cannot be read, is not TOML, or is not a valid cluster file.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc.strerror}") from exc
    return parse_config(text, source=path)


def parse_config(text: str, *, source: Path) -> ClusterFile:
    """Parse and validate a cluster file's ``text`` (``source`` names it in errors and
    anchors its relative paths).

    Raises:
        ConfigError: naming the file, the key and what was expected.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not TOML: {exc}") from exc
    reader = _Reader(source, source.parent)
    reader.known(
        document, "", ("cluster", "router", "shards", "shard", "workers", "security", "limits")
    )
    cluster = reader.table(document, "cluster", required=True)
    reader.known(
        cluster, "cluster", ("id", "net", "seed", "durability", "data_dir", "heartbeat_timeout_ms")
    )
    cluster_id = reader.text(cluster, "cluster.id", required=True)
    if not CLUSTER_ID_PATTERN.fullmatch(cluster_id):
        reader.fail("cluster.id", f"{cluster_id!r} must be 1-63 letters, digits, '.', '_' or '-'")
    net = reader.text(cluster, "cluster.net", required=True)
    if not NET_PATH_PATTERN.fullmatch(net):
        reader.fail("cluster.net", f"{net!r} must be an import path package.module:attr")
    seed = reader.integer(cluster, "cluster.seed", default=0)
    durability = reader.text(cluster, "cluster.durability", default="fsync")
    if durability not in DURABILITIES:
        reader.fail(
            "cluster.durability", f"{durability!r} must be one of {', '.join(DURABILITIES)}"
        )
    base = reader.path(cluster, "cluster.data_dir", required=True)
    heartbeat_ms = reader.integer(
        cluster, "cluster.heartbeat_timeout_ms", default=HEARTBEAT_TIMEOUT_MS_DEFAULT, low=100
    )

    router_table = reader.table(document, "router", required=True)
    router = reader.process(router_table, "router", "router", base / "router")

    shards_table = reader.table(document, "shards", required=True)
    reader.known(shards_table, "shards", ("count",))
    count = reader.integer(shards_table, "shards.count", required=True, low=1, high=SHARDS_MAX)
    entries = document.get("shard", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        reader.fail("shard", "must be an array of tables, [[shard]]")
    if len(entries) != count:
        reader.fail("shard", f"describes {len(entries)} shards, but shards.count is {count}")
    shards: list[ShardSpec | None] = [None] * count
    for index, entry in enumerate(entries):
        key = f"shard[{index}]"
        shard_id = reader.integer(entry, f"{key}.id", required=True, low=0, high=count - 1)
        if shards[shard_id] is not None:
            reader.fail(f"{key}.id", f"shard {shard_id} is described twice")
        spec = reader.process(
            entry, key, f"shard {shard_id}", base / f"shard-{shard_id}", extra=("id",)
        )
        shards[shard_id] = ShardSpec(
            spec.name,
            spec.host,
            spec.endpoint,
            spec.bind,
            spec.data_dir,
            spec.metrics,
            shard_id=shard_id,
        )
    shard_specs = tuple(s for s in shards if s is not None)
    assert len(shard_specs) == count  # every id in 0..count-1, none twice

    workers = []
    raw_workers = document.get("workers", [])
    if not isinstance(raw_workers, list) or not all(isinstance(w, dict) for w in raw_workers):
        reader.fail("workers", "must be an array of tables, [[workers]]")
    for index, entry in enumerate(raw_workers):
        key = f"workers[{index}]"
        reader.known(entry, key, ("role", "count", "host", "metrics"))
        workers.append(
            WorkerSpec(
                reader.text(entry, f"{key}.role", required=True),
                reader.integer(entry, f"{key}.count", default=1, low=0, high=WORKERS_MAX),
                reader.text(entry, f"{key}.host", default="localhost"),
                reader.metrics(entry, f"{key}.metrics"),
            )
        )

    security = None
    raw_security = reader.table(document, "security", required=False)
    if raw_security is not None:
        reader.known(raw_security, "security", ("server_key", "client_key", "allowed_clients"))
        allowed = raw_security.get("allowed_clients", [])
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            reader.fail("security.allowed_clients", "must be a list of paths")
        security = SecuritySpec(
            reader.path(raw_security, "security.server_key", required=True),
            reader.path(raw_security, "security.client_key", required=False),
            tuple(reader.resolve(a) for a in allowed),
        )

    limits = LimitsSpec()
    raw_limits = reader.table(document, "limits", required=False)
    if raw_limits is not None:
        reader.known(raw_limits, "limits", ("requests_per_s_per_peer", "request_burst_per_peer"))
        limits = LimitsSpec(
            reader.integer(
                raw_limits, "limits.requests_per_s_per_peer", default=REQUESTS_PER_S_DEFAULT, low=1
            ),
            reader.integer(
                raw_limits, "limits.request_burst_per_peer", default=REQUEST_BURST_DEFAULT, low=1
            ),
        )

    config = ClusterFile(
        source,
        cluster_id,
        net,
        seed,
        durability,
        base,
        router,
        shard_specs,
        tuple(workers),
        security,
        limits,
        heartbeat_ms,
    )
    _check_deployment(config)
    return config


def _check_deployment(config: ClusterFile) -> None:
    """Cross-checks: keys off loopback; no endpoint or data directory used twice."""
    for spec in config.processes():
        if spec.off_loopback and config.security is None:
            raise ConfigError(
                f"{config.source}: {spec.name} listens off loopback ({spec.bind}, reached at "
                f"{spec.endpoint}) without CURVE keys; add a [security] table (create keys "
                "with `cpn keys generate DIR`) or bind 127.0.0.1"
            )
    seen: dict[tuple[str, str], str] = {}
    for spec in config.processes():
        metrics = f"metrics {spec.metrics}" if spec.metrics != METRICS_OFF else ":0"
        for what in (spec.endpoint, str(spec.data_dir), metrics):
            key = (spec.host, what)
            if what.endswith(":0"):
                continue  # port 0: any free port, never a clash
            if key in seen:
                raise ConfigError(
                    f"{config.source}: {spec.name} and {seen[key]} both use {what} on host "
                    f"{spec.host!r}; give each process its own endpoint and data_dir"
                )
            seen[key] = spec.name


def _is_loopback_endpoint(endpoint: str) -> bool:
    match = _ENDPOINT.fullmatch(endpoint)
    return match is not None and is_loopback(match["host"].strip("[]"))


@dataclass(frozen=True, slots=True)
class _Reader:
    """Typed access to the TOML document, failing with the file and the key's name."""

    source: Path
    base: Path

    def fail(self, key: str, problem: str) -> Any:
        raise ConfigError(f"{self.source}: {key}: {problem}")

    def known(self, table: dict[str, Any], where: str, keys: tuple[str, ...]) -> None:
        unknown = sorted(set(table) - set(keys))
        if unknown:
            name = f"{where}.{unknown[0]}" if where else unknown[0]
            self.fail(name, f"unknown key (known here: {', '.join(keys)})")

    def table(self, document: dict[str, Any], key: str, *, required: bool) -> Any:
        value = document.get(key)
        if value is None:
            if required:
                self.fail(key, "missing table")
            return None
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
        return value

    def _get(self, table: dict[str, Any], key: str, required: bool) -> Any:
        name = key.rsplit(".", 1)[-1]
        if name not in table and required:
            self.fail(key, "missing")
        return table.get(name)

    def text(
        self, table: dict[str, Any], key: str, *, required: bool = False, default: str = ""
    ) -> str:
        value = self._get(table, key, required)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return str(value)

    def integer(
        self,
        table: dict[str, Any],
        key: str,
        *,
        required: bool = False,
        default: int = 0,
        low: int | None = None,
        high: int | None = None,
    ) -> int:
        value = self._get(table, key, required)
        if value is None:
            return default
        if type(value) is not int:
            self.fail(key, f"must be an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(key, f"{value} is not in {low if low is not None else '..'}..{high or ''}")
        return int(value)

    def resolve(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base / path

    def path(self, table: dict[str, Any], key: str, *, required: bool) -> Any:
        value = self.text(table, key, required=required)
        return self.resolve(value) if value else None

    def endpoint(self, table: dict[str, Any], key: str, default: str) -> str:
        value = self.text(table, key, default=default)
        match = _ENDPOINT.fullmatch(value)
        if match is None or int(match["port"]) > 65535:
            self.fail(key, f"{value!r} must look like tcp://HOST:PORT")
        return value

    def metrics(self, table: dict[str, Any], key: str) -> str:
        value = self.text(table, key, default=METRICS_DEFAULT)
        match = _METRICS.fullmatch(value)
        if value != METRICS_OFF and (match is None or int(match["port"]) > 65535):
            self.fail(key, f"{value!r} must look like HOST:PORT, or be 'off'")
        return value

    def process(
        self,
        table: dict[str, Any],
        key: str,
        name: str,
        default_dir: Path,
        *,
        extra: tuple[str, ...] = (),
    ) -> ProcessSpec:
        self.known(table, key, ("host", "endpoint", "bind", "data_dir", "metrics", *extra))
        endpoint = self.endpoint(table, f"{key}.endpoint", "tcp://127.0.0.1:0")
        metrics = self.metrics(table, f"{key}.metrics")
        bind = self.endpoint(table, f"{key}.bind", endpoint)
        data_dir = self.path(table, f"{key}.data_dir", required=False) or default_dir
        host = self.text(table, f"{key}.host", default="localhost")
        if endpoint.endswith(":0") and host != "localhost":
            self.fail(
                f"{key}.endpoint",
                f"{name} runs on host {host!r}: it needs a fixed port, so that the others find it",
            )
        return ProcessSpec(name, host, endpoint, bind, data_dir, metrics)
