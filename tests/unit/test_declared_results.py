"""A work queue declares where its completions go: ``Place(results=..., failures=...)``.

The checks that need only the place are made by ``Place``; the names are checked
against the net by ``Net``. Each error names the place (and the net) at fault.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from nets.effects import Outcome
from nets.errors import CpnError, NetDefinitionError
from nets.explore import explore
from nets.model import Net, Place


class Job(NamedTuple):
    queue: str
    n: int


def test_a_work_queue_must_declare_its_results() -> None:
    with pytest.raises(NetDefinitionError, match=r"place 'work': a work queue must declare"):
        Place("work", Job, key="queue", work_queue=True)


def test_results_and_failures_are_only_for_work_queues() -> None:
    with pytest.raises(NetDefinitionError, match=r"place 'done': results= is only for work"):
        Place("done", Job, results=("x",))
    with pytest.raises(NetDefinitionError, match=r"place 'done': failures= is only for work"):
        Place("done", Job, failures="x")


def test_results_are_place_names_each_once() -> None:
    with pytest.raises(NetDefinitionError, match="must be a tuple of place names"):
        Place("work", Job, work_queue=True, results="done")  # type: ignore[arg-type]
    with pytest.raises(NetDefinitionError, match="must be a tuple of place names"):
        Place("work", Job, work_queue=True, results=(1,))  # type: ignore[arg-type]
    with pytest.raises(NetDefinitionError, match="results names 'done' twice"):
        Place("work", Job, work_queue=True, results=("done", "done"))


def test_failures_must_be_one_of_the_results() -> None:
    with pytest.raises(NetDefinitionError, match=r"failures='failed' must be one of its results"):
        Place("work", Job, work_queue=True, results=("done",), failures="failed")
    place = Place("work", Job, work_queue=True, results=["done", "failed"], failures="failed")  # type: ignore[arg-type]
    assert place.results == ("done", "failed"), "a list is kept as a tuple (frozen)"


def test_declared_results_must_be_places_of_the_net() -> None:
    work = Place("work", Job, key="queue", work_queue=True, results=("done", "missing"))
    done = Place("done", Job, key="queue")
    with pytest.raises(
        NetDefinitionError,
        match=r"net 'n', work queue 'work': declared result place 'missing' is not part",
    ):
        Net("n", places=[work, done], transitions=[])


def test_a_queue_may_produce_nothing_or_into_itself() -> None:
    quiet = Place("quiet", Job, work_queue=True, results=())
    again = Place("again", Job, work_queue=True, results=("again",))
    net = Net("n", places=[quiet, again], transitions=[])
    assert net.place("quiet").results == () and net.place("again").results == ("again",)


class _IntoNotes:
    def outcomes(self, token: tuple[object, ...], attempt: int) -> tuple[Outcome, ...]:
        del attempt
        return (Outcome("ok", (("notes", token),)),)


def test_the_explorer_refuses_an_effect_model_that_produces_into_an_undeclared_place() -> None:
    work = Place(
        "work", Job, key="queue", work_queue=True, results=("done",), initial=[Job("a", 1)]
    )
    done = Place("done", Job, key="queue")
    notes = Place("notes", Job, key="queue")
    net = Net("n", places=[work, done, notes], transitions=[], effects={"work": _IntoNotes()})
    with pytest.raises(CpnError, match=r"produces into 'notes', which the work queue does not"):
        explore(net)
