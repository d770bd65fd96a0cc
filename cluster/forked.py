"""A ``cpn`` command run in a forked copy of this process (SHELL).

Starting a ``cpn worker`` as a new interpreter costs its imports, about 0.3 s of CPU
each; ``cpn crawl`` starts four while its cluster's three interpreters start too, on two
cores. A process that has already imported the runtime can instead fork and run the
command in the child: the child shares the parent's imported modules and runs at once.

Forking is safe only in a process with one thread that has opened no ZeroMQ context,
socket or LMDB environment (docs/cluster.md): :func:`fork_is_safe` checks the threads;
the caller vouches for the rest (``cpn crawl`` forks its workers before it opens a
client); the crawl's supervisor is forked too, and forks its router's and shards' first
starts (:func:`cluster.processes.fork_standbys`). A forked child shows its parent's
command line, so a process that tools must find by its command line (a restarted
child, a ``cpn up`` supervisor) is started as a new interpreter.

:class:`ForkedProcess` has the parts of :class:`subprocess.Popen` that a
:class:`cluster.processes.ShardProcess` uses (``pid``, ``returncode``, ``poll``,
``wait``, ``send_signal``, ``kill``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

WAIT_POLL_S: Final = 0.01  # os.waitpid has no timeout: wait() looks this often
EXIT_CRASHED: Final = 70  # the command raised what cluster.cli did not turn into an exit


def fork_is_safe() -> bool:
    """Whether this process may fork a command: it runs one thread only (a lock another
    thread holds would stay held in the child for ever)."""
    return threading.active_count() == 1 and hasattr(os, "fork")


class ForkedProcess:
    """A forked child running one ``cpn`` command, as much of a ``Popen`` as is used."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    self.returncode = 0  # reaped elsewhere: its status is gone
                    return self.returncode
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it exits; its exit code (negative: the signal that ended it).

        Raises:
            subprocess.TimeoutExpired: it still runs after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(WAIT_POLL_S)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # never signal a pid that may have been reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_cpn(
    cli_args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    stdin_fd: int | None = None,
    close_fds: Sequence[int] = (),
    new_session: bool = False,
) -> ForkedProcess:
    """Run ``cpn CLI_ARGS`` in a forked child with ``env`` as its environment, its stdout
    and stderr appended to ``log_path`` and nothing on its stdin; return at once.

    ``stdin_fd``: the child's stdin instead (the parent keeps its own copy, to close).
    ``close_fds``: descriptors the child closes first (the write ends of other forked
    children's stdin pipes: a copy left open here would keep them from ever reading
    end-of-file). ``new_session``: the child leads a session of its own, as a detached
    ``cpn up`` would (a Ctrl-C at the terminal reaches the parent only, which stops it).

    The caller checked :func:`fork_is_safe` and has opened no ZeroMQ or LMDB.
    """

    def run() -> None:
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [sys.argv[0], *cli_args]
        from cluster.cli import main  # noqa: PLC0415 (imported already: the parent runs it)

        main()

    return fork_call(
        run,
        cli_args,
        log_path=log_path,
        stdin_fd=stdin_fd,
        close_fds=close_fds,
        new_session=new_session,
    )


def fork_call(
    run: Callable[[], object],
    args: Sequence[str],
    *,
    log_path: Path,
    stdin_fd: int | None = None,
    close_fds: Sequence[int] = (),
    new_session: bool = False,
) -> ForkedProcess:
    """Call ``run()`` in a forked child and exit with its outcome (``SystemExit``'s code,
    0 on return, ``EXIT_CRASHED`` on any other exception); return at once. ``args``
    names the child (what :class:`ForkedProcess` reports); the other arguments are
    :func:`fork_cpn`'s. The caller checked :func:`fork_is_safe`.
    """
    assert fork_is_safe(), "fork_call with more than one thread"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(log_fd)
        return ForkedProcess(pid, args)
    code = EXIT_CRASHED
    try:
        for fd in close_fds:
            os.close(fd)
        if new_session:
            os.setsid()
        # The parent's log handlers and signal handlers (its log file, a Ctrl-C
        # handler) are not the child's: what it runs sets up its own.
        for handler in logging.root.handlers[:]:
            logging.root.removeHandler(handler)
            handler.close()  # this child's copy of the file: the parent's stays open
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        if stdin_fd is None:
            nothing = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nothing, 0)
            os.close(nothing)
        else:
            os.dup2(stdin_fd, 0)
            os.close(stdin_fd)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child must never return into its parent's code
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
