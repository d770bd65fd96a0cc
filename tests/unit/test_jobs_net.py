"""The job runner's net (nets/jobs.py) under virtual time, with workers simulated in-process.

The simulated workers do what real ones do: lease a ``Run`` from ``run_queue``, call
the API anywhere in ``[start_at_ms, start_at_ms + late_ms]`` (or refuse as late), and
complete with ``ran``, ``failed`` or ``late`` when the answer comes. The policy is then
checked from the calls they made, as the API would see them, and from the steps.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from nets import Step
from nets.engine import Engine
from nets.errors import NetDefinitionError
from nets.explore import explore
from nets.jobs import (
    WORK_PLACES,
    Dead,
    Failed,
    Job,
    JobsPolicy,
    Run,
    backoff_ms,
    jobs_finished,
    jobs_net,
    verified_net,
)
from nets.loader import load_net
from nets.properties import HOLDS, check_deadlocks, check_invariant

LATENCY_MS = 40


@dataclass(frozen=True)
class Call:
    """One call a simulated worker made, as the API would log it (no transit lag)."""

    customer: str
    job_id: str
    attempt: int
    sent_ms: int
    answered_ms: int


@dataclass
class Outcome:
    engine: Engine
    calls: list[Call]
    steps: list[Step]
    refused: list[Run]
    running_max: int = 0
    jobs: list[Job] = field(default_factory=list)


def run(
    policy: JobsPolicy,
    jobs: list[Job],
    *,
    seed: int,
    fails: Callable[[Run], bool] = lambda run: False,
    refuse: Callable[[Run], bool] = lambda run: False,
    steps_max: int = 200_000,
) -> Outcome:
    """Run the net with simulated workers until no work is left.

    ``fails(run)``: the call answers 503. ``refuse(run)``: the worker is later than the
    late limit and refuses (asked once per lease). Otherwise it calls at the start time, at
    the late limit, or anywhere between (a seeded draw), and the answer comes
    ``LATENCY_MS`` later.
    """
    engine = Engine(jobs_net(policy))
    outcome = Outcome(engine, [], [], [], jobs=jobs)
    running = 0

    def watch(step: Step) -> None:
        nonlocal running
        outcome.steps.append(step)
        running += sum(p == "running" for p, _, _ in step.produced)
        running -= sum(p == "running" for p, _, _ in step.consumed)
        outcome.running_max = max(outcome.running_max, running)

    engine.hooks.append(watch)
    rng = random.Random(seed)
    # Puts arrive over the first second, as a client sends them. (All at once, every new
    # customer's first_seen would search every submitted job again: its inhibitor place
    # is watched as a whole, not by key, by the engine.)
    for n, job in enumerate(jobs):
        engine.add("submitted", job, time=n * 1_000 // len(jobs))
    now = 0
    for _ in range(steps_max):
        while engine.fire(now) is not None:
            pass
        leased = engine.available("run_queue", 1_000)
        for time_ms, token in leased:
            engine.remove("run_queue", token, time=time_ms)
            r = Run(*token)
            if refuse(r):
                outcome.refused.append(r)
                engine.add("late", r, time=r.start_at_ms + r.late_ms + 1)
                continue
            sent = r.start_at_ms + rng.choice((0, r.late_ms, rng.randint(0, r.late_ms)))
            answered = sent + LATENCY_MS
            outcome.calls.append(Call(r.customer, r.job_id, r.attempt, sent, answered))
            if fails(r):
                engine.add("failed", Failed(*r, "http 503"), time=answered)
            else:
                engine.add("ran", r, time=answered)
        if leased:
            continue
        deadline = engine.next_deadline()
        if deadline is None:
            break
        now = deadline
    else:
        raise AssertionError(f"seed {seed}: work left after {steps_max} rounds")
    return outcome


def many_customers(customers: int = 1_200, heavy: int = 20) -> list[Job]:
    """1 to 3 jobs for most customers; 25 each for the first ``heavy`` ones."""
    jobs = []
    for n in range(customers):
        count = 25 if n < heavy else 1 + n % 3
        jobs += [Job(f"cust{n:05d}", f"job{m}", 0) for m in range(count)]
    return jobs


def tokens(engine: Engine, place: str) -> list[tuple[object, ...]]:
    return [token for _time, token in engine.tokens(place)]


def assert_every_job_ends_once(outcome: Outcome, policy: JobsPolicy) -> None:
    engine = outcome.engine
    marking = {place: tuple(sorted(tokens(engine, place))) for place in engine.marking()}
    assert jobs_finished(marking)
    ended = [(t[0], t[1]) for place in ("done", "dead") for t in marking[place]]
    assert sorted(ended) == sorted((j.customer, j.job_id) for j in outcome.jobs)
    assert not any(engine.count(place) for place in WORK_PLACES if place in marking)
    for name, invariant in jobs_net(policy).invariants.items():
        assert invariant(marking), name


def starts_by_customer(calls: list[Call]) -> dict[str, list[int]]:
    starts: dict[str, list[int]] = defaultdict(list)
    for call in calls:
        starts[call.customer].append(call.sent_ms)
    return {customer: sorted(times) for customer, times in starts.items()}


def test_rate_window_and_cap_hold_for_many_customers(seed: int) -> None:
    policy = JobsPolicy()
    outcome = run(policy, many_customers(), seed=seed)
    assert_every_job_ends_once(outcome, policy)
    rate, window = policy.rate, policy.window_ms
    starts = starts_by_customer(outcome.calls)
    for customer, times in starts.items():
        # rate + 1 calls within one window would put calls i and i + rate in it.
        for first, last in zip(times, times[rate:], strict=False):
            assert last - first >= window + policy.margin_ms, (seed, customer, first, last)
    assert len(outcome.calls) == len(outcome.jobs) and len(starts) == 1_200
    # The limit is reached, not merely respected: a busy customer fills a window.
    busy = starts["cust00000"]
    assert len(busy) == 25
    assert any(last - first < window for first, last in zip(busy, busy[rate - 1 :], strict=False))
    # The cap: never more than `concurrency` jobs started and not answered, nor calls at
    # once at the API; and a run this size does reach it.
    assert outcome.running_max == policy.concurrency
    events = sorted(
        [(c.sent_ms, 1) for c in outcome.calls] + [(c.answered_ms, -1) for c in outcome.calls]
    )
    in_flight = peak = 0
    for _, change in events:
        in_flight += change
        peak = max(peak, in_flight)
    assert peak <= policy.concurrency


def test_a_failing_job_backs_off_then_dies(seed: int) -> None:
    policy = JobsPolicy(attempts_max=4, backoff_ms=100)
    jobs = [Job("c1", "doomed", 0), Job("c1", "flaky", 0), Job("c2", "fine", 0)]
    outcome = run(
        policy,
        jobs,
        seed=seed,
        fails=lambda r: r.job_id == "doomed" or (r.job_id == "flaky" and r.attempt < 2),
    )
    assert_every_job_ends_once(outcome, policy)
    engine = outcome.engine
    assert tokens(engine, "dead") == [Dead("c1", "doomed", 3, "http 503")]
    assert sorted(tokens(engine, "done")) == [Job("c1", "flaky", 2), Job("c2", "fine", 0)]
    retries = [s for s in outcome.steps if s.transition == "retry"]
    waits = defaultdict(list)
    for step in retries:
        failure = step.binding["x"]
        ((_, time, job),) = [e for e in step.produced if e[0] == "ready"]
        assert job == Job(failure.customer, failure.job_id, failure.attempt + 1)
        waits[failure.job_id].append(time - step.time)
    assert waits == {"doomed": [100, 200, 400], "flaky": [100, 200]}
    assert [backoff_ms(100, n) for n in range(3)] == [100, 200, 400]
    doomed = [c.attempt for c in outcome.calls if c.job_id == "doomed"]
    assert doomed == [0, 1, 2, 3], "attempts_max calls, then dead"
    (give_up,) = [s for s in outcome.steps if s.transition == "give_up"]
    assert give_up.binding["x"].attempt == policy.attempts_max - 1


def test_a_late_refusal_is_replanned_and_keeps_its_permit_out(seed: int) -> None:
    policy = JobsPolicy(rate=2)
    refused_once: set[str] = set()

    def refuse(r: Run) -> bool:
        if r.job_id in ("j0", "j3") and r.job_id not in refused_once:
            refused_once.add(r.job_id)
            return True
        return False

    jobs = [Job("c", f"j{m}", 0) for m in range(6)]
    outcome = run(policy, jobs, seed=seed, refuse=refuse)
    assert_every_job_ends_once(outcome, policy)
    assert {r.job_id for r in outcome.refused} == {"j0", "j3"}
    replans = [s for s in outcome.steps if s.transition == "replan"]
    assert [s.binding["x"].job_id for s in replans] == ["j0", "j3"]
    for step in replans:
        ((_, time, job),) = [e for e in step.produced if e[0] == "ready"]
        assert (time, job.attempt) == (step.time, step.binding["x"].attempt)
    assert sorted(tokens(outcome.engine, "done")) == jobs, "same attempt: no call was made"
    # Each refusal spent a permit: 8 starts on 2 permits, so the last start comes no
    # sooner than three permit holds after the first.
    starts = [s.time for s in outcome.steps if s.transition == "start"]
    assert len(starts) == 8 and starts[-1] - starts[0] >= 3 * policy.permit_hold_ms
    times = starts_by_customer(outcome.calls)["c"]
    for first, last in zip(times, times[policy.rate :], strict=False):
        assert last - first >= policy.window_ms + policy.margin_ms


def test_every_job_ends_once_with_failures_and_refusals(seed: int) -> None:
    policy = JobsPolicy(concurrency=8, attempts_max=3, backoff_ms=50)

    def draw(*what: object) -> float:
        # A fixed draw per job (or per lease), whatever the order of events.
        return random.Random(":".join(map(str, (seed, *what)))).random()

    jobs = many_customers(1_000, 5)
    outcome = run(
        policy,
        jobs,
        seed=seed,
        # A fifth of the jobs fail twice, and a tenth of those always.
        fails=lambda r: (
            draw(r.customer, r.job_id) < 0.2
            and (r.attempt < 2 or draw(r.customer, r.job_id) < 0.02)
        ),
        refuse=lambda r: draw(*r) < 0.1,
    )
    assert_every_job_ends_once(outcome, policy)
    assert outcome.running_max <= policy.concurrency
    ended = Counter(s.transition for s in outcome.steps)
    assert ended["finish"] + ended["give_up"] == len(jobs)
    assert ended["finish"] > 0 and ended["give_up"] > 0 and ended["retry"] > 0
    assert ended["replan"] == len(outcome.refused) > 0


def test_parameters_are_checked_and_reach_the_net_through_the_loader() -> None:
    loaded = load_net("nets.jobs:net", params={"rate": 3, "concurrency": 2})
    assert (
        loaded.place("slots").initial == jobs_net(JobsPolicy(concurrency=2)).place("slots").initial
    )
    assert sorted(loaded.invariants) == ["rate_permits_per_customer", "slots_conserved"]
    with pytest.raises(NetDefinitionError, match="jobs net: rate must be an integer >= 1, got 0"):
        load_net("nets.jobs:net", params={"rate": 0})
    with pytest.raises(NetDefinitionError, match="late_ms must be an integer >= 0, got '5'"):
        JobsPolicy(late_ms="5")  # type: ignore[arg-type]
    with pytest.raises(NetDefinitionError, match="unknown parameter 'burst' \\(known: rate, "):
        load_net("nets.jobs:net", params={"burst": 3})


def test_the_closed_runner_verifies() -> None:
    net = verified_net(customers=2, jobs=1, rate=1, concurrency=1, attempts_max=2)
    space = explore(net, keep_edges=True)
    assert not space.partial
    for name, invariant in net.invariants.items():
        assert check_invariant(space, name, invariant).status == HOLDS, name
    assert check_deadlocks(space, {"finished": jobs_finished}).status == HOLDS
