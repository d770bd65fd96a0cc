"""The schedule's order is total and repeatable, its clock never goes back, it is bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.sim.schedule import PRIORITY_FAULT, PRIORITY_FRAME, Schedule, ScheduleFull

pytestmark = pytest.mark.simulation


def test_events_come_out_by_time_then_priority_then_insertion() -> None:
    schedule: Schedule[str] = Schedule()
    schedule.at(10, "timer")
    schedule.at(10, "frame", priority=PRIORITY_FRAME)
    schedule.at(5, "early")
    schedule.at(10, "fault", priority=PRIORITY_FAULT)
    schedule.at(10, "second timer")
    assert schedule.next_deadline_ms() == 5
    taken = [(s.time_ms, s.event) for s in schedule.run_until(100)]
    assert taken == [
        (5, "early"),
        (10, "fault"),
        (10, "frame"),
        (10, "timer"),
        (10, "second timer"),
    ]
    assert schedule.now_ms == 100
    assert schedule.next_deadline_ms() is None


def test_run_until_takes_events_scheduled_on_the_way_and_stops_at_the_bound() -> None:
    schedule: Schedule[int] = Schedule()
    schedule.at(1, 1)
    seen = []
    for taken in schedule.run_until(50):
        seen.append(taken.event)
        schedule.after(20, taken.event + 1)  # each event schedules the next
    assert seen == [1, 2, 3]  # at 1, 21, 41; the one at 61 waits
    assert schedule.now_ms == 50
    assert schedule.next_deadline_ms() == 61


def test_an_event_in_the_past_is_a_programmer_error() -> None:
    schedule: Schedule[str] = Schedule(start_ms=100)
    with pytest.raises(AssertionError, match="in the past"):
        schedule.at(99, "late")


def test_the_queue_is_bounded() -> None:
    schedule: Schedule[str] = Schedule(events_max=2)
    schedule.at(1, "a")
    schedule.at(2, "b")
    with pytest.raises(ScheduleFull, match=r"2 events pending at t=0ms.*str at t=3ms"):
        schedule.at(3, "c")
    assert len(schedule) == 2


def test_cancel_if_keeps_the_order_of_the_rest() -> None:
    schedule: Schedule[str] = Schedule()
    for i, name in enumerate(["a1", "b1", "a2", "b2"]):
        schedule.at(i, name)
    assert schedule.cancel_if(lambda event: event.startswith("a")) == 2
    assert [s.event for s in schedule.run_until(10)] == ["b1", "b2"]


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=60))
def test_order_depends_only_on_the_calls(entries: list[tuple[int, int]]) -> None:
    def drain() -> list[tuple[int, int, int]]:
        schedule: Schedule[int] = Schedule()
        for index, (time_ms, priority) in enumerate(entries):
            schedule.at(time_ms, index, priority=priority)
        return [(s.time_ms, s.priority, s.event) for s in schedule.run_until(1_000)]

    first = drain()
    assert first == drain()
    assert first == sorted(first)  # time, then priority, then insertion (= the index)
