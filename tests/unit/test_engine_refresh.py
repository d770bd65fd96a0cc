"""What the engine searches again, and how future entries wait (docs/engine.md,
"Components and per-key incremental enabling" and "The marking")."""

from collections import Counter
from typing import NamedTuple

from nets import Engine, Net, Place, Transition, variables


class Reply(NamedTuple):
    domain: str
    ok: bool
    n: int


class Slot(NamedTuple):
    n: int


d, r, s = variables("d r s")


def _replies_net(guard_calls: Counter[str]) -> Net:
    """Two transitions on one keyed place, told apart by their guards (the scraper's
    fetched and retry), counting the calls of each guard."""

    def ok(r: Reply) -> bool:
        guard_calls["ok"] += 1
        return r.ok

    def failed(r: Reply) -> bool:
        guard_calls["failed"] += 1
        return not r.ok

    replies = Place("replies", Reply, key="domain")
    done = Place("done", Reply, key="domain")
    return Net(
        "replies",
        places=[replies, done],
        transitions=[
            Transition("ok", consume=[replies(r, domain=d)], guard=ok, produce=[done.produce(r)]),
            Transition(
                "failed", consume=[replies(r, domain=d)], guard=failed, produce=[done.produce(r)]
            ),
        ],
    )


def test_a_removal_searches_again_only_the_components_that_had_a_binding_for_its_key() -> None:
    guard_calls: Counter[str] = Counter()
    engine = Engine(_replies_net(guard_calls))
    engine.add("replies", Reply("a.example", False, 1))
    engine.add("replies", Reply("a.example", False, 2))
    step = engine.fire(0)
    assert step is not None and step.transition == "failed"
    # "ok" rejected both replies, "failed" took the first one.
    assert guard_calls == {"ok": 2, "failed": 1}
    step = engine.fire(0)
    assert step is not None and step.transition == "failed"
    assert step.binding == {"d": "a.example", "r": Reply("a.example", False, 2)}
    assert guard_calls == {"ok": 2, "failed": 2}, (
        "taking a reply that 'ok' had no binding with must not make 'ok' search the "
        "domain's other reply again: losing a candidate cannot give it a binding"
    )
    assert engine.fire(0) is None
    assert guard_calls == {"ok": 2, "failed": 2}, "an empty key is dropped without a search"
    engine.add("replies", Reply("a.example", True, 3))
    step = engine.fire(0)
    assert step is not None and step.transition == "ok"
    assert engine.statistics().firings == {"ok": 1, "failed": 2}
    assert engine.steps == 3


def test_entries_of_one_time_come_due_in_the_order_they_were_produced() -> None:
    slots = Place("slots", Slot)
    later = Place("later", Slot)
    move = Transition("move", consume=[slots(s)], produce=[later.produce(s, delay=5)])
    seen = Place("seen", Slot)
    take = Transition("take", consume=[later(s)], produce=[seen.produce(s)])
    engine = Engine(Net("fifo", places=[slots, later, seen], transitions=[take, move]))
    for n in (3, 1, 2):
        engine.add("slots", Slot(n))
    engine.add("later", Slot(9), time=5)  # waits for the same time, produced first
    assert engine.next_deadline() == 5
    moved = list(engine.run(until=4))
    assert [step.consumed[0][2] for step in moved] == [Slot(1), Slot(2), Slot(3)]
    assert engine.statistics().pending == 4
    assert engine.tokens("later") == [(5, Slot(1)), (5, Slot(2)), (5, Slot(3)), (5, Slot(9))]
    taken = list(engine.run(until=5))
    assert [step.consumed[0][2] for step in taken] == [Slot(1), Slot(2), Slot(3), Slot(9)]
    assert engine.next_deadline() is None


def test_a_time_whose_entries_were_all_withdrawn_sets_no_deadline() -> None:
    slots = Place("slots", Slot)
    out = Place("out", Slot)
    take = Transition("take", consume=[slots(s)], produce=[out.produce(s)])
    engine = Engine(Net("deadline", places=[slots, out], transitions=[take]))
    engine.add("slots", Slot(1), time=5)
    engine.add("slots", Slot(2), time=5)
    engine.add("slots", Slot(3), time=8)
    engine.withdraw("slots", Slot(1), time=5)
    assert engine.next_deadline() == 5, "Slot(2) still comes due at 5"
    engine.withdraw("slots", Slot(2), time=5)
    assert engine.next_deadline() == 8
    assert engine.statistics().pending == 1
    engine.extract([("slots", 8, Slot(3))])
    assert engine.next_deadline() is None
    assert engine.count("slots") == 0
