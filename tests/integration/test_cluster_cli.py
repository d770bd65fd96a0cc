"""`cpn up / status / put / marking / logs / down` as a user runs them, on real clusters.

Each cluster is a real supervisor (``cpn up``, detached) with a real router and real
shards on loopback port 0, under ``tmp_path``. The fixtures record every pid the
cluster publishes (the supervisor's pid file, each child's endpoint file), stop the
cluster with ``cpn down`` and then SIGKILL, by pid, whatever of it still runs, even
when a test fails. Every wait is bounded and polls a condition.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli
from cluster.client import ClusterClient, Redirected
from cluster.layout import ClusterLayout, live_endpoint
from cluster.pids import pid_running, process_args
from cluster.processes import run_cpn, wait_for
from nets.errors import CpnError
from router.shell.datadir import read_endpoint
from router.slots import slot_of_key
from router.wire import Put, PutAck

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = "tests.nets_for_tests:jobs"
CLI_TIMEOUT_S = 90.0
WAIT_TIMEOUT_S = 30.0
REPLY_TIMEOUT_MS = 10_000


def _env() -> dict[str, str]:
    """PYTHONPATH for a `cpn` subprocess that imports ``tests.nets_for_tests``."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))}


def cpn(*args: str) -> subprocess.CompletedProcess[str]:
    """Run one `cpn` command to completion."""
    return run_cpn(*args, env=_env(), timeout_s=CLI_TIMEOUT_S)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("cpn: error: "), lines[0]
    return lines[0]


def error_in_process(*args: str) -> str:
    """The error of a `cpn` command that fails before it talks to or starts a process.

    Run in this process (no interpreter start-up); the one-line-and-exit-2 path itself
    is covered by the tests that run `cpn` as a subprocess.
    """
    result = CliRunner().invoke(cli, list(args))
    assert isinstance(result.exception, CpnError), (result.exception, result.output)
    return str(result.exception)


class Cluster:
    """One cluster's data directory and every pid it ever published."""

    def __init__(self, data_dir: Path, shards: int) -> None:
        self.layout = ClusterLayout(data_dir)
        self.data = str(data_dir)
        self.shards = shards
        self.pids: set[int] = set()
        self.up_output = ""

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        result = cpn("up", "--net", JOBS, "--shards", str(self.shards), "--data", self.data, *extra)
        self.record_pids()
        return result

    def record_pids(self) -> None:
        with_pid_file = self.layout.supervisor_pid_file
        if with_pid_file.exists():
            self.pids.add(int(with_pid_file.read_text()))
        for data_dir in self.child_dirs():
            published = read_endpoint(data_dir)
            if published is not None:
                self.pids.add(published[1])

    def child_dirs(self) -> list[Path]:
        return [self.layout.router_dir, *map(self.layout.shard_dir, range(self.shards))]

    def child_pid(self, data_dir: Path) -> int:
        published = live_endpoint(data_dir)
        assert published is not None, f"nothing runs in {data_dir}"
        return published[1]

    def client(self) -> ClusterClient:
        return ClusterClient.for_data_dir(self.layout.root, timeout_ms=REPLY_TIMEOUT_MS, retries=1)

    def running(self) -> list[int]:
        return sorted(pid for pid in self.pids if pid_running(pid))

    def close(self) -> None:
        """`cpn down`, then SIGKILL by pid whatever of this cluster still runs."""
        self.record_pids()
        try:
            if self.running():
                cpn("down", "--data", self.data)
        finally:
            for pid in self.running():
                if self.data in " ".join(process_args(pid)):  # still ours, not a reused pid
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 2-shard cluster shared by this module's read-mostly tests."""
    running = Cluster(tmp_path_factory.mktemp("cluster"), shards=2)
    try:
        result = running.up("--durability", "process")
        assert result.returncode == 0, result.stderr
        running.up_output = result.stdout
        yield running
    finally:
        running.close()


@pytest.fixture
def new_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of two shards (not started) that the test may start and stop."""
    fresh = Cluster(tmp_path / "cluster", shards=2)
    try:
        yield fresh
    finally:
        fresh.close()


def _status_rows(stdout: str) -> dict[int, list[str]]:
    """The shard table of `cpn status`: shard id -> its columns."""
    return {
        int(line.split()[0]): line.split()
        for line in stdout.splitlines()
        if re.match(r"\d+ ", line)
    }


# -- up, status, put, marking, logs -------------------------------------------------------


def test_up_prints_the_endpoints_and_status_shows_two_alive_shards(cluster: Cluster) -> None:
    lines = cluster.up_output.strip().splitlines()
    assert f"cluster of net 'test_jobs' is up in {cluster.data}: 2 shards" in lines[0]
    endpoints = {}
    for line in lines[1:]:
        name, endpoint, _pid_word, pid = line.rsplit(maxsplit=3)
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", endpoint), line
        endpoints[name.strip()] = (endpoint, int(pid))
    assert set(endpoints) == {"router", "shard 0", "shard 1"}
    assert endpoints["router"] == read_endpoint(cluster.layout.router_dir)
    assert endpoints["shard 1"] == read_endpoint(cluster.layout.shard_dir(1))
    assert json.loads(cluster.layout.cluster_file.read_text()) == {
        "net": JOBS,
        "shards": 2,
        "seed": 0,
        "durability": "process",
        "params": {},
    }

    result = cpn("status", "--data", cluster.data, "--sample", "100ms")
    assert result.returncode == 0, result.stderr
    assert "2 shards, 2 alive" in result.stdout
    rows = _status_rows(result.stdout)
    assert sorted(rows) == [0, 1]
    for shard_id, row in rows.items():
        endpoint, pid = endpoints[f"shard {shard_id}"]
        assert row[1:6] == [endpoint, str(pid), "yes", "512", "1"], row
    assert "tokens per place:" in result.stdout
    assert "outbox tokens" in result.stdout


def test_put_then_marking_shows_the_tokens(cluster: Cluster) -> None:
    tokens = [["ra", "r1", 1], ["rb", "r2", 2], ["rc", "r3", 3]]
    result = cpn(
        "put",
        "--data",
        cluster.data,
        "results",
        *(json.dumps(t) for t in tokens),
        json.dumps({"queue": "rd", "job_id": "r4", "value": 4}),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("put 4 tokens into 'results' (shard "), result.stdout

    counts = cpn("marking", "--data", cluster.data)
    assert counts.returncode == 0, counts.stderr
    # The place, its tokens, and none in flight between shards.
    assert re.search(r"^\s+results\s+4\s+0$", counts.stdout, re.M), counts.stdout

    listed = cpn("marking", "--data", cluster.data, "results")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("place 'results': 4 tokens (showing 4)")
    shown = [json.loads(line.split(maxsplit=3)[3]) for line in listed.stdout.splitlines()[1:]]
    assert sorted(shown) == [*tokens, ["rd", "r4", 4]]

    limited = cpn("marking", "--data", cluster.data, "results", "--limit", "2")
    assert limited.stdout.startswith("place 'results': 4 tokens (showing 2)")


def test_tokens_land_on_their_owners_also_through_a_stale_table(cluster: Cluster) -> None:
    with cluster.client() as client:
        table = client.table()
        tokens = [(f"own{n}", f"j{n}", n) for n in range(40)]
        summary = client.put("notes", tokens[:20])
        assert summary.accepted == 20 and summary.redirects == 0
        assert sum(summary.by_shard.values()) == 20 and len(summary.by_shard) == 2

        # A client whose cached table has every slot's owner wrong is redirected by the
        # shards, refreshes the table and still puts every token on its owner.
        wrong = tuple((owner + 1) % 2 for owner in table.owners)
        client._table = dataclasses.replace(table, owners=wrong)
        summary = client.put("notes", tokens[20:])
        assert summary.accepted == 20
        assert summary.redirects >= 1
        assert client.table().owners == table.owners, "the client refreshed its table"

        mine = [entry for entry in client.tokens("notes") if entry[2][0].startswith("own")]
    assert sorted(fields for _shard, _time, fields in mine) == sorted(tokens)
    for shard_id, _time, fields in mine:
        assert table.owners[slot_of_key(fields[0])] == shard_id, fields


def test_a_shard_redirects_a_put_of_a_slot_it_does_not_own(cluster: Cluster) -> None:
    with cluster.client() as client:
        table = client.table()
        foreign = next(f"key{n}" for n in range(1_000) if table.owners[slot_of_key(f"key{n}")])
        home = next(f"key{n}" for n in range(1_000) if not table.owners[slot_of_key(f"key{n}")])
        shard0 = client.shard(0)
        request = Put("direct", 7, "notes", ((foreign, "x", 1),), 0)
        with pytest.raises(Redirected) as redirected:
            shard0.request(request, PutAck)
        assert (redirected.value.slot, redirected.value.owner) == (slot_of_key(foreign), 1)
        assert redirected.value.epoch == table.epoch
        # The redirect was not remembered as request 7's reply: the same sequence number
        # with a token shard 0 owns is applied.
        ack = shard0.request(dataclasses.replace(request, tokens=((home, "x", 1),)), PutAck)
        assert ack == PutAck(7, 1, False)
        keys = {fields[0] for _s, _t, fields in client.tokens("notes")}
    assert home in keys and foreign not in keys


def test_logs_show_every_process(cluster: Cluster) -> None:
    result = cpn("logs", "--data", cluster.data, "--lines", "3")
    assert result.returncode == 0, result.stderr
    headers = re.findall(r"^==> (.*) <==", result.stdout, re.M)
    assert headers[:4] == [
        str(cluster.layout.supervisor_log),
        str(cluster.layout.router_dir / "router.log"),
        str(cluster.layout.shard_dir(0) / "shard.log"),
        str(cluster.layout.shard_dir(1) / "shard.log"),
    ]
    sections = re.split(r"^==> .* <==\n", result.stdout, flags=re.M)[1:]
    assert all(0 < len(section.splitlines()) <= 3 for section in sections[:4]), result.stdout


def test_a_bad_put_exits_2_with_one_line_and_puts_nothing(cluster: Cluster) -> None:
    refused = {
        ("nowhere", '["q", "j", 1]'): "has no place 'nowhere'",
        ("notes", '["q", "j", "not an int"]'): "wrong_colour",
    }
    for args, message in refused.items():
        assert message in one_error_line(cpn("put", "--data", cluster.data, *args)), args
    malformed = {
        ("notes", '["q", "j"'): "is not JSON",
        ("notes", '"q"'): "must be a JSON array of field values or an object",
        ("notes", '{"queue": "q", "job": "j"}'): "unknown: job; missing: job_id, payload",
    }
    for args, message in malformed.items():
        assert message in error_in_process("put", "--data", cluster.data, *args), args
    with cluster.client() as client:
        assert not [e for e in client.tokens("notes") if e[2][0] == "q"]


def test_up_again_is_refused_while_it_runs_or_with_another_shape(cluster: Cluster) -> None:
    again = one_error_line(cluster.up())
    assert "already running" in again and "cpn down" in again, again
    line = error_in_process("up", "--net", JOBS, "--shards", "3", "--data", cluster.data)
    assert "2 shards, not 3" in line and "--shards 2" in line, line
    line = error_in_process("up", "--net", "tests.nets_for_tests:circulation", "--shards", "2",
                            "--data", cluster.data)  # fmt: skip
    assert f"net {JOBS!r}" in line and "--net" in line, line
    assert "2 alive" in cpn("status", "--data", cluster.data, "--sample", "0").stdout


# -- errors without a cluster, and stopping -----------------------------------------------


def test_a_command_on_a_dir_without_a_cluster_exits_2(tmp_path: Path) -> None:
    line = one_error_line(cpn("status", "--data", str(tmp_path)))
    assert f"no cluster in {tmp_path}" in line and "cpn up" in line, line
    for command in [("marking",), ("put", "notes", "[1]"), ("logs",), ("down",)]:
        line = error_in_process(command[0], "--data", str(tmp_path), *command[1:])
        assert str(tmp_path) in line and ("no cluster" in line or "not running" in line), line


def test_up_with_a_net_that_does_not_load_starts_nothing(new_cluster: Cluster) -> None:
    result = cpn("up", "--net", "tests.nets_for_tests:no_such_net", "--shards", "2",
                 "--data", new_cluster.data)  # fmt: skip
    assert "has no attribute 'no_such_net'" in one_error_line(result)
    assert not new_cluster.layout.cluster_file.exists(), "nothing is recorded"
    assert not new_cluster.layout.supervisor_pid_file.exists()


def test_up_on_a_port_in_use_exits_2_and_leaves_nothing_running(
    cluster: Cluster, new_cluster: Cluster
) -> None:
    taken = read_endpoint(cluster.layout.router_dir)
    assert taken is not None
    line = one_error_line(new_cluster.up("--bind", taken[0]))
    assert "cannot bind" in line and "in use" in line, line
    assert new_cluster.running() == [], "the supervisor and its router are gone"


def test_down_stops_every_process(new_cluster: Cluster) -> None:
    result = new_cluster.up()
    assert result.returncode == 0, result.stderr
    supervisor = int(new_cluster.layout.supervisor_pid_file.read_text())
    children = [new_cluster.child_pid(d) for d in new_cluster.child_dirs()]
    assert all(pid_running(pid) for pid in [supervisor, *children])

    stopped = cpn("down", "--data", new_cluster.data)
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {supervisor}" in stopped.stdout
    assert new_cluster.running() == [], "no process of the cluster runs after `cpn down`"
    assert not new_cluster.layout.supervisor_pid_file.exists()
    assert "not running" in one_error_line(cpn("down", "--data", new_cluster.data))
    line = one_error_line(cpn("status", "--data", new_cluster.data))
    assert "not running" in line and f"--net {JOBS} --shards 2" in line, line


# -- restarts -----------------------------------------------------------------------------


@pytest.mark.serial
def test_the_supervisor_restarts_a_killed_shard_and_router_on_their_ports(
    tmp_path: Path,
) -> None:
    restarted = Cluster(tmp_path / "cluster", shards=2)
    try:
        assert restarted.up("--durability", "process").returncode == 0
        with restarted.client() as client:
            client.put("notes", [(f"k{n}", "j", n) for n in range(10)])
        for data_dir in (restarted.layout.shard_dir(0), restarted.layout.router_dir):
            before = read_endpoint(data_dir)
            assert before is not None
            os.kill(before[1], signal.SIGKILL)
            after = wait_for(
                lambda d=data_dir: live_endpoint(d),
                lambda published, b=before: published is not None and published[1] != b[1],
                what=f"a new process in {data_dir}",
                timeout_s=WAIT_TIMEOUT_S,
            )
            restarted.record_pids()
            assert after is not None and after[0] == before[0], "restarted on the same port"
            with restarted.client() as client:
                state = wait_for(
                    client.status,
                    lambda s: all(shard["alive"] for shard in s.shards),
                    what="every shard alive again",
                    timeout_s=WAIT_TIMEOUT_S,
                )
                assert len(state.shards) == 2
                assert client.counts()["notes"] == 10, "the marking survived"
    finally:
        restarted.close()
    assert restarted.running() == []
