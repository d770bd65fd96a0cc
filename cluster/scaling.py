"""`cpn scale`: grow or shrink a running cluster (SHELL).

Theory of operation (docs/cluster.md, "Scaling"; docs/handoff.md, "Slot moves"):

1. :func:`scale` records the new shard count in ``cluster.json`` (the supervisor reads
   it every half second: it starts the shards it adds, and stops the ones the router
   retires), then tells the router (:class:`~router.wire.Scale`), which plans the slot
   moves and drives them to the end, durably.
2. :func:`wait_scaled` polls the router until the table is spread over the new count
   with no move left in flight and every shard of the new count alive, and reports the
   progress on the way.

Both are idempotent: scaling to the count the cluster already heads for changes
nothing, and a scale interrupted by a crash of any process is resumed by the router.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cluster.client import ClusterClient, ShardUnavailable
from cluster.launch import record_config
from cluster.layout import ClusterConfig, ClusterLayout, supervisor_pid
from nets.errors import CpnError
from router.table import SHARDS_MAX

SCALE_TIMEOUT_S_DEFAULT: Final = 300.0
POLL_S: Final = 0.25
CLIENT_TIMEOUT_MS: Final = 2_000


@dataclass(frozen=True, slots=True)
class ScaleProgress:
    """Where a scale stands: the router's view of the moves and the shards."""

    members: int
    table_shards: int
    epoch: int
    moves_active: int
    moves_done: int
    moves_aborted: int
    alive: int
    slots: tuple[int, ...]  # per shard of the table

    @property
    def finished(self) -> bool:
        spread = self.slots[: self.members]
        return (
            self.table_shards == self.members
            and self.moves_active == 0
            and self.alive >= self.members
            and bool(spread)
            and max(spread) - min(spread) <= 1
        )

    def __str__(self) -> str:
        return (
            f"epoch {self.epoch}: {self.moves_active} moves in flight, {self.moves_done} done"
            + (f", {self.moves_aborted} aborted" if self.moves_aborted else "")
            + f"; slots per shard {list(self.slots)}; {self.alive} shards alive"
        )


def scale(layout: ClusterLayout, shard_count: int) -> ClusterConfig:
    """Head the running cluster in ``layout`` for ``shard_count`` shards.

    Raises:
        CpnError: no cluster there or it is not running; a count out of range; the
            router refused or did not answer (the recorded count is then changed
            already: run the same command again).
    """
    config = ClusterConfig.read(layout)
    if config is None:
        raise CpnError(f"no cluster in {layout.root} (no {layout.cluster_file.name})")
    if supervisor_pid(layout) is None:
        raise CpnError(
            f"the cluster in {layout.root} is not running; start it with `cpn up --data "
            f"{layout.root} --net {config.net} --shards {config.shards}` and scale it then"
        )
    if not 0 < shard_count <= SHARDS_MAX:
        raise CpnError(f"--shards {shard_count} is not in 1..{SHARDS_MAX}")
    scaled = dataclasses.replace(config, shards=shard_count, initial_shards=config.first_shards)
    record_config(layout, scaled)
    with ClusterClient.for_data_dir(layout.root, timeout_ms=CLIENT_TIMEOUT_MS) as client:
        client.scale(shard_count)
    return scaled


def progress(client: ClusterClient) -> ScaleProgress:
    """The router's view of the moves and shards now."""
    stats: dict[str, Any] = client.router_statistics()
    state = client.status()
    table = client.table(refresh=True)
    return ScaleProgress(
        members=int(stats["members"]),
        table_shards=table.shard_count,
        epoch=table.epoch,
        moves_active=len(stats["moves_active"]),
        moves_done=int(stats["moves_done"]),
        moves_aborted=int(stats["moves_aborted"]),
        alive=sum(1 for shard in state.shards if shard["alive"]),
        slots=tuple(table.owners.count(k) for k in range(table.shard_count)),
    )


def wait_scaled(
    layout: ClusterLayout,
    *,
    timeout_s: float = SCALE_TIMEOUT_S_DEFAULT,
    on_progress: Callable[[ScaleProgress], None] = lambda _p: None,
    every_s: float = 2.0,
) -> ScaleProgress:
    """Wait until the scale finished (see :attr:`ScaleProgress.finished`).

    Raises:
        CpnError: not finished within ``timeout_s`` (the moves go on; the message
            says where they stand).
    """
    deadline = time.monotonic() + timeout_s
    shown_s = 0.0
    last: ScaleProgress | None = None
    with ClusterClient.for_data_dir(layout.root, timeout_ms=CLIENT_TIMEOUT_MS) as client:
        while True:
            try:
                last = progress(client)
            except ShardUnavailable:
                last = None  # the router restarts: ask again
            if last is not None and last.finished:
                return last
            if time.monotonic() > deadline:
                raise CpnError(
                    f"the cluster in {layout.root} did not finish scaling within "
                    f"{timeout_s:.0f} s ({last or 'the router does not answer'}); the moves "
                    f"go on, see `cpn status --data {layout.root}`"
                )
            if last is not None and time.monotonic() >= shown_s + every_s:
                shown_s = time.monotonic()
                on_progress(last)
            time.sleep(POLL_S)
