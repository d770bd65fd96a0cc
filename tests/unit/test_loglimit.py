"""router/loglimit.py (pure, time as a parameter) and router/shell/logsetup.py's handler
and JSON lines, driven in-process with a fake clock: a flood of one kind of line is cut to
a burst per interval plus one summary that counts the rest; nothing goes uncounted."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from router.loglimit import LogLimiter, Suppressed
from router.shell.logsetup import JsonLines, SummarisingHandler


def test_first_burst_passes_then_lines_are_counted_and_summarised_once() -> None:
    limiter = LogLimiter(burst=3, interval_ms=1_000)
    admitted = [limiter.admit("bad", t, f"bad {t}") for t in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert limiter.due(999) == [], "the window is still open"
    assert limiter.next_deadline_ms() == 1_000
    assert limiter.due(1_000) == [Suppressed("bad", 7, 0, 1_000, "bad 9")]
    assert limiter.due(5_000) == [], "a summary is returned once"
    assert limiter.held_total == 7


def test_a_closed_window_opens_a_new_burst() -> None:
    limiter = LogLimiter(burst=2, interval_ms=100)
    assert [limiter.admit("k", t, "x") for t in (0, 1, 2)] == [True, True, False]
    # A line after the interval, without due() first: it closes the old window itself.
    assert limiter.admit("k", 150, "x")
    assert limiter.due(150) == [Suppressed("k", 1, 0, 100, "x")]


def test_kinds_are_limited_apart() -> None:
    limiter = LogLimiter(burst=1, interval_ms=100)
    assert [limiter.admit(k, 0, k) for k in ("a", "b", "a", "b", "c")] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert sorted(s.kind for s in limiter.due(100)) == ["a", "b"]


def test_a_window_with_nothing_held_back_says_nothing() -> None:
    limiter = LogLimiter(burst=5, interval_ms=100)
    limiter.admit("quiet", 0, "q")
    assert limiter.next_deadline_ms() is None
    assert limiter.due(10_000) == []


def test_kinds_beyond_the_bound_close_the_oldest_window_early_and_keep_its_count() -> None:
    limiter = LogLimiter(burst=1, interval_ms=1_000, kinds_max=2)
    for _ in range(3):
        limiter.admit("old", 0, "old line")
    limiter.admit("b", 1, "b")
    limiter.admit("c", 2, "c")  # a third kind: "old" is closed at t=2
    assert limiter.due(3) == [Suppressed("old", 2, 0, 2, "old line")]


def test_drain_returns_every_open_count() -> None:
    limiter = LogLimiter(burst=1, interval_ms=1_000)
    for t in range(4):
        limiter.admit("k", t, f"line {t}")
    assert limiter.drain(500) == [Suppressed("k", 3, 0, 500, "line 3")]
    assert limiter.drain(600) == []


def test_summary_text() -> None:
    summary = Suppressed("k", 2_995, 1_000, 11_000, "malformed frame from ab: garbage")
    assert summary.describe() == (
        "2,995 more like this in the last 10 s: malformed frame from ab: garbage"
    )


class _Clock:
    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, _Clock]]:
    stream = io.StringIO()
    target = logging.StreamHandler(stream)
    target.setFormatter(JsonLines())
    clock = _Clock()
    handler = SummarisingHandler(target, LogLimiter(burst=2, interval_ms=1_000), clock_ms=clock)
    logger = logging.getLogger("cpn.test_loglimit")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream, clock
    finally:
        logger.handlers[:] = []
        handler.close()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_handler_writes_a_burst_then_a_json_summary(
    logged: tuple[logging.Logger, io.StringIO, _Clock],
) -> None:
    logger, stream, clock = logged
    for n in range(100):
        logger.warning("malformed frame from %s: %s", f"peer{n}", "garbage")
    assert len(_lines(stream)) == 2
    clock.now_ms = 1_000
    logger.info("shard stopped")  # the next line writes the due summary first
    lines = _lines(stream)
    assert [line["message"] for line in lines[2:]] == [
        "98 more like this in the last 1 s: malformed frame from peer99: garbage",
        "shard stopped",
    ]
    summary = lines[2]
    assert summary["level"] == "WARNING"
    assert summary["logger"] == "cpn.test_loglimit"
    fields = summary["fields"]
    assert isinstance(fields, dict)
    assert fields["suppressed"] == 98
    assert fields["like"] == "malformed frame from %s: %s"


def test_json_lines_carry_extra_fields_and_tracebacks() -> None:
    formatter = JsonLines()
    record = logging.makeLogRecord(
        {"name": "cpn.shard", "levelno": 40, "levelname": "ERROR", "msg": "x=%d", "args": (3,)}
    )
    record.__dict__["shard_id"] = 7
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert set(line) == {"time", "level", "logger", "message", "fields"}
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "cpn.shard", "x=3")
    assert line["fields"]["shard_id"] == 7
    assert "ValueError: boom" in line["fields"]["exception"]
    assert line["time"].endswith("+00:00")
