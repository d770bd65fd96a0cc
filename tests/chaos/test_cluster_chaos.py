"""`cpn up`'s stuck-shard detection and `cpn chaos`, on real clusters (serial: they kill).

A real supervisor (``cpn up``, detached) runs a router and two shards of
``tests.nets_for_tests:hopping`` under ``tmp_path``: hoppers cross partitions on every
hop and take a ticket from a pool place each time, so tokens are in flight between the
shards while processes die.

* A SIGSTOPped shard is alive but makes no progress: the supervisor must SIGKILL it
  and restart it on its port, and leave the other shard alone.
* ``cpn chaos --target all --check`` SIGKILLs the router and the shards on a seeded
  schedule (``CPN_SEED`` replays it) while the test keeps putting hoppers; then every
  acknowledged hopper must have landed exactly once and the tickets be conserved.

Every pid the cluster publishes is recorded; the fixture stops the cluster with
``cpn down`` and then SIGKILLs, by pid, whatever of it still runs (a stopped process
included), even when a test fails.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.client import ClusterClient
from cluster.invariants import ShardSnapshot
from cluster.layout import ClusterLayout, live_endpoint
from cluster.pids import pid_running, process_args
from cluster.processes import run_cpn, wait_for
from router.shell.datadir import read_endpoint
from router.table import PartitionTable
from tests.hopping_check import hopping_problems
from tests.nets_for_tests import hopper

pytestmark = [pytest.mark.serial, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
NET = "tests.nets_for_tests:hopping"
SHARDS = 2
CLI_TIMEOUT_S = 60.0
WAIT_TIMEOUT_S = 20.0
HOPS = (5, 10, 20, 40)
HOPPERS_PER_WAVE = 150
WAVE_EVERY_S = 0.5
WAVES_FOR_S = 4.5  # while `cpn chaos --duration 5s` kills; then it checks the drained cluster
PLACES = ("hops", "arrived", "tickets")


def _env() -> dict[str, str]:
    """PYTHONPATH for a `cpn` subprocess that imports ``tests.nets_for_tests``."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))}


class Cluster:
    """A hopping cluster's data directory and every pid it ever published."""

    def __init__(self, data_dir: Path) -> None:
        self.layout = ClusterLayout(data_dir)
        self.data = str(data_dir)
        self.pids: set[int] = set()

    def cpn(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cpn(*args, "--data", self.data, env=_env(), timeout_s=CLI_TIMEOUT_S)

    def up(self, *extra: str) -> None:
        result = self.cpn("up", "--net", NET, "--shards", str(SHARDS), "--durability", "process",
                          *extra)  # fmt: skip
        self.record_pids()
        assert result.returncode == 0, result.stderr

    def record_pids(self) -> None:
        if self.layout.supervisor_pid_file.exists():
            self.pids.add(int(self.layout.supervisor_pid_file.read_text()))
        for data_dir in [self.layout.router_dir, *map(self.layout.shard_dir, range(SHARDS))]:
            published = read_endpoint(data_dir)
            if published is not None:
                self.pids.add(published[1])

    def close(self) -> None:
        """`cpn down`, then SIGKILL by pid whatever of this cluster still runs."""
        self.record_pids()
        try:
            if any(pid_running(pid) for pid in self.pids):
                self.cpn("down")
        finally:
            for pid in sorted(self.pids):
                # Still ours (not a reused pid)? A stopped process dies by SIGKILL too.
                if pid_running(pid) and self.data in " ".join(process_args(pid)):
                    os.kill(pid, signal.SIGKILL)

    def all_alive(self, client: ClusterClient) -> bool:
        return all(shard["alive"] for shard in client.status().shards)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path / "cluster")
    try:
        yield made
    finally:
        made.close()


def test_the_supervisor_kills_and_restarts_a_stopped_shard(cluster: Cluster) -> None:
    cluster.up("--stuck-timeout", "1s")
    shard0 = read_endpoint(cluster.layout.shard_dir(0))
    stopped = read_endpoint(cluster.layout.shard_dir(1))
    assert shard0 is not None and stopped is not None
    os.kill(stopped[1], signal.SIGSTOP)
    started = time.monotonic()
    back = wait_for(
        lambda: live_endpoint(cluster.layout.shard_dir(1)),
        lambda published: published is not None and published[1] != stopped[1],
        what="shard 1 restarted by its supervisor",
        timeout_s=WAIT_TIMEOUT_S,
    )
    took_s = time.monotonic() - started
    cluster.record_pids()
    assert back is not None and back[0] == stopped[0], "restarted on the port it had"
    assert not pid_running(stopped[1]), "the stopped process was killed"
    log = cluster.layout.supervisor_log.read_text()
    assert re.search(rf"shard 1 \(pid {stopped[1]}\) made no progress for [\d.]+ s: killed", log)
    with ClusterClient.for_data_dir(cluster.layout.root, timeout_ms=2_000, retries=2) as client:
        wait_for(lambda: cluster.all_alive(client), bool, what="both shards alive", timeout_s=10)
    assert read_endpoint(cluster.layout.shard_dir(0)) == shard0, "shard 0 was left alone"
    # The router declares a silent shard not progressing after 3 s (its heartbeat
    # timeout); the supervisor polls every 0.5 s and the restart backs off 0.2 s.
    assert took_s < 8, f"detected and restarted after {took_s:.1f} s"


def _snapshots(client: ClusterClient) -> list[ShardSnapshot]:
    snapshots = []
    for shard_id in range(SHARDS):
        shard = client.shard(shard_id)
        marking = {place: shard.all_tokens(place) for place in PLACES}
        snapshots.append(ShardSnapshot.from_statistics(shard.stats(), marking))
    return snapshots


def test_hoppers_land_exactly_once_through_cpn_chaos(cluster: Cluster, seed: int) -> None:
    cluster.up()
    rng = random.Random(seed)
    injected: list[tuple[int, int]] = []  # (hopper id, hops) of acknowledged puts
    args = ["--kill-every", "700ms", "--duration", "5s", "--target", "all", "--seed", str(seed)]
    with ClusterClient.for_data_dir(cluster.layout.root, timeout_ms=2_000, retries=5) as client:

        def put_wave() -> None:
            batch = [(len(injected) + i, rng.choice(HOPS)) for i in range(HOPPERS_PER_WAVE)]
            client.put("hops", [hopper(h, n) for h, n in batch])
            injected.extend(batch)

        put_wave()
        chaos = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "chaos", "--data", cluster.data, *args,
             "--check", "--drain-timeout", "30s"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **_env()},
        )  # fmt: skip
        try:
            waves_until = time.monotonic() + WAVES_FOR_S
            while chaos.poll() is None and time.monotonic() < waves_until:
                put_wave()  # hoppers keep arriving while processes die
                cluster.record_pids()
                time.sleep(WAVE_EVERY_S)
            out, err = chaos.communicate(timeout=CLI_TIMEOUT_S)
        finally:
            if chaos.poll() is None:
                chaos.kill()
                chaos.wait()
        cluster.record_pids()
        assert chaos.returncode == 0, f"seed {seed}:\n{out}\n{err}"
        killed = [int(pid) for pid in re.findall(r"SIGKILL (?:router|shard \d) \(pid (\d+)\)", out)]
        assert len(killed) >= 3, f"seed {seed}: too few kills:\n{out}"
        supervisor = int(cluster.layout.supervisor_pid_file.read_text())
        assert supervisor not in killed and pid_running(supervisor), "never the supervisor"
        assert "cluster invariants hold" in out, out
        wait_for(
            client.counts,
            lambda counts: counts.get("arrived", 0) == len(injected) and not counts.get("hops"),
            what="every hopper landed",
            timeout_s=WAIT_TIMEOUT_S,
        )
        snapshots = _snapshots(client)
        table = client.table(refresh=True)

    partition = PartitionTable(table.epoch, table.shard_count, table.owners, table.slot_epochs)
    problems = hopping_problems(snapshots, partition, injected)
    assert not problems, f"seed {seed}, chaos:\n{out}\n{problems}"
