"""Worker processes an application runs for a local cluster (SHELL): started, restarted
when they exit, and waited for until they lease.

``cpn crawl`` and ``cpn demo jobs`` each run a few ``cpn worker`` processes beside the
cluster they start. A worker that exits is started again after a pause (a chaos test
SIGKILLs them); a fault point (``CPN_FAULT``) fires in a worker's first incarnation
only, so that its restart carries on. Each worker creates its ready file once it is
leasing, and work is put only then: a token decided before any worker could lease it
would be refused as late and planned again.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster.forked import ForkedProcess, fork_cpn
from cluster.processes import ShardProcess

RESTART_PAUSE_S: Final = 0.5
POLL_S: Final = 0.01  # other processes create the ready files: no event to wait on
FAULT_ENV: Final = "CPN_FAULT"  # fault points (tests) fire in the first incarnation only


@dataclass
class WorkerProcess:
    """One worker process, how to start it, and how often it was restarted."""

    role: str
    index: int
    args: list[str]
    log_path: Path
    env: dict[str, str]
    ready_file: Path | None = None  # the worker creates it once it is leasing
    handle: ShardProcess | None = None
    restarts: int = 0
    next_start_s: float = 0.0

    def start(self, *, fork: bool = False) -> None:
        """Start it as a new interpreter, or with ``fork`` as a forked copy of this
        process (:mod:`cluster.forked`: the caller vouches that it is safe)."""
        env = {**os.environ, **self.env}
        if self.restarts:
            env.pop(FAULT_ENV, None)
        process: subprocess.Popen[bytes] | ForkedProcess
        if fork and self.args[1:3] == ["-m", "cluster.cli"]:
            process = fork_cpn(self.args[3:], log_path=self.log_path, env=env)
        else:
            with self.log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    self.args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env
                )
        self.handle = ShardProcess(self.log_path.parent, process, args=self.args, role="worker")


def restart_exited(workers: Sequence[WorkerProcess], say: Callable[[str], None]) -> None:
    """Start every worker not running, a pause after it exited (saying so)."""
    now = time.monotonic()
    for worker in workers:
        handle = worker.handle
        if handle is not None and handle.alive():
            continue
        if handle is not None:
            worker.handle = None
            worker.restarts += 1
            worker.next_start_s = now + RESTART_PAUSE_S
            say(
                f"{worker.role} worker {worker.index} (pid {handle.pid}) exited with "
                f"{handle.process.returncode}; restarting it"
            )
        if now >= worker.next_start_s:
            worker.start()


def await_leasing(
    workers: Sequence[WorkerProcess], say: Callable[[str], None], *, timeout_s: float
) -> bool:
    """Wait until every worker with a ready file created it (restarting those that
    exit meanwhile); whether they all did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(w.ready_file is None or w.ready_file.exists() for w in workers):
            return True
        restart_exited(workers, say)
        time.sleep(POLL_S)
    return False


def running_pids(workers: Sequence[WorkerProcess], role: str | None = None) -> list[int]:
    """The pids of the workers (of ``role``) running now."""
    return [
        w.handle.pid
        for w in workers
        if w.handle is not None and w.handle.alive() and role in (None, w.role)
    ]
