"""SIGKILL mid-crawl: a fetch worker, a store worker (also at its fault point right after
writing a record, before completing its lease) and a shard. No page is lost, none is
stored twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cluster.crawler.crawl import Crawl, CrawlOptions
from cluster.crawler.report import file_pages
from cluster.layout import ClusterLayout, live_endpoint
from cluster.mock_web.site import SiteConfig, SiteModel
from cluster.mock_web.web import MockWeb

pytestmark = [pytest.mark.integration, pytest.mark.serial]


def test_killed_workers_and_shard_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    site = SiteModel(SiteConfig(hosts=4, pages_per_host=14, seed=11, failing_fraction=0.1))
    expected = site.expected_crawl(attempts_max=4)
    out = tmp_path / "pages.jsonl"
    kills: list[str] = []

    def chaos(run: Crawl, tokens: dict[str, int]) -> None:
        stored = tokens.get("stored", 0)
        if "fetch" not in kills and stored >= 3:
            victim = run.worker_pids("fetch")[0]
            os.kill(victim, signal.SIGKILL)  # a worker this crawl started
            kills.append("fetch")
        elif "fetch" in kills and "shard" not in kills and stored >= 12:
            assert run.layout is not None
            published = live_endpoint(ClusterLayout(run.layout.root).shard_dir(1))
            if published is not None:
                os.kill(published[1], signal.SIGKILL)  # a shard of the cluster it started
                kills.append("shard")
                # The store worker in the same poll: on a loaded machine the next poll
                # may come after the last page, and the crawl would end unkilled.
                os.kill(run.worker_pids("store")[0], signal.SIGKILL)
                kills.append("store")

    with MockWeb(site, latency_ms=2) as web:
        run = Crawl(
            CrawlOptions(
                seeds=web.seeds(),
                out=out,
                shards=2,
                fetch_workers=2,
                store_workers=2,
                delay_ms=80,  # a crawl long enough for three kills between polls
                data_dir=tmp_path / "crawl",
                net_params={"backoff_base_ms": 100},
                timeout_ms=240_000,
                fetch_timeout_ms=1_000,
                lease_ms=3_000,
                progress=False,
                # The first incarnation of every store worker kills itself right after
                # its first write, before completing the lease.
                worker_env={"CPN_FAULT": "store_after_write"},
            )
        )
        report = run.run(on_poll=chaos)
        must_store = web.expected_urls(expected)
    assert kills == ["fetch", "shard", "store"]
    assert report.complete
    stored, duplicates = file_pages(out)
    assert duplicates == 0
    assert stored == must_store
    restarts = {(w.role, w.index): w.restarts for w in run.workers}
    assert restarts[("store", 0)] >= 1 and restarts[("store", 1)] >= 1  # the fault point fired
    assert restarts[("fetch", 0)] + restarts[("fetch", 1)] >= 1
