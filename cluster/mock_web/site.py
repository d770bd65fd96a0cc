"""The mock web's site model (pure): hosts, pages, links, robots rules, failures.

:class:`SiteModel` is everything the embedded mock web (:mod:`cluster.mock_web.web`) serves and
everything a test or benchmark needs to know about it beforehand, computed from a
:class:`SiteConfig` and its seed. It opens no socket and reads no clock, so the same model
answers "what does host 3 serve for ``/p/7.html`` on the 2nd request" in a unit test, in
the server, and in a benchmark computing its politeness lower bound.

Theory of operation
-------------------
* **Hosts** are numbered ``0 .. hosts-1``; the server gives each one its own loopback
  address, so a host is a distinct domain. Host ``h``'s pages are numbered
  ``0 .. pages_per_host-1``; page 0 is the root ``/``. Everything below is drawn from one
  ``random.Random(seed)`` in a fixed order (never from set or dict iteration), so a seed
  yields the same site in every process and under every ``PYTHONHASHSEED``.
* **Kinds and paths**: an HTML page is ``/p/<i>.html``; on a host with a private section
  some HTML pages are ``/private/<i>.html`` (disallowed by its robots.txt); non-HTML pages
  are ``/files/<i>.bin`` (``application/octet-stream``) or ``/img/<i>.png``
  (``image/png``); ``not_found_per_host`` pages are ``/gone/<i>.html`` and always answer
  404; with ``oversized_body_bytes`` > 0 one page, ``/big/<i>.html`` on the first host
  that does not reset, answers 200 ``text/html`` with a body of that size, streamed with no
  ``Content-Length`` (the connection closes at its end).
* **Links**: page ``i > 0`` is linked from a parent page drawn among the earlier HTML pages
  of its host, so every page is reachable from its host's root through same-host links
  (``depth`` is the shortest such path). On top, each HTML page links to
  ``links_per_page`` random pages of its host (sometimes with a ``#fragment``: canonical
  URLs must drop it), ``cross_links_per_page`` random pages of other hosts (absolute URLs),
  and, with probability ``external_link_fraction``, to one of ``external_urls``
  (``*.invalid``: out of scope, never fetched).
* **robots.txt**: every host answers ``/robots.txt`` with a ``User-agent: *`` group that
  disallows ``/private/`` on hosts with a private section, a ``Crawl-delay`` on some hosts,
  and a group for another agent that disallows everything (a crawler must pick the ``*``
  group). robots.txt never fails, also on the reset host.
* **Failure schedule**: an HTML page marked failing answers 503 to its first
  ``failures_before_success`` requests, then 200. With ``retry_after_fraction`` > 0, that
  fraction of the other HTML pages (never a root) always answers 503 with
  ``Retry-After: <retry_after_s>``: a crawler must wait that long between its attempts
  and then give the page up (drawn only when the fraction is > 0, so a seed's site
  without such pages stays what it was). With ``reset_host`` the last host resets
  the connection (TCP RST) on every request but ``/robots.txt``. Requests are counted per
  (host, path) by the server; the k-th request (1-based, GET and HEAD alike) gets
  :meth:`SiteModel.response` ``(host, path, k)``.
* **The perfect polite crawl** (:meth:`SiteModel.expected_crawl`): breadth-first from the
  seeds (host roots), following the links of pages stored, never leaving the declared
  hosts, fetching robots.txt once per host it discovers and never a disallowed path,
  fetching every other discovered URL once, and retrying 503s and resets up to
  ``attempts_max`` attempts in all; 404 is final. It stores the pages that end in a 200
  ``text/html`` answer of normal size. The oversized page is fetched but not stored (the
  crawler's size limit is assumed below ``oversized_body_bytes``); non-HTML pages are
  fetched (a crawler learns the type from the answer) but not stored.
"""

from __future__ import annotations

import enum
import html
import random
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from cluster.mock_web.log import STATUS_RESET
from nets.errors import CpnError

HOSTS_MAX: Final = 1_000
PAGES_PER_HOST_MAX: Final = 10_000
OVERSIZED_BODY_BYTES_MAX: Final = 1 << 34  # 16 GiB: streamed, never held in memory
STREAM_CHUNK_BYTES: Final = 64 * 1024
ROBOTS_PATH: Final = "/robots.txt"
PRIVATE_PREFIX: Final = "/private/"
OTHER_AGENT: Final = "BadBot"
_WORDS: Final = (
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "indigo",
    "juniper", "kelp", "lagoon", "meadow", "nectar", "orchid", "prairie", "quartz", "river",
    "sierra", "tundra", "umber", "valley", "willow", "yarrow", "zephyr",
)  # fmt: skip
_PNG_BYTES: Final = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
_DEFAULT_EXTERNAL: Final = (
    "http://example.invalid/",
    "http://example.invalid/about.html",
    "https://elsewhere.invalid/a/b?c=1",
)


class MockWebError(CpnError):
    """The mock web was configured or used wrongly (a bad option, an unknown host)."""


class PageKind(enum.Enum):
    """What a page path serves once its failures, if any, are over."""

    HTML = "html"
    PRIVATE = "private"  # HTML under /private/, disallowed by robots.txt where it exists
    BINARY = "binary"
    IMAGE = "image"
    NOT_FOUND = "not_found"
    OVERSIZED = "oversized"


_PATH_FORMAT: Final = {
    PageKind.HTML: "/p/{}.html",
    PageKind.PRIVATE: PRIVATE_PREFIX + "{}.html",
    PageKind.BINARY: "/files/{}.bin",
    PageKind.IMAGE: "/img/{}.png",
    PageKind.NOT_FOUND: "/gone/{}.html",
    PageKind.OVERSIZED: "/big/{}.html",
}
_LINKING_KINDS: Final = frozenset({PageKind.HTML, PageKind.PRIVATE})


class PageRef(NamedTuple):
    """One URL of the mock web, as (host index, path)."""

    host: int
    path: str


@dataclass(frozen=True)
class Link:
    """A link on a page to a page of the mock web, as its ``href`` shows it."""

    target: PageRef
    fragment: str = ""  # without '#'; a canonical URL drops it


@dataclass(frozen=True)
class Page:
    """One path of one host. ``failures`` is the number of 503s before it succeeds."""

    ref: PageRef
    kind: PageKind
    title: str
    depth: int  # shortest same-host link path from the host's root
    failures: int
    links: tuple[Link, ...]
    external_links: tuple[str, ...]
    retry_after_s: int = 0  # > 0: always 503 with this Retry-After


@dataclass(frozen=True)
class SiteConfig:
    """How the mock web looks; every choice in it is drawn from ``seed``.

    Raises:
        MockWebError: naming the option and its allowed range when a value is out of range.
    """

    hosts: int = 20
    pages_per_host: int = 40
    seed: int = 0
    links_per_page: int = 4
    cross_links_per_page: int = 1
    external_link_fraction: float = 0.2
    external_urls: tuple[str, ...] = _DEFAULT_EXTERNAL
    private_host_fraction: float = 0.5
    private_page_fraction: float = 0.1
    non_html_fraction: float = 0.1
    not_found_per_host: int = 1
    failing_fraction: float = 0.1
    failures_before_success: int = 2
    retry_after_fraction: float = 0.0  # HTML pages (not roots) always 503 with Retry-After
    retry_after_s: int = 1
    crawl_delay_host_fraction: float = 0.2
    crawl_delay_ms: int = 200
    reset_host: bool = False
    oversized_body_bytes: int = 0

    def __post_init__(self) -> None:
        _check_range("hosts", self.hosts, 1, HOSTS_MAX)
        _check_range("pages_per_host", self.pages_per_host, 1, PAGES_PER_HOST_MAX)
        _check_range("links_per_page", self.links_per_page, 0, 100)
        _check_range("cross_links_per_page", self.cross_links_per_page, 0, 100)
        _check_range("failures_before_success", self.failures_before_success, 0, 100)
        _check_range("crawl_delay_ms", self.crawl_delay_ms, 1, 3_600_000)
        _check_range("retry_after_s", self.retry_after_s, 1, 3_600)
        _check_range("oversized_body_bytes", self.oversized_body_bytes, 0, OVERSIZED_BODY_BYTES_MAX)
        for name in (
            "external_link_fraction",
            "private_host_fraction",
            "private_page_fraction",
            "non_html_fraction",
            "failing_fraction",
            "retry_after_fraction",
            "crawl_delay_host_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise MockWebError(f"mock web option {name}={value!r}: expected 0.0 .. 1.0")
        if self.reset_host and self.hosts < 2:
            raise MockWebError("mock web option reset_host=True needs hosts >= 2")
        if self.oversized_body_bytes and self.pages_per_host < 2:
            raise MockWebError("mock web option oversized_body_bytes needs pages_per_host >= 2")
        paths_free = self.pages_per_host - 1 - bool(self.oversized_body_bytes)  # root, big page
        _check_range("not_found_per_host", self.not_found_per_host, 0, paths_free)
        for url in self.external_urls:
            if not url.startswith(("http://", "https://")) or ".invalid" not in url:
                raise MockWebError(
                    f"mock web external URL {url!r}: expected an http(s) URL under .invalid, "
                    "so that nothing can ever fetch it"
                )


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise MockWebError(f"mock web option {name}={value!r}: expected {low} .. {high}")


class ResponseKind(enum.Enum):
    BODY = "body"  # status, headers and the whole body
    STREAM = "stream"  # status and headers, then body_bytes of filler, then close
    RESET = "reset"  # no answer: the connection is reset


@dataclass(frozen=True)
class Response:
    """What to answer to one request."""

    kind: ResponseKind
    status: int
    content_type: str = ""
    body: bytes = b""
    body_bytes: int = 0  # the streamed body's size, for STREAM
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CrawlExpectation:
    """What a perfect polite crawl of the mock web does (see the module docstring).

    ``final_status`` maps every URL the crawl requests (robots.txt aside) to the status
    of its last attempt (``STATUS_RESET`` for a reset, 503 when the attempts ran out).
    ``requests_per_host`` counts robots.txt, every page and every retry.
    """

    attempts_max: int
    stored: frozenset[PageRef]
    final_status: Mapping[PageRef, int]
    skipped_by_robots: frozenset[PageRef]
    requests_per_host: tuple[int, ...]
    crawl_delay_ms: tuple[int | None, ...] = field(repr=False)
    # Every URL asked more than once: (attempts, the Retry-After its answers ask, in ms).
    retried: Mapping[PageRef, tuple[int, int]] = field(default_factory=dict, repr=False)

    def politeness_lower_bound_ms(
        self, *, delay_ms: int, latency_ms: int, backoff_base_ms: int = 0
    ) -> int:
        """The fastest any crawl keeping ``delay_ms`` between request starts can end.

        The retry-inclusive bound: the largest over hosts of (requests - 1) x the host's
        delay (``delay_ms`` or its Crawl-delay when larger) and of each retried URL's
        chain of attempts (robots.txt first, then from one attempt's start to the next
        at least the delay, and at least its answer plus the larger of the Retry-After
        and the backoff, ``backoff_base_ms`` x 2**n before retry n + 1), plus one
        ``latency_ms`` for the last answer.
        """
        bound = 0
        for host, count in enumerate(self.requests_per_host):
            gap_ms = max(delay_ms, self.crawl_delay_ms[host] or 0)
            bound = max(bound, (count - 1) * gap_ms)
        for ref, (attempts, retry_after_ms) in self.retried.items():
            gap_ms = max(delay_ms, self.crawl_delay_ms[ref.host] or 0)
            waits = (
                max(gap_ms, latency_ms + max(backoff_base_ms << n, retry_after_ms))
                for n in range(attempts - 1)
            )
            bound = max(bound, gap_ms + sum(waits))
        return bound + latency_ms


class SiteModel:
    """The seeded site: pages, links, robots rules and the answer to every request."""

    def __init__(self, config: SiteConfig) -> None:
        self.config: Final = config
        rng = random.Random(config.seed)
        self.reset_host: Final = config.hosts - 1 if config.reset_host else None
        self._private = tuple(rng.random() < config.private_host_fraction for _ in _hosts(config))
        self._crawl_delay_ms = tuple(
            config.crawl_delay_ms if rng.random() < config.crawl_delay_host_fraction else None
            for _ in _hosts(config)
        )
        kinds = [self._draw_kinds(rng, host) for host in _hosts(config)]
        self._pages: tuple[dict[str, Page], ...] = tuple(
            self._draw_host(rng, host, kinds) for host in _hosts(config)
        )

    # -- building ---------------------------------------------------------------------

    def _draw_kinds(self, rng: random.Random, host: int) -> list[PageKind]:
        config = self.config
        kinds = [PageKind.HTML]
        for _ in range(1, config.pages_per_host):
            draw = rng.random()
            if draw < config.non_html_fraction:
                kinds.append(rng.choice((PageKind.BINARY, PageKind.IMAGE)))
            elif self._private[host] and draw < config.non_html_fraction + (
                config.private_page_fraction
            ):
                kinds.append(PageKind.PRIVATE)
            else:
                kinds.append(PageKind.HTML)
        first_normal_host = 0  # the reset host is the last one, and hosts >= 2 with it
        oversized = bool(config.oversized_body_bytes) and host == first_normal_host
        if oversized:
            kinds[-1] = PageKind.OVERSIZED
        candidates = range(1, config.pages_per_host - oversized)
        for index in rng.sample(candidates, config.not_found_per_host):
            kinds[index] = PageKind.NOT_FOUND
        return kinds

    def _draw_host(
        self, rng: random.Random, host: int, kinds: list[list[PageKind]]
    ) -> dict[str, Page]:
        config = self.config
        own = kinds[host]
        paths = [_path(kind, index) for index, kind in enumerate(own)]
        links: list[list[Link]] = [[] for _ in own]
        linking = [index for index, kind in enumerate(own) if kind in _LINKING_KINDS]
        for index in range(1, len(own)):
            parent = rng.choice([p for p in linking if p < index])
            links[parent].append(Link(PageRef(host, paths[index])))
        others = [h for h in _hosts(config) if h != host]
        externals: list[tuple[str, ...]] = []
        for index in range(len(own)):
            if own[index] not in _LINKING_KINDS:
                externals.append(())
                continue
            for _ in range(config.links_per_page):
                target = rng.randrange(len(own))
                fragment = f"s{rng.randrange(3)}" if rng.random() < 0.2 else ""
                links[index].append(Link(PageRef(host, paths[target]), fragment))
            for _ in range(config.cross_links_per_page if others else 0):
                other = rng.choice(others)
                target = rng.randrange(config.pages_per_host)
                links[index].append(Link(PageRef(other, _path(kinds[other][target], target))))
            wants_external = config.external_urls and rng.random() < config.external_link_fraction
            externals.append((rng.choice(config.external_urls),) if wants_external else ())
        depths = _depths(paths, links, host)
        pages: dict[str, Page] = {}
        for index, kind in enumerate(own):
            failing = kind is PageKind.HTML and rng.random() < config.failing_fraction
            refusing = (
                kind is PageKind.HTML
                and index > 0
                and not failing
                and config.retry_after_fraction > 0
                and rng.random() < config.retry_after_fraction
            )
            words = " ".join(rng.choice(_WORDS) for _ in range(2))
            pages[paths[index]] = Page(
                ref=PageRef(host, paths[index]),
                kind=kind,
                title=f"host {host} page {index}: {words}",
                depth=depths[index],
                failures=config.failures_before_success if failing else 0,
                links=tuple(links[index]),
                external_links=externals[index],
                retry_after_s=config.retry_after_s if refusing else 0,
            )
        return pages

    # -- queries ----------------------------------------------------------------------

    @property
    def hosts(self) -> int:
        return self.config.hosts

    def pages(self, host: int) -> tuple[Page, ...]:
        """Host ``host``'s pages, root first, in page-number order."""
        return tuple(self._host(host).values())

    def page(self, ref: PageRef) -> Page | None:
        """The page at ``ref``, or None when the host has no such path."""
        return self._host(ref.host).get(ref.path)

    def crawl_delay_ms(self, host: int) -> int | None:
        """The host's robots.txt ``Crawl-delay`` in milliseconds, None when it has none."""
        self._host(host)
        return self._crawl_delay_ms[host]

    def disallowed_prefixes(self, host: int) -> tuple[str, ...]:
        """The ``Disallow`` paths of host ``host``'s ``User-agent: *`` group."""
        self._host(host)
        return (PRIVATE_PREFIX,) if self._private[host] else ()

    def is_allowed(self, ref: PageRef) -> bool:
        """Whether robots.txt lets any crawler (``User-agent: *``) fetch ``ref``."""
        return not ref.path.startswith(self.disallowed_prefixes(ref.host))

    def robots_txt(self, host: int) -> str:
        lines = [f"# robots.txt of mock host {host}", f"User-agent: {OTHER_AGENT}", "Disallow: /"]
        lines += ["", "User-agent: *"]
        lines += [f"Disallow: {prefix}" for prefix in self.disallowed_prefixes(host)]
        if not self._private[host]:
            lines.append("Disallow:")  # an empty Disallow allows everything (RFC 9309)
        delay_ms = self._crawl_delay_ms[host]
        if delay_ms is not None:
            seconds = f"{delay_ms // 1000}.{delay_ms % 1000:03d}".rstrip("0").rstrip(".")
            lines.append(f"Crawl-delay: {seconds}")
        return "\n".join(lines) + "\n"

    def response(self, ref: PageRef, attempt: int, netlocs: Sequence[str]) -> Response:
        """The answer to the ``attempt``-th request (1-based) for ``ref``.

        ``netlocs[h]`` is host ``h``'s ``address:port``, used in absolute cross-host links.
        """
        assert attempt >= 1, attempt
        assert len(netlocs) == self.hosts, (len(netlocs), self.hosts)
        if ref.path == ROBOTS_PATH:
            body = self.robots_txt(ref.host).encode()
            return Response(ResponseKind.BODY, 200, "text/plain; charset=utf-8", body)
        if ref.host == self.reset_host:
            return Response(ResponseKind.RESET, STATUS_RESET)
        page = self.page(ref)
        if page is None or page.kind is PageKind.NOT_FOUND:
            return _text_response(404, f"404 not found: {ref.path}")
        if page.retry_after_s:
            return Response(
                ResponseKind.BODY,
                503,
                "text/plain; charset=utf-8",
                f"503 unavailable (always; retry after {page.retry_after_s} s)\n".encode(),
                headers=(("Retry-After", str(page.retry_after_s)),),
            )
        if attempt <= page.failures:
            return Response(
                ResponseKind.BODY,
                503,
                "text/plain; charset=utf-8",
                f"503 unavailable (attempt {attempt} of {page.failures} failing)\n".encode(),
                headers=(("Retry-After", "0"),),
            )
        if page.kind is PageKind.BINARY:
            body = f"binary {ref.host} {ref.path}\n".encode() + bytes(range(256))
            return Response(ResponseKind.BODY, 200, "application/octet-stream", body)
        if page.kind is PageKind.IMAGE:
            return Response(ResponseKind.BODY, 200, "image/png", _PNG_BYTES)
        if page.kind is PageKind.OVERSIZED:
            size = self.config.oversized_body_bytes
            return Response(ResponseKind.STREAM, 200, "text/html; charset=utf-8", body_bytes=size)
        return Response(
            ResponseKind.BODY, 200, "text/html; charset=utf-8", render_html(page, netlocs)
        )

    def expected_crawl(
        self, *, attempts_max: int, seeds: Iterable[int] | None = None
    ) -> CrawlExpectation:
        """What a perfect polite crawler from the roots of ``seeds`` (all hosts) does.

        Args:
            attempts_max: attempts per URL in all (first try plus retries), >= 1.
            seeds: host indices whose root ``/`` is a seed; all hosts when None.
        """
        if attempts_max < 1:
            raise MockWebError(f"expected_crawl(attempts_max={attempts_max}): expected >= 1")
        roots = [PageRef(self._checked_host(h), "/") for h in (seeds or _hosts(self.config))]
        discovered = set(roots)
        queue = deque(roots)
        requests = [0] * self.hosts
        touched = [False] * self.hosts
        stored: set[PageRef] = set()
        skipped: set[PageRef] = set()
        final_status: dict[PageRef, int] = {}
        retried: dict[PageRef, tuple[int, int]] = {}
        while queue:
            ref = queue.popleft()
            touched[ref.host] = True
            if not self.is_allowed(ref):
                skipped.add(ref)
                continue
            page = self.page(ref)
            assert page is not None, ref  # links point at model pages only
            attempts, status = self._perfect_fetch(page, attempts_max)
            requests[ref.host] += attempts
            if attempts > 1:
                retried[ref] = (attempts, page.retry_after_s * 1_000)
            final_status[ref] = status
            if status == 200 and page.kind is PageKind.HTML:
                stored.add(ref)
                for link in page.links:
                    if link.target not in discovered:
                        discovered.add(link.target)
                        queue.append(link.target)
        robots = [int(t) for t in touched]
        return CrawlExpectation(
            attempts_max=attempts_max,
            stored=frozenset(stored),
            final_status=final_status,
            skipped_by_robots=frozenset(skipped),
            requests_per_host=tuple(r + b for r, b in zip(requests, robots, strict=True)),
            crawl_delay_ms=self._crawl_delay_ms,
            retried=retried,
        )

    def _perfect_fetch(self, page: Page, attempts_max: int) -> tuple[int, int]:
        """(attempts, final status) of a crawler that retries 503 and resets only."""
        if page.ref.host == self.reset_host:
            return attempts_max, STATUS_RESET
        if page.kind is PageKind.NOT_FOUND:
            return 1, 404
        if page.retry_after_s:
            return attempts_max, 503
        if page.failures >= attempts_max:
            return attempts_max, 503
        return page.failures + 1, 200

    def _checked_host(self, host: int) -> int:
        if not 0 <= host < self.hosts:
            raise MockWebError(f"mock web host {host}: expected 0 .. {self.hosts - 1}")
        return host

    def _host(self, host: int) -> dict[str, Page]:
        return self._pages[self._checked_host(host)]


def _hosts(config: SiteConfig) -> range:
    return range(config.hosts)


def _path(kind: PageKind, index: int) -> str:
    return "/" if index == 0 else _PATH_FORMAT[kind].format(index)


def _depths(paths: list[str], links: list[list[Link]], host: int) -> list[int]:
    index_of = {path: index for index, path in enumerate(paths)}
    depths = [-1] * len(paths)
    depths[0] = 0
    queue = deque([0])
    while queue:
        index = queue.popleft()
        for link in links[index]:
            target = index_of.get(link.target.path) if link.target.host == host else None
            if target is not None and depths[target] < 0:
                depths[target] = depths[index] + 1
                queue.append(target)
    assert min(depths) >= 0, depths  # every page hangs below its parent
    return depths


def _text_response(status: int, text: str) -> Response:
    return Response(ResponseKind.BODY, status, "text/plain; charset=utf-8", (text + "\n").encode())


def render_html(page: Page, netlocs: Sequence[str]) -> bytes:
    """The HTML of ``page``: title, depth, and its links (same-host ones root-relative)."""
    items = []
    for link in page.links:
        href = link.target.path
        if link.target.host != page.ref.host:
            href = f"http://{netlocs[link.target.host]}{href}"
        if link.fragment:
            href += "#" + link.fragment
        items.append(f'<li><a href="{html.escape(href)}">{html.escape(link.target.path)}</a></li>')
    items += [f'<li><a href="{html.escape(url)}">elsewhere</a></li>' for url in page.external_links]
    title = html.escape(page.title)
    text = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n"
        f"<p>depth {page.depth}</p>\n<ul>\n" + "\n".join(items) + "\n</ul>\n</body></html>\n"
    )
    return text.encode()


def oversized_chunks(size_bytes: int) -> Iterator[bytes]:
    """The oversized page's body, ``size_bytes`` in all, in chunks of at most 64 KiB.

    An HTML head, then filler; generated chunk by chunk, never held whole in memory.
    """
    head = b"<!DOCTYPE html>\n<html><head><title>oversized</title></head><body>\n"
    filler = (b"<p>" + b"x" * 56 + b"</p>\n") * (STREAM_CHUNK_BYTES // 64)
    sent = 0
    first = head + filler[len(head) :]
    while sent < size_bytes:
        chunk = first if sent == 0 else filler
        chunk = chunk[: size_bytes - sent]
        sent += len(chunk)
        yield chunk
