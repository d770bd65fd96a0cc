"""The simulated disk: committed batches survive a crash, a failing commit writes nothing."""

from __future__ import annotations

from collections import Counter

import pytest

from cluster.sim.medium import CommitFailed, Medium, MediumStatistics

pytestmark = pytest.mark.simulation

Marking = tuple[tuple[str, int], ...]  # (token, count), sorted
Batch = tuple[tuple[str, int], ...]  # (token, +/- count)


def _apply(state: Marking, batch: Batch) -> Marking:
    counts = Counter(dict(state))
    for token, delta in batch:
        counts[token] += delta
        assert counts[token] >= 0, f"{token} would go negative"
    return tuple(sorted((t, n) for t, n in counts.items() if n))


def test_only_committed_batches_survive_a_crash() -> None:
    disk: Medium[Marking, Batch] = Medium((), _apply)
    disk.commit((("a", 2),))
    disk.commit((("a", -1), ("b", 1)))
    pending: Batch = (("c", 5),)  # the batch the node was building when it died
    del pending
    assert disk.state == (("a", 1), ("b", 1))  # what the next incarnation recovers


def test_a_failing_store_writes_nothing_until_repaired() -> None:
    disk: Medium[Marking, Batch] = Medium((), _apply)
    disk.commit((("a", 1),))
    disk.fail_commits("no space left on device")
    with pytest.raises(CommitFailed, match=r"^commit 2 failed: no space left on device$"):
        disk.commit((("b", 1),))
    assert disk.state == (("a", 1),)
    disk.repair()
    disk.commit((("b", 1),))
    assert disk.state == (("a", 1), ("b", 1))
    assert disk.statistics() == MediumStatistics(commits=2, failed_commits=1, failing="")


def test_a_batch_that_cannot_apply_leaves_the_state_as_it_was() -> None:
    disk: Medium[Marking, Batch] = Medium((("a", 1),), _apply)
    with pytest.raises(AssertionError, match="would go negative"):
        disk.commit((("b", 1), ("a", -2)))
    assert disk.state == (("a", 1),)
