"""An engine that owns only some partitions exports what it produces for the others."""

from typing import Any, NamedTuple

from nets import Engine, Net, Place, Transition, variables


class Hop(NamedTuple):
    key: str
    n: int


class Note(NamedTuple):
    text: str


class Ticket(NamedTuple):
    name: str


class HalfTheKeys:
    """Keeps keys that start with 'a' and, if told so, the fixed place."""

    def __init__(self, *, fixed: bool) -> None:
        self.local_keys: dict[Any, bool] = {}
        self.fixed = fixed
        self.asked = 0

    def is_local_key(self, key: Any) -> bool:
        self.asked += 1
        local = self.local_keys[key] = str(key).startswith("a")
        return local

    def is_local_fixed(self) -> bool:
        return self.fixed


h, k, n = variables("h k n")


def _net() -> Net:
    start = Place("start", Hop, key="key", initial=[Hop("a0", 0), Hop("a1", 1)])
    there = Place("there", Hop, key="key")
    notes = Place("notes", Note)
    tickets = Place("tickets", Ticket, pool=True)
    move = Transition(
        "move",
        consume=[start(h, key=k)],
        produce=[
            there.produce(lambda h: Hop("b" + h.key, h.n)),
            there.produce_all(lambda h: [Hop("a" + h.key, h.n), Hop("z", h.n)]),
            notes.produce(lambda h: Note(h.key)),
            tickets.produce(lambda h: Ticket(h.key)),
        ],
    )
    return Net("locality", places=[start, there, notes, tickets], transitions=[move])


def test_tokens_of_partitions_held_elsewhere_are_exported_not_kept() -> None:
    locality = HalfTheKeys(fixed=False)
    engine = Engine(_net(), locality=locality)
    steps = [engine.fire(0), engine.fire(0)]
    assert engine.fire(0) is None
    kept = {entry for step in steps if step is not None for entry in step.produced}
    assert kept == {
        ("there", 0, Hop("aa0", 0)),
        ("there", 0, Hop("aa1", 1)),
        ("tickets", 0, Ticket("a0")),
        ("tickets", 0, Ticket("a1")),
    }
    assert sorted(engine.take_exported()) == sorted(
        [
            ("there", 0, Hop("ba0", 0)),
            ("there", 0, Hop("z", 0)),
            ("notes", 0, Note("a0")),
            ("there", 0, Hop("ba1", 1)),
            ("there", 0, Hop("z", 1)),
            ("notes", 0, Note("a1")),
        ]
    )
    assert engine.take_exported() == []
    assert engine.count("there") == 2
    assert engine.count("notes") == 0
    assert engine.count("tickets") == 2


def test_the_key_cache_is_consulted_before_the_locality() -> None:
    locality = HalfTheKeys(fixed=True)
    engine = Engine(_net(), locality=locality)
    engine.fire(0)
    asked = locality.asked
    engine.fire(0)
    assert locality.asked == asked + 2  # 'ba1' and 'aa1' are new; 'z' was cached
    assert engine.count("notes") == 2


def test_without_a_locality_everything_stays() -> None:
    engine = Engine(_net())
    engine.fire(0)
    assert engine.take_exported() == []
    assert engine.count("there") == 3


def test_checked_entries_enter_quiet_places_in_bulk_and_wake_watched_ones() -> None:
    engine = Engine(_net())
    engine.add_checked("there", [(5, Hop("q", 1)), (0, Hop("q", 2))])  # nothing reads it
    assert engine.tokens("there") == [(0, Hop("q", 2)), (5, Hop("q", 1))]
    engine.add_checked("start", [(0, Hop("a9", 9))])  # 'move' reads it: it is woken
    fired = [step.consumed[0][2] for step in engine.run(until=0)]
    assert Hop("a9", 9) in fired
