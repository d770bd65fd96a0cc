"""Starting and stopping cluster processes on this machine (SHELL).

Used by tests, benchmarks and (later) the local supervisor: a shard is started as a
real ``cpn shard`` process with its own data directory; the handle knows its pid and
the endpoint the shard published once it is ready. Processes are stopped by pid, and
only processes started here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nets.errors import CpnError
from shard.process import read_endpoint

READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0


@dataclass
class ShardProcess:
    """A running ``cpn shard`` process that this process started."""

    data_dir: Path
    process: subprocess.Popen[bytes]
    endpoint: str = ""
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the shard (if it still runs) and reap it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self) -> int:
        """SIGTERM (graceful stop), then SIGKILL if it does not exit in time."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait(timeout=STOP_TIMEOUT_S)


def start_shard(
    net: str,
    data_dir: Path,
    *,
    bind: str = "tcp://127.0.0.1:0",
    durability: str = "fsync",
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ShardProcess:
    """Start ``cpn shard`` on ``data_dir`` and (by default) wait until it serves.

    Raises:
        CpnError: the process exited before publishing its endpoint, or did not
            publish it within ``READY_TIMEOUT_S`` (it is killed then).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "cluster.cli",
        "shard",
        "--net",
        net,
        "--data",
        str(data_dir),
        "--bind",
        bind,
        "--durability",
        durability,
        *extra_args,
    ]
    stderr = (data_dir / "stderr.log").open("ab")
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
        env={**os.environ, **(env or {})},
    )
    stderr.close()
    handle = ShardProcess(data_dir, process, args=args)
    if wait:
        wait_ready(handle)
    return handle


def wait_ready(handle: ShardProcess, *, timeout_s: float = READY_TIMEOUT_S) -> str:
    """Wait until the shard publishes its endpoint; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        published = read_endpoint(handle.data_dir)
        # A killed incarnation leaves its file behind: only our process's counts.
        if published is not None and published[1] == handle.pid:
            handle.endpoint = published[0]
            return handle.endpoint
        if not handle.alive():
            err = (handle.data_dir / "stderr.log").read_text(errors="replace").strip()
            raise CpnError(
                f"shard in {handle.data_dir} exited with {handle.process.returncode}: "
                f"{err.splitlines()[-1] if err else 'no output'}"
            )
        time.sleep(0.01)
    handle.kill()
    raise CpnError(f"shard in {handle.data_dir} did not publish its endpoint in {timeout_s} s")
