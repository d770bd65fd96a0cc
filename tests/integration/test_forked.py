"""A ``cpn`` command run in a forked child (cluster/forked.py): its output goes to its log,
its exit code comes back, a signal ends it, and a process with threads refuses to fork.

Each case runs in a fresh interpreter of its own: a pytest worker runs threads, so it may
not fork itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    from pathlib import Path
    from cluster.forked import ForkedProcess, fork_cpn, fork_is_safe
    log = Path(sys.argv[1])
    assert fork_is_safe()
    ok = fork_cpn(["worker", "--help"], log_path=log, env={**os.environ, "X_FORKED": "1"})
    bad = fork_cpn(["no-such-command"], log_path=log, env=dict(os.environ))
    print("codes", ok.wait(timeout=30), bad.wait(timeout=30))
    sleeper = fork_cpn(["worker", "--role", "fetch", "--data", str(log.parent / "none")],
                       log_path=log.parent / "sleeper.log", env=dict(os.environ))
    sleeper.send_signal(signal.SIGKILL)
    print("killed", sleeper.wait(timeout=30), sleeper.poll())
    threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()
    print("safe with a thread", fork_is_safe())
    """
)


def test_a_forked_command_logs_exits_and_is_signalled(tmp_path: Path) -> None:
    log = tmp_path / "forked.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "codes 0 2" in done.stdout
    assert "killed -9 -9" in done.stdout
    assert "safe with a thread False" in done.stdout
    text = log.read_text()
    assert "--role" in text, "the worker's help went to the log"
    assert "No such command" in text or "no-such-command" in text
