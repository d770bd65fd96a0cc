"""The peer in ``python -m bench.crawl --sweep``: a Scrapy spider that crawls the mock web
as ``cpn crawl`` does (same seeds, same scope, same limits), run as its own process.

``python -m bench.crawl_scrapy --seeds FILE --out FILE --delay-ms N --cap N --retry-times N``
follows every link whose host:port is one of the seeds', stores each 200 ``text/html``
page as one JSON line ``{"url": ...}`` (written and flushed as it arrives, as the crawler's
store worker does, so that both output files' modification times mean the same), and
exits when Scrapy has nothing left to do.

Scrapy's settings are the issue's (issue 17): ``DOWNLOAD_DELAY`` the delay,
``RANDOMIZE_DOWNLOAD_DELAY=False`` (``DOWNLOAD_DELAY_JITTER=0`` from Scrapy 2.19 on),
``CONCURRENT_REQUESTS_PER_DOMAIN=1``, ``CONCURRENT_REQUESTS`` the cluster-wide cap,
``RETRY_TIMES`` the crawler's attempts less one, AutoThrottle off and
``ROBOTSTXT_OBEY=True``. Scrapy does not read ``Crawl-delay`` nor honour
``Retry-After``; the sweep measures it as it is.

``--polite`` runs the fair peer: the same spider and settings plus
:class:`PoliteSlots` (each host's download slot keeps the larger of the delay and its
robots.txt ``Crawl-delay``, counted from the later of a request's start and its answer,
as the net's answer anchor does) and :class:`RetryAfterMiddleware` in place of Scrapy's
``RetryMiddleware`` (a 503 or 429 with ``Retry-After`` is retried no sooner than it asks,
capped at 60 s; after a 429 the whole host waits). The rules are pure and tested
without Scrapy: :mod:`bench.crawl_scrapy_polite`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urldefrag, urlsplit

import scrapy  # type: ignore[import-not-found, unused-ignore]
from scrapy import signals  # type: ignore[import-not-found, unused-ignore]
from scrapy.crawler import CrawlerProcess  # type: ignore[import-not-found, unused-ignore]
from scrapy.downloadermiddlewares.retry import (  # type: ignore[import-not-found, unused-ignore]
    RetryMiddleware,
)
from scrapy.exceptions import (  # type: ignore[import-not-found, unused-ignore]
    DontCloseSpider,
    IgnoreRequest,
)
from scrapy.settings import default_settings  # type: ignore[import-not-found, unused-ignore]
from scrapy.utils.asyncio import call_later  # type: ignore[import-not-found, unused-ignore]

from bench.crawl_scrapy_polite import (
    HOST_HOLDING_STATUS,
    RETRY_AFTER_STATUSES,
    answer_anchored_lastseen_s,
    held_lastseen_s,
    polite_delay_s,
    retry_after_s,
)


class MockWebSpider(scrapy.Spider):  # type: ignore[misc, unused-ignore]
    """Breadth-first over the seeds' hosts; stores HTML pages, follows their links."""

    name = "mockweb"

    def __init__(self, seeds: list[str], out: TextIO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = seeds
        self.netlocs = frozenset(urlsplit(seed).netloc for seed in seeds)
        self.out = out

    def parse(self, response: Any) -> Iterator[Any]:
        content_type = response.headers.get("Content-Type", b"").decode("latin-1")
        if response.status != 200 or not content_type.startswith("text/html"):
            return
        self.out.write(json.dumps({"url": urldefrag(response.url).url}) + "\n")
        self.out.flush()
        for href in response.css("a::attr(href)").getall():
            url = urldefrag(response.urljoin(href)).url
            if urlsplit(url).netloc in self.netlocs:
                yield scrapy.Request(url, callback=self.parse)


class PoliteSlots:
    """An extension that keeps each host's download slot polite at the server.

    When a host's robots.txt is parsed (Scrapy's ``robots_parsed`` signal, sent before
    the page that asked for it goes on to the downloader), its slot's delay becomes the
    larger of ``DOWNLOAD_DELAY`` and the robots.txt ``Crawl-delay``. When an answer
    arrives (``response_downloaded``, sent before the slot picks its next request), the
    slot's delay restarts from it: the answer anchor of
    :func:`bench.crawl_scrapy_polite.answer_anchored_lastseen_s`.
    """

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self.delay_s = crawler.settings.getfloat("DOWNLOAD_DELAY")
        self.user_agent = crawler.settings["ROBOTSTXT_USER_AGENT"] or crawler.settings["USER_AGENT"]
        crawler.signals.connect(self.robots_parsed, signal=signals.robots_parsed)
        crawler.signals.connect(self.response_downloaded, signal=signals.response_downloaded)

    @classmethod
    def from_crawler(cls, crawler: Any) -> PoliteSlots:
        return cls(crawler)

    def response_downloaded(self, request: Any) -> None:
        downloader = self.crawler.engine.downloader
        slot = downloader.slots.get(downloader.get_slot_key(request))
        if slot is not None:  # Scrapy's slot clock is time.monotonic
            slot.lastseen = answer_anchored_lastseen_s(slot.lastseen, answered_s=time.monotonic())

    def robots_parsed(self, robotparser: Any, request: Any) -> None:
        delay_s = polite_delay_s(self.delay_s, robotparser.crawl_delay(self.user_agent))
        downloader = self.crawler.engine.downloader
        key = downloader.get_slot_key(request)
        # The slot settings outlive the slot: Scrapy drops a slot idle for a minute and
        # makes the next one from DOWNLOAD_SLOTS (`per_slot_settings`), so it is set there
        # too. The robots.txt request made this slot; set its delay for the page next.
        downloader.per_slot_settings[key] = {
            **downloader.per_slot_settings.get(key, {}),
            "delay": delay_s,
        }
        if key in downloader.slots:
            downloader.slots[key].delay = delay_s


class RetryAfterMiddleware(RetryMiddleware):  # type: ignore[misc, unused-ignore]
    """Scrapy's retry middleware, honouring ``Retry-After`` on a 503 or 429.

    A retry that must wait is dropped from the downloader (``IgnoreRequest``) and put
    back into the engine when its time comes, so that a waiting URL holds none of the
    ``CONCURRENT_REQUESTS`` (awaiting inside the middleware would hold one); the spider
    is kept open while any is waiting. After a 429 the host's download slot is held
    too, so no request to that host starts before the time either.
    """

    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler.settings)
        self.crawler = crawler
        self.waiting = 0
        crawler.signals.connect(self.spider_idle, signal=signals.spider_idle)

    @classmethod
    def from_crawler(cls, crawler: Any) -> RetryAfterMiddleware:
        return cls(crawler)

    def spider_idle(self) -> None:
        if self.waiting:
            raise DontCloseSpider

    def process_response(self, request: Any, response: Any) -> Any:
        if (
            request.meta.get("dont_retry", False)
            or response.status not in self.retry_http_codes
            or response.status not in RETRY_AFTER_STATUSES
        ):
            return super().process_response(request, response)
        wait_s = retry_after_s(response.headers.get("Retry-After"), now_s=time.time())
        if not wait_s:
            return super().process_response(request, response)
        if response.status == HOST_HOLDING_STATUS:
            self._hold_host(request, wait_s)
        retry = self._retry(request, f"{response.status} with Retry-After: {wait_s:g} s")
        if retry is None:
            return response
        self.waiting += 1
        call_later(wait_s, self._release, retry)
        raise IgnoreRequest(f"retried after {wait_s:g} s (Retry-After): {request.url}")

    def _hold_host(self, request: Any, wait_s: float) -> None:
        downloader = self.crawler.engine.downloader
        slot = downloader.slots.get(downloader.get_slot_key(request))
        if slot is not None:
            slot.lastseen = held_lastseen_s(
                slot.lastseen, now_s=time.monotonic(), wait_s=wait_s, delay_s=slot.delay
            )

    def _release(self, retry: Any) -> None:
        self.waiting -= 1
        self.crawler.engine.crawl(retry)


def settings(*, delay_ms: int, cap: int, retry_times: int) -> dict[str, Any]:
    # Scrapy 2.19 renamed RANDOMIZE_DOWNLOAD_DELAY=False to DOWNLOAD_DELAY_JITTER=0 (the
    # old name still works, with a deprecation warning).
    jitter = (
        {"DOWNLOAD_DELAY_JITTER": 0}
        if hasattr(default_settings, "DOWNLOAD_DELAY_JITTER")
        else {"RANDOMIZE_DOWNLOAD_DELAY": False}
    )
    return {
        "DOWNLOAD_DELAY": delay_ms / 1000,
        **jitter,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
        "CONCURRENT_REQUESTS": cap,
        "RETRY_ENABLED": True,
        "RETRY_TIMES": retry_times,
        "AUTOTHROTTLE_ENABLED": False,
        "ROBOTSTXT_OBEY": True,
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "DOWNLOAD_TIMEOUT": 10,
        "REQUEST_FINGERPRINTER_IMPLEMENTATION": "2.7",
    }


def polite_settings(*, delay_ms: int, cap: int, retry_times: int) -> dict[str, Any]:
    """:func:`settings` plus the polite slots extension and the Retry-After middleware in
    the retry middleware's place (same order, 550)."""
    return {
        **settings(delay_ms=delay_ms, cap=cap, retry_times=retry_times),
        "EXTENSIONS": {PoliteSlots: 0},
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            RetryAfterMiddleware: 550,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=Path, required=True, help="root URLs, one a line")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--delay-ms", type=int, required=True)
    parser.add_argument("--cap", type=int, required=True)
    parser.add_argument("--retry-times", type=int, required=True)
    parser.add_argument(
        "--polite",
        action="store_true",
        help="also keep each host's robots.txt Crawl-delay and honour Retry-After",
    )
    args = parser.parse_args(argv)
    make_settings = polite_settings if args.polite else settings
    seeds = args.seeds.read_text(encoding="utf-8").split()
    with args.out.open("w", encoding="utf-8") as out:
        process = CrawlerProcess(
            make_settings(delay_ms=args.delay_ms, cap=args.cap, retry_times=args.retry_times)
        )
        process.crawl(MockWebSpider, seeds=seeds, out=out)
        process.start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
