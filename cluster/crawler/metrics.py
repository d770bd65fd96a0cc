"""The crawler's own metrics, added to its fetch workers' (cluster/sdk/metrics.py).

A fetch worker counts, per fetch it does: pages fetched, requests by kind and status
class, retries (attempts after the first) and the politeness wait (how long a fetch
waited for the start time the net gave it, a domain's crawl delay). Labels take only
fixed values (``page``/``robots``, ``2xx``..``5xx``, ``error``, ``late``), never a URL
or a domain. Counted on the worker's event loop; :meth:`CrawlCounts.families` is
called there too, at each sample, and returns families the HTTP thread only reads.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from router.shell.metrics import LATENCY_BUCKETS_S, Histogram

PAGE_KIND: Final = "page"
STATUS_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx", "error", "late")
KINDS: Final = ("page", "robots")


def status_class(status: int, error: str) -> str:
    """The label of one fetch's outcome: its HTTP status class, or why it had none."""
    if error == "late":
        return "late"
    if 200 <= status < 600:
        return f"{status // 100}xx"
    return "error"


class CrawlCounts:
    """What one fetch worker fetched (owned by its event loop)."""

    def __init__(self) -> None:
        self._requests: Counter[tuple[str, str]] = Counter()
        self._pages = 0
        self._retries = 0
        self._wait = Histogram(LATENCY_BUCKETS_S)

    def waited(self, wait_s: float) -> None:
        """A fetch is about to wait ``wait_s`` for its start time (politeness)."""
        self._wait.observe(max(0.0, wait_s))

    def fetched(self, kind: str, attempt: int, status: int, error: str) -> None:
        """A fetch ended (answered, failed or refused as late)."""
        outcome = status_class(status, error)
        self._requests[(kind if kind in KINDS else "other", outcome)] += 1
        self._retries += attempt > 0
        self._pages += kind == PAGE_KIND and outcome == "2xx"

    def families(self) -> tuple[Metric, ...]:
        """Frozen families of the counts so far."""
        requests = CounterMetricFamily(
            "cpn_crawl_requests", "Fetches by kind and status class", labels=["kind", "status"]
        )
        for (kind, outcome), count in sorted(self._requests.items()):
            requests.add_metric([kind, outcome], count)
        wait = self._wait.value()
        return (
            CounterMetricFamily("cpn_crawl_pages", "Pages fetched (2xx)", value=self._pages),
            requests,
            CounterMetricFamily(
                "cpn_crawl_retries", "Fetches after a first attempt", value=self._retries
            ),
            HistogramMetricFamily(
                "cpn_crawl_politeness_wait_seconds",
                "Time a fetch waited for its allowed start",
                buckets=list(wait.buckets),
                sum_value=wait.sum,
            ),
        )
