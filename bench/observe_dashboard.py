"""How fast the dashboard paints and how often it updates, measured in Chromium.

``measure_dashboard(quick)`` starts its own two-shard cluster of
``tests.nets_for_tests:jobs_and_circulation`` (balls circulate for ever, so rates are
never zero), ``cpn dashboard`` on a free loopback port and a headless Chromium driven
by Selenium, and returns:

* ``dashboard_first_paint_ms``: from navigation start to the net drawn with its first
  counts (the page's own mark, ``window.cpnDashboard.firstRenderMs``), the median of
  one (quick) or three (full) fresh loads; target <= 1,000 ms;
* ``dashboard_updates_per_s``: snapshots applied to the page's counts per second over
  2 s (quick) or 5 s (full), counted by the page itself; target >= 2.

Everything it starts is stopped by pid. ``python -m bench.observe_dashboard [--quick]``
prints the figures, then one JSON line. :class:`DashboardProcess` and
:func:`chromium_driver` are also the browser test's (tests/integration/test_dashboard.py).

Chromium and its driver come from Debian's packages (``apt-get install chromium
chromium-driver``); Selenium is told where the driver is, so it never downloads one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

NET: Final = "tests.nets_for_tests:jobs_and_circulation"
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
RENDER_TIMEOUT_S: Final = 15.0
CHROMIUM_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1050",
)


class DashboardProcess:
    """``cpn dashboard --data DATA --port 0`` in a child process; :attr:`url` is where it
    serves. Stopped by pid (SIGTERM, then SIGKILL) by :meth:`stop` or the ``with`` end.

    Raises:
        RuntimeError: it exited or printed no URL within ``START_TIMEOUT_S`` (with the
            end of its stderr).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        interval_ms: int = 250,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / "dashboard-stderr.log"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", "dashboard", "--data", str(data_dir),
                 "--port", "0", "--interval-ms", str(interval_ms)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **(env or {})},
            )  # fmt: skip
        self.pid = self.process.pid
        try:
            line = self._first_line(START_TIMEOUT_S)
            self.url = line.split(" at ", 1)[1].split()[0]
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _first_line(self, timeout_s: float) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"cpn dashboard printed no URL in {timeout_s} s{self._why()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"cpn dashboard exited before serving{self._why()}")
                buffer += chunk
        return buffer.decode().splitlines()[0]

    def _why(self) -> str:
        lines = self.stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
        return "; its stderr ends: " + " | ".join(lines) if lines else ""

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after ``STOP_TIMEOUT_S``; reaped. Safe to call again."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def chromium_driver(profile_dir: Path) -> Iterator[Any]:
    """A headless Chromium under Selenium with a fresh profile in ``profile_dir``; the
    browser and its driver are stopped (the driver's process by pid) on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise RuntimeError("needs Chromium: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    service = Service(executable_path=chromedriver)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver_process = service.process
        driver.quit()
        if driver_process is not None and driver_process.poll() is None:
            os.kill(driver_process.pid, signal.SIGKILL)
            driver_process.wait(STOP_TIMEOUT_S)


def wait_rendered(driver: Any, timeout_s: float = RENDER_TIMEOUT_S) -> float:
    """Wait until the page drew the net with its first counts; its mark, in ms."""
    from selenium.webdriver.support.ui import WebDriverWait

    mark = WebDriverWait(driver, timeout_s, poll_frequency=0.02).until(
        lambda d: d.execute_script("return window.cpnDashboard && cpnDashboard.firstRenderMs")
    )
    return float(mark)


def _measure(quick: bool, screenshot: Path | None = None) -> dict[str, float]:
    from cluster.testbed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="cpn-bench-dashboard-") as tmp:
        root = Path(tmp)
        with LocalCluster(NET, root / "cluster", shards=2) as cluster:
            cluster.start()
            cluster.put("inbox", *[(f"q{i % 7}", f"job{i}", i) for i in range(40)])
            with (
                DashboardProcess(cluster.data_dir, log_dir=root, env=cluster.env) as dashboard,
                chromium_driver(root / "profile") as driver,
            ):
                renders, paints = [], []
                for _ in range(1 if quick else 3):
                    driver.get(dashboard.url)
                    renders.append(wait_rendered(driver))
                    paints.append(
                        driver.execute_script(
                            "const e = performance.getEntriesByName('first-contentful-paint');"
                            "return e.length ? e[0].startTime : null;"
                        )
                    )
                read = "return [cpnDashboard.applied, performance.now()];"
                applied_0, at_0 = driver.execute_script(read)
                time.sleep(2.0 if quick else 5.0)  # a measurement window, not a wait
                applied_1, at_1 = driver.execute_script(read)
                if screenshot is not None:
                    _screenshot(driver, screenshot)
    fcp = [p for p in paints if p is not None]
    return {
        "dashboard_first_paint_ms": statistics.median(renders),
        "dashboard_updates_per_s": (applied_1 - applied_0) / ((at_1 - at_0) / 1000),
        "dashboard_first_contentful_paint_ms": statistics.median(fcp) if fcp else -1.0,
    }


def _screenshot(driver: Any, path: Path) -> None:
    """The page with the tokens of ``left`` listed, as a PNG at ``path``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(1400, 1000)
    driver.find_element(By.CSS_SELECTOR, "[data-place='left'] circle").click()
    WebDriverWait(driver, RENDER_TIMEOUT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#tokens-list li")
    )
    driver.save_screenshot(str(path))


def measure_dashboard(quick: bool) -> dict[str, float]:
    """``dashboard_first_paint_ms`` and ``dashboard_updates_per_s`` (module docstring)."""
    figures = _measure(quick)
    return {key: figures[key] for key in ("dashboard_first_paint_ms", "dashboard_updates_per_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one load, a 2 s window")
    parser.add_argument("--screenshot", type=Path, help="also save the page as this PNG")
    args = parser.parse_args()
    figures = _measure(args.quick, args.screenshot)
    print(
        f"first render with counts: {figures['dashboard_first_paint_ms']:.0f} ms (target "
        f"<= 1000; first contentful paint {figures['dashboard_first_contentful_paint_ms']:.0f}"
        f" ms); updates: {figures['dashboard_updates_per_s']:.2f} per s (target >= 2)"
    )
    print(json.dumps({key: round(value, 2) for key, value in figures.items()}))


if __name__ == "__main__":
    main()
