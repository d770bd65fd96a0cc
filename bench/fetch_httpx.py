"""The crawler's former fetch transport, on httpx: the reference ``bench.fetch_cpu
--client httpx`` measures :class:`~cluster.crawler.fetch.Fetcher` against.

The same fetcher (the wait for the start time, the late rule, the limits, the results)
with the HTTP client swapped back to httpx as it was before aiohttp replaced it: one
``httpx.AsyncClient`` per route, the send point at httpcore's ``send_request_headers``
trace event (idle routes are not closed: a benchmark's hosts are few). Only the
benchmark uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from cluster.crawler import fetch as base
from cluster.crawler.fetch import ROBOTS_KIND, Fetcher, FetchSettings, wall_ms
from cluster.crawler.urls import InvalidUrl, canonical_url

SEND_EVENT: Final = "http11.send_request_headers.started"  # httpcore: the first byte leaves
KEEPALIVE_PER_ROUTE_MAX: Final = 32


class _TracedAnswer(base._Answer):
    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: at the send point, wait for the start and apply the
        late rule (only the first send counts: redirects are not followed)."""
        del info
        if event == SEND_EVENT and not self.sent_ms:
            await self.at_send()


class HttpxFetcher(Fetcher):
    """:class:`~cluster.crawler.fetch.Fetcher` on httpx, one client per route."""

    def __init__(self, settings: FetchSettings) -> None:
        super().__init__(settings)
        self._clients: dict[tuple[str, str, str, int | None], httpx.AsyncClient] = {}
        # One SSL context for every client, as before: each would load the CA bundle.
        self._httpx_ssl_context = httpx.create_ssl_context(trust_env=False)

    def prepare(self, proxy_urls: Sequence[str]) -> None:
        for proxy_url in proxy_urls:
            httpx.Proxy(proxy_url)

    def _client(self, proxy_url: str, url: str) -> httpx.AsyncClient:
        parts = urlsplit(url)
        if not parts.hostname:
            raise httpx.InvalidURL(f"{url!r} has no host")
        key = (proxy_url, parts.scheme, parts.hostname, parts.port)
        client = self._clients.get(key)
        if client is None:
            s = self.settings
            client = self._clients[key] = httpx.AsyncClient(
                proxy=proxy_url or None,
                verify=self._httpx_ssl_context,
                follow_redirects=False,
                timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s),
                limits=httpx.Limits(
                    max_connections=base.CONNECTIONS_PER_ROUTE_MAX,
                    max_keepalive_connections=KEEPALIVE_PER_ROUTE_MAX,
                ),
                headers={"User-Agent": s.user_agent},
                trust_env=False,
            )
        return client

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()
        await super().aclose()

    async def _get(self, url: str, kind: str, proxy_url: str, answer: base._Answer) -> None:
        traced = _TracedAnswer(answer.start_at_ms, answer.late_at_ms)
        try:
            client = self._client(proxy_url, url)
            async with client.stream("GET", url, extensions={"trace": traced.trace}) as response:
                traced.answered_ms = wall_ms()
                traced.status = response.status_code
                target = str(response.url)
                if response.is_redirect:
                    target = base.urljoin(target, response.headers.get("location", ""))
                try:
                    traced.final_url = canonical_url(target)
                except InvalidUrl:
                    traced.final_url = url
                traced.retry_at_ms = base.retry_at_ms(
                    response.headers.get("retry-after"), traced.answered_ms
                )
                media = response.headers.get("content-type", "").split(";")[0]
                traced.content_type = media.strip().lower()
                wanted = kind == ROBOTS_KIND or traced.content_type in base.HTML_TYPES
                if 200 <= response.status_code < 300 and wanted:
                    await self._read_httpx_body(response, traced)
        except httpx.TimeoutException:
            traced.error = "timeout"
        except (httpx.ProxyError, httpx.ConnectError):
            traced.error = "proxy" if proxy_url else "connect"
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.DecodingError):
            traced.error = "invalid"
        except (httpx.TransportError, httpx.StreamError):
            traced.error = "reset"
        except OSError:
            traced.error = "connect"
        finally:
            for name in ("sent_ms", "answered_ms", "status", "error", "final_url"):
                setattr(answer, name, getattr(traced, name))
            answer.content_type, answer.body = traced.content_type, traced.body
            answer.retry_at_ms = traced.retry_at_ms
        if answer.error and answer.error != "too_large":
            answer.body = ""

    async def _read_httpx_body(self, response: httpx.Response, answer: base._Answer) -> None:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.settings.body_max_bytes:
                answer.error = "too_large"
                return
            chunks.append(chunk)
        answer.body = base._decode(b"".join(chunks), response.charset_encoding)
