"""cluster/pids.py and the identity tests built on it (cluster/layout.py): a pid file
counts for the process that took the lock, whatever its command line (a child forked by
``cpn crawl`` shows the crawl's)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from cluster.layout import ClusterLayout, serves_directory, supervisor_pid
from cluster.pids import holds_flock
from router.shell.datadir import LOCK_FILE


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_the_holder_of_a_flock_is_named_and_no_other_pid(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.touch()
    assert not holds_flock(os.getpid(), path)
    fd = _lock(path)
    try:
        assert holds_flock(os.getpid(), path)
        assert not holds_flock(os.getppid(), path)
    finally:
        os.close(fd)
    assert not holds_flock(os.getpid(), path)
    assert not holds_flock(os.getpid(), tmp_path / "missing")


def test_a_lock_taken_by_another_process_names_that_process(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        assert holds_flock(child.pid, path)
        assert not holds_flock(os.getpid(), path)
    finally:
        child.communicate(timeout=10)


def test_a_supervisor_is_known_by_its_lock_whatever_its_command_line(tmp_path: Path) -> None:
    layout = ClusterLayout(tmp_path)
    layout.supervisor_pid_file.write_text(f"{os.getpid()}\n")
    assert supervisor_pid(layout) is None  # no lock held: a stale pid file
    fd = _lock(layout.supervisor_lock)
    try:
        assert supervisor_pid(layout) == os.getpid()  # pytest's command line, our lock
        layout.supervisor_pid_file.write_text(f"{os.getppid()}\n")
        assert supervisor_pid(layout) is None  # the lock is held, by someone else
    finally:
        os.close(fd)


def test_a_child_serves_the_directory_whose_lock_it_took(tmp_path: Path) -> None:
    assert not serves_directory(os.getpid(), tmp_path)
    fd = _lock(tmp_path / LOCK_FILE)
    try:
        assert serves_directory(os.getpid(), tmp_path)
        assert not serves_directory(os.getppid(), tmp_path)
    finally:
        os.close(fd)
