"""A user's net with a work queue: jobs per group, results or failures, retries with
backoff (the pattern docs/language.md documents), dead after three attempts."""

from __future__ import annotations

from typing import NamedTuple

from nets.model import Net, Place, Transition, variables

ATTEMPTS_MAX = 3
BACKOFF_MS = 50


class Job(NamedTuple):
    group: str
    job_id: int
    attempt: int


class Done(NamedTuple):
    group: str
    job_id: int
    attempt: int
    value: int


class Failed(NamedTuple):
    group: str
    job_id: int
    attempt: int
    error: str


def net() -> Net:
    queue = Place(
        "queue", Job, key="group", work_queue=True,
        results=("done", "failed"), failures="failed",
    )  # fmt: skip
    done = Place("done", Done, key="group")
    failed = Place("failed", Failed, key="group")
    dead = Place("dead", Failed, key="group")
    f, g = variables("f g")
    return Net(
        "sdk_jobs",
        places=[queue, done, failed, dead],
        transitions=[
            Transition(
                "retry",
                consume=[failed(f, group=g)],
                guard=lambda f: f.attempt + 1 < ATTEMPTS_MAX,
                produce=[
                    queue.produce(
                        lambda f: Job(f.group, f.job_id, f.attempt + 1),
                        delay=lambda f: BACKOFF_MS << f.attempt,
                    )
                ],
            ),
            Transition(
                "give_up",
                consume=[failed(f, group=g)],
                guard=lambda f: f.attempt + 1 >= ATTEMPTS_MAX,
                produce=[dead.produce(f)],
            ),
        ],
    )
