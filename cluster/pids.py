"""Processes by pid, read from ``/proc`` (SHELL): whether one runs, its parent, its
command line. Used to tell a live supervisor or endpoint from a stale pid file."""

from __future__ import annotations

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
