"""Virtual time: a bounded queue of events keyed by ``(time_ms, priority, sequence)``.

Theory of operation (SimPy's core): every event of a simulated run (a frame's
arrival, a core's deadline, a fault) is put on one heap under the key
``(time_ms, priority, sequence)``. ``sequence`` counts insertions, so two events at
the same time and priority come out in the order they were scheduled: the order is
total and depends on nothing but the calls made, never on object identity or on
``PYTHONHASHSEED``. :meth:`Schedule.next` pops the smallest key and moves the clock
to its time; the clock never goes backwards, and an event may not be scheduled in the
past. Nothing waits: virtual time jumps from one event to the next.

Lower priorities come first at equal times. The named priorities order what happens
"at the same moment": faults before frames (a partition that starts at t cuts a frame
arriving at t), frames before timers (a core handles what arrived before its deadline
fires), and the run's own bookkeeping last.

The queue is bounded (:data:`EVENTS_MAX`): a run that piles up more pending events
than that is a bug in the world (a resend storm, a timer rescheduled without end), and
scheduling one more raises :class:`ScheduleFull` instead of eating the memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from nets.errors import CpnError

EVENTS_MAX: Final = 1_000_000

PRIORITY_FAULT: Final = 0
PRIORITY_FRAME: Final = 10
PRIORITY_TIMER: Final = 20
PRIORITY_BOOKKEEPING: Final = 30

E = TypeVar("E")


class ScheduleFull(CpnError):
    """More than :data:`EVENTS_MAX` events are pending."""


@dataclass(frozen=True, slots=True)
class Scheduled(Generic[E]):
    """An event taken from the schedule, with the key it was scheduled under."""

    time_ms: int
    priority: int
    sequence: int
    event: E


class Schedule(Generic[E]):
    """The event queue of one simulated run, and its virtual clock.

    Args:
        start_ms: the clock's first value.
        events_max: the bound on pending events (tests use a small one).
    """

    def __init__(self, *, start_ms: int = 0, events_max: int = EVENTS_MAX) -> None:
        assert start_ms >= 0
        assert events_max > 0
        self._now_ms = start_ms
        self._heap: list[tuple[int, int, int, E]] = []
        self._sequence = 0
        self._events_max = events_max

    @property
    def now_ms(self) -> int:
        """The virtual time of the event taken last (or the start)."""
        return self._now_ms

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, time_ms: int, event: E, *, priority: int = PRIORITY_TIMER) -> int:
        """Schedule ``event`` at ``time_ms``; return its sequence number.

        Raises:
            ScheduleFull: :data:`EVENTS_MAX` events are pending already (the event
                is not scheduled).
        """
        assert time_ms >= self._now_ms, f"event at {time_ms} ms is in the past ({self._now_ms})"
        if len(self._heap) >= self._events_max:
            raise ScheduleFull(
                f"{len(self._heap)} events pending at t={self._now_ms}ms, the limit; "
                f"cannot schedule {type(event).__name__} at t={time_ms}ms"
            )
        sequence = self._sequence
        self._sequence += 1
        heapq.heappush(self._heap, (time_ms, priority, sequence, event))
        return sequence

    def after(self, delay_ms: int, event: E, *, priority: int = PRIORITY_TIMER) -> int:
        """Schedule ``event`` ``delay_ms`` from now."""
        assert delay_ms >= 0
        return self.at(self._now_ms + delay_ms, event, priority=priority)

    def next_deadline_ms(self) -> int | None:
        """The time of the next event, or None when nothing is pending."""
        return self._heap[0][0] if self._heap else None

    def next(self) -> Scheduled[E]:
        """Take the next event and move the clock to its time.

        Raises:
            IndexError: nothing is pending (ask :meth:`next_deadline_ms` first).
        """
        time_ms, priority, sequence, event = heapq.heappop(self._heap)
        self._now_ms = time_ms
        return Scheduled(time_ms, priority, sequence, event)

    def run_until(self, until_ms: int) -> Iterator[Scheduled[E]]:
        """Take events up to and including ``until_ms``, then set the clock there.

        Events scheduled while iterating (at or before ``until_ms``) come out too, in
        key order. When the iteration ends the clock is at ``until_ms`` (or later, if it
        was already), so a deadline that fell in the gap is not missed.
        """
        while self._heap and self._heap[0][0] <= until_ms:
            yield self.next()
        self._now_ms = max(self._now_ms, until_ms)

    def cancel_if(self, predicate: Callable[[E], bool]) -> int:
        """Drop every pending event for which ``predicate(event)`` is true; return how many.

        Linear in the queue; for rare changes of the world (a node that crashed takes
        its timers with it), not for every step.
        """
        kept = [entry for entry in self._heap if not predicate(entry[3])]
        dropped = len(self._heap) - len(kept)
        if dropped:
            heapq.heapify(kept)
            self._heap = kept
        return dropped
