"""A warm standby (cluster/standby.py) builds the net before it becomes its child.

Real processes: a ``python -m cluster.cli standby shard`` told which net its child will
load builds it while it waits, and the ``cpn shard`` it becomes serves with that net,
not building it again. In-process: ``prepare_net`` hands its net to the next
``load_net`` with the same arguments, once.
"""

from pathlib import Path

import pytest

from cluster.client import ShardClient
from cluster.layout import net_param_args
from cluster.processes import Standby, start_shard
from nets.errors import LoadError
from nets.loader import load_net, prepare_net
from tests.integration.test_shard import _env

pytestmark = pytest.mark.integration

NET = "tests.nets_for_tests:jobs_counting_builds"
REPLY_TIMEOUT_MS = 10_000


def test_prepared_net_is_taken_once_by_the_same_load(tmp_path: Path) -> None:
    builds = tmp_path / "builds"
    params = {"builds_file": str(builds)}
    prepare_net(NET, params=params)
    assert builds.read_text() == "built\n"
    first = load_net(NET, params=params)
    assert builds.read_text() == "built\n", "the prepared net was taken"
    again = load_net(NET, params=params)
    assert builds.read_text() == "built\nbuilt\n" and again is not first
    other = tmp_path / "other"
    prepare_net(NET, params={"builds_file": str(other)})
    load_net(NET, seed=1, params={"builds_file": str(other)})  # another seed: built anew
    assert other.read_text() == "built\nbuilt\n"
    load_net(NET, params={"builds_file": str(other)})  # the prepared one is still there
    assert other.read_text() == "built\nbuilt\n"


def test_a_net_that_does_not_load_is_not_prepared() -> None:
    with pytest.raises(LoadError, match="no attribute"):
        prepare_net("tests.nets_for_tests:no_such_net")


def test_a_standby_builds_the_net_before_it_becomes_the_shard(tmp_path: Path) -> None:
    builds = tmp_path / "builds"
    params = {"builds_file": str(builds)}
    data_dir = tmp_path / "shard"
    data_dir.mkdir()
    env = _env()
    standby = Standby("shard", data_dir, env, net=(NET, 0, params))
    handle = None
    try:
        handle = start_shard(
            NET,
            data_dir,
            durability="process",
            extra_args=net_param_args(params),
            env=env,
            standby=standby,
        )
        assert handle.pid == standby.process.pid, "the standby became the shard"
        with ShardClient(handle.endpoint, timeout_ms=REPLY_TIMEOUT_MS) as client:
            assert client.put("notes", [("q", "job1", 1)]).accepted == 1
        assert builds.read_text() == "built\n", "built once, in the standby"
    finally:
        if handle is not None:
            handle.terminate()
        standby.close()
