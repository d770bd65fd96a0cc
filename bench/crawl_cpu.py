"""CPU of a crawler and every process it starts, by process (``bench.crawl --sweep``).

A crawler runs as a process of its own; :func:`tree_cpu_s` samples it and its
descendants (psutil) until it exits, and splits their CPU by role (:func:`_role`): the
driver, the supervisor, the router, each shard and each worker. ``cpn crawl`` forks its
children, so they share its command line: a child is told by the log its stdout goes
to. A crawler out of time is stopped with everything it started (:func:`_stop_tree`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

import psutil

RUN_TIMEOUT_S: Final = 180.0
SAMPLE_S: Final = 0.2
STOP_S_MAX: Final = 60.0  # a crawler out of time: from Ctrl-C to SIGKILL


def _role(proc: psutil.Process) -> str:
    """What a crawler's process is, for the CPU table: the log its stdout goes to
    (``fetch-0.log``; a forked child shares its parent's command line but not its log),
    or for a cluster's child the directory of its ``stderr.log`` (``shard-1``), else
    its command name."""
    with contextlib.suppress(OSError):
        log = Path(os.readlink(f"/proc/{proc.pid}/fd/1"))
        return log.parent.name if log.name == "stderr.log" else log.stem
    return str(proc.name())


def tree_cpu_s(process: subprocess.Popen[bytes]) -> tuple[float, bool, dict[str, float]]:
    """CPU seconds of ``process`` and every process it starts, sampled until it exits
    (a process's CPU time only grows: the largest sample per pid is its total), whether
    it finished within ``RUN_TIMEOUT_S`` (if not, it is stopped), and the CPU seconds
    by role (:func:`_role`; processes of one role summed)."""
    seen: dict[int, float] = {}
    roles: dict[int, str] = {}

    def sample() -> None:
        try:
            root = psutil.Process(process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in tree:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            seen[proc.pid] = max(seen.get(proc.pid, 0.0), times.user + times.system)
            # Again at every sample: a spare becomes a shard or the router later.
            role = "driver" if proc.pid == process.pid else _role(proc)
            if role != "python" or proc.pid not in roles:  # not an exiting child's
                roles[proc.pid] = role

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while process.poll() is None:
        sample()
        if time.monotonic() > deadline:
            _stop_tree(process)
            return sum(seen.values()), False, _by_role(seen, roles)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=SAMPLE_S)
    return sum(seen.values()), True, _by_role(seen, roles)


def _by_role(seen: dict[int, float], roles: dict[int, str]) -> dict[str, float]:
    by_role: dict[str, float] = {}
    for pid, cpu_s in seen.items():
        role = roles.get(pid, "?")
        by_role[role] = by_role.get(role, 0.0) + cpu_s
    return by_role


def _stop_tree(process: subprocess.Popen[bytes]) -> None:
    """Stop a crawler that ran out of time, and everything it started: SIGINT first (a
    crawler stops its workers and its cluster on Ctrl-C), then SIGKILL whatever of that
    tree still runs (psutil checks that a pid is still the same process)."""
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = []
    process.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_S_MAX)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():
                proc.kill()
    process.wait()
