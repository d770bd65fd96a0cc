"""SIGTERM unwinds a foreground command (cluster/commands/terminate.py): its ``finally``
blocks run, a second SIGTERM does not cut them short, and the exit status is 143.

Each case runs in its own interpreter: signal handlers belong to a main thread, and
the test process's own handlers stay as they are.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from cluster.commands.terminate import EXIT_TERMINATED

TIMEOUT_S = 60.0

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from cluster.commands.terminate import sigterm_unwinds

    before = signal.getsignal(signal.SIGTERM)
    try:
        with sigterm_unwinds():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                print("not interrupted", flush=True)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one, during the clean-up
                print("cleaned up", flush=True)
    finally:
        print("restored", signal.getsignal(signal.SIGTERM) is before, flush=True)
    """
)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter (its own main thread and signal handlers)."""
    return subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_sigterm_runs_the_finally_blocks_and_exits_143() -> None:
    done = _run(SCRIPT)
    assert done.returncode == EXIT_TERMINATED == 143, done.stderr
    assert done.stdout.split("\n")[:2] == ["cleaned up", "restored True"]


def test_without_sigterm_the_body_runs_through() -> None:
    done = _run(
        "from cluster.commands.terminate import sigterm_unwinds\n"
        "with sigterm_unwinds():\n    print('ran')\n"
    )
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr
