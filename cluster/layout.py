"""A cluster's data directory (SHELL): the files in it and what they record.

:class:`ClusterLayout` names the files of a cluster's data directory (``cpn up --data
DIR``), so that the supervisor, the clients and the CLI agree on them;
:class:`ClusterConfig` is what ``cluster.json`` records. The functions below read the
directory: whether a supervisor runs there, and where the router listens now.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.pids import holds_flock, pid_running, process_args
from nets.errors import CpnError
from router.shell.datadir import LOCK_FILE, read_endpoint
from shard.shell.store import Durability


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """The files of a cluster's data directory ``root`` (see docs/cluster.md)."""

    root: Path

    @property
    def cluster_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def supervisor_pid_file(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def supervisor_metrics_file(self) -> Path:
        return self.root / "supervisor.metrics"  # its /metrics URL and pid

    @property
    def supervisor_lock(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def router_dir(self) -> Path:
        return self.root / "router"

    def shard_dir(self, shard_id: int) -> Path:
        return self.root / f"shard-{shard_id}"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """What ``cluster.json`` records: the cluster's identity and its defaults."""

    net: str
    shards: int
    seed: int = 0
    durability: str = Durability.FSYNC.value
    # Net parameters (`cpn up --net-param KEY=VALUE`), passed to the net's builder in
    # every shard and in the router; JSON values.
    params: dict[str, Any] = field(default_factory=dict)
    # The shard count the cluster started with (its first partition table and the
    # shards' store identity); `shards` is the count `cpn scale` asked for last.
    # 0: the same as `shards` (a cluster that was never scaled).
    initial_shards: int = 0

    @property
    def first_shards(self) -> int:
        """The shard count the cluster started with."""
        return self.initial_shards or self.shards

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        if not self.initial_shards:
            del record["initial_shards"]  # never scaled: the file says what it always said
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def read(cls, layout: ClusterLayout) -> ClusterConfig | None:
        """The recorded configuration (``None`` if the directory has none).

        Raises:
            CpnError: the file is not a configuration this version wrote.
        """
        try:
            data = json.loads(layout.cluster_file.read_text())
            params = data.get("params", {})
            if not isinstance(params, dict):
                raise TypeError(f"params must be an object, got {params!r}")
            return cls(
                str(data["net"]),
                int(data["shards"]),
                int(data["seed"]),
                data["durability"],
                params,
                int(data.get("initial_shards", 0)),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise CpnError(
                f"{layout.cluster_file} is not a cluster record ({exc}); restore it or "
                "use another --data directory"
            ) from exc


def parse_net_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as ``(key, value)``: VALUE parsed as JSON, else kept as a string.

    Raises:
        CpnError: no ``=``, or KEY is not an identifier.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise CpnError(
            f"net parameter {text!r} must look like KEY=VALUE (e.g. delay_ms=500 or "
            'proxies=["http://127.0.0.1:3128"])'
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def net_param_args(params: Mapping[str, Any]) -> tuple[str, ...]:
    """``--net-param KEY=JSON`` options that give a child process ``params``."""
    args: list[str] = []
    for key, value in sorted(params.items()):
        args += ["--net-param", f"{key}={json.dumps(value)}"]
    return tuple(args)


def live_endpoint(data_dir: Path) -> tuple[str, int] | None:
    """The ``(endpoint, pid)`` published in ``data_dir`` if that process still runs."""
    published = read_endpoint(data_dir)
    if published is None or not pid_running(published[1]):
        return None
    return published


def serves_directory(pid: int, data_dir: Path) -> bool:
    """Whether process ``pid`` is the one serving ``data_dir``: it took the directory's
    lock, or its command line names the directory (a forked child shows its parent's)."""
    return holds_flock(pid, data_dir / LOCK_FILE) or str(data_dir) in process_args(pid)


def supervisor_pid(layout: ClusterLayout) -> int | None:
    """The pid of the supervisor running the cluster in ``layout``, if one runs.

    A supervisor holds ``supervisor.lock`` while it runs and records its pid in
    ``supervisor.pid``; the pid counts only while that lock is held and the process
    took it, or its command line is a ``cpn up --foreground`` (a pid may have been
    reused since; a supervisor forked by ``cpn crawl`` shows the crawl's command line).
    """
    try:
        pid = int(layout.supervisor_pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not pid_running(pid) or not lock_held(layout.supervisor_lock):
        return None
    if holds_flock(pid, layout.supervisor_lock):
        return pid
    args = process_args(pid)
    if "up" not in args or "--foreground" not in args:
        return None
    return pid


def lock_held(path: Path) -> bool:
    """Whether some process holds an exclusive ``flock`` on ``path`` right now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False


def router_endpoint(data_dir: Path) -> str:
    """Where the router of the cluster in ``data_dir`` listens.

    Raises:
        CpnError: no cluster was ever started there, or its router is not running
            (the message says which, and what to do).
    """
    layout = ClusterLayout(data_dir)
    if not layout.cluster_file.exists():
        raise CpnError(
            f"no cluster in {data_dir} (no {layout.cluster_file.name}); start one with "
            f"`cpn up --net NET --shards N --data {data_dir}`"
        )
    published = live_endpoint(layout.router_dir)
    if published is not None:
        return published[0]
    if supervisor_pid(layout) is not None:
        raise CpnError(
            f"the router of the cluster in {data_dir} is not running; its supervisor is "
            f"restarting it (see {layout.router_dir / 'router.log'}), try again shortly"
        )
    config = ClusterConfig.read(layout)
    assert config is not None  # the file exists (checked above)
    raise CpnError(
        f"the cluster in {data_dir} is not running; start it with `cpn up --data {data_dir} "
        f"--net {config.net} --shards {config.shards}`"
    )
