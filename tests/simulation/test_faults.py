"""The fault menu: parsing, one-line errors, a deterministic choice per seed, counting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.sim.faults import (
    FAULTS,
    MENU,
    NAMES,
    FaultCounts,
    FaultError,
    FaultPlan,
    UnknownFault,
    choose,
    parse_faults,
)

pytestmark = pytest.mark.simulation


def test_the_menu_has_every_fault_of_the_issue() -> None:
    assert set(NAMES) == {
        "drop", "duplicate", "reorder", "delay", "partition", "one_way_partition",
        "swizzle_clog", "crash_shard", "crash_router", "crash_between_commit_and_send",
        "clock_skew", "scale_out", "scale_in", "stall_worker", "expire_lease",
    }  # fmt: skip


def test_a_name_alone_takes_its_default_rate_and_the_plan_is_in_menu_order() -> None:
    plan = parse_faults("partition, drop=0.2 ,crash_shard=1.5")
    assert plan.rates == (
        ("drop", 0.2),
        ("partition", FAULTS["partition"].default_rate),
        ("crash_shard", 1.5),
    )
    assert parse_faults(plan.describe()) == plan
    assert plan.rate("delay") == 0.0
    assert plan.link_model().drop_rate == 0.2
    assert plan.per_tick("crash_shard") == pytest.approx(0.15)
    assert parse_faults("none") == parse_faults("") == FaultPlan()


def test_an_unknown_fault_is_one_line_that_lists_the_known_ones() -> None:
    with pytest.raises(UnknownFault) as caught:
        parse_faults("drop,earthquake=0.1")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("unknown fault 'earthquake'; known faults: drop, duplicate,")
    assert all(name in message for name in NAMES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("drop=lots", "fault 'drop': rate 'lots' is not a number (e.g. drop=0.01)"),
        ("drop=-1", "fault 'drop': rate -1.0 is negative"),
        ("drop=nan", "fault 'drop': rate nan is negative"),
        ("duplicate=2", "fault 'duplicate': rate 2.0 is a probability per frame, at most 1"),
        ("drop,drop=0.1", "fault 'drop' is given twice in --faults"),
    ],
)
def test_bad_rates_are_named(text: str, expected: str) -> None:
    with pytest.raises(FaultError) as caught:
        parse_faults(text)
    assert str(caught.value) == expected


@given(st.integers(0, 2**64 - 1), st.integers(1, 6))
def test_choose_is_a_function_of_the_seed_with_at_least_the_minimum(
    seed: int, minimum: int
) -> None:
    plan = choose(seed, minimum=minimum)
    assert plan == choose(seed, minimum=minimum)
    assert len(plan.rates) >= minimum
    for name, rate in plan.rates:
        assert 0 < rate <= max(1.0, FAULTS[name].default_rate * 2)


def test_choose_differs_between_seeds_and_respects_the_allowed_names() -> None:
    plans = {choose(seed) for seed in range(20)}
    assert len(plans) > 15
    allowed = ("drop", "crash_shard", "partition")
    in_menu_order = ("drop", "partition", "crash_shard")
    assert {choose(seed, allowed=allowed).names() for seed in range(5)} == {in_menu_order}
    with pytest.raises(FaultError, match="3 faults per seed asked for, but only 2 allowed"):
        choose(1, allowed=("drop", "delay"))
    with pytest.raises(UnknownFault, match="unknown fault 'meteor'"):
        choose(1, allowed=("drop", "delay", "meteor"))


def test_counts_by_kind_in_menu_order() -> None:
    counts = FaultCounts()
    counts.record("crash_shard")
    counts.record("drop", 3)
    other = FaultCounts()
    other.record("crash_shard", 2)
    counts.merge(other)
    assert counts.by_kind() == {"drop": 3, "crash_shard": 3}
    assert list(counts.by_kind()) == ["drop", "crash_shard"]
    assert counts.total() == 6


def test_the_guide_lists_every_fault_with_its_default_rate_and_unit() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs/simulation.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([\d.]+) \| ([a-z ]+) \| (.+) \|$", guide, re.M)
    assert [(name, float(rate), unit, what) for name, rate, unit, what in rows] == [
        (f.name, f.default_rate, f.unit.replace("_", " "), f.what) for f in MENU
    ]
