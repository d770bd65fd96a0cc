"""CURVE, allow-lists, cluster ids, data-directory identities and rate limits, on real processes.

Every cluster here is a real ``cpn router --config`` and real ``cpn shard --config
--shard-id N`` processes on loopback (port 0), reading a cluster file with keys made
by ``cpn keys generate``. The fixture stops every process it started by pid and closes
every socket, even when a test fails; every wait is bounded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from cluster.client import ClusterClient, ShardClient, ShardUnavailable
from cluster.processes import ShardProcess, run_cpn, start_router, start_shard, stop_all, wait_for
from cluster.security import read_keypair, read_public
from router.shell.curve import CurveKeys, connect_securely
from router.wire import Error, Ping, decode, encode

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = "tests.nets_for_tests:jobs"
TIMEOUT_S = 30.0


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))}


def cpn(*args: str) -> Any:
    return run_cpn(*args, env=_env(), timeout_s=60)


def make_keys(directory: Path, *names: str) -> None:
    for name in names:
        result = cpn("keys", "generate", str(directory), "--name", name)
        assert result.returncode == 0, result.stderr


def write_config(
    path: Path, *, cluster_id: str = "sec", keys: str = "keys", limits: str = ""
) -> Path:
    path.write_text(
        f"""
[cluster]
id = "{cluster_id}"
net = "{JOBS}"
data_dir = "data"
durability = "process"

[router]

[shards]
count = 2

[[shard]]
id = 0

[[shard]]
id = 1

[security]
server_key = "{keys}/server.key_secret"
client_key = "{keys}/client.key_secret"
allowed_clients = ["{keys}/client.key"]
{limits}
"""
    )
    return path


class Deployment:
    """Processes started from one cluster file, all stopped at the end by pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handles: list[ShardProcess] = []
        self.clients: list[Any] = []

    def router(self, config: Path, data: str = "router") -> ShardProcess:
        handle = start_router(
            JOBS,
            self.root / data,
            shards=2,
            extra_args=("--config", str(config)),
            env=_env(),
        )
        self.handles.append(handle)
        return handle

    def shard(
        self, config: Path, shard_id: int, router: str, *, data: str = "", wait: bool = True
    ) -> ShardProcess:
        extra = ("--config", str(config), "--shard-id", str(shard_id), "--router", router)
        handle = start_shard(
            JOBS,
            self.root / (data or f"shard-{shard_id}"),
            durability="process",
            extra_args=(*extra, "--shards", "2"),
            env=_env(),
            wait=wait,
        )
        self.handles.append(handle)
        return handle

    def keys(self, client: str = "client", keys: str = "keys") -> CurveKeys:
        public, secret = read_keypair(self.root / keys / f"{client}.key_secret")
        return CurveKeys(public, secret, read_public(self.root / keys / "server.key"))

    def track(self, client: Any) -> Any:
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        stop_all(self.handles)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    make_keys(tmp_path / "keys", "server", "client", "stranger")
    found = Deployment(tmp_path)
    try:
        yield found
    finally:
        found.close()


def _cluster(deployment: Deployment, config: Path) -> tuple[ShardProcess, ...]:
    router = deployment.router(config)
    shards = tuple(deployment.shard(config, k, router.endpoint) for k in range(2))
    return (router, *shards)


def _alive(client: ClusterClient) -> list[bool]:
    return [bool(shard["alive"]) for shard in client.status().shards]


def _log(handle: ShardProcess, name: str) -> str:
    return (handle.data_dir / name).read_text()


def test_an_allowed_client_works_and_others_are_refused_before_the_engine(
    deployment: Deployment,
) -> None:
    config = write_config(deployment.root / "cluster.toml")
    router, shard0, shard1 = _cluster(deployment, config)
    allowed = deployment.track(
        ClusterClient(router.endpoint, curve=deployment.keys(), timeout_ms=5_000)
    )
    wait_for(lambda: _alive(allowed), all, what="both shards alive", timeout_s=TIMEOUT_S)
    summary = allowed.put("inbox", [(f"q{i}", f"job-{i}", i) for i in range(20)])
    assert summary.accepted == 20
    before = allowed.statistics()

    # No keys at all: the CURVE handshake never completes; nothing reaches a loop.
    plain = deployment.track(ShardClient(shard0.endpoint, timeout_ms=500, retries=0))
    plain.curve = None
    with pytest.raises(ShardUnavailable):
        plain.ping()
    # Keys the allow-list does not name: the ZAP handler refuses them, and logs it.
    stranger_keys = deployment.keys("stranger")
    stranger = deployment.track(
        ShardClient(shard1.endpoint, timeout_ms=500, retries=0, curve=stranger_keys)
    )
    with pytest.raises(ShardUnavailable):
        stranger.put("inbox", [("q", "intruder", 1)])
    with pytest.raises(ShardUnavailable):
        deployment.track(
            ClusterClient(router.endpoint, curve=stranger_keys, timeout_ms=500, retries=0)
        ).table()

    after = allowed.statistics()
    for shard_id in (0, 1):
        counters_before = before[shard_id]["counters"]
        counters_after = after[shard_id]["counters"]
        assert counters_after.get("requests_Put", 0) == counters_before.get("requests_Put", 0)
        assert counters_after.get("requests_Ping", 0) == counters_before.get("requests_Ping", 0)
    assert sum(after[k]["tokens"]["inbox"] + after[k]["tokens"]["work"] for k in (0, 1)) <= 20
    stranger_text = stranger_keys.public.decode()
    wait_for(
        lambda: stranger_text in _log(shard1, "shard.log"),
        bool,
        what="the shard to log the refused key",
        timeout_s=TIMEOUT_S,
    )
    assert "refused a connection from 127.0.0.1" in _log(router, "router.log")
    assert "refused a connection" in _log(shard0, "shard.log")


def test_a_peer_with_a_wrong_key_or_another_cluster_id_cannot_join(
    deployment: Deployment,
) -> None:
    config = write_config(deployment.root / "cluster.toml")
    make_keys(deployment.root / "other-keys", "server", "client")
    wrong_keys = write_config(deployment.root / "wrong-keys.toml", keys="other-keys")
    other_cluster = write_config(deployment.root / "other.toml", cluster_id="other")
    router = deployment.router(config)
    good = deployment.shard(config, 0, router.endpoint)
    # Shard 1 twice: once with another cluster's keys, once with another cluster id.
    impostor = deployment.shard(wrong_keys, 1, router.endpoint, data="impostor")
    stray = deployment.shard(other_cluster, 1, router.endpoint, data="stray")
    client = deployment.track(
        ClusterClient(router.endpoint, curve=deployment.keys(), timeout_ms=5_000)
    )
    wait_for(lambda: _alive(client), lambda a: a[0], what="shard 0 alive", timeout_s=TIMEOUT_S)
    wait_for(
        lambda: "belongs to cluster 'other'" in _log(router, "router.log"),
        bool,
        what="the router to refuse the other cluster's heartbeat",
        timeout_s=TIMEOUT_S,
    )
    wait_for(
        lambda: "refused a connection" in _log(router, "router.log"),
        bool,
        what="the router to refuse the impostor's key",
        timeout_s=TIMEOUT_S,
    )
    state = client.status()
    assert not state.shards[1]["alive"]
    assert state.shards[1]["endpoint"] == ""
    assert good.alive()
    assert impostor.alive()
    assert stray.alive()


def test_a_data_directory_of_another_shard_or_cluster_is_refused(deployment: Deployment) -> None:
    config = write_config(deployment.root / "cluster.toml")
    router = deployment.router(config)
    shard = deployment.shard(config, 0, router.endpoint)
    stop_all([shard])
    other = write_config(deployment.root / "other.toml", cluster_id="other")
    for path, shard_id, expected in [
        (config, 1, "asks for shard id 1"),
        (other, 0, "asks for cluster id 'other'"),
    ]:
        result = cpn(
            "shard",
            "--config",
            str(path),
            "--shard-id",
            str(shard_id),
            "--data",
            str(deployment.root / "shard-0"),
            "--router",
            router.endpoint,
        )
        assert result.returncode == 2, result
        line = result.stderr.strip()
        assert "\n" not in line
        assert "holds shard 0 of cluster 'sec'" in line, line
        assert expected in line, line


def test_binding_off_loopback_needs_keys(tmp_path: Path) -> None:
    result = cpn(
        "shard",
        "--net",
        JOBS,
        "--data",
        str(tmp_path / "s"),
        "--bind",
        "tcp://0.0.0.0:0",
        "--allow-remote",
    )
    assert result.returncode == 2
    assert "without CURVE keys" in result.stderr, result.stderr
    (tmp_path / "c.toml").write_text(
        f'[cluster]\nid = "x"\nnet = "{JOBS}"\ndata_dir = "d"\n'
        '[router]\nendpoint = "tcp://0.0.0.0:7000"\n[shards]\ncount = 1\n[[shard]]\nid = 0\n'
    )
    result = cpn("router", "--config", str(tmp_path / "c.toml"))
    assert result.returncode == 2
    assert "router listens off loopback (tcp://0.0.0.0:7000" in result.stderr, result.stderr


def test_a_flooding_client_is_rate_limited_and_others_still_served(
    deployment: Deployment,
) -> None:
    limits = "[limits]\nrequests_per_s_per_peer = 50\nrequest_burst_per_peer = 10\n"
    config = write_config(deployment.root / "cluster.toml", limits=limits)
    router = deployment.router(config)
    shard = deployment.shard(config, 0, router.endpoint)
    context = zmq.Context()
    flood = context.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    try:
        connect_securely(flood, deployment.keys())
        flood.connect(shard.endpoint)
        for i in range(200):
            flood.send(encode(Ping(), message_id=i + 1))
        codes: list[str] = []
        poller = zmq.Poller()
        poller.register(flood, zmq.POLLIN)
        while len(codes) < 200 and poller.poll(5_000):
            message = decode(flood.recv()).message
            codes.append(message.code if isinstance(message, Error) else "ok")
        assert len(codes) == 200
        assert codes.count("rate_limited") >= 150, codes
        assert codes.count("ok") >= 10
        other = deployment.track(
            ShardClient(shard.endpoint, curve=deployment.keys(), timeout_ms=5_000)
        )
        assert other.ping() > 0  # its own bucket is full
        assert other.stats()["counters"]["requests_rate_limited"] >= 150
    finally:
        flood.close(linger=0)
        context.term()


def test_health_answers_0_for_a_serving_process_and_1_otherwise(deployment: Deployment) -> None:
    config = write_config(deployment.root / "cluster.toml")
    router = deployment.router(config, data="data/router")
    deployment.shard(config, 0, router.endpoint, data="data/shard-0")
    ok = cpn("health", "--config", str(config), "--router")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("healthy: router of cluster 'sec'"), ok.stdout
    ok = cpn("health", "--config", str(config), "--shard-id", "0")
    assert ok.returncode == 0, ok.stderr
    down = cpn("health", "--config", str(config), "--shard-id", "1", "--timeout-ms", "300")
    assert down.returncode == 1
    assert down.stderr.startswith("cpn: unhealthy: shard 1 at tcp://127.0.0.1:0"), down.stderr
    usage = cpn("health", "--config", str(config))
    assert usage.returncode == 2


def test_cpn_up_with_a_cluster_file_runs_a_keyed_cluster(tmp_path: Path) -> None:
    make_keys(tmp_path / "keys", "server", "client")
    config = write_config(tmp_path / "cluster.toml")
    data = str(tmp_path / "data")
    started = cpn("up", "--config", str(config), "--timeout", "60s")
    try:
        assert started.returncode == 0, started.stderr
        assert "2 shards" in started.stdout, started.stdout
        for args in (("--router",), ("--shard-id", "0"), ("--shard-id", "1")):
            health = cpn("health", "--config", str(config), *args)
            assert health.returncode == 0, health.stderr
        status = cpn("status", "--config", str(config), "--sample", "0")
        assert status.returncode == 0, status.stderr
        assert "2 alive" in status.stdout, status.stdout
        # The same command without the keys is refused by the router.
        refused = cpn("status", "--data", data, "--sample", "0")
        assert refused.returncode == 2
        assert "did not answer" in refused.stderr, refused.stderr
        identity = (tmp_path / "data" / "shard-1" / "identity.json").read_text()
        assert '"cluster_id": "sec"' in identity
    finally:
        stopped = cpn("down", "--data", data)
        assert stopped.returncode == 0 or "not running" in stopped.stderr, stopped.stderr
