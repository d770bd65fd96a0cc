"""SIGTERM unwinds a foreground command like Ctrl-C does, so it stops what it started.

`cpn crawl`, `cpn demo` and `cpn demo jobs` start a cluster, workers and a mock web, and
stop them in ``finally`` blocks. SIGTERM's default action ends the process without
running them: the children (forked, so they carry the command's own command line) were
left crawling on their own. Inside :func:`sigterm_unwinds` a SIGTERM raises
:class:`Terminated` instead, every ``finally`` runs, and the command exits 143 (128 + 15),
as a process ended by SIGTERM reports.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

EXIT_TERMINATED: Final = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived. A ``BaseException``, as ``KeyboardInterrupt`` is, so that no
    ``except Exception`` on the way takes it for an error and carries on."""


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    # A second SIGTERM must not cut the clean-up the first one started (it stops
    # processes with its own timeouts); SIGKILL is there for an impatient caller.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Run the body with SIGTERM raising :class:`Terminated`; exit 143 if it did.

    Call it in the main thread (signal handlers live there), around the work whose
    ``finally`` blocks stop processes.
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except Terminated:
        raise SystemExit(EXIT_TERMINATED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
