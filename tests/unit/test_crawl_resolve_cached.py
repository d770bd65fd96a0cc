"""resolve_link's cache (by base, or by the base's origin for a root-relative link)
answers what urljoin and canonical_url answer without it."""

from __future__ import annotations

from urllib.parse import urljoin

from cluster.crawler.urls import InvalidUrl, canonical_url, resolve_link

BASES = (
    "http://a.example/x/y.html?q=1",
    "http://a.example:8080/x/",
    "https://b.example/",
    "http://[::1]:81/a/b/c",
    "http://h/",
)
HREFS = (
    "/p/3", "/p/../q/./r", "/a?x=1#f", "//other.example/z", "rel/x", "../up", "#frag",
    "?q=2", "/", "/ a b", "mailto:x@y", "http://c.example/./d/../e", "/x/#y", "  /p  ", "",
)  # fmt: skip


def _uncached(base: str, href: str) -> str | None:
    href = href.strip()
    if not href or href.startswith("#"):
        return None
    try:
        return canonical_url(urljoin(base, href))
    except (InvalidUrl, ValueError):
        return None


def test_resolve_link_answers_as_urljoin_and_canonical_url_do_twice_over() -> None:
    for _ in range(2):  # the second time from the cache
        for base in BASES:
            for href in HREFS:
                assert resolve_link(base, href) == _uncached(base, href), (base, href)
