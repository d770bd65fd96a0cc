"""The one logging set-up of the cluster's processes: shard, router, supervisor, worker
(SHELL).

:func:`configure_logging` gives a process one handler, to its log file or to stderr,
that writes either text lines (``time LEVEL logger: message``) or, with ``json_lines``
(``--log-json``), one JSON object per line: ``time`` (UTC, ISO 8601), ``level``,
``logger``, ``message`` and ``fields`` (the pid, anything passed as ``extra=``, and a
traceback as ``exception``). Every line passes a :class:`router.loglimit.LogLimiter`
first: a flood of lines of one kind (one logger and format string) is cut to the first
few per interval plus one summary line, "N more like this in the last T s", written
when the interval ends, by a small thread if the process logs nothing else then, and
at the latest when logging shuts down (docs/cluster.md, "Looking at it").
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from router.loglimit import LogLimiter, Suppressed

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FLUSH_WAIT_S_MIN: Final = 0.05
_OURS: Final = "_cpn_configured"  # marks a handler this module made (closed on a redo)
# A LogRecord's own attributes; any other attribute came from `extra=` and is a field.
_RECORD_ATTRIBUTES: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {"pid": record.process}
        fields.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        line = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "fields": fields,
        }
        return json.dumps(line, default=repr, ensure_ascii=False)


class SummarisingHandler(logging.Handler):
    """Passes records to ``target`` through ``limiter``; writes the summaries of what it
    held back (see the module docstring). Its thread ends when the handler is closed."""

    def __init__(
        self,
        target: logging.Handler,
        limiter: LogLimiter,
        *,
        clock_ms: Callable[[], int] = _monotonic_ms,
    ) -> None:
        super().__init__()
        self.target = target
        self.limiter = limiter
        self._clock_ms = clock_ms
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="log-summaries", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        now_ms = self._clock_ms()
        self._write(self.limiter.due(now_ms))
        kind = f"{record.name}\0{record.levelno}\0{record.msg}"
        if self.limiter.admit(kind, now_ms, record.getMessage()):
            self.target.handle(record)

    def _write(self, summaries: list[Suppressed]) -> None:
        for summary in summaries:
            name, level, template = summary.kind.split("\0", 2)
            self.target.handle(
                logging.makeLogRecord(
                    {
                        "name": name,
                        "levelno": int(level),
                        "levelname": logging.getLevelName(int(level)),
                        "msg": summary.describe(),
                        "suppressed": summary.count,
                        "window_s": (summary.until_ms - summary.since_ms) / 1000,
                        "like": template,
                    }
                )
            )

    def _flush_loop(self) -> None:
        while True:
            with self._locked():
                deadline_ms = self.limiter.next_deadline_ms()
            wait_s = self.limiter.interval_ms / 1000
            if deadline_ms is not None:
                wait_s = max(_FLUSH_WAIT_S_MIN, (deadline_ms - self._clock_ms()) / 1000)
            if self._closed.wait(wait_s):
                return
            with self._locked():
                self._write(self.limiter.due(self._clock_ms()))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The handler's own lock: handle() holds it around emit(), so the thread and
        # the logging calls never write or count at the same time.
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        self._closed.set()
        with self._locked():
            self._write(self.limiter.drain(self._clock_ms()))
        self.target.close()
        super().close()


def configure_logging(
    path: Path | None,
    *,
    json_lines: bool = False,
    logger: str = "",
    text_format: str = TEXT_FORMAT,
    limiter: LogLimiter | None = None,
    summarise: bool = True,
) -> logging.Handler:
    """Make ``logger`` (default: the root) log at INFO through one summarising handler
    to ``path`` (appended to), or to stderr if ``path`` is None; return the handler.

    ``summarise=False`` writes every line: for a process whose lines tell a story that
    nobody outside can flood (the supervisor's restarts and kills).

    The handlers it had before are replaced (and closed if this function made them),
    so calling it again (a test, a second serve in one interpreter) does not write
    lines twice.
    """
    target: logging.Handler = (
        logging.StreamHandler(sys.stderr) if path is None else logging.FileHandler(path)
    )
    target.setFormatter(JsonLines() if json_lines else logging.Formatter(text_format))
    setattr(target, _OURS, True)
    handler = SummarisingHandler(target, limiter or LogLimiter()) if summarise else target
    chosen = logging.getLogger(logger or None)
    for old in chosen.handlers:
        if isinstance(old, SummarisingHandler) or getattr(old, _OURS, False):
            old.close()
    chosen.handlers[:] = [handler]
    chosen.setLevel(logging.INFO)
    return handler
