"""One shard's leases, completions, heartbeats and hand-backs, from an event loop (SHELL).

Each shard holds its own slots' part of a work queue, so a worker leases from all of
them: a *lane* per shard. A lane learns where its shard listens from the router and
caches it, like every client; a shard restarted on another port is looked up again,
and a router restarted elsewhere is found again (``connect`` reads where it is now).
Every request in flight has a client of its own (a shard orders each client's
requests by their sequence numbers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import zmq.asyncio

from cluster.async_client import AsyncShardClient
from cluster.client import ClusterClient, ShardUnavailable
from nets.errors import CpnError
from router.wire import Leased, Table

REQUEST_TIMEOUT_MS: Final = 1_500
REQUEST_RETRIES: Final = 1

T = TypeVar("T")


class ShardEndpoints:
    """Where each shard listens, from the router's partition table: cached, and asked
    again when a shard does not answer. The router is asked on a thread of its own (a
    rare, blocking request)."""

    def __init__(self, connect: Callable[[], ClusterClient]) -> None:
        self._connect = connect
        self._client: ClusterClient | None = None  # used on the executor's thread only
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="router")

    def _table(self, refresh: bool) -> Table:
        if self._client is None:
            self._client = self._connect()
        try:
            return self._client.table(refresh=refresh)
        except CpnError:
            self._drop()
            raise

    def _lookup(self, shard_id: int, refresh: bool) -> str:
        endpoints = self._table(refresh).endpoints
        endpoint = endpoints[shard_id] if shard_id < len(endpoints) else ""
        if not endpoint:
            raise ShardUnavailable(f"shard {shard_id} has not told the router where it listens")
        return endpoint

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def endpoint(self, shard_id: int, *, refresh: bool = False) -> str:
        """Where shard ``shard_id`` listens.

        Raises:
            CpnError: the router did not answer, or the shard has no endpoint yet.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._lookup, shard_id, refresh)

    async def shard_count(self) -> int:
        """How many shards the router's table has now (it grows when the cluster scales).

        Raises:
            CpnError: the router did not answer.
        """
        loop = asyncio.get_running_loop()
        table = await loop.run_in_executor(self._executor, self._table, True)
        return table.shard_count

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._drop)
        self._executor.shutdown(wait=True)


class ShardLane:
    """One shard's requests: clients of their own, all found at the shard's endpoint,
    which is looked up again when the shard does not answer."""

    def __init__(
        self, endpoints: ShardEndpoints, shard_id: int, context: zmq.asyncio.Context
    ) -> None:
        self.shard_id = shard_id
        self._endpoints = endpoints
        self._context = context
        self._clients: list[AsyncShardClient] = []
        self._idle: list[AsyncShardClient] = []
        self._stale = False  # the shard did not answer: ask the router where it is now

    def client(self) -> AsyncShardClient:
        """A new client of this shard (it connects on its first request)."""
        client = AsyncShardClient(
            "", self._context, timeout_ms=REQUEST_TIMEOUT_MS, retries=REQUEST_RETRIES
        )
        self._clients.append(client)
        return client

    async def _call(self, client: AsyncShardClient, call: Callable[[], Awaitable[T]]) -> T:
        if not client.endpoint:
            refresh, self._stale = self._stale, False
            client.reconnect(await self._endpoints.endpoint(self.shard_id, refresh=refresh))
        try:
            return await call()
        except ShardUnavailable:
            client.reconnect("")  # look the shard up again for the next try
            self._stale = True
            raise

    async def _short(self, call: Callable[[AsyncShardClient], Awaitable[T]]) -> T:
        """A short request on an idle client of this lane (kept for the next one)."""
        client = self._idle.pop() if self._idle else self.client()
        try:
            return await self._call(client, lambda: call(client))
        finally:
            self._idle.append(client)

    async def lease(
        self, client: AsyncShardClient, place: str, *, max_tokens: int, lease_ms: int, wait_ms: int
    ) -> Leased:
        """A long poll: the shard answers when it has work, or empty after ``wait_ms``."""
        return await self._call(
            client,
            lambda: client.lease(place, max_tokens=max_tokens, lease_ms=lease_ms, wait_ms=wait_ms),
        )

    async def complete(
        self, lease_id: str, results: Sequence[tuple[str, Any]], indexes: tuple[int, ...] = ()
    ) -> None:
        await self._short(lambda c: c.complete(lease_id, results, indexes=indexes))

    async def renew(self, lease_id: str, lease_ms: int, progress: str) -> int:
        """Extend the lease; its new expiry (wall-clock ms)."""
        renewed = await self._short(
            lambda c: c.renew(lease_id, lease_ms=lease_ms, progress=progress)
        )
        return renewed.expires_at_ms

    async def release(self, lease_id: str, indexes: tuple[int, ...] = ()) -> None:
        """Hand the lease's tokens (or those of ``indexes``) back to the queue now."""
        await self._short(lambda c: c.release(lease_id, indexes=indexes))

    def close(self) -> None:
        for client in self._clients:
            client.close()
