"""The parse stage's work (pure): an HTML page's title and its crawlable links.

A fetch worker (:mod:`cluster.crawler.workers`) parses every HTML page it fetched right
after the answer, in its own process, and completes the fetch with what
:func:`fetched_results` returns: the ``fetched`` token with the title and the number of
links in place of the body, and one ``links`` token per distinct canonical link, at the
page's depth + 1, which the net admits or skips. That saves the discovery path a hop
through the net and a lease round trip (docs/scraper.md, "Per request"). Parse workers
lease the ``Page`` tokens that still come through ``parse_queue`` (results without
links) and complete each lease with what :func:`parse_results` returns: one
``parse_done`` token (title, number of links) and the same ``links`` tokens.

Parsing uses the standard library's :class:`html.parser.HTMLParser`, a tolerant
tokenizer that accepts any text (broken markup never raises). Links are the ``href`` of
``<a>`` and ``<area>`` elements, resolved against the page's final URL, or against a
``<base href>`` when the page has one (only the first counts, as in browsers), then
canonicalised (:mod:`cluster.crawler.urls`); non-http(s) links are dropped. The title is
the text of the first ``<title>``, with whitespace collapsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Final

from cluster.crawler.urls import domain_of, resolve_link

TITLE_CHARS_MAX: Final = 1_000
# Links taken from one page at most: a page's links travel in one completion frame
# (router/wire.py FRAME_BYTES_MAX), so they are bounded; links_count counts them all.
LINKS_PER_PAGE_MAX: Final = 5_000
LINK_TAGS: Final = frozenset({"a", "area"})


@dataclass(frozen=True, slots=True)
class ParsedPage:
    """What parsing found: the title and the distinct canonical links, in page order."""

    title: str
    links: tuple[str, ...]
    links_found: int  # distinct crawlable links, also those beyond LINKS_PER_PAGE_MAX


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.hrefs: list[str] = []
        self.title_parts: list[str] = []
        self.title_done = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in LINK_TAGS:
            for name, value in attrs:
                if name == "href" and value:
                    self.hrefs.append(value)
        elif tag == "base" and self.base is None:
            self.base = next((v for n, v in attrs if n == "href" and v), None)
        elif tag == "title" and not self.title_done:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self.title_done = True

    def handle_data(self, data: str) -> None:
        if self._in_title and sum(map(len, self.title_parts)) < TITLE_CHARS_MAX:
            self.title_parts.append(data)


def parse_page(body: str, final_url: str) -> ParsedPage:
    """The title and canonical links of the HTML ``body`` served at ``final_url``."""
    parser = _PageParser()
    parser.feed(body)
    parser.close()
    base = final_url
    if parser.base is not None:
        base = resolve_link(final_url, parser.base) or final_url
    seen: dict[str, None] = {}  # ordered set: links keep their page order
    for href in parser.hrefs:
        url = resolve_link(base, href)
        if url is not None:
            seen.setdefault(url, None)
    title = " ".join("".join(parser.title_parts).split())[:TITLE_CHARS_MAX]
    links = tuple(seen)
    return ParsedPage(title, links[:LINKS_PER_PAGE_MAX], len(links))


# Fetched(domain, url, kind, attempt, status, error, final_url, content_type, body,
# started_ms, answered_ms, proxy, retry_at_ms, title, links_count): the fields read here.
FETCHED_BODY: Final = 8
FETCHED_FIELDS: Final = 13  # up to retry_at_ms: title and links_count follow
PAGE_KIND: Final = "page"
NOT_PARSED: Final = -1  # links_count of a result the net is to parse (or has no page)
HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})


def fetched_results(fetched: Sequence[Any], depth: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The completion of a fetch whose result is ``fetched`` (a page at ``depth``).

    A 2xx HTML page is parsed here: ``("fetched", ...)`` without its body, with its
    title and links count, then one ``("links", Link(domain, url, depth + 1))`` per
    link. Any other result goes as it is, with no title and ``NOT_PARSED`` links (the
    net decides what it means).
    """
    kind, status, error, content_type = fetched[2], fetched[4], fetched[5], fetched[7]
    head = tuple(fetched[:FETCHED_FIELDS])
    if kind != PAGE_KIND or error or not 200 <= status < 300 or content_type not in HTML_TYPES:
        return [("fetched", (*head, "", NOT_PARSED))]
    found = parse_page(fetched[FETCHED_BODY], fetched[6] or fetched[1])
    parsed = (*head[:FETCHED_BODY], "", *head[FETCHED_BODY + 1 :], found.title, found.links_found)
    results: list[tuple[str, tuple[Any, ...]]] = [("fetched", parsed)]
    results += [("links", (domain_of(link), link, depth + 1)) for link in found.links]
    return results


def parse_results(page: Sequence[Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """The completion of one leased ``Page`` token (fields as the net's colour set orders them).

    ``Page(domain, url, depth, attempt, proxy, status, final_url, content_type,
    fetched_at_ms, body)``: returns ``("parse_done", ParseDone(domain, url, title,
    links_count))`` and one ``("links", Link(domain, url, depth + 1))`` per link.
    """
    domain, url, depth = page[0], page[1], page[2]
    final_url, body = page[6] or url, page[9]
    found = parse_page(body, final_url)
    results: list[tuple[str, tuple[Any, ...]]] = [
        ("parse_done", (domain, url, found.title, found.links_found))
    ]
    results += [("links", (domain_of(link), link, depth + 1)) for link in found.links]
    return results
