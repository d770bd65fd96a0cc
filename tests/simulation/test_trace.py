"""The trace: canonical lines, the digest, the steps that matter, and determinism checks.

The determinism tests run the toy world (cluster/sim/toy.py): two counters over the
simulated network with faults on, crashes and endpoint changes included.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.sim.faults import parse_faults
from cluster.sim.toy import COUNT, run, simulate
from cluster.sim.trace import (
    Trace,
    TraceError,
    canonical,
    check_determinism,
    compare,
    load_runner,
    main,
    rerun,
    shorten,
    wire_view,
)
from router.wire import Handoff, Heartbeat, encode

pytestmark = pytest.mark.simulation


class Colour(Enum):
    RED = 1


@dataclass(frozen=True)
class Record:
    lane: int
    seq: int


def test_canonical_forms_do_not_depend_on_insertion_or_hash_order() -> None:
    assert canonical((1, "a", None, True, 2.5, b"\x01")) == '[1,"a",~,T,2.5,x01]'
    assert canonical({"b": 1, "a": 2}) == canonical({"a": 2, "b": 1}) == '{"a":2,"b":1}'
    assert canonical(frozenset({"x", "y", "z"})) == '{"x","y","z"}'
    assert canonical(Colour.RED) == "Colour.RED"
    assert canonical(Record(7, 1)) == "Record(lane=7,seq=1)"
    long = bytes(range(100))
    digest = hashlib.blake2b(long, digest_size=8).hexdigest()
    assert canonical(long) == f"x100:{digest}"
    with pytest.raises(AssertionError, match="no canonical trace form for object"):
        canonical(object())


def test_the_digest_is_the_blake2b_of_the_lines_and_lines_beyond_the_bound_are_counted() -> None:
    trace = Trace()
    trace.record(5, "shard-0", "fire", "fetch", (1, 2))
    trace.record(7, "router", "commit", {"epoch": 3})
    assert trace.lines() == ('5 shard-0 fire "fetch" [1,2]', '7 router commit {"epoch":3}')
    expected = hashlib.blake2b(trace.to_bytes(), digest_size=16).hexdigest()
    assert trace.digest() == expected
    short = Trace(lines_kept_max=1)
    short.record(5, "shard-0", "fire", "fetch", (1, 2))
    short.record(7, "router", "commit", {"epoch": 3})
    assert (len(short), short.complete, short.digest()) == (2, False, expected)
    assert Trace.from_lines(short.lines(), count=2, digest=expected).digest() == expected


def test_the_steps_that_matter_are_selected_and_shortened() -> None:
    trace = Trace()
    for i in range(100):
        trace.record(i, f"shard-{i % 3}", "fire", i)
    touching = trace.touching("shard-1")
    assert len(touching) == 33
    assert touching[0] == (1, "1 shard-1 fire 1")
    short = shorten(touching, head=2, tail=2)
    assert short == ["#1 1 shard-1 fire 1", "#4 4 shard-1 fire 4", "... 29 lines ...",
                     "#94 94 shard-1 fire 94", "#97 97 shard-1 fire 97"]  # fmt: skip


def test_compare_names_the_first_divergent_event() -> None:
    ours, theirs = Trace(), Trace()
    for trace in (ours, theirs):
        trace.record(0, "a", "start")
        trace.record(1, "a", "send", 1)
    assert compare(ours, theirs) is None
    ours.record(2, "a", "recv", 1)
    theirs.record(2, "b", "recv", 1)
    divergence = compare(ours, theirs)
    assert divergence is not None
    assert (divergence.index, divergence.ours, divergence.theirs) == (2, "2 a recv 1", "2 b recv 1")
    ours.record(3, "a", "more")
    shorter = Trace.from_lines(ours.lines()[:3])
    assert compare(ours, shorter) == type(divergence)(3, "3 a more", None)


def test_the_toy_world_finds_a_peer_on_its_new_endpoint() -> None:
    result = simulate(5, plan=parse_faults("crash_shard=3"))
    assert result.converged
    assert result.ledger.ok, str(result.ledger)
    assert result.faults.by_kind()["crash_shard"] > 5
    to_a_restarted_peer = re.compile(r'^\d+ [ab] send \d+ "tcp://[ab]\.sim:400(0[2-9]|[1-9]\d)"')
    assert any(to_a_restarted_peer.match(line) for line in result.trace.lines())


def test_a_node_that_never_asks_where_its_peer_went_never_finds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The mutation: a peer restarted on a new endpoint is never looked up again (the
    # bug of a shard restarted on a new port that its peers never find).
    monkeypatch.setattr("cluster.sim.toy.LOOKUP_AFTER", 10**9)
    results = [simulate(seed, plan=parse_faults("crash_shard=3")) for seed in range(3)]
    assert not any(r.converged for r in results)
    assert any(not r.ledger.ok for r in results)  # the ledger sees outboxes never drained
    assert {v.rule for r in results for v in r.ledger.violations} == {"stuck_in_outbox"}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**63))
def test_the_same_seed_gives_the_same_trace_bytes(seed: int) -> None:
    first = run(seed)
    second = run(seed)
    assert first.to_bytes() == second.to_bytes()
    assert first.digest() == second.digest()


def test_another_seed_gives_another_trace() -> None:
    assert len({run(seed).digest() for seed in range(10)}) == 10


def test_a_seed_replays_in_a_fresh_interpreter_with_another_hash_seed() -> None:
    report = check_determinism("cluster.sim.toy:run", 11)
    assert report.ok, str(report)
    assert report.events == len(run(11))
    assert str(report).startswith(f"seed 11: {report.events} events, digest {report.digest}")


def test_a_world_that_depends_on_the_hash_seed_is_caught_at_its_first_divergence() -> None:
    report = check_determinism("tests.simulation.hashy_world:hash_dependent", 3, reruns=2)
    assert not report.ok
    divergences = [d for _, _, d in report.reruns if d is not None]
    assert divergences
    assert all(d.index >= 1 for d in divergences)  # the start line agrees
    assert "first divergence at event #" in str(report)
    assert "DIFFERENT" in str(report)


def test_runner_errors_are_named() -> None:
    with pytest.raises(TraceError, match=r"expected package\.module:function"):
        load_runner("cluster.sim.toy")
    with pytest.raises(TraceError, match=r"cannot import 'cluster\.sim\.nowhere'"):
        load_runner("cluster.sim.nowhere:run")
    with pytest.raises(TraceError, match=r"has no function 'walk'"):
        load_runner("cluster.sim.toy:walk")
    with pytest.raises(TraceError, match=r"exited 1: .*the world of seed 4 fell over"):
        rerun("tests.simulation.hashy_world:failing", 4, hash_seed=1)


def test_a_runner_that_prints_does_not_spoil_the_rerun() -> None:
    trace = rerun("tests.simulation.hashy_world:chatty", 9, hash_seed=2)
    assert trace.lines() == ("0 world start 9",)


def test_main_wants_a_runner_and_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: python -m cluster.sim.trace" in capsys.readouterr().err


def test_the_toy_counts_every_number() -> None:
    assert simulate(0, plan=parse_faults("none")).hwms == {"a": COUNT, "b": COUNT}


def test_wire_frames_appear_decoded_and_garbage_says_why() -> None:
    handoff = encode(
        Handoff(sender=1, epoch=4, runs=((7, 1, 2, b"\x92\x01\x02"),)), message_id=9, incarnation=3
    )
    beat = encode(
        Heartbeat(
            shard_id=0, endpoint="tcp://shard-0.sim:40002", epoch=4, progress={"loops": 5, "a": 1}
        ),
        message_id=1,
    )
    trace = Trace()
    trace.record(10, "shard-1", "send", wire_view(handoff))
    trace.record(11, "shard-0", "send", wire_view(beat))
    trace.record(12, "shard-0", "recv", wire_view(b"\xc1garbage"))
    lines = trace.lines()
    assert lines[0] == (
        "10 shard-1 send Envelope(message=Handoff(sender=1,epoch=4,runs=[[7,1,2,x920102]]),"
        "message_id=9,incarnation=3)"
    )
    assert '{"a":1,"loops":5}' in lines[1]  # a mapping in sorted order
    assert lines[2].startswith('12 shard-0 recv ["undecodable",')
