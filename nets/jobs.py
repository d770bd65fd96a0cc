"""The job runner's net: per-customer rate limits and a global cap on an external API.

Clients put jobs (``cpn put``) into ``submitted``; workers outside the net lease them
from ``run_queue``, call the API once per lease and complete the lease with a result
(docs/jobs.md). The net is the whole policy:

**Customers** are dynamic: the first job of a customer (``customers`` has no token for
it, an inhibitor arc) creates its state, ``rate`` start permits in ``permits``.

**Starting** joins a ready job, one of its customer's permits and a slot of the global
pool ``slots``. The job gets a start time ``ready_ms`` after the decision (time for a
worker to lease it) and a late limit ``late_ms``: a worker calls at the start time and
refuses (result ``late``) rather than call after ``start_at_ms + late_ms``.

**The window.** A permit comes back ``window_ms + late_ms + margin_ms`` after the start
that took it (every start is ``ready_ms`` after its decision), so two calls on one
permit *leave* at least ``window_ms + margin_ms`` apart, however late the first one left
within its limit. With ``rate`` permits, ``rate + 1`` calls of one customer inside one
window would need two calls on one permit, so no window holds more than ``rate`` of
them. ``margin_ms`` covers what the sender cannot see: the server stamps a call when it
arrives, so the gap it measures is the sending gap less the difference of the two
calls' transit lags (and of the two workers' clocks). A late refusal does not give its
permit back early: it may be the re-lease of a call that did go out and whose result
was lost with its worker.

**The cap.** A slot is held from the start to the result (``running`` records which),
so no more than ``concurrency`` calls are between decision and result, cluster-wide.

**Results.** Success goes to ``done``; a failure is retried with attempt + 1 after
``backoff_ms * 2**attempt`` until ``attempts_max`` calls failed, then it is ``dead``; a
late refusal is re-planned at once with the same attempt (no call was made by it).

Every place but ``slots`` is keyed by ``customer``, so a customer lives on one shard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

from nets.effects import EffectModel, Outcome
from nets.errors import NetDefinitionError
from nets.model import Invariant, MarkingView, Net, OutputArc, Place, Token, Transition, variables

Guard = Callable[..., bool]

# -- Colour sets ---------------------------------------------------------------------------


class Job(NamedTuple):
    """A job as put into ``submitted``, waiting in ``ready``, or finished in ``done``."""

    customer: str
    job_id: str  # unique per customer
    attempt: int  # 0 for the first call


class Customer(NamedTuple):
    """A known customer (``customers``), or one of its start permits (``permits``)."""

    customer: str


class Slot(NamedTuple):
    """One of the ``concurrency`` slots of the global cap."""

    name: str


class Run(NamedTuple):
    """A worker's job: call the API at ``start_at_ms``, never after ``+ late_ms``.

    Also the colour of the results ``ran`` (the call succeeded) and ``late`` (refused,
    not called): a worker completes with the token it leased.
    """

    customer: str
    job_id: str
    attempt: int
    start_at_ms: int  # wall-clock ms, the shards' clock
    late_ms: int


class Running(NamedTuple):
    """A started job until its result is in, and the slot it holds."""

    customer: str
    job_id: str
    attempt: int
    slot: str


class Failed(NamedTuple):
    """A worker's failure result: the leased token's fields and the error."""

    customer: str
    job_id: str
    attempt: int
    start_at_ms: int
    late_ms: int
    error: str


class Dead(NamedTuple):
    """A job whose every attempt failed: its last attempt and error."""

    customer: str
    job_id: str
    attempt: int
    error: str


# -- The policy -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobsPolicy:
    """Every knob of the job runner (durations in ms)."""

    rate: int = 5  # starts per customer in any sliding window, as the API measures them
    window_ms: int = 1_000
    concurrency: int = 32  # calls in progress at once, cluster-wide
    attempts_max: int = 4  # calls per job at most (failures; late refusals do not count)
    backoff_ms: int = 100  # retry n + 1 waits backoff_ms * 2**n
    late_ms: int = 200  # a worker refuses to call later than this after the start time
    margin_ms: int = 20  # transit lag and clock differences between two calls' workers
    ready_ms: int = 20  # a start is this long after its decision: time to lease it

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 1 if f.name in ("rate", "window_ms", "concurrency", "attempts_max") else 0
            if type(value) is not int or value < least:
                raise NetDefinitionError(
                    f"jobs net: {f.name} must be an integer >= {least}, got {value!r}"
                )

    @property
    def permit_hold_ms(self) -> int:
        """How long after a start's decision its permit comes back (see the docstring)."""
        return self.window_ms + self.late_ms + self.margin_ms


def backoff_ms(base_ms: int, attempt: int) -> int:
    """The wait before retry number ``attempt + 1``: doubles with every failure."""
    return base_ms << attempt


def slot_names(concurrency: int) -> list[str]:
    return [f"slot{i:04d}" for i in range(concurrency)]


# -- The net --------------------------------------------------------------------------------


def jobs_net(
    policy: JobsPolicy = JobsPolicy(),
    *,
    jobs: Sequence[Job] = (),
    effects: Mapping[str, EffectModel] | None = None,
) -> Net:
    """Build the job runner's net for ``policy``.

    A cluster puts jobs into the running net; a closed net for verification
    (:func:`verified_net`) starts with ``jobs`` and closes ``run_queue`` with ``effects``.
    """
    p = policy
    j, c, k, s, r, x, i, a = variables("j c k s r x i a")
    submitted = Place("submitted", Job, key="customer", initial=jobs)
    customers = Place("customers", Customer, key="customer")
    permits = Place("permits", Customer, key="customer")
    ready = Place("ready", Job, key="customer")
    slots = Place("slots", Slot, pool=True, initial=[Slot(n) for n in slot_names(p.concurrency)])
    run_queue = Place(
        "run_queue", Run, key="customer", work_queue=True,
        results=("ran", "failed", "late"), failures="failed",
    )  # fmt: skip
    running = Place("running", Running, key="customer")
    ran = Place("ran", Run, key="customer")
    failed = Place("failed", Failed, key="customer")
    late = Place("late", Run, key="customer")
    done = Place("done", Job, key="customer")
    dead = Place("dead", Dead, key="customer")

    # A result answers the start recorded in ``running`` for its job and attempt.
    answer = {"customer": c, "job_id": i, "attempt": a}

    def on(name: str, result: Place, out: OutputArc, guard: Guard | None = None) -> Transition:
        free = slots.produce(lambda r: Slot(r.slot))  # every result frees the slot
        consume = [running(r, **answer), result(x, **answer)]
        return Transition(name, consume=consume, guard=guard, produce=[out, free], priority=2)

    transitions = [
        on("finish", ran, done.produce(lambda x: Job(x.customer, x.job_id, x.attempt))),
        on(
            "retry",
            failed,
            ready.produce(
                lambda x: Job(x.customer, x.job_id, x.attempt + 1),
                delay=lambda x: backoff_ms(p.backoff_ms, x.attempt),
            ),
            guard=lambda x: x.attempt + 1 < p.attempts_max,
        ),
        on(
            "give_up",
            failed,
            dead.produce(lambda x: Dead(x.customer, x.job_id, x.attempt, x.error)),
            guard=lambda x: x.attempt + 1 >= p.attempts_max,
        ),
        # No call was made by this lease: plan the same attempt again (its permit stays out).
        on("replan", late, ready.produce(lambda x: Job(x.customer, x.job_id, x.attempt))),
        Transition(
            "first_seen",
            consume=[submitted(j, customer=c)],
            inhibit=[customers(customer=c)],
            produce=[
                ready.produce(j),
                customers.produce(lambda c: Customer(c)),  # noqa: PLW0108
                permits.produce_all(lambda c: [Customer(c)] * p.rate),
            ],
            priority=1,
        ),
        Transition(
            "admit",
            consume=[submitted(j, customer=c)],
            read=[customers(customer=c)],
            produce=[ready.produce(j)],
            priority=1,
        ),
        Transition(
            "start",
            consume=[ready(j, customer=c), permits(k, customer=c), slots(s)],
            produce=[
                run_queue.produce(
                    lambda now, j: Run(j.customer, j.job_id, j.attempt, now + p.ready_ms, p.late_ms)
                ),
                running.produce(lambda j, s: Running(j.customer, j.job_id, j.attempt, s.name)),
                # Every start is ready_ms after its decision, so a permit due permit_hold_ms
                # after this decision allows a start permit_hold_ms after this start.
                permits.produce(k, delay=p.permit_hold_ms),
            ],
        ),
    ]
    places = [submitted, customers, permits, ready, slots, run_queue, running, ran, failed,
              late, done, dead]  # fmt: skip
    return Net(
        "jobs",
        places=places,
        transitions=transitions,
        invariants={
            "slots_conserved": slots_conserved(p.concurrency),
            "rate_permits_per_customer": permits_per_customer(p.rate),
        },
        effects=effects,
    )


# Places that hold a job in progress: the runner is idle when all are empty cluster-wide
# (with the work queue's leased tokens) and no handoff is pending.
WORK_PLACES: tuple[str, ...] = (
    "submitted",
    "ready",
    "run_queue",
    "run_queue__held",
    "running",
    "ran",
    "failed",
    "late",
)


def slots_conserved(concurrency: int) -> Invariant:
    """Every slot is free or held by exactly one running job: none lost or doubled."""
    expected = slot_names(concurrency)

    def slot_tokens_conserved(m: MarkingView) -> bool:
        return sorted([s[0] for s in m["slots"]] + [r[3] for r in m["running"]]) == expected

    return slot_tokens_conserved


def permits_per_customer(rate: int) -> Invariant:
    """Each known customer has exactly ``rate`` permits (held ones included), others none."""

    def rate_permits_per_known_customer(m: MarkingView) -> bool:
        held: dict[str, int] = {}
        for permit in m["permits"]:
            held[permit[0]] = held.get(permit[0], 0) + 1
        return held == {known[0]: rate for known in m["customers"]}

    return rate_permits_per_known_customer


def net(seed: int = 0, **params: object) -> Net:
    """The job runner's net for ``cpn up --net nets.jobs:net [--net-param KEY=VALUE ...]``.

    ``params`` are :class:`JobsPolicy` fields. ``seed`` is accepted for the loader's
    convention and unused: the net makes no random choice.

    Raises:
        NetDefinitionError: an unknown parameter, or one out of range, naming it.
    """
    del seed
    known = [f.name for f in fields(JobsPolicy)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise NetDefinitionError(
            f"jobs net: unknown parameter {unknown[0]!r} (known: {', '.join(known)})"
        )
    return jobs_net(JobsPolicy(**params))  # type: ignore[arg-type]


# -- A closed runner, for `cpn verify` ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobEffects:
    """A worker that may answer any way: success, failure, late refusal, or a stall
    (its lease expires and the job goes back to ``run_queue``)."""

    stall: bool = True

    def outcomes(self, token: Token, attempt: int) -> tuple[Outcome, ...]:
        del attempt  # the Run token carries the job's own attempt count
        run = Run(*token)
        found = (
            Outcome("ok", (("ran", run),)),
            Outcome("fail", (("failed", Failed(*run, "http 503")),)),
            Outcome("fail", (("late", run),)),
        )
        return (*found, Outcome("stall")) if self.stall else found


def jobs_finished(m: MarkingView) -> bool:
    """A final marking: no job in progress, and no job both ``done`` and ``dead``, or
    either twice. (With the semiflow that counts jobs, ``cpn verify`` finds, every job
    submitted ends in exactly one of them.)"""
    if any(m.get(place) for place in WORK_PLACES):
        return False
    ended = [(t[0], t[1]) for t in m["done"]] + [(t[0], t[1]) for t in m["dead"]]
    return len(set(ended)) == len(ended)


def verified_net(
    customers: int = 2, jobs: int = 1, rate: int = 1, concurrency: int = 1, attempts_max: int = 2
) -> Net:
    """The runner closed by :class:`JobEffects`, with ``jobs`` jobs for each of
    ``customers`` customers submitted: ``cpn verify nets.jobs:verified_net --final
    nets.jobs:jobs_finished`` (docs/jobs.md)."""
    submitted = [Job(f"c{n}", f"j{m}", 0) for n in range(customers) for m in range(jobs)]
    policy = JobsPolicy(rate=rate, concurrency=concurrency, attempts_max=attempts_max)
    return jobs_net(policy, jobs=submitted, effects={"run_queue": JobEffects()})
