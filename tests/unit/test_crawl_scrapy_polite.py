"""The polite Scrapy peer's rules (bench/crawl_scrapy_polite.py): Retry-After in seconds
or as an HTTP date, capped; the slot delay from Crawl-delay; the host hold after a 429
and the answer anchor. Pure: Scrapy is not needed."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from bench.crawl_scrapy_polite import (
    ANSWER_ANCHOR_S,
    RETRY_AFTER_S_MAX,
    answer_anchored_lastseen_s,
    held_lastseen_s,
    polite_delay_s,
    retry_after_s,
)

NOW_S = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def http_date(offset_s: int) -> str:
    return format_datetime(datetime.fromtimestamp(NOW_S + offset_s, tz=UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "wait_s"),
    [
        ("1", 1.0),
        (b"0", 0.0),
        (b" 7 ", 7.0),
        ("120", RETRY_AFTER_S_MAX),  # capped as the net's retry_after_max_ms
        (http_date(5), 5.0),
        (http_date(-30).encode(), 0.0),  # a date gone by: retry now
        (http_date(3_600), RETRY_AFTER_S_MAX),
        ("Sun, 01 Mar 2026 12:00:02 -0000", 2.0),  # a date with no zone is GMT
    ],
)
def test_retry_after_reads_seconds_and_http_dates_capped(value: str | bytes, wait_s: float) -> None:
    assert retry_after_s(value, now_s=NOW_S) == pytest.approx(wait_s)


@pytest.mark.parametrize("value", [None, "", "soon", "-1", "1.5", "٣", "Sun, 99 Foo 2026"])
def test_retry_after_without_a_usable_value_is_none(value: str | None) -> None:
    assert retry_after_s(value, now_s=NOW_S) is None


def test_retry_after_takes_a_smaller_cap() -> None:
    assert retry_after_s("30", now_s=NOW_S, max_s=10.0) == 10.0


def test_a_hosts_slot_keeps_the_larger_of_the_delay_and_its_crawl_delay() -> None:
    assert polite_delay_s(0.05, None) == 0.05
    assert polite_delay_s(0.05, 0.2) == 0.2
    assert polite_delay_s(0.25, 0.2) == 0.25
    assert polite_delay_s(0.05, float("nan")) == 0.05
    assert polite_delay_s(0.05, -1.0) == 0.05


def test_a_429_holds_the_host_until_its_time_and_never_releases_it_early() -> None:
    # Scrapy starts the slot's next request at lastseen + delay.
    lastseen_s = held_lastseen_s(100.0, now_s=101.0, wait_s=2.0, delay_s=0.05)
    assert lastseen_s + 0.05 == pytest.approx(103.0)
    assert held_lastseen_s(200.0, now_s=101.0, wait_s=2.0, delay_s=0.05) == 200.0


def test_the_delay_restarts_from_the_answer() -> None:
    assert answer_anchored_lastseen_s(10.0, answered_s=10.03) == 10.03 + ANSWER_ANCHOR_S
    assert answer_anchored_lastseen_s(10.5, answered_s=10.03) == 10.5
