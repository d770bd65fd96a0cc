"""The supervisor's stuck-shard judgment (cluster.supervisor.no_progress_s), without processes.

A shard is judged only once the router has heard from *this* process, only while the
router no longer reports it as progressing, and only over time during which the
current router answered.
"""

from __future__ import annotations

from typing import Any

from cluster.supervisor import Child, no_progress_s


def _shard(started_at_s: float) -> Child:
    def no_start(_bind: str) -> Any:
        raise AssertionError("never started here")

    return Child("shard 1", no_start, started_at_s=started_at_s)


def _view(*, ago_ms: int, loops: int, progressing: bool, incarnation: int = 1) -> dict[str, Any]:
    return {
        "incarnation": incarnation,
        "last_seen_ms_ago": ago_ms,
        "progress": {"loops": loops, "firings": 0},
        "progressing": progressing,
    }


def test_a_shard_that_has_not_heartbeated_since_it_started_is_never_judged() -> None:
    shard = _shard(started_at_s=100.0)
    # The router never heard from it, then only from its predecessor (before 100 s).
    assert no_progress_s(shard, _view(ago_ms=-1, loops=0, progressing=False),
                         now_s=150.0, judged_since_s=0.0) is None  # fmt: skip
    old = _view(ago_ms=61_000, loops=7, progressing=False)
    assert no_progress_s(shard, old, now_s=160.0, judged_since_s=0.0) is None
    assert shard.progress_at_s is None


def test_a_shard_is_judged_from_its_last_progress_once_the_router_says_so() -> None:
    shard = _shard(started_at_s=100.0)
    beat = _view(ago_ms=100, loops=3, progressing=True, incarnation=2)
    assert no_progress_s(shard, beat, now_s=101.0, judged_since_s=0.0) is None
    assert shard.progress_at_s == 100.9
    # Heartbeats stop (SIGSTOP): same counters, older; the router still says progressing.
    still = _view(ago_ms=2_100, loops=3, progressing=True, incarnation=2)
    assert no_progress_s(shard, still, now_s=103.0, judged_since_s=0.0) is None
    stopped = _view(ago_ms=4_100, loops=3, progressing=False, incarnation=2)
    assert no_progress_s(shard, stopped, now_s=105.0, judged_since_s=0.0) == 105.0 - 100.9
    # A router that answers only since 104 s counts from then.
    assert no_progress_s(shard, stopped, now_s=105.0, judged_since_s=104.0) == 1.0


def test_changing_counters_are_progress() -> None:
    shard = _shard(started_at_s=0.0)
    for loops, now_s in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        view = _view(ago_ms=0, loops=loops, progressing=False)
        assert no_progress_s(shard, view, now_s=now_s, judged_since_s=0.0) == 0.0
    assert shard.progress_at_s == 3.0
