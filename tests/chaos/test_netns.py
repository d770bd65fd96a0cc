"""A cluster across real network boundaries: namespaces, veth links, CURVE, cut links.

The router and two shards run as separate "hosts": each in its own network namespace
with its own address, joined by veth pairs to a bridge, made for this run by
:class:`cluster.netns.VirtualNetwork` (names unique per run, at most 15 characters,
removed even when a test fails). They read one cluster file with CURVE keys; this
process is the client, on its own veth into the same switch. The workload is
``tests.nets_for_tests:hopping``: every hop crosses partitions (a handoff) and takes a
ticket from a pool. While hoppers flow, the test takes a shard's link down (handoffs
wait in the outbox; the router stops hearing it), brings it back, then does the same
to the router's link (the shards keep going with their tables); a third shard is cut
off from the router alone while a scale-in moves its slots away. Afterwards every
acknowledged hopper must have landed exactly once, outboxes drained and the tickets
be conserved (``cluster.invariants`` via ``tests.hopping_check``).

Needs root and ``ip netns`` (skipped with the reason otherwise); the ``tc netem`` part
skips where the kernel has no ``sch_netem``. Serial: it loads the machine.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.client import ClusterClient, ShardClient, ShardUnavailable
from cluster.invariants import ShardSnapshot, slot_of_net
from cluster.netns import VirtualNetwork, unavailable
from cluster.processes import STDERR_FILE, ShardProcess, run_cpn, stop_all, wait_for, wait_ready
from cluster.scaling import progress
from cluster.security import read_keypair, read_public
from router.shell.curve import CurveKeys
from router.slots import slot_of_key
from router.table import PartitionTable
from tests.hopping_check import hopping_problems
from tests.nets_for_tests import hopper, hopping

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.serial,
    pytest.mark.integration,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
NET = "tests.nets_for_tests:hopping"
PLACES = ("hops", "arrived", "tickets")
HOSTS = ("router", "shard0", "shard1")
ROUTER_PORT = 7000
SHARD_PORT = 7001  # every host has its own port space: fixed ports are safe here
HEARTBEAT_TIMEOUT_MS = 1_000
WAIT_S = 30.0
HOPPERS_PER_WAVE = 40


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))}


class Hosts:
    """The network, the cluster file, the keys and every process started on the hosts."""

    def __init__(self, net: VirtualNetwork, root: Path, *, shards: int = 2) -> None:
        self.net = net
        self.root = root
        self.shards = shards
        self.handles: list[ShardProcess] = []
        self.clients: list[Any] = []
        for name in ("server", "client", "stranger"):
            result = run_cpn("keys", "generate", str(root / "keys"), "--name", name, env=_env())
            assert result.returncode == 0, result.stderr
        self.config = self.write_config(root / "cluster.toml", keys="keys")
        self.router_endpoint = f"tcp://{net.addresses['router']}:{ROUTER_PORT}"

    def write_config(self, path: Path, *, keys: str, shard1_port: int = SHARD_PORT) -> Path:
        a = self.net.addresses
        ports = {k: shard1_port if k == 1 else SHARD_PORT for k in range(self.shards)}
        shard_sections = "".join(
            f'[[shard]]\nid = {k}\nhost = "shard{k}"\nendpoint = "tcp://{a[f"shard{k}"]}:{port}"\n'
            for k, port in ports.items()
        )
        path.write_text(
            f"""
[cluster]
id = "netns"
net = "{NET}"
data_dir = "{self.root / "data"}"
durability = "process"
heartbeat_timeout_ms = {HEARTBEAT_TIMEOUT_MS}
[router]
host = "router"
endpoint = "tcp://{a["router"]}:{ROUTER_PORT}"
[shards]
count = {self.shards}
{shard_sections}[security]
server_key = "{keys}/server.key_secret"
client_key = "{keys}/client.key_secret"
allowed_clients = ["{keys}/client.key"]
"""
        )
        return path

    def start(
        self, host: str, role: str, *args: str, config: Path | None = None, data: str = ""
    ) -> ShardProcess:
        """``cpn ROLE --config FILE ARGS`` on ``host``, once it published its endpoint."""
        data_dir = self.root / "data" / (role if role == "router" else f"shard-{args[-1]}")
        if data:
            data_dir = self.root / data
            args = (*args, "--data", str(data_dir))
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*self.net.exec_prefix(host), sys.executable, "-m", "cluster.cli", role]
        argv += ["--config", str(config or self.config), *args]
        with (data_dir / STDERR_FILE).open("ab") as stderr:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env={**os.environ, **_env()},
            )
        handle = ShardProcess(data_dir, process, args=argv, role=role)
        self.handles.append(handle)
        wait_ready(handle)
        return handle

    def keys(self, name: str = "client") -> CurveKeys:
        public, secret = read_keypair(self.root / "keys" / f"{name}.key_secret")
        return CurveKeys(public, secret, read_public(self.root / "keys" / "server.key"))

    def client(self, **options: Any) -> ClusterClient:
        client = ClusterClient(self.router_endpoint, curve=self.keys(), **options)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        stop_all(self.handles)


@contextlib.contextmanager
def _running(tmp_path: Path, shards: int) -> Iterator[Hosts]:
    with VirtualNetwork((*HOSTS[:1], *(f"shard{k}" for k in range(shards)))) as net:
        found = Hosts(net, tmp_path, shards=shards)
        try:
            found.start("router", "router")
            for shard_id in range(shards):
                found.start(f"shard{shard_id}", "shard", "--shard-id", str(shard_id))
            yield found
        finally:
            found.close()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with _running(tmp_path, 2) as found:
        yield found


@pytest.fixture
def three_hosts(tmp_path: Path) -> Iterator[Hosts]:
    with _running(tmp_path, 3) as found:
        yield found


def _alive(client: ClusterClient) -> list[bool]:
    return [bool(s["alive"]) for s in client.status().shards]


def _snapshots(client: ClusterClient, shard_ids: tuple[int, ...] = (0, 1)) -> list[ShardSnapshot]:
    snapshots = []
    for shard_id in shard_ids:
        shard = client.shard(shard_id)
        marking = {place: shard.all_tokens(place) for place in PLACES}
        snapshots.append(ShardSnapshot.from_statistics(shard.stats(), marking))
    return snapshots


class Workload:
    """Hoppers put in waves; each wave starts on one chosen shard (its first key's owner)."""

    def __init__(self, client: ClusterClient) -> None:
        self.client = client
        self.owners = client.table().owners
        self.injected: list[tuple[int, int]] = []
        self._next_id = 0

    def wave(self, *, on_shard: int | None = None) -> None:
        batch: list[tuple[int, int, Any]] = []
        while len(batch) < HOPPERS_PER_WAVE:
            hopper_id, hops = self._next_id, 5 + self._next_id % 3 * 5
            self._next_id += 1
            token = hopper(hopper_id, hops)
            if on_shard is None or self.owners[slot_of_key(token.key)] == on_shard:
                batch.append((hopper_id, hops, token))
        self.client.put("hops", [token for _h, _n, token in batch])
        self.injected.extend((h, n) for h, n, _token in batch)

    def landed(self) -> bool:
        counts = self.client.counts()
        return counts.get("arrived", 0) == len(self.injected) and not counts.get("hops")

    def problems(self) -> str:
        def drained() -> bool:
            stats = self.client.statistics()
            return all(s["outbox_tokens"] == 0 for s in stats.values())

        wait_for(self.landed, bool, what="every hopper landed", timeout_s=WAIT_S)
        wait_for(drained, bool, what="every outbox drained", timeout_s=WAIT_S)
        table = self.client.table(refresh=True)
        partition = PartitionTable(table.epoch, table.shard_count, table.owners, table.slot_epochs)
        return hopping_problems(_snapshots(self.client), partition, self.injected)


def test_cut_links_of_a_shard_and_the_router_lose_and_duplicate_nothing(hosts: Hosts) -> None:
    client = hosts.client(timeout_ms=2_000, retries=2)
    wait_for(lambda: _alive(client), all, what="both shards alive", timeout_s=WAIT_S)
    work = Workload(client)
    work.wave()
    work.wave()

    # Shard 1 off the network while hoppers flow from shard 0 towards it.
    hosts.net.cut("shard1")
    for _ in range(3):
        work.wave(on_shard=0)
    wait_for(lambda: _alive(client), lambda a: a == [True, False], what="shard 1 not alive",
             timeout_s=WAIT_S)  # fmt: skip
    waiting = client.statistics([0])[0]["outbox_tokens"]
    assert waiting > 0, "hoppers for shard 1 wait in shard 0's outbox"
    hosts.net.restore("shard1")
    wait_for(lambda: _alive(client), all, what="shard 1 back", timeout_s=WAIT_S)
    assert not (problems := work.problems()), problems

    # The router off the network: the shards have the table, clients have theirs.
    hosts.net.cut("router")
    for shard_id in (0, 1):
        work.wave(on_shard=shard_id)
    with pytest.raises(ShardUnavailable):
        client.status()
    wait_for(work.landed, bool, what="hoppers landed without the router", timeout_s=WAIT_S)
    hosts.net.restore("router")
    wait_for(lambda: _alive(client), all, what="the router hears both shards", timeout_s=WAIT_S)
    work.wave()
    assert not (problems := work.problems()), problems


def test_latency_and_loss_on_a_shard_s_link(hosts: Hosts) -> None:
    reason = hosts.net.impair("shard1", delay_ms=20, loss_pct=2.0)
    if reason is not None:
        pytest.skip(reason)
    client = hosts.client(timeout_ms=3_000, retries=3)
    wait_for(lambda: _alive(client), all, what="both shards alive", timeout_s=WAIT_S)
    work = Workload(client)
    for _ in range(3):
        work.wave()
    assert not (problems := work.problems()), problems


def test_strangers_are_refused_across_hosts(hosts: Hosts) -> None:
    # A client without keys, and one with a key the allow-list does not name.
    plain = ShardClient(hosts.router_endpoint, timeout_ms=500, retries=0, role="router")
    plain.curve = None
    stranger = ClusterClient(
        hosts.router_endpoint, curve=hosts.keys("stranger"), timeout_ms=500, retries=0
    )
    hosts.clients += [plain, stranger]
    with pytest.raises(ShardUnavailable):
        plain.ping()
    with pytest.raises(ShardUnavailable):
        stranger.table()
    client = hosts.client(timeout_ms=2_000)
    assert client.table().net == "test_hopping"
    # A shard with another cluster's keys, on shard 1's host, cannot join.
    run_cpn("keys", "generate", str(hosts.root / "other-keys"), env=_env())
    run_cpn("keys", "generate", str(hosts.root / "other-keys"), "--name", "client", env=_env())
    impostor = hosts.write_config(
        hosts.root / "impostor.toml", keys=str(hosts.root / "other-keys"), shard1_port=7002
    )
    log = hosts.root / "data" / "router" / "router.log"
    root_side = hosts.net.subnet.network_address + 1
    assert f"refused a connection from {root_side}" in log.read_text()  # the stranger
    failed_before = log.read_text().count("the handshake failed")
    assert failed_before >= 1  # the client without CURVE
    hosts.start("shard1", "shard", "--shard-id", "1", config=impostor, data="impostor")
    # It expects another server key: its handshakes with the router fail, and are logged.
    wait_for(
        lambda: log.read_text().count("the handshake failed"),
        lambda n: n > failed_before,
        what="the router to log the impostor shard's failed handshakes",
        timeout_s=WAIT_S,
    )
    assert client.status().shards[1]["endpoint"].endswith(f":{SHARD_PORT}")


# The move steps the source answers (seal; forget, after the commit) and those past its seal.
SOURCE_ANSWERS = frozenset({"sealing", "forgetting"})
PAST_THE_SEAL = frozenset({"staging", "committed", "activating"})


def _doubly_active(stats: dict[int, dict[str, Any]]) -> dict[int, list[int]]:
    """Slots that more than one shard would fire: owned in its table and not sealed there."""
    active: dict[int, list[int]] = {}
    for shard_id, values in stats.items():
        for slot in set(values["owned"]) - set(values["sealed"]):
            active.setdefault(slot, []).append(shard_id)
    return {slot: shards for slot, shards in active.items() if len(shards) > 1}


def test_a_shard_cut_off_from_the_router_while_its_slots_move_loses_them_cleanly(
    three_hosts: Hosts,
) -> None:
    """Scale 3 -> 2 and, once some of shard 2's slots are past their seal, cut shard 2 off
    from the router alone (a blackhole route on each side; its peers and this client
    still reach it) while hoppers flow.

    What the protocol does: a slot leaves its shard only through that shard's seal, so
    nothing is taken from a shard the router cannot hear, and nothing it holds is
    trusted once sealed. Moves still waiting for shard 2's seal stay in ``sealing``
    (its slots stay its own, and it fires them); moves past the seal go on without it
    (the target fetches the shipment from shard 2 over the peer link, the router
    commits the new owner at a new epoch and the target fires the slot) and wait in
    ``forgetting``; no other move starts meanwhile (the stuck ones fill the in-flight
    window). Shard 2 is not fenced by epoch (it is the same incarnation) but by its
    seals: it keeps its older table, in which it still owns the lost slots, and keeps
    them sealed, their tokens out of its engine; each slot has at most one shard that
    fires it, by what every shard reports. Healed, shard 2 gets its orders, adopts the
    newer tables, forgets the lost slots, seals and ships the rest and is retired (the
    table narrowed; it is not sent that last epoch); it then holds and owes nothing, the
    epochs seen never went back and every invariant holds.
    """
    hosts = three_hosts
    client = hosts.client(timeout_ms=2_000, retries=2)
    wait_for(lambda: _alive(client), all, what="three shards alive", timeout_s=WAIT_S)
    shard2 = ShardClient(
        f"tcp://{hosts.net.addresses['shard2']}:{SHARD_PORT}",
        curve=hosts.keys(),
        timeout_ms=2_000,
        retries=2,
    )
    hosts.clients.append(shard2)
    work = Workload(client)
    work.wave()
    work.wave()
    epochs = [client.table(refresh=True).epoch]

    def moves() -> list[dict[str, Any]]:
        epochs.append(client.table(refresh=True).epoch)
        return list(client.router_statistics()["moves_active"])

    client.scale(2)
    wait_for(
        moves,
        lambda ms: any(m["state"] in PAST_THE_SEAL for m in ms),
        what="a move of shard 2's slots past its seal",
        timeout_s=WAIT_S,
        interval_s=0.01,
    )
    hosts.net.partition("shard2", "router")
    for _ in range(3):
        work.wave()
    wait_for(
        lambda: _alive(client),
        lambda a: a == [True, True, False],
        what="the router not hearing shard 2",
        timeout_s=WAIT_S,
    )
    stuck = wait_for(
        moves,
        lambda ms: bool(ms) and all(m["state"] in SOURCE_ANSWERS for m in ms),
        what="the moves to wait for shard 2 alone",
        timeout_s=WAIT_S,
    )
    work.wave()
    table = client.table(refresh=True)
    stats = {**client.statistics([0, 1]), 2: shard2.stats()}
    lost = {m["slot"]: m["target"] for m in stuck if m["state"] == "forgetting"}
    assert lost, f"no slot of shard 2 moved while it was cut off: {stuck}"
    assert all(table.owners[slot] == target for slot, target in lost.items()), lost
    assert all(slot in stats[target]["owned"] for slot, target in lost.items())
    assert not set(lost) & (set(stats[2]["owned"]) - set(stats[2]["sealed"])), (
        "shard 2 would still fire slots it lost"
    )
    assert not (twice := _doubly_active(stats)), f"slots with two active owners: {twice}"
    assert {m["state"] for m in stuck} <= SOURCE_ANSWERS
    # ... and none of their tokens is in its engine, where it could fire them.
    slot_of = slot_of_net(hopping())
    fireable = {
        slot_of(p, tuple(t)) for p in ("hops", "arrived") for _at, t in shard2.all_tokens(p)
    }
    assert not fireable & set(lost), "shard 2 could fire tokens of slots it lost"
    cut_epoch = stats[2]["epoch"]
    assert cut_epoch <= table.epoch

    hosts.net.heal("shard2", "router")
    wait_for(
        lambda: progress(client),
        lambda p: p.finished and p.members == 2,
        what="the scale to 2 to finish",
        timeout_s=WAIT_S,
    )
    final = client.table(refresh=True).epoch
    wait_for(lambda: [s["epoch"] for s in client.statistics().values()],
             lambda seen: seen == [final, final], what="both shards at the router's epoch",
             timeout_s=WAIT_S)  # fmt: skip
    epochs.append(final)
    assert epochs == sorted(epochs), f"epochs went back: {epochs}"
    assert not (problems := work.problems()), problems
    # The returning shard learned the newer table and holds, owes and fires nothing.
    returned = shard2.stats()
    assert returned["epoch"] > cut_epoch
    assert not (returned["owned"] or returned["sealed"] or returned["staged"]), returned
    assert returned["outbox_tokens"] == 0
    assert not (held := {p: shard2.all_tokens(p) for p in PLACES if shard2.all_tokens(p)}), held
    assert not client.router_statistics()["moves_active"]
