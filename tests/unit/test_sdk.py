"""The worker SDK's pure parts: the decorator's rules, idempotency keys, and how a
function's return value or exception becomes a completion's results (cluster/sdk/)."""

from __future__ import annotations

from typing import NamedTuple

import pytest

import cluster
from cluster.sdk import current, to, worker
from cluster.sdk.results import QueueShape
from cluster.sdk.spec import WorkerSpec, default_key
from nets.errors import CpnError
from nets.model import Net, Place, Transition, variables


class Job(NamedTuple):
    customer: str
    job_id: str
    attempt: int


class Done(NamedTuple):
    customer: str
    job_id: str


class Failed(NamedTuple):
    customer: str
    job_id: str
    attempt: int
    error: str


class Note(NamedTuple):
    customer: str
    job_id: str


def _net(*, failures: str | None = "failed") -> Net:
    queue = Place(
        "queue", Job, key="customer", work_queue=True,
        results=("done", "failed", "audit", "notes"), failures=failures,
    )  # fmt: skip
    done = Place("done", Done, key="customer")
    failed = Place("failed", Failed, key="customer")
    audit = Place("audit", Note, key="customer")
    notes = Place("notes", Note, key="customer")
    j, c = variables("j c")
    drain = Transition("drain", consume=[failed(j, customer=c)])
    return Net("jobs", places=[queue, done, failed, audit, notes], transitions=[drain])


def test_a_decorated_function_is_still_a_function_with_its_worker_spec() -> None:
    @worker(place="queue", key=lambda job: job.job_id, batch=4)
    def run(job: Job) -> Done:
        return Done(job.customer, job.job_id)

    assert isinstance(run, WorkerSpec)
    assert run(Job("c", "j1", 0)) == Done("c", "j1")  # a unit test calls it directly
    assert (run.place, run.batch, run.is_async) == ("queue", 4, False)
    assert run.idempotency_key(Job("c", "j1", 3)) == "j1"


def test_the_short_import_path_is_the_sdk() -> None:
    assert cluster.worker is worker
    assert cluster.to is to
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = cluster.nope  # type: ignore[attr-defined]


def test_the_default_key_ignores_the_attempt_and_nothing_else() -> None:
    first, retry = Job("c", "j1", 0), Job("c", "j1", 5)
    assert default_key("queue", first) == default_key("queue", retry)
    assert default_key("queue", first) != default_key("queue", Job("c", "j2", 0))
    assert default_key("queue", first) != default_key("other", first)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 0}, "batch must be"),
        ({"concurrency": 0}, "must be >= 1"),
        ({"start_field": "start"}, "together"),
        ({"start_field": "s", "late_field": "l"}, "needs on_late"),
        ({"many": True, "start_field": "s", "late_field": "l", "on_late": print}, "do not mix"),
    ],
)
def test_contradicting_options_are_refused_by_name(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(CpnError, match=message):
        worker(place="queue", **options)(lambda job: None)  # type: ignore[arg-type]


def test_returned_tokens_go_to_the_declared_place_of_their_colour() -> None:
    shape = QueueShape.of(_net(), "queue")
    assert shape.outputs(None) == ()
    assert shape.outputs(Done("c", "j")) == (("done", ("c", "j")),)
    assert shape.outputs([Done("c", "j"), to("audit", Note("c", "j"))]) == (
        ("done", ("c", "j")),
        ("audit", ("c", "j")),
    )


def test_an_ambiguous_or_undeclared_result_is_named() -> None:
    shape = QueueShape.of(_net(), "queue")
    with pytest.raises(CpnError, match="Note is the colour of audit, notes"):
        shape.outputs(Note("c", "j"))
    with pytest.raises(CpnError, match=r"declares results .* into 'elsewhere'"):
        shape.outputs(to("elsewhere", Done("c", "j")))
    with pytest.raises(CpnError, match="colour of none"):
        shape.outputs(Job("c", "j", 0))
    with pytest.raises(CpnError, match="place 'done'"):
        shape.outputs(to("done", ("c", 1)))  # wrong colour for the place
    with pytest.raises(CpnError, match="a token, a list of tokens"):
        shape.outputs(42)


def test_an_exception_becomes_a_failure_token_with_the_error() -> None:
    shape = QueueShape.of(_net(), "queue")
    ((place, fields),) = shape.failure(Job("c", "j", 2), ValueError("boom"))
    assert (place, fields) == ("failed", ("c", "j", 2, "ValueError: boom"))


def test_without_a_failure_place_the_exception_says_what_to_declare() -> None:
    shape = QueueShape.of(_net(failures=None), "queue")
    with pytest.raises(CpnError, match="declares no failures place"):
        shape.failure(Job("c", "j", 0), ValueError("boom"))


def test_a_place_that_is_no_work_queue_is_refused() -> None:
    with pytest.raises(CpnError, match="'done' of net 'jobs' is not a work queue"):
        QueueShape.of(_net(), "done")
    with pytest.raises(CpnError, match=r"no place 'nope'.*work queues: queue"):
        QueueShape.of(_net(), "nope")


def test_current_outside_a_worker_says_so() -> None:
    with pytest.raises(CpnError, match="only available inside a worker function"):
        current()
