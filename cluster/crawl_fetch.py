"""The fetch stage's work: one polite HTTP GET for one ``Fetch`` token (SHELL).

Fetch workers (:mod:`cluster.crawl_worker`) lease ``Fetch`` tokens from the net's
``fetch_queue`` and complete each lease with one ``Fetched`` result, built here by
:meth:`Fetcher.fetch`. The HTTP client is httpx (async, streaming).

Theory of operation:

* **The start time and the late rule.** The net gives every fetch a start time
  (``start_at_ms``, wall-clock milliseconds, the shards' clock) and a late allowance
  (``late_ms``). The fetcher begins ``CONNECT_AHEAD_MS`` early, so that opening a
  connection overlaps the wait, and holds the request at the last moment before its
  first byte leaves (httpcore's ``send_request_headers`` trace event) until the start
  time; there it checks the clock: later than ``start_at_ms + late_ms``, the request
  is not sent and the answer is ``error="late"`` (the net puts the target back without
  counting an attempt). Since the net spaces the start times of one domain by its delay
  plus the late allowance plus a safety margin, two requests at a host never start
  closer than the delay, however late a worker wakes up (a GC pause, a busy core, a
  lease taken late): lateness becomes a retry, never a violation. The result also
  says when the answer arrived (``answered_ms``): the net starts the domain's next
  request no sooner than one delay after it, which keeps the gap at the server too.
* **Redirects are not followed**: a 3xx answer reports where it points in
  ``final_url`` and the net admits that URL as a discovered link, so every request a
  host receives is one the net planned.
* **Limits.** Connect and read timeouts and a total deadline per fetch; the body is
  streamed and reading stops at ``body_max_bytes`` (``error="too_large"``); only HTML
  bodies and robots.txt are read at all (``body=""`` otherwise; the connection is
  closed unread).
* **Proxies.** A fetch with a ``proxy_url`` goes through that forward proxy (one
  client, and so one connection pool, per proxy); an unreachable proxy is
  ``error="proxy"``. The environment's proxy settings are ignored (``trust_env=False``):
  the net decides the proxy.
* **Errors** become results, never exceptions: ``timeout``, ``connect``, ``reset``
  (the connection broke), ``proxy``, ``too_large``, ``invalid`` (a URL or an answer
  the client cannot use, too many redirects), with ``status`` 0 when no HTTP answer
  came. The net decides what to retry.

Every fetch that was sent is also reported as a :class:`FetchTiming` (when it was
sent and answered), which the worker appends to its timing log for the crawl's
politeness report.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urljoin

import httpx

from cluster.crawl_urls import InvalidUrl, canonical_url

HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
ROBOTS_KIND: Final = "robots"
TIMEOUT_S_DEFAULT: Final = 10.0
CONNECT_TIMEOUT_S_DEFAULT: Final = 5.0
CONNECT_AHEAD_MS: Final = 30  # begin this early: a new connection opens during the wait
SEND_EVENT: Final = "http11.send_request_headers.started"  # httpcore: the first byte leaves
WAIT_S_MAX: Final = 60.0  # a start time further away than this is waited for this long only
CONNECTIONS_PER_CLIENT_MAX: Final = 256
# Idle connections kept per client: httpcore scans its whole pool on every request, so a
# pool of hundreds of idle connections costs more CPU than the few reconnects it saves.
KEEPALIVE_PER_CLIENT_MAX: Final = 32
TEXT_BYTES_MAX: Final = 3 * 1024 * 1024  # decoded text travels in one 4 MiB frame
ANSWER_KEY: Final = "cpn_answer"  # the request extension that carries the fetch's state


def wall_ms() -> int:
    """Milliseconds since the Unix epoch: the clock of the net's start times."""
    return time.time_ns() // 1_000_000


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

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook; at the send point: wait for the start, apply the late rule.

        Only the first send counts (a request is sent once: redirects are not followed).
        """
        del info
        if event != SEND_EVENT or self.sent_ms:
            return
        await _wait_until(self.start_at_ms)
        now_ms = wall_ms()
        if now_ms > self.late_at_ms:
            raise _Late
        self.sent_ms = now_ms


class Fetcher:
    """Sends the fetches of one worker process (one httpx client per proxy)."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _client(self, proxy_url: str) -> httpx.AsyncClient:
        client = self._clients.get(proxy_url)
        if client is None:
            s = self.settings
            client = httpx.AsyncClient(
                proxy=proxy_url or None,
                follow_redirects=False,
                timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s),
                limits=httpx.Limits(
                    max_connections=CONNECTIONS_PER_CLIENT_MAX,
                    max_keepalive_connections=KEEPALIVE_PER_CLIENT_MAX,
                ),
                headers={"User-Agent": s.user_agent},
                trust_env=False,
            )
            self._clients[proxy_url] = client
        return client

    def prepare(self, proxy_urls: Sequence[str]) -> None:
        """Make the clients now (the first request must not pay for their set-up)."""
        for proxy_url in ("", *proxy_urls):
            self._client(proxy_url)

    async def warm_up(self) -> None:
        """One request to a throw-away server on 127.0.0.1, before any real fetch.

        A process's first request pays for lazy set-up (imports, the resolver's thread
        pool, the first connection), tens of milliseconds between the moment the late
        rule checks the clock and the moment the request leaves; a real request must
        not: its host would see it late, closer to the next one than planned.
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
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def fetch(self, job: Sequence[Any]) -> FetchOutcome:
        """Do the fetch of a ``Fetch`` token (fields in the net's colour-set order).

        ``Fetch(domain, url, kind, depth, attempt, proxy, proxy_url, start_at_ms,
        late_ms)`` -> ``Fetched(domain, url, kind, attempt, status, error, final_url,
        content_type, body, started_ms, answered_ms, proxy)``. Never raises for a network problem.
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
        ended_ms = wall_ms()
        sent_ms = answer.sent_ms or ended_ms
        if answer.sent_ms and not answer.answered_ms:
            answer.answered_ms = ended_ms  # an error after sending: it ended by now
        timing = FetchTiming(
            domain, url, kind, attempt, proxy, sent_ms, ended_ms, answer.status, answer.error
        )
        return FetchOutcome(_fetched(job, answer, sent_ms), timing)

    async def _get(self, url: str, kind: str, proxy_url: str, answer: _Answer) -> None:
        try:
            client = self._client(proxy_url)
            extensions = {ANSWER_KEY: answer, "trace": answer.trace}
            async with client.stream("GET", url, extensions=extensions) as response:
                answer.answered_ms = wall_ms()
                answer.status = response.status_code
                answer.final_url = _final_url(response, url)
                media = response.headers.get("content-type", "").split(";")[0]
                answer.content_type = media.strip().lower()
                wanted = kind == ROBOTS_KIND or answer.content_type in HTML_TYPES
                if 200 <= response.status_code < 300 and wanted:
                    await self._read_body(response, answer)
        except httpx.TimeoutException:
            answer.error = "timeout"
        except httpx.ProxyError:
            answer.error = "proxy"
        except httpx.ConnectError:
            answer.error = "proxy" if proxy_url else "connect"
        except (httpx.TooManyRedirects, httpx.InvalidURL, httpx.UnsupportedProtocol):
            answer.error = "invalid"
        except httpx.DecodingError:
            answer.error = "invalid"
        except (httpx.TransportError, httpx.StreamError):
            answer.error = "reset"  # read/write errors, a connection closed mid-answer
        except OSError:
            answer.error = "connect"
        if answer.error and answer.error != "too_large":
            answer.body = ""

    async def _read_body(self, response: httpx.Response, answer: _Answer) -> None:
        limit = self.settings.body_max_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                answer.error = "too_large"  # stop reading: the rest is never downloaded
                return
            chunks.append(chunk)
        text = _decode(b"".join(chunks), response.charset_encoding)
        if len(text) > TEXT_BYTES_MAX // 4 and len(text.encode()) > TEXT_BYTES_MAX:
            answer.error = "too_large"
            return
        answer.body = text


async def _wait_until(start_at_ms: int) -> None:
    """Sleep until the wall clock reaches ``start_at_ms`` (never return before it)."""
    deadline = time.monotonic() + WAIT_S_MAX
    while (remaining_ms := start_at_ms - wall_ms()) > 0 and time.monotonic() < deadline:
        # asyncio may wake a little early (clock resolution): loop until it is time.
        await asyncio.sleep(max(remaining_ms / 1000, 0.0005))


def _final_url(response: httpx.Response, url: str) -> str:
    """Where the answer came from, or for a redirect where it points (canonical)."""
    target = str(response.url)
    if response.is_redirect:
        target = urljoin(target, response.headers.get("location", ""))
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
    )
