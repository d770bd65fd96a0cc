"""The worker SDK's runner completes the tokens of a lease whose calls return together in
one request, and each token on its own otherwise (cluster/sdk/runner.py, "Token by
token"). The shard is a fake lane that records requests: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest

from cluster.client import ClusterClient, ShardError
from cluster.sdk import to, worker
from cluster.sdk.runner import Runner, RunOptions, Target
from cluster.sdk.spec import WorkerSpec
from nets.model import Net, Place
from router.wire import Leased


class Job(NamedTuple):
    customer: str
    job_id: str


def _net() -> Net:
    queue = Place("queue", Job, key="customer", work_queue=True, results=("done",))
    return Net("joined", places=[queue, Place("done", Job, key="customer")], transitions=[])


class FakeLane:
    """Records completions; refuses any joint one when ``refuse_joint`` is set, and any
    result for the job named in ``refused``."""

    shard_id = 0

    def __init__(self, *, refuse_joint: bool = False, refused: str = "") -> None:
        self.completions: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
        self.refuse_joint = refuse_joint
        self.refused = refused

    async def complete(
        self, lease_id: str, results: Sequence[tuple[str, Any]], indexes: tuple[int, ...] = ()
    ) -> None:
        del lease_id
        await asyncio.sleep(0)  # a request takes at least a turn of the loop
        if (self.refuse_joint and len(indexes) > 1) or any(
            token[1] == self.refused for _place, token in results
        ):
            raise ShardError("wrong_colour", "refused by the fake lane")
        self.completions.append((indexes, tuple(token[1] for _place, token in results)))

    async def renew(self, lease_id: str, lease_ms: int, progress: str) -> int:
        raise AssertionError("no heartbeat is due in these tests")

    async def release(self, lease_id: str, indexes: tuple[int, ...] = ()) -> None:
        raise AssertionError("nothing is handed back in these tests")


def _lease_work(spec: WorkerSpec, lane: FakeLane, jobs: int) -> Runner:
    target = Target(lambda: ClusterClient("tcp://127.0.0.1:1"), 1, _net())
    runner = Runner(spec, target, RunOptions(), asyncio.Event())
    leased = Leased(1, "lease-1", 2**62, tuple((0, ("acme", f"j{n}")) for n in range(jobs)))

    async def work() -> None:
        slots = asyncio.Semaphore(1)
        await slots.acquire()
        await runner._lease_work(lane, leased, slots)  # type: ignore[arg-type]

    asyncio.run(work())
    return runner


def test_calls_that_return_together_complete_in_one_request() -> None:
    @worker(place="queue", batch=4)
    async def quick(job: Job) -> Any:
        return to("done", job)

    lane = FakeLane()
    runner = _lease_work(quick, lane, 4)
    assert lane.completions == [((0, 1, 2, 3), ("j0", "j1", "j2", "j3"))]
    assert runner.counters["completed"] == 4


def test_a_slow_call_does_not_hold_the_others_back() -> None:
    @worker(place="queue", batch=3)
    async def one_slow(job: Job) -> Any:
        if job.job_id == "j1":
            for _ in range(5):
                await asyncio.sleep(0)
        return to("done", job)

    lane = FakeLane()
    _lease_work(one_slow, lane, 3)
    assert lane.completions == [((0, 2), ("j0", "j2")), ((1,), ("j1",))]


def test_a_refused_joint_completion_is_retried_token_by_token() -> None:
    @worker(place="queue", batch=3)
    async def quick(job: Job) -> Any:
        return to("done", job)

    lane = FakeLane(refuse_joint=True, refused="j1")
    runner = _lease_work(quick, lane, 3)
    # j1's result is refused on its own too: only its token stays leased (and expires).
    assert sorted(lane.completions) == [((0,), ("j0",)), ((2,), ("j2",))]
    assert runner.counters["completed"] == 2
    assert runner.counters["work_errors"] == 1


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_lease_of_one_token_completes_without_indexes(jobs: int) -> None:
    @worker(place="queue", batch=2)
    async def quick(job: Job) -> Any:
        return to("done", job)

    lane = FakeLane()
    _lease_work(quick, lane, jobs)
    assert lane.completions == [((0, 1) if jobs == 2 else (), tuple(f"j{n}" for n in range(jobs)))]


def test_on_completed_sees_the_results_the_shard_took_and_only_those() -> None:
    taken: list[tuple[str, ...]] = []

    async def quick(job: Job) -> Any:
        return to("done", job)

    spec = WorkerSpec(
        quick, "queue", batch=3,
        on_completed=lambda results: taken.append(tuple(t[1] for _p, t in results)),
    )  # fmt: skip
    lane = FakeLane(refuse_joint=True, refused="j1")
    _lease_work(spec, lane, 3)
    # The joint completion and j1's own were refused: never reported as taken.
    assert sorted(taken) == [("j0",), ("j2",)]
