"""The dashboard's one reader of the cluster: a thread that samples it on a period (SHELL).

Every ``interval_ms`` the sampler asks the router for the shards' state, the partition
table and the slot moves, and each live shard for its statistics (token counts per
place, firing counts per transition, incarnation, outbox), and publishes the result
as an immutable :class:`~cluster.dashboard.snapshot.Snapshot`: HTTP handlers read the
latest one without waiting and without touching a socket.

ZeroMQ sockets are not thread-safe, so the one :class:`ClusterClient` is used under a
lock: by the sampling thread, and by :meth:`Sampler.tokens` (a click on a place),
which runs in an HTTP handler's thread between two samples.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

from cluster.client import ClosedOnExit, ClusterClient
from cluster.dashboard.snapshot import (
    FiringRates,
    ShardReading,
    ShardView,
    Snapshot,
    empty_snapshot,
    firing_counts,
    moves_in_flight,
)
from cluster.layout import ClusterLayout, live_endpoint
from nets.errors import CpnError

# A shard that does not answer within this long is shown as not answering; the next
# sample asks again. Short, so that one dead shard does not hold up the page.
REQUEST_TIMEOUT_MS: Final = 1_000
TOKENS_LISTED_MAX: Final = 1_000
STOP_TIMEOUT_S: Final = 5.0


class Sampler(ClosedOnExit):
    """Samples the cluster in ``data_dir`` every ``interval_ms`` in a thread of its own.

    The thread starts with the object and stops at :meth:`close` (or the end of a
    ``with`` block). :meth:`snapshot` is the latest sample; before the first one it is
    ``seq`` 0 with ``error`` saying so.

    Raises:
        CpnError: no cluster in ``data_dir`` (its router published no endpoint).
    """

    def __init__(self, data_dir: Path, net: str, *, interval_ms: int) -> None:
        assert interval_ms > 0, interval_ms
        self._layout = ClusterLayout(data_dir)
        self._interval_s = interval_ms / 1000
        self._client = ClusterClient.for_data_dir(
            self._layout.root, timeout_ms=REQUEST_TIMEOUT_MS, retries=0
        )
        self._lock = threading.Lock()  # guards self._client
        self._snapshot = empty_snapshot(net, "no sample taken yet")
        self._rates = FiringRates()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-sampler", daemon=True)
        self._thread.start()

    def snapshot(self) -> Snapshot:
        """The latest sample (an immutable record; replaced, never changed)."""
        return self._snapshot

    def tokens(self, place: str, *, limit: int) -> list[tuple[int, int, tuple[Any, ...]]]:
        """Up to ``limit`` entries ``(shard id, time ms, fields)`` of ``place``.

        Raises:
            CpnError: no such place, or a shard did not answer.
        """
        limit = max(1, min(limit, TOKENS_LISTED_MAX))
        with self._lock:
            return [
                (shard_id, time_ms, tuple(fields))
                for shard_id, time_ms, fields in self._client.tokens(place, limit=limit)
            ]

    def close(self) -> None:
        """Stop the thread and close the client; safe to call again."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT_S)
        with self._lock:
            self._client.close()

    def _run(self) -> None:
        next_s = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 - the page shows it; the next sample retries
                previous = self._snapshot
                self._snapshot = Snapshot(
                    previous.seq + 1,
                    int(time.time() * 1000),
                    previous.net,
                    previous.epoch,
                    previous.places,
                    previous.firings,
                    previous.rates,
                    previous.shards,
                    previous.owners,
                    previous.moves,
                    previous.moves_done,
                    previous.moves_aborted,
                    f"the cluster did not answer: {exc}",
                )
            # A fixed cadence, not a fixed pause: a slow sample does not slow the next.
            next_s = max(next_s + self._interval_s, time.monotonic())
            self._stopping.wait(next_s - time.monotonic())

    def _sample(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            client = self._client
            state = client.status()
            table = client.table(refresh=True)
            router_stats = client.router_statistics()
            statistics: dict[int, dict[str, Any]] = {}
            errors: dict[int, str] = {}
            for shard_id, shard in enumerate(state.shards):
                if not shard["alive"]:
                    continue
                try:
                    statistics.update(client.statistics([shard_id]))
                except CpnError as exc:
                    errors[shard_id] = str(exc)
        now_ms = int(time.monotonic() * 1000)
        readings = {
            k: ShardReading(int(stats.get("incarnation", 0)), firing_counts(stats))
            for k, stats in statistics.items()
        }
        self._rates = self._rates.add(now_ms, readings)
        per_shard = self._rates.per_shard()
        places: Counter[str] = Counter()
        firings: Counter[str] = Counter()
        shards = []
        for shard_id, shard in enumerate(state.shards):
            stats = statistics.get(shard_id)
            if stats is not None:
                places.update(stats.get("tokens", {}))
                firings.update(stats.get("firings", {}))
            published = live_endpoint(self._layout.shard_dir(shard_id))
            shards.append(
                ShardView(
                    shard_id,
                    bool(shard["alive"]),
                    bool(shard.get("progressing", shard["alive"])),
                    str(shard.get("endpoint") or ""),
                    published[1] if published else None,
                    int(shard.get("slots", table.owners.count(shard_id))),
                    int(
                        stats.get("epoch", shard.get("epoch", 0))
                        if stats
                        else shard.get("epoch", 0)
                    ),
                    readings[shard_id].incarnation if shard_id in readings else None,
                    sum(stats.get("firings", {}).values()) if stats else None,
                    per_shard.get(shard_id),
                    stats.get("outbox_tokens") if stats else None,
                    sum(stats.get("in_flight", {}).values()) if stats else None,
                    errors.get(shard_id, "" if shard["alive"] else "no heartbeat"),
                )
            )
        problems = [f"shard {k}: {message}" for k, message in sorted(errors.items())]
        self._snapshot = Snapshot(
            self._snapshot.seq + 1,
            int(time.time() * 1000),
            state.net,
            table.epoch,
            dict(sorted(places.items())),
            dict(sorted(firings.items())),
            self._rates.per_transition(),
            tuple(shards),
            table.owners,
            moves_in_flight(router_stats),
            int(router_stats.get("moves_done", 0)),
            int(router_stats.get("moves_aborted", 0)),
            "; ".join(problems),
        )
