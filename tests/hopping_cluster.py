"""A supervised ``cpn up`` cluster of ``tests.nets_for_tests:hopping`` for scale tests.

Hoppers cross partitions on every hop and take a ticket from a pool place each time,
so tokens are in flight between the shards while slots move. :class:`HoppingCluster`
starts the cluster under ``tmp_path``, records every pid it ever publishes, puts
hoppers (the log of *acknowledged* puts is the injection log), scales it, drains it
and checks every invariant; :meth:`HoppingCluster.close` stops it with ``cpn down`` and
SIGKILLs, by pid, whatever of it still runs, even when a test fails.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from cluster.client import ClusterClient, ShardUnavailable
from cluster.invariants import ShardSnapshot
from cluster.layout import ClusterLayout
from cluster.pids import pid_running, process_args
from cluster.processes import run_cpn, wait_for
from cluster.scaling import progress
from nets.errors import CpnError
from router.shell.datadir import read_endpoint
from router.table import PartitionTable
from tests.hopping_check import hopping_problems
from tests.nets_for_tests import hopper

REPO_ROOT = Path(__file__).resolve().parents[1]
NET = "tests.nets_for_tests:hopping"
CLI_TIMEOUT_S = 90.0
HOPS = (5, 10, 20, 40)
PLACES = ("hops", "arrived", "tickets")
SHARDS_SEEN_MAX = 8


class HoppingCluster:
    """A hopping cluster's data directory, every pid it published, and what was put."""

    def __init__(self, data_dir: Path, *, seed: int, env: dict[str, str] | None = None) -> None:
        self.layout = ClusterLayout(data_dir)
        self.data = str(data_dir)
        self.pids: set[int] = set()
        self.rng = random.Random(seed)
        self.seed = seed
        self.injected: list[tuple[int, int]] = []  # (hopper id, hops) of acknowledged puts
        python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))
        self.env = {"PYTHONPATH": python_path, **(env or {})}
        self._client: ClusterClient | None = None

    def cpn(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cpn(*args, "--data", self.data, env=self.env, timeout_s=CLI_TIMEOUT_S)

    def up(self, shards: int) -> None:
        result = self.cpn("up", "--net", NET, "--shards", str(shards), "--durability", "process")
        self.record_pids()
        assert result.returncode == 0, result.stderr

    @property
    def client(self) -> ClusterClient:
        if self._client is None:
            # A put is retried (exactly once, by its request number) for up to a minute: a
            # shard killed mid-move can take tens of seconds to serve again on a loaded
            # machine, and a put given up on could still have been applied.
            self._client = ClusterClient.for_data_dir(
                self.layout.root, timeout_ms=2_000, retries=30
            )
        return self._client

    def record_pids(self) -> None:
        if self.layout.supervisor_pid_file.exists():
            self.pids.add(int(self.layout.supervisor_pid_file.read_text()))
        dirs = [self.layout.router_dir, *map(self.layout.shard_dir, range(SHARDS_SEEN_MAX))]
        for data_dir in dirs:
            published = read_endpoint(data_dir)
            if published is not None:
                self.pids.add(published[1])

    def put_wave(self, count: int) -> None:
        """Put ``count`` hoppers; a put the client could not finish is not counted."""
        base = len(self.injected)
        batch = [(base + i, self.rng.choice(HOPS)) for i in range(count)]
        self.client.put("hops", [hopper(h, n) for h, n in batch])
        self.injected.extend(batch)

    def statistics(self) -> dict[int, dict[str, Any]]:
        return self.client.statistics()

    def drained(self) -> bool:
        try:
            table = self.client.table(refresh=True)
            router = self.client.router_statistics()
            counts = self.client.counts()
            stats = self.statistics()
        except (ShardUnavailable, CpnError):
            return False
        return (
            not router["moves_active"]
            and router["members"] == table.shard_count
            and counts.get("arrived", 0) == len(self.injected)
            and not counts.get("hops")
            and len(stats) == table.shard_count
            and all(s["outbox_tokens"] == 0 and s["epoch"] == table.epoch for s in stats.values())
        )

    def check(self, *, timeout_s: float = 60.0) -> str:
        """Wait until drained, then every invariant; returns the problems ("" if none)."""
        try:
            wait_for(self.drained, bool, what="the cluster drained", timeout_s=timeout_s)
        except CpnError as exc:
            return f"{exc}\n{self.describe()}"
        table = self.client.table(refresh=True)
        snapshots = []
        for shard_id in range(table.shard_count):
            shard = self.client.shard(shard_id)
            marking = {place: shard.all_tokens(place) for place in PLACES}
            snapshots.append(ShardSnapshot.from_statistics(shard.stats(), marking))
        partition = PartitionTable(table.epoch, table.shard_count, table.owners, table.slot_epochs)
        problems = hopping_problems(snapshots, partition, self.injected)
        moving = self.client.router_statistics()["moves_active"]
        if moving:
            problems += f"\nmoves not finished: {moving}"
        return problems

    def describe(self) -> str:
        try:
            return str(progress(self.client)) + f"; counts {self.client.counts()}"
        except CpnError as exc:
            return f"(no progress: {exc})"

    def close(self) -> None:
        """`cpn down`, then SIGKILL by pid whatever of this cluster still runs."""
        if self._client is not None:
            self._client.close()
        self.record_pids()
        try:
            if any(pid_running(pid) for pid in self.pids):
                self.cpn("down")
        finally:
            for pid in sorted(self.pids):
                if pid_running(pid) and self.data in " ".join(process_args(pid)):
                    os.kill(pid, signal.SIGKILL)


def wait_scaled(cluster: HoppingCluster, shards: int, *, timeout_s: float, wave: int = 0) -> None:
    """Wait (putting ``wave`` hoppers every turn) until the cluster runs ``shards`` shards
    with the slots spread and no move in flight."""
    deadline = time.monotonic() + timeout_s
    while True:
        if wave:
            cluster.put_wave(wave)
        try:
            now = progress(cluster.client)
            if now.finished and now.members == shards:
                return
        except CpnError:
            now = None
        assert time.monotonic() < deadline, (
            f"seed {cluster.seed}: not scaled to {shards} in {timeout_s} s: {now}"
        )
        time.sleep(0.2)
