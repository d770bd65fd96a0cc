"""The cluster file (cluster/config.py): what parses, and the one-line errors for what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import (
    ConfigError,
    DataIdentity,
    identity_mismatch,
    parse_config,
)
from router.limits import PeerRateLimits

SOURCE = Path("/etc/cpn/cluster.toml")

GOOD = """
[cluster]
id = "prod-1"
net = "nets.scraper:net"
seed = 7
durability = "process"
data_dir = "/var/lib/cpn"

[router]
host = "r.example"
endpoint = "tcp://10.0.0.1:7000"
bind = "tcp://0.0.0.0:7000"

[shards]
count = 2

[[shard]]
id = 1
host = "s1.example"
endpoint = "tcp://10.0.0.3:7001"

[[shard]]
id = 0
host = "s0.example"
endpoint = "tcp://10.0.0.2:7001"
data_dir = "/srv/cpn/shard-0"

[[workers]]
role = "fetch"
count = 4

[security]
server_key = "keys/server.key_secret"
allowed_clients = ["keys/clients"]

[limits]
requests_per_s_per_peer = 100
request_burst_per_peer = 20
"""


def test_a_full_file_parses_with_paths_relative_to_it() -> None:
    config = parse_config(GOOD, source=SOURCE)
    assert (config.cluster_id, config.net, config.seed, config.durability) == (
        "prod-1",
        "nets.scraper:net",
        7,
        "process",
    )
    assert config.router.bind == "tcp://0.0.0.0:7000"
    assert config.router.endpoint == "tcp://10.0.0.1:7000"
    assert config.router.data_dir == Path("/var/lib/cpn/router")
    assert [s.shard_id for s in config.shards] == [0, 1]  # by id, not file order
    assert config.shard(0).data_dir == Path("/srv/cpn/shard-0")
    assert config.shard(1).data_dir == Path("/var/lib/cpn/shard-1")
    assert config.shard(1).bind == config.shard(1).endpoint
    assert config.security is not None
    assert config.security.server_key == Path("/etc/cpn/keys/server.key_secret")
    assert config.security.allowed == (Path("/etc/cpn/keys/clients"),)
    assert (config.limits.requests_per_s, config.limits.burst) == (100, 20)
    assert config.workers[0].role == "fetch"
    assert config.workers[0].count == 4


def _without_security(text: str) -> str:
    return text.split("[security]", maxsplit=1)[0] + "[limits]" + text.split("[limits]")[1]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace('id = "prod-1"', ""), "cluster.id: missing"),
        (lambda t: t.replace('"prod-1"', '"no spaces"'), "cluster.id: 'no spaces' must be"),
        (lambda t: t.replace('"nets.scraper:net"', '"nets.scraper"'), "cluster.net:"),
        (lambda t: t.replace('"process"', '"sometimes"'), "cluster.durability: 'sometimes'"),
        (lambda t: t.replace("count = 2", "count = 3"), "shard: describes 2 shards"),
        (lambda t: t.replace("id = 1", "id = 0"), "shard[1].id: shard 0 is described twice"),
        (lambda t: t.replace("id = 1", "id = 5"), "shard[0].id: 5 is not in 0..1"),
        (lambda t: t.replace("tcp://10.0.0.3:7001", "10.0.0.3:7001"), "shard[0].endpoint:"),
        (lambda t: t.replace("seed = 7", "seed = 'x'"), "cluster.seed: must be an integer"),
        (lambda t: t.replace("[limits]", "[limit]"), "limit: unknown key"),
        (lambda t: t.replace('host = "s1.example"', 'hots = "x"'), "shard[0].hots: unknown key"),
        (_without_security, "router listens off loopback"),
        (lambda t: t + "\nkey = = 1\n", "is not TOML"),
        (
            lambda t: t.replace("tcp://10.0.0.3:7001", "tcp://10.0.0.3:0"),
            "shard 1 runs on host 's1.example': it needs a fixed port",
        ),
        (
            lambda t: t.replace("s1.example", "s0.example").replace(
                "tcp://10.0.0.3:7001", "tcp://10.0.0.2:7001"
            ),
            "shard 1 and shard 0 both use tcp://10.0.0.2:7001 on host 's0.example'",
        ),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_key(edit, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(edit(GOOD), source=SOURCE)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(SOURCE)), message
    assert expected in message, message


def test_loopback_needs_no_keys_and_port_0_is_fine_on_one_host() -> None:
    text = """
[cluster]
id = "dev"
net = "nets.scraper:net"
data_dir = "data"
[router]
[shards]
count = 1
[[shard]]
id = 0
"""
    config = parse_config(text, source=Path("/tmp/x/c.toml"))
    assert config.security is None
    assert config.router.endpoint == "tcp://127.0.0.1:0"
    assert config.data_dir == Path("/tmp/x/data")
    with pytest.raises(ConfigError, match=r"--shard-id 3 is not one of 0\.\.0"):
        config.shard(3)


def test_a_data_directory_of_another_cluster_net_or_shard_is_named() -> None:
    had = DataIdentity("prod-1", "nets.scraper:net", "shard", 1, 2)
    assert identity_mismatch(had, had, data_dir=Path("/d")) is None
    for other, word in [
        (DataIdentity("prod-2", "nets.scraper:net", "shard", 1, 2), "cluster id 'prod-2'"),
        (DataIdentity("prod-1", "nets.other:net", "shard", 1, 2), "net 'nets.other:net'"),
        (DataIdentity("prod-1", "nets.scraper:net", "shard", 0, 2), "shard id 0"),
        (DataIdentity("prod-1", "nets.scraper:net", "router", -1, 2), "role 'router'"),
    ]:
        problem = identity_mismatch(had, other, data_dir=Path("/d"))
        assert problem is not None
        assert word in problem, problem
        assert "shard 1 of cluster 'prod-1'" in problem, problem


def test_rate_limits_refill_per_peer_and_bound_their_memory() -> None:
    limits = PeerRateLimits(per_s=10, burst=3, peers_max=2)
    assert [limits.allow(b"a", 0) for _ in range(4)] == [True, True, True, False]
    assert limits.allow(b"b", 0)  # another peer has its own bucket
    assert not limits.allow(b"a", 50)  # half a request refilled
    assert limits.allow(b"a", 100)  # one request per 100 ms
    assert limits.refused == 2
    limits.allow(b"c", 100)  # a third peer evicts the least recent one (b)
    assert len(limits._buckets) == 2
