"""Processes by pid, read from ``/proc`` (SHELL): whether one runs, its parent, its
command line, the ``flock`` it holds, the processes naming a path. Used to tell a live
supervisor or endpoint from a stale pid file, and by tests to find every process of a
command they started."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, ...); [] if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    # They follow the command name in parentheses, which may itself hold spaces.
    return stat[stat.rindex(")") + 2 :].split()


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited, unreaped child)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (None if it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def process_args(pid: int) -> list[str]:
    """The command line of process ``pid`` (empty if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def processes_naming(path: Path) -> list[int]:
    """The processes (this one left out) whose command line names ``path``: every process
    of a crawl or demo given that data directory (a forked child keeps its parent's
    command line; the others are given the directory)."""
    needle = str(path).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in cmdline:
            found.append(int(name))
    return found


def holds_flock(pid: int, path: Path) -> bool:
    """Whether process ``pid`` took the ``flock`` held on ``path`` (``/proc/locks``).

    A stronger test of a pid file than the command line: a reused pid cannot hold the
    lock its predecessor took, and a process forked from another interpreter (whose
    command line is its parent's) still names itself by the lock it took.
    """
    try:
        stat = os.stat(path)
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:4243494 0 EOF": pid, then major:minor:inode.
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == where:
            return fields[4] == str(pid)
    return False
