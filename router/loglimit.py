"""How many lines of one kind a log takes in an interval, and the summary of the rest (pure).

Theory of operation: a process under pressure (3,000 garbage frames, a peer gone while
replies pile up) would write one line per event and bury everything else. Each line
has a *kind* (the caller's key: the logger and the message's format string). Per kind,
a window opens at its first line; the first ``burst`` lines of the window are written,
the rest are counted, and once ``interval_ms`` has passed the window closes: if lines
were held back, :meth:`LogLimiter.due` returns one :class:`Suppressed` record saying
how many and over how long ("N more like this in the last T s"), with the last held-back
line as an example. Nothing is dropped without being counted in a summary.

The kinds are bounded (``kinds_max``): a new kind beyond it closes the oldest window
early, and its summary, if any, is returned by the next :meth:`LogLimiter.due`. Time is
a parameter (``now_ms``), so the rules are tested without a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

BURST_DEFAULT: Final = 5
INTERVAL_MS_DEFAULT: Final = 10_000
KINDS_MAX: Final = 1_024


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Lines of one kind held back in one window: ``count`` of them, the window's span,
    and the last one's text."""

    kind: str
    count: int
    since_ms: int
    until_ms: int
    example: str

    def describe(self) -> str:
        span_s = max(0, self.until_ms - self.since_ms) / 1000
        return f"{self.count:,} more like this in the last {span_s:g} s: {self.example}"


@dataclass(slots=True)
class _Window:
    opened_ms: int
    written: int = 0
    held: int = 0
    example: str = ""


class LogLimiter:
    """Per-kind windows of ``burst`` lines per ``interval_ms`` (see the module docstring)."""

    def __init__(
        self,
        *,
        burst: int = BURST_DEFAULT,
        interval_ms: int = INTERVAL_MS_DEFAULT,
        kinds_max: int = KINDS_MAX,
    ) -> None:
        assert burst > 0, burst
        assert interval_ms > 0, interval_ms
        assert kinds_max > 0, kinds_max
        self.burst = burst
        self.interval_ms = interval_ms
        self.kinds_max = kinds_max
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._closed: list[Suppressed] = []  # evicted early, reported by the next due()
        self.held_total = 0

    def admit(self, kind: str, now_ms: int, example: str) -> bool:
        """Whether a line of ``kind`` at ``now_ms`` is written (else it is counted).

        Call :meth:`due` first with the same ``now_ms``, so that a window whose interval
        has passed is summarised and closed before the line opens a new one.
        """
        window = self._windows.get(kind)
        if window is None or now_ms - window.opened_ms >= self.interval_ms:
            if window is not None:
                self._close(kind, window, now_ms)
            window = self._windows[kind] = _Window(now_ms)
            if len(self._windows) > self.kinds_max:
                oldest, evicted = self._windows.popitem(last=False)
                self._close(oldest, evicted, now_ms)
        if window.written < self.burst:
            window.written += 1
            return True
        window.held += 1
        window.example = example
        self.held_total += 1
        return False

    def due(self, now_ms: int) -> list[Suppressed]:
        """The summaries of the windows whose interval has passed by ``now_ms`` (and of
        windows closed early), each once; closed windows are forgotten."""
        for kind, window in list(self._windows.items()):
            if now_ms - window.opened_ms >= self.interval_ms:
                del self._windows[kind]
                self._close(kind, window, now_ms)
        found, self._closed = self._closed, []
        return found

    def drain(self, now_ms: int) -> list[Suppressed]:
        """Every summary still open, e.g. when the process stops."""
        for kind, window in self._windows.items():
            self._close(kind, window, now_ms)
        self._windows.clear()
        found, self._closed = self._closed, []
        return found

    def next_deadline_ms(self) -> int | None:
        """When the earliest window with held-back lines closes (None: none has any)."""
        held = [w.opened_ms + self.interval_ms for w in self._windows.values() if w.held]
        return min(held, default=None)

    def _close(self, kind: str, window: _Window, now_ms: int) -> None:
        if window.held:
            until_ms = min(now_ms, window.opened_ms + self.interval_ms)
            self._closed.append(
                Suppressed(kind, window.held, window.opened_ms, until_ms, window.example)
            )
