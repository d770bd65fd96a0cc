"""A node's simulated disk: what committed batches built survives a crash, nothing else.

Theory of operation: a :class:`Medium` holds one node's durable state as a value and a
pure ``apply(state, batch) -> state`` function supplied by the runner (for a shard: its
marking, outbox, inbox hwms, table copy and move phases; the batch is what the core
asked to commit). :meth:`Medium.commit` is the one write transaction: the batch is
applied whole or not at all. A crash loses exactly the batch that was not committed
yet, which is simply the batch the runner never passed to :meth:`Medium.commit`; the
next incarnation reads :attr:`Medium.state` and builds its core from it.

A store can fail: :meth:`Medium.fail_commits` makes the following commits raise
:class:`CommitFailed` (a full disk, an I/O error) until :meth:`Medium.repair`. The core
is then told (the shard turns read-only and answers ``store_unavailable``), as the real
shell would tell it. The bound :data:`COMMITS_MAX` catches a runner that commits
without end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from nets.errors import CpnError

COMMITS_MAX: Final = 100_000_000

S = TypeVar("S")
B = TypeVar("B")


class CommitFailed(CpnError):
    """A simulated commit failed; nothing of its batch was written."""


@dataclass(frozen=True, slots=True)
class MediumStatistics:
    commits: int
    failed_commits: int
    failing: str  # why commits fail now ("": they do not)


class Medium(Generic[S, B]):
    """One node's durable state and its commits.

    Args:
        initial: the state of an empty store (a node's first start).
        apply: the pure function that a committed batch applies to the state; it must
            not change its arguments (the previous state stays valid if it raises).
    """

    def __init__(self, initial: S, apply: Callable[[S, B], S]) -> None:
        self._state = initial
        self._apply = apply
        self._commits = 0
        self._failed = 0
        self._failing = ""

    @property
    def state(self) -> S:
        """What a recovery reads: the state every committed batch built."""
        return self._state

    def commit(self, batch: B) -> S:
        """Apply ``batch`` atomically and return the new state.

        Raises:
            CommitFailed: commits fail now (:meth:`fail_commits`); the state is as before.
        """
        if self._failing:
            self._failed += 1
            raise CommitFailed(f"commit {self._commits + self._failed} failed: {self._failing}")
        assert self._commits < COMMITS_MAX, f"more than {COMMITS_MAX} commits"
        self._state = self._apply(self._state, batch)
        self._commits += 1
        return self._state

    def fail_commits(self, reason: str) -> None:
        """From now on every commit raises :class:`CommitFailed` with ``reason``."""
        assert reason, "a failing store needs a reason"
        self._failing = reason

    def repair(self) -> None:
        """Commits succeed again (the operator freed the disk)."""
        self._failing = ""

    def statistics(self) -> MediumStatistics:
        return MediumStatistics(self._commits, self._failed, self._failing)
