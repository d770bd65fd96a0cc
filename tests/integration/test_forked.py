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


STANDBYS_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cluster.processes import fork_standbys
    from tests.integration.test_shard import _env
    root = Path(sys.argv[1])
    params = {"builds_file": str(root / "builds")}
    net = ("tests.nets_for_tests:jobs_counting_builds", 0, params)
    unused, used = fork_standbys([("shard", root / "a"), ("shard", root / "b")], _env(), net=net)
    # The second standby holds no copy of the first one's order pipe: closing it ends
    # the first at once.
    unused.close()
    print("unused", unused.process.returncode)
    (root / "b").mkdir()
    handle = used.become("shard", root / "b", ("--help",))
    print("used", handle.pid == used.process.pid, handle.process.wait(timeout=30))
    """
)


def test_forked_standbys_build_the_net_and_become_their_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", STANDBYS_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "unused 0" in done.stdout
    assert "used True 0" in done.stdout
    assert "--shard-id" in (tmp_path / "b" / "stderr.log").read_text(), "the shard's help"
    assert (tmp_path / "builds").read_text() == "built\nbuilt\n", "each built the net"
