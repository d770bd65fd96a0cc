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
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urldefrag, urlsplit

import scrapy  # type: ignore[import-not-found, unused-ignore]
from scrapy.crawler import CrawlerProcess  # type: ignore[import-not-found, unused-ignore]
from scrapy.settings import default_settings  # type: ignore[import-not-found, unused-ignore]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=Path, required=True, help="root URLs, one a line")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--delay-ms", type=int, required=True)
    parser.add_argument("--cap", type=int, required=True)
    parser.add_argument("--retry-times", type=int, required=True)
    args = parser.parse_args(argv)
    seeds = args.seeds.read_text(encoding="utf-8").split()
    with args.out.open("w", encoding="utf-8") as out:
        process = CrawlerProcess(
            settings(delay_ms=args.delay_ms, cap=args.cap, retry_times=args.retry_times)
        )
        process.crawl(MockWebSpider, seeds=seeds, out=out)
        process.start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
