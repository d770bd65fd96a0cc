"""The schedule of `cpn chaos` (cluster.chaos.plan): a pure function of its inputs.

Deterministic per seed, one kill per interval and never after the duration, victims
only among the targets (and never the supervisor), and bad durations refused with a
message that says what to change.
"""

from __future__ import annotations

from collections import Counter

import pytest

from cluster.chaos import KILLS_MAX, ROUTER, TARGETS, plan, victims
from nets.errors import CpnError


def test_the_same_seed_gives_the_same_plan_and_another_seed_another(seed: int) -> None:
    targets = victims("all", 3)
    first = plan(seed=seed, duration_ms=60_000, interval_ms=500, targets=targets)
    assert first == plan(seed=seed, duration_ms=60_000, interval_ms=500, targets=targets)
    others = {plan(seed=seed + k, duration_ms=60_000, interval_ms=500, targets=targets)
              for k in range(1, 4)}  # fmt: skip
    assert first not in others, f"seed {seed}: 120 choices among 4 repeated for other seeds"


@pytest.mark.parametrize(
    ("duration_ms", "interval_ms", "kills"),
    [(5_000, 700, 7), (60_000, 2_000, 30), (2_000, 2_000, 1), (2_999, 1_000, 2)],
)
def test_one_kill_per_interval_never_after_the_duration(
    seed: int, duration_ms: int, interval_ms: int, kills: int
) -> None:
    planned = plan(
        seed=seed, duration_ms=duration_ms, interval_ms=interval_ms, targets=victims("shards", 2)
    )
    assert [kill.at_ms for kill in planned] == [k * interval_ms for k in range(1, kills + 1)]
    assert all(0 < kill.at_ms <= duration_ms for kill in planned)


@pytest.mark.parametrize("target", TARGETS)
def test_victims_come_from_the_target_only(seed: int, target: str) -> None:
    targets = victims(target, 3)
    expected = {
        "shards": ("shard 0", "shard 1", "shard 2"),
        "router": (ROUTER,),
        "all": (ROUTER, "shard 0", "shard 1", "shard 2"),
    }[target]
    assert targets == expected
    planned = plan(seed=seed, duration_ms=100_000, interval_ms=100, targets=targets)
    chosen = Counter(kill.victim for kill in planned)
    # 1,000 seeded choices: every target is hit, nothing else (the supervisor never).
    assert set(chosen) == set(targets), f"seed {seed}: {chosen}"


def test_the_plan_depends_on_nothing_but_its_inputs() -> None:
    planned = plan(seed=42, duration_ms=3_000, interval_ms=1_000, targets=victims("all", 2))
    assert [(kill.at_ms, kill.victim) for kill in planned] == [
        (1_000, "shard 1"),
        (2_000, "router"),
        (3_000, "router"),
    ]


@pytest.mark.parametrize(
    ("duration_ms", "interval_ms", "message"),
    [
        (5_000, 0, "--kill-every must be more than 0"),
        (1_000, 2_000, "shorter than --kill-every"),
        (0, 100, "shorter than --kill-every"),
        (KILLS_MAX * 10 + 10, 10, f"more than {KILLS_MAX}"),
    ],
)
def test_bad_durations_are_refused(duration_ms: int, interval_ms: int, message: str) -> None:
    with pytest.raises(CpnError, match=message):
        plan(seed=1, duration_ms=duration_ms, interval_ms=interval_ms, targets=("shard 0",))


def test_bad_targets_are_refused() -> None:
    with pytest.raises(CpnError, match="unknown chaos target 'supervisor'"):
        victims("supervisor", 2)
    with pytest.raises(CpnError, match="no process to kill"):
        plan(seed=1, duration_ms=1_000, interval_ms=100, targets=())
