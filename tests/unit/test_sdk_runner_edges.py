"""The SDK runner's edges, found in review: a drain that meets a completion in flight,
a completion retried past the lease's first expiry, and a joint completion split after a
refusal (cluster/sdk/runner.py), each on a fake lane driven by the real runner."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cluster.client import ClusterClient, ShardError, ShardUnavailable
from cluster.sdk import worker
from cluster.sdk.runner import Runner, RunOptions, Target, wall_ms
from cluster.sdk.spec import WorkerSpec
from router.wire import Leased
from tests.unit.test_sdk_joined_completions import Job, _net

FOREVER_S = 3600


class Lane:
    """A shard lane that records what it was asked, as a shard would apply it."""

    shard_id = 0

    def __init__(self, *, unavailable: int = 0) -> None:
        self.completed: list[tuple[int, ...]] = []
        self.released: list[tuple[int, ...]] = []
        self.unavailable = unavailable  # this many completions get no reply

    async def complete(
        self, lease_id: str, results: Sequence[Any], indexes: tuple[int, ...] = ()
    ) -> None:
        if self.unavailable:
            self.unavailable -= 1
            raise ShardUnavailable("shard 0 did not answer")
        self.completed.append(indexes)

    async def renew(self, lease_id: str, lease_ms: int, progress: str) -> int:
        return wall_ms() + lease_ms

    async def release(self, lease_id: str, indexes: tuple[int, ...] = ()) -> None:
        if any(i in {j for done in self.completed for j in done} for i in indexes):
            raise ShardError("unknown_index", f"lease {lease_id} no longer holds {indexes}")
        self.released.append(indexes)


def _runner(spec: WorkerSpec, *, lease_ms: int = 30_000) -> Runner:
    target = Target(lambda: ClusterClient("tcp://127.0.0.1:1"), 1, _net())
    return Runner(spec, target, RunOptions(lease_ms=lease_ms), asyncio.Event())


def _leased(count: int, expires_at_ms: int) -> Leased:
    return Leased(1, "L", expires_at_ms, tuple((0, ("acme", f"j{n}")) for n in range(count)))


async def _work(runner: Runner, lane: Lane, leased: Leased, *, cancel_when: Any = None) -> bool:
    """Run one lease's work; cancel it (a drain) once ``cancel_when()`` holds; whether
    its slot came back."""
    slots = asyncio.Semaphore(1)
    await slots.acquire()
    task = asyncio.create_task(runner._lease_work(lane, leased, slots))  # type: ignore[arg-type]
    if cancel_when is not None:
        async with asyncio.timeout(10):
            while not cancel_when():
                await asyncio.sleep(0.001)
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return not slots.locked()


def test_a_drain_hands_back_one_by_one_when_a_completion_landed_meanwhile() -> None:
    """Token 0 completed while the drain began: the joint hand-back is refused
    (unknown_index), so tokens 1 and 2 go back one by one rather than wait for expiry."""

    @worker(place="queue", batch=3)
    async def work(job: Job) -> None:
        if job.job_id != "j0":
            await asyncio.sleep(FOREVER_S)

    class Racing(Lane):
        async def complete(
            self, lease_id: str, results: Sequence[Any], indexes: tuple[int, ...] = ()
        ) -> None:
            self.completed.append(indexes)  # applied by the shard; the reply never comes
            await asyncio.sleep(FOREVER_S)

    lane = Racing()
    assert asyncio.run(
        _work(_runner(work), lane, _leased(3, 2**62), cancel_when=lambda: lane.completed)
    )
    assert lane.completed == [(0,)]
    assert sorted(lane.released) == [(1,), (2,)]


def test_a_completion_retries_until_the_renewed_expiry_not_the_first() -> None:
    @worker(place="queue", lease_ms=300)
    async def slow(job: Job) -> None:
        await asyncio.sleep(0.5)  # longer than the lease: heartbeats renew it

    runner = _runner(slow, lease_ms=300)
    lane = Lane(unavailable=1)
    assert asyncio.run(_work(runner, lane, _leased(1, wall_ms() + 300)))
    assert lane.completed == [()]  # retried after the unanswered try, within the renewal
    assert runner.counters["gave_up"] == 0 and runner.counters["renewed"] >= 1


def test_a_split_completion_ends_before_its_lease_gives_its_slot_back() -> None:
    class Refusing(Lane):
        async def complete(
            self, lease_id: str, results: Sequence[Any], indexes: tuple[int, ...] = ()
        ) -> None:
            await asyncio.sleep(0)
            if len(indexes) > 1 or indexes == (0,):
                raise ShardError("wrong_colour", "refused")
            await asyncio.sleep(0.2)  # the other token's completion takes a while
            self.completed.append(indexes)

    @worker(place="queue", batch=2)
    async def work(job: Job) -> None:
        return None

    lane = Refusing()
    assert asyncio.run(_work(_runner(work), lane, _leased(2, 2**62)))
    assert lane.completed == [(1,)]  # landed before the lease's work returned
