"""The fetch stage's work: one polite HTTP GET for one ``Fetch`` token (SHELL).

Fetch workers (:mod:`cluster.crawler.workers`) lease ``Fetch`` tokens from the net's
``fetch_queue`` and complete each lease with one ``Fetched`` result, built here by
:meth:`Fetcher.fetch`. The HTTP client is aiohttp (async, streaming; its HTTP parser,
headers and URLs are compiled code): about a third of httpx's CPU per fetch, which was
most of a fetch worker's CPU (docs/scraper.md, "CPU per process").

Theory of operation:

* **The start time and the late rule.** The net gives every fetch a start time
  (``start_at_ms``, wall-clock milliseconds, the shards' clock) and a late allowance
  (``late_ms``). The fetcher begins ``CONNECT_AHEAD_MS`` early, so that opening a
  connection overlaps the wait, and holds the request at the last moment before its
  first byte leaves (once aiohttp has a connection for it: :class:`_TimedRequest`) until
  the start time; there it checks the clock: later than ``start_at_ms + late_ms``, the request
  is not sent and the answer is ``error="late"`` (the net puts the target back without
  counting an attempt). Since the net spaces the start times of one domain by its delay
  plus the late allowance plus a safety margin, two requests at a host never start
  closer than the delay, however late a worker wakes up (a GC pause, a busy core, a
  lease taken late): lateness becomes a retry, never a violation. The result also
  says when the answer arrived (``answered_ms``): the net starts the domain's next
  request no sooner than one delay after it, which keeps the gap at the server too.
* **Sent once.** A request is sent at most once per fetch: aiohttp would send a GET
  again when a kept-alive connection breaks under it, but the host may have seen the
  first (``error="reset"``, the net decides). Politeness counts every request a host
  receives.
* **Redirects are not followed**: a 3xx answer reports where it points in
  ``final_url`` and the net admits that URL as a discovered link, so every request a
  host receives is one the net planned.
* **Limits.** Connect and read timeouts and a total deadline per fetch; the body is
  streamed and reading stops at ``body_max_bytes`` (``error="too_large"``); only HTML
  bodies and robots.txt are read at all (``body=""`` otherwise; the connection is
  closed unread, unless its body had already come whole).
* **Proxies.** A fetch with a ``proxy_url`` goes through that forward proxy; an
  unreachable proxy is ``error="proxy"``. The environment's proxy settings are ignored
  (``trust_env=False``): the net decides the proxy.
* **One session per route** (a proxy, or none, and an origin), each with its own
  connection pool (at most ``CONNECTIONS_PER_ROUTE_MAX`` connections, idle ones closed
  after ``KEEPALIVE_S``), all sharing one SSL context loaded once: a connection only
  ever serves one origin, so nothing is shared less, and a route's pool closes as a
  whole. A route unused for ``KEEPALIVE_S`` is closed, and the least recently used
  routes beyond ``ROUTES_IDLE_MAX`` once no request uses them.
* **Retry-After** (RFC 9110, 10.2.3), in delay-seconds or as an HTTP date, becomes a
  wall-clock time in the result (``retry_at_ms``, 0 without one): the net, which caps
  it at ``retry_after_max_ms``, holds the host after a 429 and the URL after a 503.
* **Errors** become results, never exceptions: ``timeout``, ``connect``, ``reset``
  (the connection broke, or the answer could not be parsed), ``proxy``, ``too_large``,
  ``invalid`` (a URL the client cannot use, a body whose content-encoding does not
  decode), with ``status`` 0 when no HTTP answer came. The net decides what to retry.

Every fetch that was sent is also reported as a :class:`FetchTiming` (when it was
sent and answered), which the worker appends to its timing log for the crawl's
politeness report.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import email.utils
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import aiohttp
import certifi
from aiohttp.http_exceptions import ContentEncodingError

from cluster.crawler.urls import InvalidUrl, canonical_url

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
ROBOTS_KIND: Final = "robots"
TIMEOUT_S_DEFAULT: Final = 10.0
CONNECT_TIMEOUT_S_DEFAULT: Final = 5.0
CONNECT_AHEAD_MS: Final = 30  # begin this early: a new connection opens during the wait
WAIT_S_MAX: Final = 60.0  # a start time further away than this is waited for this long only
CONNECTIONS_PER_ROUTE_MAX: Final = 256
KEEPALIVE_S: Final = 5.0  # an idle connection is closed after this (httpx's default)
# Idle routes kept (the least recently used beyond go). A crawl visits its hosts in turn,
# so a bound below its number of hosts closed each route just before its next use: at
# 100 hosts a worker opened a session and a connection for 5 requests in 6, at a few ms
# of CPU each (docs/scraper.md, "The cap at 100 hosts"). Routes idle past the
# keep-alive, whose connections are closed by then, go as well.
ROUTES_IDLE_MAX: Final = 1_024
# A header line longer is an answer the fetcher cannot use (``reset``): h11, under httpx
# before, took heads up to 16 KiB; aiohttp's default is 8 KiB a line.
HEADER_LINE_BYTES_MAX: Final = 16 * 1024
TEXT_BYTES_MAX: Final = 3 * 1024 * 1024  # decoded text travels in one 4 MiB frame
# A Retry-After further away is cut to this (the net's cap is far lower): the time stays
# an integer msgpack can carry.
RETRY_AFTER_S_MAX: Final = 86_400 * 366


def wall_ms() -> int:
    """Milliseconds since the Unix epoch: the clock of the net's start times."""
    return time.time_ns() // 1_000_000


def retry_at_ms(value: str | None, answered_ms: int) -> int:
    """The wall-clock time a ``Retry-After`` header ``value`` asks to wait for; 0 for none.

    Delay-seconds count from ``answered_ms``; an HTTP date is taken as it is (a date in
    the past asks for no wait). Anything else (a negative number, garbage) is ignored,
    as RFC 9110 lets a recipient do with an invalid field.
    """
    if value is None:
        return 0
    value = value.strip()
    if value.isdigit():
        return answered_ms + min(int(value), RETRY_AFTER_S_MAX) * 1_000
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 0
    if when.tzinfo is None:
        return 0  # RFC 9110's dates are GMT; one without a zone is not an HTTP date
    at_ms = int(when.timestamp() * 1_000)
    return min(at_ms, answered_ms + RETRY_AFTER_S_MAX * 1_000) if at_ms > answered_ms else 0


@dataclass(frozen=True, slots=True)
class FetchSettings:
    user_agent: str = "cpn-cluster"
    body_max_bytes: int = 1_048_576
    timeout_s: float = TIMEOUT_S_DEFAULT
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT


@dataclass(frozen=True, slots=True)
class FetchTiming:
    """One request as the crawler saw it: sent at ``sent_ms``, over at ``ended_ms``."""

    domain: str
    url: str
    kind: str
    attempt: int
    proxy: str
    sent_ms: int
    ended_ms: int
    status: int
    error: str

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """The ``Fetched`` fields to complete the lease with, and the timing if it was sent."""

    fetched: tuple[Any, ...]
    timing: FetchTiming | None


class _Late(Exception):
    """Raised at the send point: the request would leave after its late limit."""


class _Resent(Exception):
    """Raised at a second send point of one fetch: aiohttp retries a GET once when a
    kept-alive connection broke under it, but the host may have seen the first one."""


class _BadUrl(Exception):
    """A URL without a host or with a port out of range: the answer is ``invalid``."""


class _Answer:
    """What one request produced, filled in as it goes."""

    def __init__(self, start_at_ms: int, late_at_ms: int) -> None:
        self.start_at_ms = start_at_ms
        self.late_at_ms = late_at_ms
        self.sent_ms = 0  # set at the send point, when the request leaves
        self.answered_ms = 0  # set when the answer's head (or an error after sending) came
        self.status = 0
        self.error = ""
        self.final_url = ""
        self.content_type = ""
        self.body = ""
        self.retry_at_ms = 0  # the answer's Retry-After as a wall-clock time, 0 if none

    async def at_send(self) -> None:
        """At the send point: wait for the start time, then apply the late rule.

        Raises:
            _Late: the clock is past ``late_at_ms``; nothing was sent.
            _Resent: this fetch's request was sent already; it is not sent again.
        """
        if self.sent_ms:
            raise _Resent
        await _wait_until(self.start_at_ms)
        now_ms = wall_ms()
        if now_ms > self.late_at_ms:
            raise _Late
        self.sent_ms = now_ms


# The answer of the fetch in progress in this task. aiohttp builds the request object
# itself, so the send point (_TimedRequest.send) finds the fetch's state here; each fetch
# runs in its own task (or one after another), and sets and resets it around its request.
_SENDING: Final[contextvars.ContextVar[_Answer | None]] = contextvars.ContextVar(
    "cpn_fetch_sending", default=None
)


class _TimedRequest(aiohttp.ClientRequest):
    """aiohttp's request, held at the send point (a connection is ready, no byte has
    left) until the fetch's start time, and not sent at all when that is too late."""

    async def send(self, conn: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        answer = _SENDING.get()
        # A CONNECT to a proxy is built by aiohttp as a plain ClientRequest; the check
        # keeps the hold on the request the host receives should that ever change.
        if answer is not None and self.method != "CONNECT":
            await answer.at_send()
        return await super().send(conn)


RouteKey = tuple[str, str, str, int | None]  # proxy URL, scheme, host, port


@dataclass(slots=True)
class _Route:
    """The session (and so the connection pool) of one proxy, or none, to one origin."""

    session: aiohttp.ClientSession
    requests: int = 0  # in progress: a route is never closed while one is
    used_s: float = 0.0  # time.monotonic() of its last use


class Fetcher:
    """Sends the fetches of one worker process (one aiohttp session per route)."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._ssl_context: ssl.SSLContext | None = None
        self._routes: OrderedDict[RouteKey, _Route] = OrderedDict()  # least recent first

    def _route(self, proxy_url: str, url: str) -> _Route:
        """The route of ``url`` through ``proxy_url`` (made in the running event loop).

        Raises:
            _BadUrl: ``url`` has no host or a port out of range.
        """
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise _BadUrl(f"{url!r}: {exc}") from None
        if not parts.hostname:
            raise _BadUrl(f"{url!r} has no host")
        key = (proxy_url, parts.scheme, parts.hostname, port)
        route = self._routes.get(key)
        if route is not None:
            self._routes.move_to_end(key)
            route.used_s = time.monotonic()
            return route
        if self._ssl_context is None:
            # Loading the CA certificates takes tens of milliseconds: once per process.
            # certifi's bundle (it comes with httpx) as before, not the system's.
            self._ssl_context = ssl.create_default_context(cafile=certifi.where())
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=CONNECTIONS_PER_ROUTE_MAX,
            limit_per_host=CONNECTIONS_PER_ROUTE_MAX,
            ssl=self._ssl_context,
            keepalive_timeout=KEEPALIVE_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # `connect` bounds the wait for a pooled connection and the connect together,
            # as httpx's pool timeout did; `sock_connect` the connect alone.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=s.timeout_s,
                sock_connect=s.connect_timeout_s,
                sock_read=s.timeout_s,
            ),
            headers={"User-Agent": s.user_agent},
            request_class=_TimedRequest,
            trust_env=False,
            max_line_size=HEADER_LINE_BYTES_MAX,
            max_field_size=HEADER_LINE_BYTES_MAX,
        )
        route = self._routes[key] = _Route(session, used_s=time.monotonic())
        return route

    async def _close_idle_routes(self) -> None:
        """Close the idle routes unused for ``KEEPALIVE_S`` (their connections are closed
        by then) and the least recently used idle ones beyond ``ROUTES_IDLE_MAX``."""
        surplus = len(self._routes) - ROUTES_IDLE_MAX
        stale_s = time.monotonic() - KEEPALIVE_S
        # In the order their last requests started (least recent first): past the first
        # route used since stale_s, only the surplus is left to close. A route's use is
        # also renewed when a request ends, so a stale route may stand behind a fresh one
        # that started before it: it goes at a later call.
        idle: list[RouteKey] = []
        for key, route in self._routes.items():
            if route.used_s > stale_s and len(idle) >= surplus:
                break
            if not route.requests:
                idle.append(key)
        # Taken out before the first await: meanwhile another fetch may look for a route
        # (it makes a new one) or close routes too (it finds these gone).
        closing = [self._routes.pop(key) for key in idle]
        for route in closing:
            await route.session.close()

    def prepare(self, proxy_urls: Sequence[str]) -> None:
        """Check the proxy URLs and load the SSL context now (not on the first request).

        Call it in the event loop the fetches run in.

        Raises:
            ValueError: a proxy URL that is not ``http://`` or ``https://`` with a host
                and a valid port.
        """
        for proxy_url in proxy_urls:
            parts = urlsplit(proxy_url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError(f"proxy URL {proxy_url!r}: expected http://HOST:PORT")
            _ = parts.port  # raises ValueError for a port out of range
        self._route("", "http://127.0.0.1/")

    async def warm_up(self) -> None:
        """One request to a throw-away server on 127.0.0.1, before any real fetch.

        A process's first request pays for lazy set-up (imports, the first connection),
        milliseconds between the moment the late rule checks the clock and the moment the
        request leaves; a real request must not: its host would see it late, closer to
        the next one than planned.
        """

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            answer_state = _Answer(start_at_ms=0, late_at_ms=wall_ms() + 60_000)
            await self._get(f"http://127.0.0.1:{port}/", "page", "", answer_state)
        finally:
            server.close()
            await server.wait_closed()

    async def aclose(self) -> None:
        routes = list(self._routes.values())
        self._routes.clear()
        for route in routes:
            await route.session.close()

    async def fetch(self, job: Sequence[Any]) -> FetchOutcome:
        """Do the fetch of a ``Fetch`` token (fields in the net's colour-set order).

        ``Fetch(domain, url, kind, depth, attempt, proxy, proxy_url, start_at_ms,
        late_ms)`` -> ``Fetched(domain, url, kind, attempt, status, error, final_url,
        content_type, body, started_ms, answered_ms, proxy, retry_at_ms)``. Never raises
        for a network problem.
        """
        domain, url, kind, _depth, attempt, proxy, proxy_url, start_at_ms, late_ms = job[:9]
        await _wait_until(start_at_ms - CONNECT_AHEAD_MS)
        answer = _Answer(start_at_ms, start_at_ms + late_ms)
        try:
            async with asyncio.timeout(self.settings.timeout_s * 2):
                await self._get(url, kind, proxy_url, answer)
        except TimeoutError:
            answer.error = "timeout"
        except _Late:
            answer.error = "late"
            return FetchOutcome(_fetched(job, answer, wall_ms()), None)
        finally:
            await self._close_idle_routes()
        ended_ms = wall_ms()
        sent_ms = answer.sent_ms or ended_ms
        if answer.sent_ms and not answer.answered_ms:
            answer.answered_ms = ended_ms  # an error after sending: it ended by now
        timing = FetchTiming(
            domain, url, kind, attempt, proxy, sent_ms, ended_ms, answer.status, answer.error
        )
        return FetchOutcome(_fetched(job, answer, sent_ms), timing)

    async def _get(self, url: str, kind: str, proxy_url: str, answer: _Answer) -> None:
        route: _Route | None = None
        sending = _SENDING.set(answer)
        try:
            route = self._route(proxy_url, url)
            route.requests += 1
            async with route.session.get(
                url, proxy=proxy_url or None, allow_redirects=False
            ) as response:
                answer.answered_ms = wall_ms()
                answer.status = response.status
                answer.final_url = _final_url(response, url)
                answer.retry_at_ms = retry_at_ms(
                    response.headers.get("Retry-After"), answer.answered_ms
                )
                media = response.headers.get("Content-Type", "").split(";")[0]
                answer.content_type = media.strip().lower()
                wanted = kind == ROBOTS_KIND or answer.content_type in HTML_TYPES
                if 200 <= response.status < 300 and wanted:
                    await self._read_body(response, answer)
        # The order matters: aiohttp's timeouts are also connection errors, and a proxy
        # that cannot be reached is also a connector error.
        except (_BadUrl, aiohttp.InvalidURL, aiohttp.TooManyRedirects):
            answer.error = "invalid"
        except TimeoutError:
            answer.error = "timeout"
        except (aiohttp.ClientHttpProxyError, aiohttp.ClientProxyConnectionError):
            answer.error = "proxy"
        except aiohttp.ClientConnectorError:
            answer.error = "proxy" if proxy_url else "connect"
        except aiohttp.ClientPayloadError as exc:
            # A body that does not decode (gzip, deflate, br) is the page's fault; one cut
            # short is the connection's.
            bad_encoding = isinstance(exc.__cause__, ContentEncodingError)
            answer.error = "invalid" if bad_encoding else "reset"
        except (aiohttp.ClientError, _Resent):
            answer.error = "reset"  # read/write errors, a connection closed mid-answer
        except OSError:
            answer.error = "connect"
        finally:
            _SENDING.reset(sending)
            if route is not None:
                route.requests -= 1
                # Idle from now: a request longer than KEEPALIVE_S left its connection
                # alive, and the route must not be closed as stale at once.
                route.used_s = time.monotonic()

    async def _read_body(self, response: aiohttp.ClientResponse, answer: _Answer) -> None:
        limit = self.settings.body_max_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                answer.error = "too_large"  # stop reading: the rest is never downloaded
                return
            chunks.append(chunk)
        text = _decode(b"".join(chunks), response.charset)
        if len(text) > TEXT_BYTES_MAX // 4 and len(text.encode()) > TEXT_BYTES_MAX:
            answer.error = "too_large"
            return
        answer.body = text


async def _wait_until(start_at_ms: int) -> None:
    """Sleep until the wall clock reaches ``start_at_ms`` (never return before it).

    One sleep, to the nanosecond: the loop's ``epoll`` timeout is rounded up to the next
    millisecond, so it does not wake early; it loops again only if the wall clock was
    stepped during the wait (bounded by ``WAIT_S_MAX``).
    """
    start_at_ns = start_at_ms * 1_000_000
    deadline = time.monotonic() + WAIT_S_MAX
    while (remaining_ns := start_at_ns - time.time_ns()) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(min(remaining_ns / 1e9, WAIT_S_MAX))


def _final_url(response: aiohttp.ClientResponse, url: str) -> str:
    """Where the answer came from, or for a redirect where it points (canonical)."""
    target = str(response.url)
    location = response.headers.get("Location")
    if response.status in REDIRECT_STATUSES and location is not None:
        target = urljoin(target, location)
    try:
        return canonical_url(target)
    except InvalidUrl:
        return url


def _decode(data: bytes, charset: str | None) -> str:
    encoding = "utf-8"
    if charset:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError:
            encoding = "utf-8"
    return data.decode(encoding, errors="replace")


def _fetched(job: Sequence[Any], answer: _Answer, started_ms: int) -> tuple[Any, ...]:
    domain, url, kind, _depth, attempt, proxy = job[:6]
    return (
        domain,
        url,
        kind,
        attempt,
        answer.status,
        answer.error,
        answer.final_url or url,
        answer.content_type,
        "" if answer.error else answer.body,
        started_ms,
        answer.answered_ms,
        proxy,
        answer.retry_at_ms,
    )
