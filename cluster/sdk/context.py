"""The lease a worker's function is running under, for the function to read (SHELL).

``current()`` inside a worker function (sync or async) gives its :class:`LeaseContext`:
the token's idempotency key (pass it to the service you call, so that a retry after a
lost completion is recognised there), the lease's expiry (renewed by heartbeats while
the function runs) and a way to report progress, which rides on the next heartbeat
and shows in the shard's statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

from nets.errors import CpnError

PROGRESS_CHARS_MAX: Final = 200  # what the shard keeps per lease


@dataclass(slots=True)
class LeaseContext:
    """One token's lease, as its function sees it. ``expires_at_ms`` and the progress
    change while the function runs (heartbeats), so this record is not frozen; only the
    runner writes ``expires_at_ms``, only the function writes the progress."""

    lease_id: str
    shard_id: int
    index: int
    idempotency_key: str
    expires_at_ms: int
    params: Mapping[str, Any] = field(default_factory=dict)
    progress_text: str = ""

    def progress(self, text: str) -> None:
        """Report progress (the last one wins; sent with the next heartbeat)."""
        self.progress_text = text[:PROGRESS_CHARS_MAX]


_current: ContextVar[LeaseContext] = ContextVar("cpn_lease")


def current() -> LeaseContext:
    """The lease of the worker function running now.

    Raises:
        CpnError: called outside a worker function run by the SDK.
    """
    try:
        return _current.get()
    except LookupError:
        raise CpnError(
            "cluster.sdk.current() is only available inside a worker function run by "
            "`cpn worker run`"
        ) from None


def enter(context: LeaseContext) -> None:
    """Make ``context`` current for the running task (the runner calls this)."""
    _current.set(context)
