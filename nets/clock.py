"""The one notion of time: integer milliseconds behind a :class:`Clock`.

The core never reads a clock; shells and simulators own one and pass ``now`` in.
:class:`VirtualClock` is the simulator's clock (it starts at 0 and jumps to the next
deadline); the real clock, milliseconds since the Unix epoch kept monotone, lives in
the shard process, the only place allowed to read the system time.
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """A source of ``now`` in integer milliseconds that never goes backwards."""

    def now_ms(self) -> int: ...


class VirtualClock:
    """Virtual time for simulation and tests: starts at ``start_ms``, moves on demand."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance_to(self, when_ms: int) -> None:
        """Jump to ``when_ms``; jumping backwards is a programmer error."""
        assert when_ms >= self._now_ms, f"virtual time went backwards: {when_ms} < {self._now_ms}"
        self._now_ms = when_ms
