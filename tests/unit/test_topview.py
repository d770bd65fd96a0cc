"""cluster/topview.py: rates from two samples, restarts, and the frame, on made-up samples."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.topview import Sample, View, advance, render, restarted


def _stats(
    *, incarnation: int = 1, now_ms: int, firings: dict[str, int], **more: Any
) -> dict[str, Any]:
    return {"incarnation": incarnation, "now_ms": now_ms, "firings": firings, **more}


def _sample(at_ms: int, stats: dict[int, dict[str, Any]], **more: Any) -> Sample:
    shards = tuple({"alive": k in stats, "progressing": True, "slots": 2} for k in range(2))
    return Sample(
        at_ms, "jobs", 3, shards, (0, 0, 1, 1), stats, more.pop("router", {}), {0: 11, 1: 12}, 10
    )


def _two(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> View:
    return advance(advance(None, _sample(0, before)), _sample(1000, after))


def test_rates_come_from_two_samples_on_each_shards_own_clock() -> None:
    view = _two(
        {0: _stats(now_ms=1_000, firings={"a": 10, "b": 0})},
        {0: _stats(now_ms=3_000, firings={"a": 30, "b": 4})},
    )
    assert view.shard_rates == {0: 12.0}
    assert view.transition_rates == {"a": 10.0, "b": 2.0}
    assert view.restarts == {}


def test_first_sample_has_no_rates() -> None:
    view = advance(None, _sample(0, {0: _stats(now_ms=5, firings={"a": 1})}))
    assert (view.shard_rates, view.transition_rates, view.samples) == ({}, {}, 1)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            _stats(incarnation=1, now_ms=1, firings={"a": 5}),
            _stats(incarnation=2, now_ms=9, firings={"a": 50}),
        ),
        (_stats(now_ms=1, firings={"a": 50}), _stats(now_ms=9, firings={"a": 5})),
    ],
    ids=["incarnation-changed", "counter-dropped"],
)
def test_a_restart_is_counted_and_gives_no_rate(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert restarted(before, after)
    view = _two({0: before}, {0: after})
    assert view.restarts == {0: 1}
    assert view.shard_rates == {}
    assert view.transition_rates == {}


def test_restarts_add_up_and_survive_a_missed_sample() -> None:
    view = advance(None, _sample(0, {0: _stats(incarnation=1, now_ms=1, firings={})}))
    view = advance(view, _sample(1, {}))  # shard 0 did not answer this time
    view = advance(view, _sample(2, {0: _stats(incarnation=4, now_ms=9, firings={})}))
    assert view.restarts == {0: 3}, "three incarnations passed between the answered samples"
    assert "restarts seen since cpn top started: 3 (shard 0: 3)" in render(
        view, width=200, height=100, interval_ms=1000
    )


def test_persisted_totals_keep_a_rate_through_a_restart() -> None:
    view = _two(
        {0: _stats(incarnation=1, now_ms=0, firings={"a": 90}, firings_total=100)},
        {0: _stats(incarnation=2, now_ms=2_000, firings={"a": 4}, firings_total=140)},
    )
    assert view.restarts == {0: 1}
    assert view.shard_rates == {0: 20.0}


def test_frame_shows_shards_places_outboxes_and_moves() -> None:
    moves = {
        "moves_active": [{"move_id": 7, "slot": 3, "source": 0, "target": 1, "state": "copying"}],
        "moves_done": 2,
        "members": 2,
    }
    before = {0: _stats(now_ms=0, firings={"dispatch": 1}, tokens={"inbox": 3})}
    after = {
        0: _stats(
            now_ms=1_000,
            firings={"dispatch": 6},
            tokens={"inbox": 3},
            outbox_tokens=2,
            leases_live=1,
        )
    }
    view = advance(advance(None, _sample(0, before)), _sample(1000, after, router=moves))
    text = "\n".join(render(view, width=200, height=100, interval_ms=1000))
    assert "net 'jobs', epoch 3, 1/2 shards alive, router pid 10" in text
    assert "0      yes    11   1            0         2      6        5.0        2       1" in text
    assert "1      no     12   -" in text
    assert "  dispatch  5.0/s  6" in text
    assert "  inbox  3" in text
    assert "(without shards 1)" in text
    assert "outbox tokens (in flight between shards) (without shards 1): 2" in text
    assert "slot moves: 1 in flight, 2 done, 0 aborted; heading for 2 shards" in text
    assert "  7     3     0     1   copying" in text


def test_frame_fits_a_small_window() -> None:
    stats = {0: _stats(now_ms=0, firings={f"t{i}": i for i in range(50)})}
    lines = render(advance(None, _sample(0, stats)), width=20, height=8, interval_ms=1000)
    assert len(lines) == 8
    assert all(len(line) <= 20 for line in lines)
    assert lines[-1].startswith("... ")


def test_router_error_is_one_line_saying_it_retries() -> None:
    view = View(Sample(5, error="no reply from the router"), {}, {}, {}, {}, 0)
    lines = render(view, width=300, height=10, interval_ms=2000)
    assert lines[0] == (
        "cpn top: the router does not answer (no reply from the router); trying again every 2 s"
    )
