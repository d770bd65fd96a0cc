"""The crawl worker's pure rules (cluster/crawl_worker.py)."""

from __future__ import annotations

from cluster.crawl_worker import LEASE_END_MARGIN_MS, _within_lease

DEADLINE_MS = 20_000  # the fetch's own deadline: twice a 10 s timeout


def test_a_fetch_is_sent_only_while_its_answer_can_come_within_the_lease() -> None:
    fetch = ("d", "http://d/", "page", 0, 1, "direct000", "", 10_000, 1_000)
    roomy = 10_000 + 1_000 + DEADLINE_MS + LEASE_END_MARGIN_MS
    assert _within_lease(fetch, roomy + 60_000, DEADLINE_MS) == fetch  # as the net decided
    cut = _within_lease(fetch, roomy - 700, DEADLINE_MS)
    assert cut == (*fetch[:8], 300)  # the late limit ends 700 ms sooner
    # A lease that ends too soon after the start: the limit is before it, refused late.
    assert _within_lease(fetch, 10_000 + DEADLINE_MS + 500, DEADLINE_MS)[8] == -500
