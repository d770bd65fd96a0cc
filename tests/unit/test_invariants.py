"""The cluster invariant checker: a clean run passes, each fault names its culprit."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.invariants import (
    EXAMPLES_MAX,
    InvariantReport,
    Misplaced,
    ShardSnapshot,
    SlotOwnerProblem,
    check,
    expected_from,
    slot_of_net,
)
from nets.model import Net, Place, Token
from router.slots import SLOT_COUNT, slot_of_key
from router.table import PartitionTable


class Target(NamedTuple):
    domain: str
    url: str


class Proxy(NamedTuple):
    name: str


NET = Net(
    "invariants",
    places=[
        Place("targets", Target, key="domain"),
        Place("done", Target, key="domain"),
        Place("proxies", Proxy, pool=True),
    ],
    transitions=[],
)
SLOT_OF = slot_of_net(NET)
TABLE = PartitionTable.initial(3)
TARGETS = [Target(f"d{i}.example", f"https://d{i}.example/{i}") for i in range(12)]
PROXIES = [Proxy(f"proxy{i}") for i in range(4)]


def _snapshots(
    tokens: Iterable[tuple[str, Token]], table: PartitionTable = TABLE
) -> list[ShardSnapshot]:
    """A clean cluster: each token on its slot's owner (pool tokens spread round robin)."""
    markings: list[dict[str, list[tuple[int, Token]]]] = [{} for _ in range(table.shard_count)]
    for index, (place, token) in enumerate(tokens):
        slot = SLOT_OF(place, token)
        shard = index % table.shard_count if slot is None else table.owners[slot]
        markings[shard].setdefault(place, []).append((index, token))
    return [
        ShardSnapshot(shard, 1, table.epoch, frozenset(table.slots_of(shard)), marking, 0)
        for shard, marking in enumerate(markings)
    ]


def _with_tokens(
    snapshots: list[ShardSnapshot], shard: int, place: str, tokens: Iterable[Token]
) -> list[ShardSnapshot]:
    """``snapshots`` where ``shard`` also holds ``tokens`` in ``place`` (at time 0)."""
    old = snapshots[shard]
    marking = {**old.marking, place: [*old.marking.get(place, []), *((0, t) for t in tokens)]}
    snapshots = list(snapshots)
    snapshots[shard] = dataclasses.replace(old, marking=marking)
    return snapshots


def _without(snapshots: list[ShardSnapshot], place: str, token: Token) -> list[ShardSnapshot]:
    """``snapshots`` where no shard holds ``token`` in ``place`` any more."""
    return [
        dataclasses.replace(
            s, marking={**s.marking, place: [e for e in s.marking.get(place, []) if e[1] != token]}
        )
        for s in snapshots
    ]


def _shard_of(token: Target) -> int:
    slot = SLOT_OF("done", token)
    assert slot is not None
    return TABLE.owners[slot]


def _run(snapshots: list[ShardSnapshot], **kwargs: object) -> InvariantReport:
    """Check against the clean run's expectation: every target done, four proxies."""
    options: dict[str, object] = {
        "expected": {"done": Counter(TARGETS)},
        "conserved": {"proxies": len(PROXIES)},
        "slot_of": SLOT_OF,
        **kwargs,
    }
    return check(snapshots, TABLE, **options)  # type: ignore[arg-type]


CLEAN = _snapshots([("done", t) for t in TARGETS] + [("proxies", p) for p in PROXIES])


def _only(report: InvariantReport, **fields: object) -> None:
    """``report`` has exactly ``fields`` as found, and every other category empty."""
    assert not report.ok
    for field in dataclasses.fields(report):
        found = getattr(report, field.name)
        if field.name in fields:
            assert found == fields[field.name], f"{field.name}: {found!r}\n{report}"
        else:
            assert not found, f"{field.name}: {found!r}\n{report}"


def test_clean_run_passes() -> None:
    report = _run(CLEAN, epochs_seen={"router": [1, 1, 2], "shard-0": [1, 2]})
    assert report.ok, str(report)
    assert str(report) == "cluster invariants hold"


def test_token_times_are_ignored() -> None:
    retimed = [
        dataclasses.replace(s, marking={p: [(99, t) for _, t in ts] for p, ts in s.marking.items()})
        for s in CLEAN
    ]
    assert _run(retimed).ok


def test_lost_token() -> None:
    victim = TARGETS[3]
    report = _run(_without(CLEAN, "done", victim))
    _only(report, lost={"done": Counter([victim])})
    assert "lost tokens (1)" in str(report) and repr(victim) in str(report)


def test_duplicated_token_counts_extra_copies_only() -> None:
    victim = TARGETS[5]
    report = _run(_with_tokens(CLEAN, _shard_of(victim), "done", [victim, victim]))
    _only(report, duplicated={"done": Counter({victim: 2})})
    assert f"{victim!r} x2" in str(report)


def test_unexpected_token_and_checked_places() -> None:
    stray = Target("zz.example", "https://zz.example/")
    report = _run(_with_tokens(CLEAN, _shard_of(stray), "done", [stray]))
    _only(report, unexpected={"done": Counter([stray])})
    # A place outside the expectation is unchecked by default; listed, it must be empty.
    leftover = _with_tokens(CLEAN, _shard_of(stray), "targets", [stray])
    assert _run(leftover).ok
    report = _run(leftover, checked_places=["done", "targets"])
    _only(report, unexpected={"targets": Counter([stray])})


def test_not_conserved_pool() -> None:
    report = _run(_with_tokens(CLEAN, 2, "proxies", [PROXIES[0]]))
    _only(report, not_conserved={"proxies": (4, 5)})
    assert "'proxies': expected 4 tokens, found 5" in str(report)
    assert _run(CLEAN, conserved={"proxies": 4, "leases": 1}).not_conserved == {"leases": (1, 0)}


def test_misplaced_token_names_shard_slot_and_owner() -> None:
    victim = TARGETS[0]
    owner = _shard_of(victim)
    wrong = (owner + 1) % TABLE.shard_count
    moved = _with_tokens(_without(CLEAN, "done", victim), wrong, "done", [victim])
    report = _run(moved)
    slot = slot_of_key(victim.domain)
    _only(report, misplaced=[Misplaced(wrong, "done", victim, slot, owner)])
    assert f"shard {wrong} holds 'done' {victim!r} of slot {slot}, owned by shard {owner}" in str(
        report
    )
    # Without slot_of nothing is checked for placement; pool tokens are never misplaced.
    assert _run(moved, slot_of=None).ok


def test_slot_of_returning_a_non_slot_is_an_error_naming_the_token() -> None:
    with pytest.raises(
        ValueError, match=r"slot_of\('done', Target\(domain='d\d+\.example'.* returned 1024"
    ):
        _run(CLEAN, slot_of=lambda _place, _token: SLOT_COUNT)


def _claims(
    snapshots: list[ShardSnapshot], shard: int, slots: Iterable[int]
) -> list[ShardSnapshot]:
    snapshots = list(snapshots)
    snapshots[shard] = dataclasses.replace(snapshots[shard], owned_slots=frozenset(slots))
    return snapshots


def test_slot_owner_problems_name_slot_claimants_and_owner() -> None:
    mine = set(TABLE.slots_of(1))
    gone, stolen, wrong = 1, 3, 6  # owned by shards 1, 0 and 0 in the initial table
    snapshots = _claims(CLEAN, 1, (mine - {gone}) | {stolen, 5000})
    snapshots = _claims(snapshots, 2, set(TABLE.slots_of(2)) | {wrong})
    snapshots = _claims(snapshots, 0, set(TABLE.slots_of(0)) - {wrong})
    report = _run(snapshots)
    _only(
        report,
        slot_owner_problems=[
            SlotOwnerProblem(gone, (), 1),
            SlotOwnerProblem(stolen, (0, 1), 0),
            SlotOwnerProblem(wrong, (2,), 0),
            SlotOwnerProblem(5000, (1,), None),
        ],
    )
    text = str(report)
    assert "slot 1: claimed by no shard, the router's table says 1" in text
    assert "slot 3: claimed by 0, 1, the router's table says 0" in text
    assert "slot 5000 is not a slot (0..1023), claimed by 1" in text


def test_shard_off_the_routers_epoch_is_reported_and_its_claims_ignored() -> None:
    snapshots = list(CLEAN)
    snapshots[2] = dataclasses.replace(CLEAN[2], epoch=TABLE.epoch + 1)
    report = _run(snapshots)
    assert report.shards_off_epoch == {2: (2, 1)}
    assert [p.slot for p in report.slot_owner_problems] == TABLE.slots_of(2)
    assert "shard 2 at 2, router at 1" in str(report)


def test_after_a_slot_move_shards_that_follow_the_new_table_pass() -> None:
    moved = TABLE.assign({slot_of_key(t.domain): 2 for t in TARGETS[:4]})
    snapshots = _snapshots([("done", t) for t in TARGETS], moved)
    assert check(snapshots, moved, expected={"done": Counter(TARGETS)}, slot_of=SLOT_OF).ok
    stale = check(snapshots, TABLE, expected={"done": Counter(TARGETS)}, slot_of=SLOT_OF)
    assert stale.shards_off_epoch == dict.fromkeys(range(3), (2, 1))
    moved_away = {t for t in TARGETS[:4] if _shard_of(t) != 2}
    assert moved_away
    assert {m.token for m in stale.misplaced} == moved_away


def test_epochs_backwards_per_party() -> None:
    seen = {"router": [1, 2, 2, 3], "shard-0": [1, 3, 2, 4, 1], "shard-1": []}
    report = _run(CLEAN, epochs_seen=seen)
    _only(report, epochs_backwards={"shard-0": [(3, 2), (4, 1)]})
    assert "shard-0: 3 -> 2" in str(report)


def test_outboxes_not_drained_and_failed_lanes() -> None:
    snapshots = list(CLEAN)
    snapshots[1] = dataclasses.replace(CLEAN[1], outbox_tokens=3)
    snapshots[2] = dataclasses.replace(CLEAN[2], failed_lanes=1)
    report = _run(snapshots)
    _only(report, outboxes_not_drained={1: 3}, failed_lanes={2: 1})
    assert "shard 1: 3 tokens" in str(report) and "shard 2: 1 lanes" in str(report)


def test_two_snapshots_of_one_shard_name_it() -> None:
    twice = [*CLEAN, dataclasses.replace(CLEAN[1], incarnation=2)]
    with pytest.raises(ValueError, match="two snapshots of shard 1 \\(incarnations 1 and 2\\)"):
        _run(twice)


def test_a_token_that_is_not_a_tuple_names_shard_and_place() -> None:
    bad = _with_tokens(CLEAN, 0, "done", [["d0.example", "x"]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"shard 0 place 'done': token \['d0\.example'"):
        _run(bad)


def test_str_is_readable_and_bounded() -> None:
    huge = Target("h" * 500, "x")
    snapshots = _snapshots([("done", t) for t in TARGETS[:2]])  # ten targets lost
    snapshots = _with_tokens(snapshots, 0, "done", [huge])
    snapshots = _claims(snapshots, 1, ())  # every slot of shard 1 unclaimed
    text = str(_run(snapshots, conserved={}, slot_of=None))
    lines = text.splitlines()
    assert lines[0] == "cluster invariants violated:"
    assert "  lost tokens (10):" in lines
    assert f"  slot owners ({len(TABLE.slots_of(1))}):" in lines
    assert f"    ... and {len(TABLE.slots_of(1)) - EXAMPLES_MAX} more" in lines
    assert len(lines) <= 1 + 3 * (EXAMPLES_MAX + 2)
    assert max(map(len, lines)) < 200  # long tokens are cut short
    assert "..." in next(line for line in lines if "hhh" in line)


def test_expected_from_injections() -> None:
    injected = [("targets", TARGETS[0]), ("targets", TARGETS[0]), ("proxies", PROXIES[0])]
    assert expected_from(injected) == {
        "targets": Counter({TARGETS[0]: 2}),
        "proxies": Counter([PROXIES[0]]),
    }

    def finish(place: str, token: Token) -> list[tuple[str, Token]]:
        return [("done", token)] if place == "targets" else []

    assert expected_from(injected, finish) == {"done": Counter({TARGETS[0]: 2})}


def test_slot_of_net() -> None:
    target = TARGETS[1]
    assert SLOT_OF("targets", target) == slot_of_key(target.domain)
    assert SLOT_OF("proxies", PROXIES[0]) is None
    with pytest.raises(KeyError, match="no place 'nowhere'"):
        SLOT_OF("nowhere", target)


TOKEN_LISTS = st.lists(st.tuples(st.integers(0, 5)), max_size=20)


@given(TOKEN_LISTS, TOKEN_LISTS)
def test_lost_duplicated_and_unexpected_account_for_the_whole_difference(
    want: list[Token], have: list[Token]
) -> None:
    snapshot = ShardSnapshot(
        0, 1, 1, frozenset(range(SLOT_COUNT)), {"p": [(0, t) for t in have]}, 0
    )
    table = PartitionTable.initial(1)
    report = check([snapshot], table, expected={"p": Counter(want)})
    lost, duplicated, unexpected = (
        getattr(report, name).get("p", Counter()) for name in ("lost", "duplicated", "unexpected")
    )
    assert Counter(want) - lost + duplicated + unexpected == Counter(have)
    assert not set(unexpected) & set(want)
    assert set(duplicated) <= set(want)
    assert report.ok == (Counter(want) == Counter(have))


def test_a_move_left_half_done_is_reported() -> None:
    snapshots = _snapshots([])
    snapshots[1] = dataclasses.replace(snapshots[1], sealed_slots=frozenset({4}))
    snapshots[2] = dataclasses.replace(snapshots[2], staged_slots=frozenset({4}))
    report = check(snapshots, TABLE, moves_active=[{"move_id": 7, "slot": 4, "state": "staging"}])
    assert not report.ok
    assert report.moves_unfinished == {7: "slot 4 staging"}
    assert report.slots_mid_move == {1: "sealed [4], staged []", 2: "sealed [], staged [4]"}
    assert "slot moves not finished (1):\n    move 7: slot 4 staging" in str(report)


def test_a_snapshot_reads_the_slots_mid_move_from_statistics() -> None:
    stats = {
        "shard_id": 1,
        "incarnation": 2,
        "epoch": 5,
        "owned": [1, 4],
        "outbox_tokens": 0,
        "outbox_lanes_failed": 0,
        "sealed": [4],
        "staged": [],
    }
    snapshot = ShardSnapshot.from_statistics(stats)
    assert (snapshot.sealed_slots, snapshot.staged_slots) == (frozenset({4}), frozenset())
