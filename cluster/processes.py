"""Starting and stopping cluster processes on this machine (SHELL).

Used by tests, benchmarks and the local supervisor (:mod:`cluster.supervisor`): a shard
or a router is started as a real ``cpn shard`` / ``cpn router`` process with its own
data directory; the handle knows its pid and the endpoint the process published once it
is ready. Processes are stopped by pid, and only processes started here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from cluster.forked import ForkedProcess, fork_cpn
from cluster.logtail import tail
from cluster.standby import PREPARE_NET, STANDBY
from nets.errors import CpnError
from router.shell.datadir import read_endpoint

READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
STDERR_FILE: Final = "stderr.log"
ERROR_PREFIX: Final = "cpn: error: "  # how cluster/cli.py words an error on stderr

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T],
    condition: Callable[[T], bool],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.05,
) -> T:
    """Poll ``probe`` until ``condition`` holds on its value; return that value.

    Raises:
        CpnError: ``timeout_s`` passed first (the message names ``what`` and the last
            value seen).
    """
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not condition(value):
        if time.monotonic() >= deadline:
            raise CpnError(f"timed out after {timeout_s} s waiting for {what}; last: {value!r}")
        time.sleep(interval_s)
        value = probe()
    return value


@dataclass
class ShardProcess:
    """A running ``cpn shard`` (or ``cpn router``, see ``role``) that this process started."""

    data_dir: Path
    process: subprocess.Popen[bytes] | ForkedProcess
    endpoint: str = ""
    args: list[str] = field(default_factory=list)
    role: str = "shard"

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

    def poll_ready(self) -> bool:
        """Has the process published its endpoint? (sets :attr:`endpoint`; never waits)"""
        published = read_endpoint(self.data_dir)
        # A killed incarnation leaves its file behind: only our process's counts.
        if published is not None and published[1] == self.pid:
            self.endpoint = published[0]
            return True
        return False

    def last_error(self) -> str:
        """The last line the process wrote to its stderr (its one-line error, if any)."""
        lines = tail(self.data_dir / STDERR_FILE, 1)
        return lines[-1].removeprefix(ERROR_PREFIX) if lines else "no output"


ChildProcess = ShardProcess  # the handle is the same for every kind of child


def start_shard(
    net: str,
    data_dir: Path,
    *,
    bind: str = "tcp://127.0.0.1:0",
    durability: str = "fsync",
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait: bool = True,
    standby: Standby | None = None,
) -> ShardProcess:
    """Start ``cpn shard`` on ``data_dir`` and (by default) wait until it serves.

    ``standby``: become this spare interpreter instead of starting one, if it is alive.

    Raises:
        CpnError: the process exited before publishing its endpoint, or did not
            publish it within ``READY_TIMEOUT_S`` (it is killed then).
    """
    options = ("--net", net, "--bind", bind, "--durability", durability, *extra_args)
    return _start("shard", data_dir, options, env=env, wait=wait, standby=standby)


def start_router(
    net: str,
    data_dir: Path,
    *,
    shards: int,
    bind: str = "tcp://127.0.0.1:0",
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait: bool = True,
    standby: Standby | None = None,
) -> ShardProcess:
    """Start ``cpn router`` on ``data_dir`` and (by default) wait until it serves;
    ``standby`` as for :func:`start_shard`.

    Raises:
        CpnError: as :func:`start_shard`.
    """
    options = ("--net", net, "--shards", str(shards), "--bind", bind, *extra_args)
    return _start("router", data_dir, options, env=env, wait=wait, standby=standby)


class Standby:
    """A spare interpreter with the runtime imported (:mod:`cluster.standby`), so that a
    restarted child skips Python's start-up and imports. Owned by one supervisor, for the
    child of one data directory: its command line names it, as the child's will, so that
    whatever checks a pid against its data directory (``cpn down``, chaos) knows it."""

    def __init__(
        self,
        role: str,
        data_dir: Path,
        env: dict[str, str] | None,
        *,
        net: tuple[str, int, Mapping[str, Any]] | None = None,
        fork_closing: Sequence[int] | None = None,
    ) -> None:
        """``net``: the (path, seed, params) its child will load, to build in advance.

        ``fork_closing``: fork this process instead of starting an interpreter (the
        caller vouches it is safe, :func:`cluster.forked.fork_is_safe`); the child
        closes these descriptors first (:func:`fork_standbys`). A forked standby shows
        its parent's command line, not its child's.
        """
        self.data_dir = data_dir
        prepare: list[str] = []
        if net is not None:
            path, seed, params = net
            spec = {"net": path, "seed": seed, "params": dict(params)}
            prepare = [PREPARE_NET, json.dumps(spec, sort_keys=True)]
        cli_args = [STANDBY, role, "--data", str(data_dir), *prepare]
        self.process: subprocess.Popen[bytes] | ForkedProcess
        if fork_closing is None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", *cli_args],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
            assert self.process.stdin is not None
            self._orders: IO[bytes] = self.process.stdin
            return
        read_fd, write_fd = os.pipe()
        try:
            self.process = fork_cpn(
                cli_args,
                log_path=Path(os.devnull),
                env={**os.environ, **(env or {})},
                stdin_fd=read_fd,
                close_fds=(*fork_closing, write_fd),
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._orders = os.fdopen(write_fd, "wb")

    @property
    def orders_fd(self) -> int:
        """The descriptor its order is written to (a later forked standby closes it)."""
        return self._orders.fileno()

    def become(self, role: str, data_dir: Path, options: tuple[str, ...]) -> ShardProcess | None:
        """Make it ``cpn ROLE --data DATA_DIR OPTIONS``; None if it died meanwhile."""
        if self.process.poll() is not None or self._orders.closed:
            return None
        assert data_dir == self.data_dir, (data_dir, self.data_dir)
        cli_args = [role, "--data", str(data_dir), *options]
        order = {"args": cli_args, "output": str(data_dir / STDERR_FILE)}
        try:
            self._orders.write((json.dumps(order) + "\n").encode())
            self._orders.close()
        except OSError:
            return None
        args = [sys.executable, "-m", "cluster.cli", *cli_args]
        return ShardProcess(data_dir, self.process, args=args, role=role)

    def close(self) -> None:
        """Let an unused standby exit (an empty stdin), and reap it."""
        if not self._orders.closed:
            with contextlib.suppress(OSError):
                self._orders.close()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def fork_standbys(
    wanted: Sequence[tuple[str, Path]],
    env: dict[str, str] | None,
    *,
    net: tuple[str, int, Mapping[str, Any]] | None = None,
) -> list[Standby]:
    """A forked standby for each (role, data directory) of ``wanted``, in order: each
    child shares this process's imports and starts at once (no interpreter to start).

    Only from a process with one thread and no ZeroMQ or LMDB open (the caller checks
    :func:`cluster.forked.fork_is_safe` and vouches for the rest).
    """
    standbys: list[Standby] = []
    try:
        for role, data_dir in wanted:
            closing = [s.orders_fd for s in standbys]
            standbys.append(Standby(role, data_dir, env, net=net, fork_closing=closing))
    except BaseException:
        for standby in standbys:
            standby.close()
        raise
    return standbys


def _start(
    role: str,
    data_dir: Path,
    options: tuple[str, ...],
    *,
    env: dict[str, str] | None,
    wait: bool,
    standby: Standby | None = None,
) -> ShardProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = None if standby is None else standby.become(role, data_dir, options)
    if handle is not None:
        if wait:
            wait_ready(handle)
        return handle
    if standby is not None:
        standby.close()  # it died: reap it, and start the child afresh
    args = [sys.executable, "-m", "cluster.cli", role, "--data", str(data_dir), *options]
    stderr = (data_dir / STDERR_FILE).open("ab")
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
        env={**os.environ, **(env or {})},
    )
    stderr.close()
    handle = ShardProcess(data_dir, process, args=args, role=role)
    if wait:
        wait_ready(handle)
    return handle


def run_cpn(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run one ``cpn`` command in a new interpreter to completion; capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


def wait_ready(handle: ShardProcess, *, timeout_s: float = READY_TIMEOUT_S) -> str:
    """Wait until the process publishes its endpoint; return it.

    Raises:
        CpnError: it exited first (with its last line of stderr), or did not publish
            within ``timeout_s`` (it is killed then).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if handle.poll_ready():
            return handle.endpoint
        if not handle.alive():
            raise CpnError(
                f"{handle.role} in {handle.data_dir} exited with "
                f"{handle.process.returncode}: {handle.last_error()}"
            )
        time.sleep(0.01)
    handle.kill()
    raise CpnError(
        f"{handle.role} in {handle.data_dir} did not publish its endpoint in {timeout_s} s"
    )


def stop_all(handles: Iterable[ShardProcess], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every running handle at once, wait for all, SIGKILL those still running."""
    running = [h for h in handles if h.alive()]
    for handle in running:
        with contextlib.suppress(ProcessLookupError):
            handle.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for handle in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            handle.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        if handle.alive():
            handle.kill()
