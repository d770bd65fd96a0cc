"""Starting and stopping a local cluster from the command line (SHELL).

``cpn up`` (:func:`up`) checks what can be checked before anything starts (the net
loads, ``cluster.json`` agrees with the options, no supervisor runs), then starts
``cpn up --foreground`` (the supervisor, :mod:`cluster.supervisor`) detached, in a new
session so that it outlives the terminal, and waits until the router reports every
shard alive; a supervisor that exits before that has its error quoted from
``supervisor.log``. ``cpn down`` (:func:`down`) sends the supervisor SIGTERM and waits
for it and its children to exit, then stops, by pid, any child left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cluster.client import ClusterClient, ShardUnavailable
from cluster.forked import ForkedProcess, fork_cpn
from cluster.layout import (
    ClusterConfig,
    ClusterLayout,
    live_endpoint,
    serves_directory,
    supervisor_pid,
)
from cluster.pids import pid_running
from cluster.processes import ERROR_PREFIX, wait_for
from cluster.supervisor import LOOPBACK_ANY_PORT, STUCK_TIMEOUT_S_DEFAULT, TICK_S
from nets.errors import CpnError

READY_TIMEOUT_S: Final = 60.0
DOWN_TIMEOUT_S: Final = 60.0
STATUS_TIMEOUT_MS: Final = 1_000
LOG_READ_BYTES_MAX: Final = 64 * 1024


def settle_config(
    layout: ClusterLayout,
    *,
    net: str,
    shards: int,
    seed: int | None,
    durability: str | None,
    params: Mapping[str, Any] | None = None,
) -> ClusterConfig:
    """The configuration to start with: the recorded one, checked against the request.

    ``seed``, ``durability`` and the net ``params`` default to the recorded values
    (``None``: keep them); given, they replace them (``params`` as a whole). The net
    and the shard count cannot change. Nothing is written (see :func:`record_config`).

    Raises:
        CpnError: the directory holds a cluster of another net or shard count.
    """
    recorded = ClusterConfig.read(layout)
    if recorded is not None and recorded.net != net:
        raise CpnError(
            f"{layout.root} holds a cluster of net {recorded.net!r}, not {net!r}; pass "
            f"--net {recorded.net} or use another --data directory"
        )
    if recorded is not None and recorded.shards != shards:
        raise CpnError(
            f"{layout.root} holds a cluster of {recorded.shards} shards, not {shards}; pass "
            f"--shards {recorded.shards} or use another --data directory"
        )
    base = recorded or ClusterConfig(net, shards)
    return ClusterConfig(
        net,
        shards,
        base.seed if seed is None else seed,
        base.durability if durability is None else durability,
        dict(base.params) if params is None else dict(params),
        base.initial_shards,
    )


def record_config(layout: ClusterLayout, config: ClusterConfig) -> None:
    """Write ``cluster.json`` (atomically) unless it already says the same."""
    if ClusterConfig.read(layout) == config:
        return
    layout.root.mkdir(parents=True, exist_ok=True)
    partial = layout.cluster_file.with_name(f".{layout.cluster_file.name}.{os.getpid()}")
    partial.write_text(config.to_json())
    partial.replace(layout.cluster_file)


# -- cpn up (detached) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process of a running cluster: its name, endpoint and pid."""

    name: str
    endpoint: str
    pid: int


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    net: str
    supervisor_pid: int
    processes: tuple[ProcessInfo, ...]  # the router, then shard 0, 1, ...


def up(
    layout: ClusterLayout,
    config: ClusterConfig,
    *,
    bind: str = LOOPBACK_ANY_PORT,
    timeout_s: float = READY_TIMEOUT_S,
    stuck_timeout_s: float = STUCK_TIMEOUT_S_DEFAULT,
    extra_args: tuple[str, ...] = (),
) -> ClusterInfo:
    """Start the cluster's supervisor detached and wait until every shard is alive.

    ``extra_args`` are flags of ``cpn up`` passed on to ``cpn up --foreground``.

    Raises:
        CpnError: a supervisor already runs; the supervisor exited (its error is
            quoted); or the cluster was not ready within ``timeout_s`` (it is left
            running, and the message says where to look and how to stop it).
    """
    process, log_start = spawn_supervisor(
        layout, config, bind=bind, stuck_timeout_s=stuck_timeout_s, extra_args=extra_args
    )
    return wait_up(layout, config, process, log_start, timeout_s=timeout_s)


def spawn_supervisor(
    layout: ClusterLayout,
    config: ClusterConfig,
    *,
    bind: str = LOOPBACK_ANY_PORT,
    stuck_timeout_s: float = STUCK_TIMEOUT_S_DEFAULT,
    extra_args: tuple[str, ...] = (),
    fork: bool = False,
) -> tuple[subprocess.Popen[bytes] | ForkedProcess, int]:
    """Start the cluster's supervisor detached and return at once: its process and
    where its log starts (for :func:`wait_up`). The caller keeps the handle until the
    supervisor has exited (:func:`up` lets it go once the cluster is ready).

    ``fork``: fork it from this process (:func:`cluster.forked.fork_cpn`; the caller
    vouches that it is safe) instead of starting an interpreter. Its command line is
    then this process's, so :func:`cluster.layout.supervisor_pid` (and with it ``cpn
    down``) does not know it: the caller stops it by its handle.

    Raises:
        CpnError: a supervisor already runs.
    """
    running = supervisor_pid(layout)
    if running is not None:
        raise CpnError(
            f"the cluster in {layout.root} is already running (supervisor pid {running}); "
            f"stop it with `cpn down --data {layout.root}`"
        )
    args = [
        sys.executable,
        "-m",
        "cluster.cli",
        "up",
        "--foreground",
        "--net",
        config.net,
        "--shards",
        str(config.shards),
        "--data",
        str(layout.root),
        "--bind",
        bind,
        "--stuck-timeout",
        f"{round(stuck_timeout_s * 1000)}ms",
        *extra_args,
    ]
    with layout.supervisor_log.open("ab") as log_file:
        log_start = log_file.tell()  # what the new supervisor writes comes after this
        if fork:
            forked = fork_cpn(
                args[3:], log_path=layout.supervisor_log, env=os.environ, new_session=True
            )
            return forked, log_start
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,  # outlives this command and its terminal
        )
    return process, log_start


def wait_up(
    layout: ClusterLayout,
    config: ClusterConfig,
    process: subprocess.Popen[bytes] | ForkedProcess,
    log_start: int,
    *,
    timeout_s: float = READY_TIMEOUT_S,
    poll_s: float = TICK_S,
) -> ClusterInfo:
    """Wait until the router reports every shard of the supervisor ``process`` alive.

    Raises:
        CpnError: as :func:`up`.
    """
    deadline = time.monotonic() + timeout_s
    alive = 0
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise CpnError(
                f"the cluster did not start: {_last_error(layout, log_start, code)} "
                f"(see {layout.supervisor_log})"
            )
        info, alive = _ready(layout, process.pid)
        if info is not None:
            return info
        time.sleep(poll_s)
    raise CpnError(
        f"the cluster in {layout.root} is not ready after {timeout_s:.0f} s ({alive} of "
        f"{config.shards} shards alive); see {layout.supervisor_log} and `cpn logs --data "
        f"{layout.root}`; stop it with `cpn down --data {layout.root}`"
    )


def _last_error(layout: ClusterLayout, log_start: int, code: int) -> str:
    """The error the supervisor printed (on stderr, into its log) before it exited."""
    with layout.supervisor_log.open("rb") as log_file:
        log_file.seek(max(log_start, log_file.seek(0, os.SEEK_END) - LOG_READ_BYTES_MAX))
        lines = log_file.read().decode(errors="replace").splitlines()
    errors = [line.removeprefix(ERROR_PREFIX) for line in lines if line.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else f"its supervisor exited with code {code}"


def _ready(layout: ClusterLayout, pid: int) -> tuple[ClusterInfo | None, int]:
    """The cluster's processes once the router reports all shards alive, and how many are."""
    router = live_endpoint(layout.router_dir)
    if router is None:
        return None, 0
    try:
        with ClusterClient(router[0], timeout_ms=STATUS_TIMEOUT_MS, retries=0) as client:
            state = client.status()
    except ShardUnavailable:
        return None, 0
    alive = sum(1 for shard in state.shards if shard["alive"])
    processes = [ProcessInfo("router", *router)]
    for shard_id, shard in enumerate(state.shards):
        published = live_endpoint(layout.shard_dir(shard_id))
        if not shard["alive"] or published is None or published[0] != shard["endpoint"]:
            return None, alive
        processes.append(ProcessInfo(f"shard {shard_id}", *published))
    return ClusterInfo(state.net, pid, tuple(processes)), alive


# -- cpn down -----------------------------------------------------------------------------


def down(layout: ClusterLayout, *, timeout_s: float = DOWN_TIMEOUT_S) -> list[int]:
    """Stop the cluster: SIGTERM its supervisor and wait until it is gone.

    Without a supervisor, children left running (the supervisor was killed) are
    stopped directly, each only after checking that its pid is really that child.
    Returns the pids stopped.

    Raises:
        CpnError: nothing of the cluster runs, or it did not stop within ``timeout_s``.
    """
    pid = supervisor_pid(layout)
    pids = [pid] if pid is not None else _stray_children(layout)
    if not pids:
        raise CpnError(f"the cluster in {layout.root} is not running")
    for target in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)
    try:
        wait_for(
            lambda: [p for p in pids if pid_running(p)],
            lambda running: not running,
            what="the cluster to stop",
            timeout_s=timeout_s,
            interval_s=TICK_S,
        )
    except CpnError:
        raise CpnError(
            f"the cluster in {layout.root} did not stop within {timeout_s:.0f} s (pids "
            f"{', '.join(str(p) for p in pids if pid_running(p))}); see {layout.supervisor_log}"
        ) from None
    return pids


def _stray_children(layout: ClusterLayout) -> list[int]:
    config = ClusterConfig.read(layout)
    dirs = [layout.router_dir] + [
        layout.shard_dir(k) for k in range(config.shards if config else 0)
    ]
    strays = []
    for data_dir in dirs:
        published = live_endpoint(data_dir)
        if published is not None and serves_directory(published[1], data_dir):
            strays.append(published[1])
    return strays


# -- the supervisor (cpn up --foreground) -------------------------------------------------
