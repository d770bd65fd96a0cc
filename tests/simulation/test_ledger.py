"""The token ledger on hand-built histories: what balances, and every rule it breaks."""

from __future__ import annotations

import pytest

from cluster.sim.ledger import (
    HISTORY_HEAD,
    HISTORY_TAIL,
    VIOLATIONS_MAX,
    Acked,
    Activated,
    Applied,
    Consumed,
    Crashed,
    Exported,
    LedgerError,
    LedgerEvent,
    Present,
    Produced,
    Recovered,
    Sealed,
    Unsealed,
    batch_events,
    check,
)

pytestmark = pytest.mark.simulation

A = ("a.example",)
B = ("b.example",)
S0, S1, S2 = "shard-0", "shard-1", "shard-2"


def _rules(history: list[LedgerEvent], *, drained: bool = False) -> list[str]:
    return [v.rule for v in check(history, drained=drained).violations]


def _balanced() -> list[LedgerEvent]:
    """A put, a firing, a handoff, a lease, a slot move, a crash: everything accounted."""
    return [
        Produced(S0, "domains", A, "put"),
        Produced(S0, "domains", A, "put"),  # two equal tokens: no identity, a count of 2
        Produced(S0, "domains", B, "initial"),
        # A firing on shard 0 turns a domain into a target whose slot shard 1 owns.
        Produced(S0, "targets", A, "seed"),
        Consumed(S0, "domains", A, "seed"),
        Exported(S0, 7, 1, "targets", A),
        Applied(S1, S0, 7, 1, "targets", A),
        Acked(S0, 7, 1),
        Acked(S0, 7, 1),  # a repeated acknowledgement changes nothing
        # A worker leases the target on shard 1 and completes it.
        Produced(S1, "targets__held", ("l1", 0, *A), "lease"),
        Consumed(S1, "targets", A, "lease"),
        Produced(S1, "fetched", A, "complete"),
        Consumed(S1, "targets__held", ("l1", 0, *A), "complete"),
        # Shard 1's slot moves to shard 2; shard 0 crashes and recovers what it committed.
        Sealed(S1, 1, "fetched", A),
        Crashed(S0),
        Activated(S2, 1, "fetched", A),
        Recovered(S0, (("domains", A, 1), ("domains", B, 1))),
        Present(S0, "domains", A, 1),
        Present(S0, "domains", B, 1),
        Present(S2, "fetched", A, 1),
    ]


def test_a_balanced_history_passes_also_drained() -> None:
    report = check(_balanced(), drained=True)
    assert report.ok, str(report)
    assert str(report) == f"ledger balanced over {len(_balanced())} events"
    report.raise_if_failed()


def test_a_node_down_at_the_end_counts_its_committed_marking() -> None:
    history = [*_balanced()[:-3], Crashed(S0), Present(S2, "fetched", A, 1)]
    assert check(history).ok


def test_a_lost_token_is_named_with_its_history() -> None:
    history = _balanced()
    history.remove(Present(S2, "fetched", A, 1))
    report = check(history)
    assert [v.rule for v in report.violations] == ["balance"]
    violation = report.violations[0]
    assert (violation.place, violation.value) == ("fetched", A)
    assert violation.detail == (
        "lost: created 1 != consumed 0 + present 0 + in outboxes 0 + in shipments 0"
    )
    assert violation.history == (
        "#11 Produced(node='shard-1', place='fetched', value=('a.example',), via='complete')",
        "#13 Sealed(node='shard-1', move_id=1, place='fetched', value=('a.example',))",
        "#15 Activated(node='shard-2', move_id=1, place='fetched', value=('a.example',))",
    )
    with pytest.raises(LedgerError, match=r"^ledger: 1 violation in 19 events\nbalance: fetched"):
        report.raise_if_failed()


def test_a_duplicated_token_does_not_balance() -> None:
    history = [*_balanced(), Present(S1, "fetched", A, 1)]  # a copy left at the source
    assert _rules(history) == ["balance"]
    assert check(history).violations[0].detail.startswith("made up or doubled: created 1")


def test_a_token_applied_twice_by_the_same_inbox() -> None:
    history = _balanced()
    history.insert(7, Applied(S1, S0, 7, 1, "targets", A))  # a resend not deduplicated
    history.append(Present(S1, "targets", A, 1))  # the copy it left
    report = check(history)
    assert [v.rule for v in report.violations] == ["applied_twice", "balance"]
    assert report.violations[0].detail == (
        "shard-1 applied shard-0 lane 7 seq 1, applied before at #6"
    )


def test_a_token_applied_by_two_inboxes_after_its_slot_moved_without_its_hwm() -> None:
    history = _balanced()
    history.insert(7, Applied(S2, S0, 7, 1, "targets", A))
    assert _rules(history) == ["applied_twice", "misplaced"]  # S2 reports no such copy
    history.append(Present(S2, "targets", A, 1))  # it does
    assert _rules(history) == ["applied_twice", "balance"]


def test_a_token_that_leaves_an_outbox_without_being_applied() -> None:
    history = [
        Produced(S0, "targets", A, "seed"),
        Exported(S0, 7, 1, "targets", A),
        Produced(S0, "targets", B, "seed"),
        Exported(S0, 7, 2, "targets", B),
        Applied(S1, S0, 7, 2, "targets", B),  # seq 1 was lost, seq 2 applied past a gap
        Acked(S0, 7, 2),
        Present(S1, "targets", B, 1),
    ]
    report = check(history)
    assert [v.rule for v in report.violations] == ["left_unapplied"]
    assert report.violations[0].value == A
    assert report.violations[0].detail == (
        "shard-0 dropped lane 7 seq 1 (exported at #1) from its outbox, but no inbox applied it"
    )


def test_an_entry_in_an_outbox_balances_until_the_drain_requires_it_gone() -> None:
    history = [Produced(S0, "targets", A, "seed"), Exported(S0, 7, 1, "targets", A)]
    assert _rules(history) == []
    assert _rules(history, drained=True) == ["stuck_in_outbox"]


@pytest.mark.parametrize(
    ("history", "rule"),
    [
        ([Consumed(S0, "domains", A, "seed")], "spent_absent"),
        (
            [
                Produced(S0, "targets", A, "seed"),
                Produced(S0, "targets", A, "seed"),
                Exported(S0, 7, 1, "targets", A),
                Exported(S0, 7, 1, "targets", A),
            ],
            "seq_reused",
        ),
        ([Applied(S1, S0, 7, 1, "targets", A)], "applied_unexported"),
        (
            [
                Produced(S0, "targets", A, "seed"),
                Exported(S0, 7, 1, "targets", A),
                Applied(S1, S0, 7, 1, "targets", B),
            ],
            "applied_other_value",
        ),
        ([Acked(S0, 7, 1)], "acked_unexported"),
        (
            [
                Produced(S0, "targets", A, "seed"),
                Sealed(S0, 3, "targets", A),
                Activated(S1, 3, "targets", A),
                Unsealed(S0, 3, "targets", A),  # a move both committed and aborted
            ],
            "shipment_overdrawn",
        ),
        (
            [Produced(S0, "targets", A, "seed"), Crashed(S0), Consumed(S0, "targets", A, "t")],
            "acted_while_down",
        ),
        (
            [Produced(S0, "targets", A, "seed"), Crashed(S0), Recovered(S0, ())],
            "recovered_otherwise",
        ),
        (
            [Produced(S0, "targets", A, "seed"), Sealed(S0, 3, "targets", A)],
            "stuck_in_shipment",
        ),
    ],
)
def test_each_rule_is_named(history: list[LedgerEvent], rule: str) -> None:
    assert rule in _rules(history, drained=True)


def test_a_sealed_token_fired_at_its_source_is_spent_absent() -> None:
    history = [
        Produced(S0, "targets", A, "seed"),
        Sealed(S0, 3, "targets", A),
        Consumed(S0, "targets", A, "fetch"),  # the source fired a slot it had sealed
    ]
    report = check(history)
    assert report.violations[0].rule == "spent_absent"
    assert report.violations[0].detail == "shard-0 consumed (by fetch) a token it did not hold"


def test_a_token_on_the_wrong_node_is_misplaced() -> None:
    history = [Produced(S0, "targets", A, "seed"), Present(S1, "targets", A, 1)]
    assert _rules(history) == ["misplaced", "misplaced"]  # one too few on S0, too many on S1


def test_a_long_history_is_shortened_and_violations_are_capped() -> None:
    history: list[LedgerEvent] = []
    for _ in range(100):
        history += [Produced(S0, "pings", A, "t"), Consumed(S0, "pings", A, "t")]
    history += [Consumed(S0, "pings", (f"x{i}",), "t") for i in range(VIOLATIONS_MAX + 5)]
    report = check(history)
    assert len(report.violations) == VIOLATIONS_MAX
    assert report.more > 0
    assert str(report).endswith(f"... and {report.more} more")
    lost = check([*history[:200], Produced(S0, "pings", A, "t")]).violations
    assert [(v.rule, v.place, v.value) for v in lost] == [("balance", "pings", A)]
    assert len(lost[0].history) == HISTORY_HEAD + 1 + HISTORY_TAIL
    assert lost[0].history[HISTORY_HEAD] == f"... {201 - HISTORY_HEAD - HISTORY_TAIL} events ..."
    assert lost[0].history[-1] == (
        "#200 Produced(node='shard-0', place='pings', value=('a.example',), via='t')"
    )


def test_a_netted_batch_becomes_events_in_the_order_the_ledger_needs() -> None:
    # One batch of shard 1: a handed-in target is applied and fired at once (it never
    # shows in the netted marking), the firing produces a result for a slot shard 2
    # owns (straight to the outbox), a pool token is given away, and a domain is put.
    events = batch_events(
        S1,
        marking=[
            (("proxies", ("p1",)), -1),  # given away: out of the marking
            (("domains", B), 1),  # put
            (("domains", B), 1),
            (("domains", B), -1),  # folded times: the changes add up
        ],
        applied=[(S0, 7, 1, "targets", A)],
        exported=[(9, 4, "fetched", A), (0x10002, 1, "proxies", ("p1",))],
        acked=[(9, 3)],
        via="fetch",
    )
    assert events == [
        Produced(S1, "domains", B, "fetch"),
        Produced(S1, "fetched", A, "fetch"),
        Applied(S1, S0, 7, 1, "targets", A),
        Consumed(S1, "targets", A, "fetch"),
        Exported(S1, 9, 4, "fetched", A),
        Exported(S1, 0x10002, 1, "proxies", ("p1",)),
        Acked(S1, 9, 3),
    ]


def test_batch_events_of_a_slot_move_balance() -> None:
    history: list[LedgerEvent] = [
        Produced(S0, "targets", A, "put"),
        Produced(S0, "targets", B, "put"),
    ]
    # Sealed tokens leave the marking the source fires from (its store keeps them until
    # the move forgets them: that deletion is no ledger event).
    history += batch_events(
        S0, marking=[(("targets", A), -1), (("targets", B), -1)],
        sealed=[(5, "targets", A), (5, "targets", B)],
    )  # fmt: skip
    history += batch_events(
        S1, marking=[(("targets", A), 1), (("targets", B), 1)],
        activated=[(5, "targets", A), (5, "targets", B)],
    )  # fmt: skip
    history += [Present(S1, "targets", A, 1), Present(S1, "targets", B, 1)]
    assert check(history, drained=True).ok
