"""A process's data directory: its exclusive lock and the endpoint it publishes (SHELL).

Shared by the shard and the router daemon: a data directory is held by one process at
a time (``flock`` on ``DIR/lock``, released by the kernel when the holder dies, even
by SIGKILL), and a process that bound an endpoint publishes ``endpoint\\npid\\n`` in
``DIR/endpoint`` atomically, so launchers read all of it or nothing and can tell the
current process's file from one an earlier, killed incarnation left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path
from typing import Final

from nets.errors import CpnError

LOCK_FILE: Final = "lock"
ENDPOINT_FILE: Final = "endpoint"


def lock_directory(path: Path, *, error: type[CpnError] = CpnError) -> int:
    """Hold an exclusive lock on ``path/lock`` for the life of this process.

    Returns the lock's file descriptor (closing it releases the lock).

    Raises:
        error: another process holds the lock (named by its pid when known).
    """
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        raise error(
            f"data directory {path} is in use by another process{holder}; stop it or use "
            "another --data directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def publish(path: Path, value: str) -> None:
    """Write ``value`` and this process's pid to ``path``, atomically (an endpoint, a
    metrics URL: whoever reads it can tell whose it is and whether it still runs)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{value}\n{os.getpid()}\n")
    partial.replace(path)


def unpublish(path: Path) -> None:
    """Remove ``path`` if this process published it (not a successor's)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        lines = path.read_text().split()
        if len(lines) == 2 and int(lines[1]) == os.getpid():
            path.unlink()


def read_published(path: Path) -> tuple[str, int] | None:
    """The ``(value, pid)`` a process published in ``path`` (``None`` until it has)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        value, pid = path.read_text().split()
        return value, int(pid)
    return None


def publish_endpoint(data_dir: Path, endpoint: str) -> None:
    """Write ``endpoint`` and this process's pid to ``data_dir/endpoint``, atomically."""
    publish(data_dir / ENDPOINT_FILE, endpoint)


def unpublish_endpoint(data_dir: Path) -> None:
    """Remove ``data_dir/endpoint`` if this process wrote it (not a successor's)."""
    unpublish(data_dir / ENDPOINT_FILE)


def read_endpoint(data_dir: Path) -> tuple[str, int] | None:
    """The ``(endpoint, pid)`` a process published in ``data_dir`` (``None`` until it has)."""
    return read_published(data_dir / ENDPOINT_FILE)


FAULT_ENV: Final = "CPN_FAULT_POINTS"  # comma-separated names of fault points to arm
FAULT_MARK_PREFIX: Final = "fault-fired-"


def fault_point(data_dir: Path, name: str) -> None:
    """SIGKILL this process at fault point ``name`` if ``CPN_FAULT_POINTS`` names it.

    Each armed point fires once per data directory (a mark file records it before the
    kill), so a supervisor that restarts the process with the same environment lets
    the restarted process resume and finish what the killed one began. Tests use it to
    kill a party at each step of a protocol (docs/architecture.md, "Tests": fault points).
    """
    armed = os.environ.get(FAULT_ENV)
    if not armed or name not in armed.split(","):
        return
    mark = data_dir / f"{FAULT_MARK_PREFIX}{name}"
    if mark.exists():
        return
    mark.write_text(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
