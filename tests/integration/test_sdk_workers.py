"""The worker SDK on a real cluster: `cpn worker run` processes against real shards.

A user's net and workers (tests/sdk_app/) run as a user runs them, with the pytest
plugin's fixtures (cluster/pytest_plugin.py): every job done once, failures retried
with the same idempotency key, heartbeats keeping a slow call's lease, a SIGTERM that
hands back what did not finish, and one-line errors for a bad worker path.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli
from nets.errors import CpnError
from tests.sdk_app.net import Job

pytestmark = pytest.mark.integration

NET = "tests.sdk_app.net:net"
WAIT_S = 60.0


def _calls(path: Path) -> list[tuple[int, int, str, int]]:
    """The workers' call log: (job id, attempt, idempotency key, pid) per call."""
    if not path.exists():
        return []
    return [
        (int(job), int(attempt), key, int(pid))
        for job, attempt, key, pid in (line.split() for line in path.read_text().splitlines())
    ]


def test_every_job_is_done_once_and_failures_come_back_with_the_same_key(
    cpn_cluster, cpn_workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setenv("SDK_CALLS", str(calls))
    cluster = cpn_cluster(NET, shards=2)
    cpn_workers(cluster, "tests.sdk_app.workers:double", count=2)
    jobs = [Job(f"g{n % 20}", n, 0) for n in range(200)]
    cluster.put("queue", *jobs)
    cluster.wait_until(lambda: cluster.counts().get("done", 0) == 200, timeout_s=WAIT_S)
    done = cluster.tokens("done")
    assert sorted(t.job_id for t in done) == list(range(200))  # each once
    assert {t.job_id for t in done if t.attempt == 1} == set(range(0, 200, 5))
    assert cluster.counts().get("dead", 0) == 0
    keys: dict[int, set[str]] = {}
    for job_id, _attempt, key, _pid in _calls(calls):
        keys.setdefault(job_id, set()).add(key)
    assert all(len(found) == 1 for found in keys.values()), "a retry changed its key"
    assert len({next(iter(found)) for found in keys.values()}) == 200


def test_heartbeats_keep_a_call_longer_than_its_lease_leased(
    cpn_cluster, cpn_workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setenv("SDK_CALLS", str(calls))
    cluster = cpn_cluster(NET, shards=2)
    cpn_workers(cluster, "tests.sdk_app.workers:slow")
    cluster.put("queue", *(Job("g", n, 0) for n in range(6)))
    cluster.wait_until(lambda: cluster.counts().get("done", 0) == 6, timeout_s=WAIT_S)
    assert len(_calls(calls)) == 6  # no lease expired, so no call ran twice
    stats = cluster.client.statistics()
    counters: Counter[str] = Counter()
    for values in stats.values():
        counters.update(values["counters"])
    assert counters["leases_renewed"] > 0
    assert counters["leased_tokens_expired"] == 0


def test_sigterm_hands_back_the_tokens_of_calls_that_did_not_finish(
    cpn_cluster, cpn_workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDK_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("SDK_GATE", str(tmp_path / "gate"))  # never opened
    cluster = cpn_cluster(NET, shards=2)
    workers = cpn_workers(cluster, "tests.sdk_app.workers:gated", args=("--drain", "200ms"))
    cluster.put("queue", *(Job(f"g{n}", n, 0) for n in range(6)))
    cluster.wait_until(lambda: cluster.counts().get("queue__held", 0) == 6, timeout_s=WAIT_S)
    workers.stop()  # SIGTERM; the calls never finish, so the drain hands them back
    assert workers.processes[0].process.returncode == 0, workers.output()
    assert "'released': 6" in workers.output()
    # Handed back at once, not after the 60 s lease: the queue has them all again.
    cluster.wait_until(
        lambda: (
            cluster.counts().get("queue", 0) == 6 and cluster.counts().get("queue__held", 0) == 0
        ),
        timeout_s=10.0,
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nowhere", "must look like MODULE:FUNCTION"),
        ("tests.sdk_app.nope:f", "cannot import 'tests.sdk_app.nope'"),
        ("tests.sdk_app.workers:missing", "has no 'missing'"),
        ("tests.sdk_app.workers:not_a_worker", "is a function, not a worker"),
    ],
)
def test_a_bad_worker_path_is_one_clear_error(path: str, message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["worker", "run", path, "--data", str(tmp_path)])
    assert isinstance(result.exception, CpnError), result.output
    assert message in str(result.exception)
