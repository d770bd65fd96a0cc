"""The rules of the polite Scrapy peer (``python -m bench.crawl_scrapy --polite``), pure.

The issue's Scrapy settings (issue 17) leave Scrapy impolite on the sweep's webs: it
reads no robots.txt ``Crawl-delay`` and ignores ``Retry-After``, so its span can be far
under the politeness bound and no polite crawler can match it. The polite peer keeps the
same spider and settings and adds what ``cpn crawl`` honours:

* a host's download slot waits ``max(DOWNLOAD_DELAY, Crawl-delay)`` between requests
  (:func:`polite_delay_s`), set when the host's robots.txt is parsed, before its first
  page request reaches the downloader;
* the delay also counts from each answer (:func:`answer_anchored_lastseen_s`), as the
  net's answer anchor does (docs/scraper.md, "Politeness"): Scrapy spaces the moments it
  hands requests to the network, and the server stamps them a varying lag later (a few
  ms more for the one that opens a connection), so starts a delay apart at Scrapy can be
  closer at the server; the server cannot stamp a request after answering it, so a
  delay after the answer holds at the server whatever the lag;
* a 503 or 429 carrying ``Retry-After`` (seconds or an HTTP date, :func:`retry_after_s`,
  capped at :data:`RETRY_AFTER_S_MAX` as ``retry_after_max_ms`` caps the net's) is
  retried no sooner than that; after a 429 the whole host waits
  (:func:`held_lastseen_s`).

The Scrapy side that applies them (an extension and a retry middleware) lives in
:mod:`bench.crawl_scrapy`; these functions import nothing of Scrapy, so that unit tests
run without the ``bench`` extra.
"""

from __future__ import annotations

import math
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

# As the net's `retry_after_max_ms` default (issue 17): a server cannot park a URL or a
# host for longer than this.
RETRY_AFTER_S_MAX: Final = 60.0
# Statuses whose Retry-After is honoured: 429 holds the whole host, 503 the URL.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
HOST_HOLDING_STATUS: Final = 429
# As the net's answer anchor: the extra millisecond covers the rounding of two clock
# readings.
ANSWER_ANCHOR_S: Final = 0.001


def retry_after_s(
    value: str | bytes | None, *, now_s: float, max_s: float = RETRY_AFTER_S_MAX
) -> float | None:
    """How long a ``Retry-After`` header asks to wait, in seconds from ``now_s``.

    Args:
        value: the header's value: delay-seconds (``"120"``) or an HTTP date
            (``"Wed, 21 Oct 2015 07:28:00 GMT"``, RFC 9110 section 10.2.3); None when the
            answer has none.
        now_s: the current time, seconds since the epoch (an HTTP date is absolute).
        max_s: the cap; a longer wait is cut to it.

    Returns:
        The wait, between 0 (a date in the past, ``"0"``) and ``max_s``; None when there
        is no header or it is neither form (the answer is then retried as Scrapy would
        retry it anyway, with no wait).
    """
    if value is None:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if text.isascii() and text.isdigit():
        wait_s = float(int(text))
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
            when = when.replace(tzinfo=UTC)
        wait_s = when.timestamp() - now_s
    if not math.isfinite(wait_s):
        return None
    return min(max(wait_s, 0.0), max_s)


def polite_delay_s(download_delay_s: float, crawl_delay_s: float | None) -> float:
    """The gap a host's download slot keeps: the larger of ``DOWNLOAD_DELAY`` and the
    host's robots.txt ``Crawl-delay`` (None or a nonsense value: the delay alone)."""
    if crawl_delay_s is None or not math.isfinite(crawl_delay_s) or crawl_delay_s < 0:
        return download_delay_s
    return max(download_delay_s, crawl_delay_s)


def held_lastseen_s(lastseen_s: float, *, now_s: float, wait_s: float, delay_s: float) -> float:
    """A download slot's ``lastseen`` that holds its host until ``now_s + wait_s``.

    Scrapy starts a slot's next request no sooner than ``lastseen + delay``
    (``Downloader._process_queue``, re-checked each time its timer fires), so moving
    ``lastseen`` to ``now + wait - delay`` holds the host that long, and never releases
    it earlier than it already was held.
    """
    return max(lastseen_s, now_s + wait_s - delay_s)


def answer_anchored_lastseen_s(lastseen_s: float, *, answered_s: float) -> float:
    """A download slot's ``lastseen`` once an answer arrived at ``answered_s``: the next
    request starts a delay after the later of its predecessor's start and its answer
    (plus :data:`ANSWER_ANCHOR_S`), never earlier than it already would."""
    return max(lastseen_s, answered_s + ANSWER_ANCHOR_S)
