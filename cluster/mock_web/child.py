"""The mock web served from a child process, for ``cpn demo`` (SHELL).

:class:`cluster.mock_web.web.MockWeb` answers from threads of the process that starts it.
``cpn demo`` must not run them in its own process: a process with more than one thread
cannot fork (:func:`cluster.forked.fork_is_safe`), so the crawl it runs would start its
supervisor and its workers as new interpreters, several seconds of start-up on two cores,
where ``cpn crawl`` forks them. :func:`serve_in_child` runs the mock web's own entry point
(``python -m cluster.mock_web.web``, :func:`cluster.mock_web.web.main`) in a child instead:
forked from this process when it is safe (no interpreter to start: the child shares the
imports already made), as a new interpreter otherwise.

Theory of operation: the child writes ``hosts.txt`` (atomically, once every host listens)
and appends every request to ``requests.jsonl``, flushed, in the directory it is given;
this process waits for the first, reads the addresses from it, and after the child is
stopped (SIGTERM by its pid, SIGKILL after a grace) reads the complete request log with
:func:`read_requests`. The site the child serves is rebuilt from the same
:class:`~cluster.mock_web.site.SiteConfig` wherever it is needed: the model is a pure
function of its config.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster.forked import ForkedProcess, fork_call, fork_is_safe
from cluster.mock_web.log import RequestRecord
from cluster.mock_web.site import CrawlExpectation, MockWebError, PageRef, SiteConfig
from cluster.mock_web.web import HOSTS_FILE, STOP_TIMEOUT_S
from cluster.mock_web.web import main as web_main

READY_TIMEOUT_S: Final = 60.0  # a new interpreter on a loaded machine, binding 500 hosts
READY_POLL_S: Final = 0.005  # hosts.txt is another process's file: no event to wait on
LOG_FILE: Final = "mockweb.log"
LOG_TAIL_CHARS: Final = 2_000
SERVED_FIELDS: Final = (
    "hosts", "pages_per_host", "seed", "failing_fraction", "failures_before_success",
    "retry_after_fraction", "retry_after_s", "reset_host", "oversized_body_bytes",
)  # fmt: skip


@dataclass(frozen=True)
class ServedWeb:
    """The child serving the mock web, and where its hosts listen (``address:port`` by
    host index)."""

    pid: int
    netlocs: tuple[str, ...]

    def url(self, ref: PageRef) -> str:
        return f"http://{self.netlocs[ref.host]}{ref.path}"

    def seeds(self) -> tuple[str, ...]:
        """The root URL of every host, by host index."""
        return tuple(self.url(PageRef(host, "/")) for host in range(len(self.netlocs)))

    def expected_urls(self, expectation: CrawlExpectation) -> frozenset[str]:
        """The URLs of the pages a perfect crawl stores (as ``MockWeb.expected_urls``)."""
        return frozenset(self.url(ref) for ref in expectation.stored)


def web_args(config: SiteConfig, *, latency_ms: int, out: Path) -> list[str]:
    """The command-line arguments of ``python -m cluster.mock_web.web`` serving ``config``."""
    return [
        *("--hosts", str(config.hosts), "--pages", str(config.pages_per_host)),
        *("--seed", str(config.seed), "--latency-ms", str(latency_ms)),
        *("--failing-fraction", repr(config.failing_fraction)),
        *("--failures", str(config.failures_before_success)),
        *("--retry-after-fraction", repr(config.retry_after_fraction)),
        *("--retry-after-s", str(config.retry_after_s)),
        "--reset-host" if config.reset_host else "--no-reset-host",
        *("--oversized-bytes", str(config.oversized_body_bytes)),
        *("--out", str(out)),
    ]


@contextlib.contextmanager
def serve_in_child(config: SiteConfig, *, latency_ms: int, out: Path) -> Iterator[ServedWeb]:
    """Serve ``config``'s mock web from a child process logging to ``out`` while the
    block runs; the child is stopped by its pid when the block ends, however it ends.

    Raises:
        MockWebError: the child exited, or wrote no hosts file within the timeout
            (with the end of its log), or crashed while serving.
    """
    # The entry point has options for these fields only; a config that changed another
    # would be served differently from the model this process rebuilds from it.
    served = SiteConfig(**{name: getattr(config, name) for name in SERVED_FIELDS})
    assert config == served, f"serve_in_child cannot serve {config}"
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    args = web_args(config, latency_ms=latency_ms, out=out)
    child = _fork_web(args, log_path) if fork_is_safe() else _spawn_web(args, log_path)
    stopped = False
    try:
        yield _wait_ready(child, out / HOSTS_FILE, log_path)
        code = _stop(child)
        stopped = True
        if code not in (0, -signal.SIGTERM):
            raise MockWebError(
                f"the mock web (pid {child.pid}) exited with {code} while serving: "
                f"{_tail(log_path)}"
            )
    finally:
        if not stopped:
            _stop(child)


def read_requests(path: Path) -> list[RequestRecord]:
    """Every request in a request log (``requests.jsonl``) the mock web wrote."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as log:
        return [RequestRecord(**json.loads(line)) for line in log if line.strip()]


def _fork_web(args: list[str], log_path: Path) -> ForkedProcess:
    """``python -m cluster.mock_web.web ARGS`` in a forked child (this process has one
    thread and no ZeroMQ or LMDB open: the caller checked)."""
    return fork_call(
        lambda: web_main.main(args=args, prog_name="cluster.mock_web.web"),
        args,
        log_path=log_path,
    )


def _spawn_web(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m cluster.mock_web.web ARGS`` as a new interpreter."""
    root = str(Path(__file__).resolve().parents[2])  # this checkout, installed or not
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "cluster.mock_web.web", *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _wait_ready(
    child: ForkedProcess | subprocess.Popen[bytes], hosts_file: Path, log_path: Path
) -> ServedWeb:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not hosts_file.exists():
        code = child.poll()
        if code is not None:
            raise MockWebError(
                f"the mock web (pid {child.pid}) exited with {code} before serving: "
                f"{_tail(log_path)}"
            )
        if time.monotonic() >= deadline:
            raise MockWebError(
                f"the mock web (pid {child.pid}) wrote no {hosts_file} within "
                f"{READY_TIMEOUT_S:.0f} s: {_tail(log_path)}"
            )
        time.sleep(READY_POLL_S)
    urls = hosts_file.read_text(encoding="utf-8").split()
    return ServedWeb(child.pid, tuple(url.removeprefix("http://").rstrip("/") for url in urls))


def _stop(child: ForkedProcess | subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it has not exited after the web's own stop timeout;
    its exit code."""
    child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=STOP_TIMEOUT_S + 5.0)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait(timeout=STOP_TIMEOUT_S)


def _tail(log_path: Path) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text[-LOG_TAIL_CHARS:].strip().splitlines()[-5:]) or "(empty log)"
