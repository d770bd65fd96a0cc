"""The job runner's demo: which jobs to put, and the report of how they ended (pure).

:func:`plan_jobs` draws the demo's jobs from a seed. :func:`job_outcomes` compares the
jobs put with the final marking's ``done`` and ``dead`` tokens (read from every shard)
as multisets of ``(customer, job_id)``: a job put must end in exactly one of them,
once. :class:`JobsReport` adds the mock API's own measurement
(:class:`~cluster.jobs.mockapi_log.CallFigures`) and says whether every promise held:
no job lost or ended twice, no limit violation, no job executed twice by the API (a
replay, the API's answer to a repeated key, is none), never more calls in flight than
the cap, and every job ended within the time allowed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cluster.jobs.mockapi_log import CallFigures, CallRecord, JobName
from nets.jobs import Job

SHOWN_MAX: Final = 5  # job names quoted in a line about lost or doubled jobs


def customer_name(n: int) -> str:
    return f"c{n:05d}"


def plan_jobs(customers: int, jobs_max: int, seed: int) -> list[Job]:
    """Jobs for ``customers`` customers, each with 1 to ``jobs_max`` of them (drawn
    from ``seed``), all at attempt 0, customer by customer."""
    assert customers >= 1, customers
    assert jobs_max >= 1, jobs_max
    draw = random.Random(seed)
    return [
        Job(customer_name(c), f"j{j}", 0)
        for c in range(customers)
        for j in range(1 + draw.randrange(jobs_max))
    ]


def customers_at_limit(records: Iterable[CallRecord], *, rate: int, window_ms: int) -> int:
    """Customers whose calls reached the limit: ``rate`` of them arrived within less
    than ``window_ms`` at least once (one more would have been a violation). A run in
    which none did has not tested the limit."""
    arrivals: dict[str, list[int]] = {}
    for record in records:
        if record.customer:
            arrivals.setdefault(record.customer, []).append(record.start_ns)
    window_ns = window_ms * 1_000_000
    reached = 0
    for times in arrivals.values():
        times.sort()
        spans = [last - first for first, last in zip(times, times[rate - 1 :], strict=False)]
        reached += any(span < window_ns for span in spans)
    return reached


@dataclass(frozen=True, slots=True)
class JobOutcomes:
    """How the jobs put ended, from the final marking (see :func:`job_outcomes`)."""

    put: int
    done: int  # tokens in done
    dead: int  # tokens in dead
    lost: tuple[JobName, ...]  # put, and in neither done nor dead
    doubled: tuple[JobName, ...]  # ended more than once (in both, or twice in one)
    unexpected: tuple[JobName, ...]  # ended, never put
    retries: int  # calls the net planned beyond each job's first: the attempts it ended at
    dead_errors: dict[str, int]  # the last error of the dead jobs, by text

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.unexpected)


def job_outcomes(
    put: Iterable[Sequence[Any]], done: Iterable[Sequence[Any]], dead: Iterable[Sequence[Any]]
) -> JobOutcomes:
    """Compare the jobs ``put`` (``Job`` fields) with the tokens of ``done`` (``Job``)
    and ``dead`` (``Dead(customer, job_id, attempt, error)``) on every shard."""
    wanted = Counter((str(j[0]), str(j[1])) for j in put)
    done_list, dead_list = list(done), list(dead)
    ended = Counter((str(t[0]), str(t[1])) for t in [*done_list, *dead_list])
    return JobOutcomes(
        put=sum(wanted.values()),
        done=len(done_list),
        dead=len(dead_list),
        lost=tuple(sorted((wanted - ended).elements())),
        doubled=tuple(sorted(name for name, n in ended.items() if n > max(1, wanted[name]))),
        unexpected=tuple(sorted(name for name in ended if name not in wanted)),
        retries=sum(int(t[2]) for t in [*done_list, *dead_list]),
        dead_errors=dict(Counter(str(t[3]) for t in dead_list).most_common()),
    )


@dataclass
class JobsReport:
    """Everything ``cpn demo jobs`` prints at the end (and writes with ``--report-json``)."""

    customers: int
    outcomes: JobOutcomes
    figures: CallFigures
    concurrency: int  # the net's cap
    complete: bool  # every job ended before the timeout
    late_refusals: int  # `replan` firings, summed over the shards since they started
    startup_s: float
    wall_s: float  # from the first put until every job had ended (or the timeout)
    at_limit: int = 0  # customers whose calls reached the limit (customers_at_limit)
    worker_restarts: int = 0

    @property
    def over_cap(self) -> bool:
        return self.figures.in_flight_max > self.concurrency

    @property
    def lost_results(self) -> int:
        """Calls the API received that the net did not plan (a worker died after its
        call went out, before completing; or it was refused as late after sending)."""
        planned = self.outcomes.put + self.outcomes.retries
        return max(0, self.figures.calls - planned)

    @property
    def failures(self) -> list[str]:
        """Each broken promise, in words (none: the run held every promise)."""
        o, f = self.outcomes, self.figures
        found = []
        if not self.complete:
            found.append("not every job ended in time")
        if o.lost:
            found.append(f"{len(o.lost)} jobs lost")
        if o.doubled:
            found.append(f"{len(o.doubled)} jobs ended twice")
        if o.unexpected:
            found.append(f"{len(o.unexpected)} jobs ended that were never put")
        if f.violations:
            found.append(f"{len(f.violations)} limit violations")
        if f.duplicates:
            found.append(f"{f.duplicates} duplicate executions{_names(f.duplicated_jobs)}")
        if self.over_cap:
            found.append(f"{f.in_flight_max} calls in flight, over the cap of {self.concurrency}")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> Iterator[str]:
        o, f = self.outcomes, self.figures
        state = "every job ended" if self.complete else "TIMED OUT before every job ended"
        yield (
            f"jobs: {o.put:,} put for {self.customers:,} customers; {state} in "
            f"{self.wall_s:.1f} s (start-up {self.startup_s:.1f} s)"
        )
        errors = ", ".join(f"{e}: {n:,}" for e, n in o.dead_errors.items())
        yield f"  done:    {o.done:,}"
        yield f"  dead:    {o.dead:,}" + (f" (last error {errors})" if errors else "")
        yield (
            f"  lost:    {len(o.lost)} (put, in neither done nor dead){_names(o.lost)}; "
            f"ended twice: {len(o.doubled)}{_names(o.doubled)}"
        )
        yield (
            f"  calls:   {f.calls:,} ({o.retries:,} retries; {self.lost_results} whose "
            f"result was lost); late refusals re-planned: {self.late_refusals:,}"
        )
        if self.worker_restarts:
            yield f"  workers restarted: {self.worker_restarts}"
        statuses = ", ".join(f"{status}: {n:,}" for status, n in f.by_status.items())
        rate = f.calls / self.wall_s if self.wall_s > 0 else 0.0
        yield "  the mock API's own measurement:"
        yield (
            f"    limit violations: {len(f.violations)} (must be 0; {f.rate} calls per "
            f"customer in any {f.window_ms} ms; {self.at_limit:,} customers reached it)"
        )
        yield f"    executions:       {f.executions:,} (2xx answers that ran the job)"
        yield f"    replays:          {f.replays:,} (repeats of an executed key, not run again)"
        yield (
            f"    duplicates:       {f.duplicates} (must be 0: executions of a job beyond its "
            f"first){_names(f.duplicated_jobs)}"
        )
        yield f"    most in flight:   {f.in_flight_max} (cap {self.concurrency})"
        yield f"    answers:          {statuses or 'none'}; {rate:,.0f} calls/s"
        yield "  OK: every promise held" if self.ok else "  FAILED: " + "; ".join(self.failures)

    def to_json(self) -> dict[str, Any]:
        o, f = self.outcomes, self.figures
        return {
            "ok": self.ok,
            "failures": self.failures,
            "complete": self.complete,
            "customers": self.customers,
            "jobs": o.put,
            "done": o.done,
            "dead": o.dead,
            "lost": len(o.lost),
            "doubled": len(o.doubled),
            "unexpected": len(o.unexpected),
            "retries": o.retries,
            "dead_errors": o.dead_errors,
            "calls": f.calls,
            "accepted": f.accepted,
            "executions": f.executions,
            "replays": f.replays,
            "by_status": {str(k): v for k, v in f.by_status.items()},
            "lost_results": self.lost_results,
            "late_refusals": self.late_refusals,
            "at_limit": self.at_limit,
            "violations": len(f.violations),
            "duplicates": f.duplicates,
            "duplicated_jobs": [f"{c}/{j}" for c, j in f.duplicated_jobs],
            "in_flight_max": f.in_flight_max,
            "concurrency": self.concurrency,
            "worker_restarts": self.worker_restarts,
            "startup_s": round(self.startup_s, 3),
            "wall_s": round(self.wall_s, 3),
        }


def _names(names: Sequence[JobName]) -> str:
    if not names:
        return ""
    shown = ", ".join(f"{c}/{j}" for c, j in names[:SHOWN_MAX])
    return f" ({shown}{', ...' if len(names) > SHOWN_MAX else ''})"
