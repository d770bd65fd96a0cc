"""The fetcher (cluster/crawler/fetch.py) against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from cluster.crawler import fetch as fetch_module
from cluster.crawler.fetch import Fetcher, FetchSettings, wall_ms

pytestmark = pytest.mark.integration

PAGE = b"<html><title>t</title></html>"


async def _serve_pages() -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE)
                )
                await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def _job(url: str) -> tuple[object, ...]:
    return ("d", url, "page", 0, 0, "direct000", "", wall_ms(), 1_000)


def test_routes_beyond_the_idle_maximum_are_closed_and_bad_urls_are_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One client per origin: the least recently used idle ones beyond ROUTES_IDLE_MAX
    are closed (their fetches still succeed); URLs without a host or with a port out of
    range are results (``invalid``), not exceptions."""
    monkeypatch.setattr(fetch_module, "ROUTES_IDLE_MAX", 2)

    async def scenario() -> tuple[list[tuple[object, ...]], int, list[str]]:
        servers = [await _serve_pages() for _ in range(4)]
        fetcher = Fetcher(FetchSettings(timeout_s=5.0))
        try:
            fetcher.prepare([])
            ports = [s.sockets[0].getsockname()[1] for s in servers]
            fetched = []
            for port in ports * 2:
                outcome = await fetcher.fetch(_job(f"http://127.0.0.1:{port}/"))
                fetched.append(outcome.fetched)
            bad = [
                (await fetcher.fetch(_job(url))).fetched[5]
                for url in ("http://127.0.0.1:99999/", "http:///no-host", "/relative")
            ]
            return fetched, len(fetcher._routes), bad
        finally:
            await fetcher.aclose()
            for server in servers:
                server.close()
                await server.wait_closed()

    fetched, routes, bad = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [(f[4], f[5], f[8]) for f in fetched] == [(200, "", PAGE.decode())] * 8
    assert routes <= 2
    assert bad == ["invalid"] * 3
