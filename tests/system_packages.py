"""Debian packages a test needs (Graphviz, Chromium), installed once per machine.

CI runs as root on a fresh machine that reaches Debian's package registry, so a test
that needs a system program installs it in its set-up instead of skipping. Parallel
workers (pytest-xdist) may ask at the same moment: a file lock makes one of them
install while the others wait, and every later caller finds the programs on the PATH.

Where installing is impossible (not root, no apt-get) the test is skipped with a line
saying what to install; where apt-get runs and fails, the test fails: CI must not pass
a browser or Graphviz test silently.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

LOCK_PATH: Final = Path("/tmp/cpn-tests-apt.lock")
INSTALL_TIMEOUT_S: Final = 900  # a cold Chromium download on a slow mirror


def require_debian_packages(packages: Sequence[str], programs: Sequence[str]) -> None:
    """Make sure ``programs`` are on the PATH, installing ``packages`` if they are not.

    Skips the calling test where nothing can be installed; fails it where the install
    itself fails (the output's last line names why).
    """
    if all(shutil.which(program) for program in programs):
        return
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        pytest.skip(f"needs {', '.join(programs)}: apt-get install {' '.join(packages)}")
    with LOCK_PATH.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if all(shutil.which(program) for program in programs):
                return  # another worker installed them while this one waited
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for command in (
                [apt_get, "update", "-q"],
                [apt_get, "install", "-y", "-q", "--no-install-recommends", *packages],
            ):
                done = subprocess.run(
                    command,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT_S,
                    check=False,
                )
                if done.returncode != 0:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
                    pytest.fail(f"{' '.join(command[:2])} failed: {' '.join(tail)}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.fail(f"installed {' '.join(packages)} but {', '.join(missing)} is not on the PATH")
