"""The fetcher (cluster/crawler/fetch.py) against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from cluster.crawler import fetch as fetch_module
from cluster.crawler.fetch import Fetcher, FetchSettings, wall_ms

pytestmark = pytest.mark.integration

PAGE = b"<html><title>t</title></html>"


async def _serve_pages(connections: list[int] | None = None) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connections is not None:
            connections.append(1)
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


def test_a_route_is_kept_across_a_round_of_many_origins_and_closed_once_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crawl visits its hosts in turn: each origin's route (and its kept-alive
    connection) lasts until its next turn, however many origins there are within
    ROUTES_IDLE_MAX, and a route unused for KEEPALIVE_S is closed."""

    async def rounds(origins: int) -> tuple[int, int]:
        connections: list[int] = []
        servers = [await _serve_pages(connections) for _ in range(origins)]
        fetcher = Fetcher(FetchSettings(timeout_s=5.0))
        try:
            fetcher.prepare([])
            ports = [s.sockets[0].getsockname()[1] for s in servers]
            for port in ports * 3:
                outcome = await fetcher.fetch(_job(f"http://127.0.0.1:{port}/"))
                assert outcome.fetched[4] == 200, outcome
            return len(connections), len(fetcher._routes)
        finally:
            await fetcher.aclose()
            for server in servers:
                server.close()
                await server.wait_closed()

    # 70 origins: more than the 64 routes kept before, which closed each route just
    # before its next turn and so opened a connection for every request. Nothing may go
    # stale meanwhile, however slow a loaded machine makes the rounds.
    monkeypatch.setattr(fetch_module, "KEEPALIVE_S", 600.0)
    connections, routes = asyncio.run(asyncio.wait_for(rounds(70), 60))
    assert (connections, routes) == (70, 71)  # and the route `prepare` makes
    monkeypatch.setattr(fetch_module, "KEEPALIVE_S", 0.0)
    assert asyncio.run(asyncio.wait_for(rounds(2), 60)) == (6, 0)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_request_whose_kept_alive_connection_breaks_is_not_sent_again() -> None:
    """aiohttp resends a GET once when a reused connection breaks; the host may have seen
    the first, so the fetcher refuses: one request at the server, the fetch ``reset``."""
    heads: list[bytes] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                heads.append(head)
                if len(heads) > 1:
                    break  # the second request: hang up without an answer
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE)
                )
                await writer.drain()
        writer.close()

    async def scenario() -> list[tuple[object, ...]]:
        server, port = await _serve(answer_once)
        fetcher = Fetcher(FetchSettings(timeout_s=5.0))
        try:
            fetcher.prepare([])
            url = f"http://127.0.0.1:{port}/"
            return [(await fetcher.fetch(_job(url))).fetched for _ in range(2)]
        finally:
            await fetcher.aclose()
            server.close()
            await server.wait_closed()

    first, second = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (first[4], first[5]) == (200, "")
    assert (second[4], second[5]) == (0, "reset")
    assert len(heads) == 2  # the second fetch reached the server once


def test_answers_and_failures_become_results() -> None:
    """Per path of one server: the User-Agent sent, a redirect's target, Retry-After, a
    body over the limit, a body not read (not HTML), a bad content-encoding, a read
    timeout; then a refused connection, an unreachable proxy and a late start."""
    big = b"<html>" + b"x" * 2_000
    answers = {
        b"/ua": b"200 OK\r\nContent-Type: text/html; charset=latin-1\r\nContent-Length: %d",
        b"/moved": b"301 Moved\r\nLocation: /there#frag\r\nContent-Length: 0",
        b"/busy": b"503 Busy\r\nRetry-After: 7\r\nContent-Length: 0",
        b"/big": b"200 OK\r\nContent-Type: text/html\r\nContent-Length: %d" % len(big),
        b"/pdf": b"200 OK\r\nContent-Type: application/pdf\r\nContent-Length: 4",
        b"/gz": b"200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: 4",
    }

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # try/finally: the /slow handler is still asleep when the test ends (cancelled).
        try:
            await answer_all(reader, writer)
        finally:
            writer.close()

    async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ")[1]
                if path == b"/slow":
                    await asyncio.sleep(5)  # longer than the read timeout
                    break
                agent = head.split(b"User-Agent: ")[1].split(b"\r\n")[0]
                body = {b"/ua": agent, b"/big": big, b"/pdf": b"%PDF", b"/gz": b"nope"}
                content = body.get(path, b"")
                status = answers[path].replace(b"%d", b"%d" % len(content))
                writer.write(b"HTTP/1.1 " + status + b"\r\n\r\n" + content)
                await writer.drain()

    async def scenario() -> dict[str, tuple[object, ...]]:
        server, port = await _serve(answer)
        closed, closed_port = await _serve(answer)
        closed.close()
        await closed.wait_closed()  # nothing listens there now: connecting is refused
        settings = FetchSettings(
            user_agent="agent/1", body_max_bytes=1_000, timeout_s=0.5, connect_timeout_s=0.5
        )
        fetcher = Fetcher(settings)
        base = f"http://127.0.0.1:{port}"
        try:
            fetcher.prepare([f"http://127.0.0.1:{closed_port}"])
            results = {}
            for path in ("/ua", "/moved", "/busy", "/big", "/pdf", "/gz", "/slow"):
                results[path] = (await fetcher.fetch(_job(base + path))).fetched
            results["refused"] = (
                await fetcher.fetch(_job(f"http://127.0.0.1:{closed_port}/"))
            ).fetched
            job = list(_job(base + "/ua"))
            job[6] = f"http://127.0.0.1:{closed_port}"
            results["proxy"] = (await fetcher.fetch(job)).fetched
            job = list(_job(base + "/ua"))
            job[7], job[8] = wall_ms() - 50, 5  # started 50 ms ago, 5 ms allowed
            late = await fetcher.fetch(job)
            assert late.timing is None  # never sent
            results["late"] = late.fetched
            with pytest.raises(ValueError, match="expected http"):
                fetcher.prepare(["socks5://127.0.0.1:1"])
            return results
        finally:
            await fetcher.aclose()
            server.close()
            await server.wait_closed()

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    # Fetched: status 4, error 5, final_url 6, content_type 7, body 8, answered 10, retry 12
    assert results["/ua"][4:9] == (200, "", results["/ua"][1], "text/html", "agent/1")
    assert results["/moved"][4:6] == (301, "")
    assert str(results["/moved"][6]).endswith("/there")
    busy = results["/busy"]
    assert busy[4:6] == (503, "") and busy[12] == int(str(busy[10])) + 7_000
    assert results["/big"][4:6] == (200, "too_large")
    assert results["/pdf"][4:9] == (200, "", results["/pdf"][1], "application/pdf", "")
    assert results["/gz"][4:6] == (200, "invalid")
    assert results["/slow"][4:6] == (0, "timeout")
    assert results["refused"][4:6] == (0, "connect")
    assert results["proxy"][4:6] == (0, "proxy")
    assert results["late"][4:6] == (0, "late")
