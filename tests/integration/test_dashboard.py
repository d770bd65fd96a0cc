"""``cpn dashboard`` in a real browser against a real local cluster.

One cluster of the hopping net (two shards), one ``cpn dashboard`` process and one
headless Chromium (Debian's package, installed once per machine by
tests/system_packages.py), driven by Selenium. The test checks that the page's counts
equal ``cpn marking``'s once the cluster is quiescent, that a put shows within 2 s, and
that a token holding markup is listed as text and runs nothing. A screenshot is kept
in ``tmp_path`` and copied to ``tests/artifacts/dashboard.png`` (ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.observe_dashboard import DashboardProcess, chromium_driver, wait_rendered
from cluster.processes import run_cpn
from cluster.testbed import LocalCluster
from router.shell.datadir import read_endpoint
from tests.hopping_cluster import HoppingCluster
from tests.nets_for_tests import hopper
from tests.system_packages import require_debian_packages

pytestmark = pytest.mark.integration

NET = "tests.nets_for_tests:hopping"
ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard.png"
# Markup that would run if the page inserted token values as HTML.
HOSTILE_KEY = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
PAGE_CHANGE_TIMEOUT_S = 2.0
WAIT_TIMEOUT_S = 20.0


@pytest.fixture(scope="session")
def chromium() -> None:
    require_debian_packages(["chromium", "chromium-driver"], ["chromium", "chromedriver"])


def _marking(cluster: LocalCluster) -> dict[str, int]:
    """``cpn marking --data DIR`` run as a user runs it, its table parsed."""
    done = run_cpn("marking", "--data", str(cluster.data_dir), env=cluster.env, timeout_s=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "tokens per place:", done.stdout
    assert lines[1].split() == ["place", "tokens", "in", "flight"], done.stdout
    counts = {}
    for line in lines[2:]:  # rows of place, tokens, in flight; then notes, if any
        parts = line.split()
        if len(parts) == 3 and parts[0] != "(all)" and parts[1].replace(",", "").isdigit():
            counts[parts[0]] = int(parts[1].replace(",", ""))
    return counts


def _page_counts(driver: Any) -> dict[str, int]:
    return dict(
        driver.execute_script(
            "return [...document.querySelectorAll('[data-place]')]"
            ".map(g => [g.dataset.place, Number(g.querySelector('.count').textContent"
            ".replace(/,/g, ''))]);"
        )
    )


def _wait(condition: Any, *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout_s} s"
        time.sleep(0.02)


@pytest.fixture
def dashboard_page(chromium: None, tmp_path: Path) -> Iterator[tuple[LocalCluster, Any, str]]:
    with LocalCluster(NET, tmp_path / "cluster", shards=2) as cluster:
        cluster.start()
        cluster.put("hops", *(hopper(i, 3) for i in range(12)))
        cluster.wait_until(
            lambda: cluster.counts().get("arrived") == 12, what="every hopper arrived"
        )
        with (
            DashboardProcess(cluster.data_dir, log_dir=tmp_path, env=cluster.env) as dashboard,
            chromium_driver(tmp_path / "profile") as driver,
        ):
            driver.get(dashboard.url)
            wait_rendered(driver)
            yield cluster, driver, dashboard.url
            pid = dashboard.pid
        assert dashboard.process.poll() is not None, f"the dashboard (pid {pid}) still runs"


def test_the_page_shows_the_marking_follows_puts_and_lists_tokens_as_text(
    dashboard_page: tuple[LocalCluster, Any, str], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    cluster, driver, url = dashboard_page
    marking = _marking(cluster)
    assert marking["arrived"] == 12
    _wait(lambda: _page_counts(driver) == marking, timeout_s=WAIT_TIMEOUT_S, what="page = marking")
    assert driver.execute_script("return document.querySelectorAll('#slots-svg rect').length") == (
        1024
    )
    assert len(driver.find_elements(By.CSS_SELECTOR, "#shards tbody tr")) == 2

    # A put through the CLI shows on the page within 2 s; the hostile hopper makes no
    # hop (hops_left 0) and lands in `arrived` with its key as it is.
    token = json.dumps([HOSTILE_KEY, 99, 0])
    done = run_cpn("put", "--data", str(cluster.data_dir), "hops", token, env=cluster.env)
    assert done.returncode == 0, done.stderr
    put_at = time.monotonic()
    _wait(
        lambda: _page_counts(driver).get("arrived") == 13,
        timeout_s=PAGE_CHANGE_TIMEOUT_S,
        what="the put shown on the page",
    )
    assert time.monotonic() - put_at <= PAGE_CHANGE_TIMEOUT_S

    driver.find_element(By.CSS_SELECTOR, "[data-place='arrived'] circle").click()
    items = _wait(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#tokens-list li"),
        timeout_s=WAIT_TIMEOUT_S,
        what="the tokens of arrived listed",
    )
    assert len(items) == 13
    texts = [item.get_attribute("textContent") for item in items]
    shown = f"key={json.dumps(HOSTILE_KEY)}, hopper_id=99, hops_left=0"
    assert any(text.endswith(shown) for text in texts), texts
    listed = driver.find_element(By.ID, "tokens-list")
    assert listed.find_elements(By.CSS_SELECTOR, "script, img") == []
    assert driver.execute_script("return window.pwned === undefined")

    shot = tmp_path / "dashboard.png"
    driver.save_screenshot(str(shot))
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    assert shot.stat().st_size > 0

    # The API refuses what it cannot serve, saying why in JSON.
    status, answer = _get(f"{url}api/tokens?place=nowhere")
    assert status == 404 and "nowhere" in answer["error"]
    status, answer = _get(url, headers={"Host": "rebound.example:80"})
    assert status == 403 and "loopback" in answer["error"]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_dashboard_refuses_a_remote_address_without_allow_remote(tmp_path: Path) -> None:
    done = run_cpn("dashboard", "--data", str(tmp_path), "--host", "0.0.0.0", timeout_s=60)
    assert done.returncode == 2
    assert "not a loopback address; pass --allow-remote" in done.stderr, done.stderr


@pytest.mark.serial
def test_a_restarted_shard_shows_its_new_incarnation_and_no_negative_rate(
    tmp_path: Path, seed: int
) -> None:
    cluster = HoppingCluster(tmp_path / "cluster", seed=seed)
    try:
        cluster.up(2)
        cluster.put_wave(50)
        with DashboardProcess(
            cluster.layout.root, log_dir=tmp_path, env=cluster.env, interval_ms=100
        ) as dashboard:
            state_url = f"{dashboard.url}api/state"

            def shard_0() -> dict[str, Any]:
                with urllib.request.urlopen(state_url, timeout=10) as response:
                    state = json.loads(response.read())
                assert all(rate >= 0 for rate in state["rates"].values()), state["rates"]
                return dict(state["shards"][0]) if state["shards"] else {}

            first = _wait(shard_0, timeout_s=WAIT_TIMEOUT_S, what="shard 0 sampled")
            assert first["restarts"] == first["incarnation"] - 1
            published = read_endpoint(cluster.layout.shard_dir(0))
            assert published is not None
            os.kill(published[1], signal.SIGKILL)
            back = _wait(
                lambda: (
                    (s := shard_0()).get("incarnation") == first["incarnation"] + 1
                    and s["alive"]
                    and s
                ),
                timeout_s=WAIT_TIMEOUT_S,
                what="shard 0's restart shown",
            )
            assert back["restarts"] == first["restarts"] + 1
            assert back["pid"] != published[1]
            cluster.record_pids()
    finally:
        cluster.close()
