"""The engine's semantics, one feature per test (see the ``nets.engine`` docstring)."""

from collections import Counter
from typing import NamedTuple

import pytest

from nets import CpnError, Engine, Net, Place, Step, TokenError, Transition, variables
from nets.binding import InscriptionError


class Order(NamedTuple):
    customer: str
    item: int


class Stock(NamedTuple):
    item: int
    qty: int


class Slot(NamedTuple):
    n: int


class Job(NamedTuple):
    queue: str
    n: int


c, d, i, j, n, o, q, s, t, x = variables("c d i j n o q s t x")


def _drain(engine: Engine, *, now: int = 0, steps_max: int = 100) -> list[Step]:
    steps = []
    for _ in range(steps_max):
        step = engine.fire(now)
        if step is None:
            return steps
        steps.append(step)
    raise AssertionError(f"still enabled after {steps_max} steps")


def test_join_consumes_only_tokens_matching_on_the_shared_variable() -> None:
    orders = Place("orders", Order, initial=[Order("ann", 3)])
    stock = Place("stock", Stock, initial=[Stock(1, 10), Stock(3, 5), Stock(7, 1)])
    shipped = Place("shipped", Order)
    ship = Transition(
        "ship",
        consume=[orders(o, item=i), stock(s, item=i)],
        produce=[shipped.produce(o)],
    )
    engine = Engine(Net("shop", places=[orders, stock, shipped], transitions=[ship]))
    step = engine.fire(0)
    assert step is not None
    assert step.binding == {"o": Order("ann", 3), "i": 3, "s": Stock(3, 5)}
    assert sorted(step.consumed) == [("orders", 0, Order("ann", 3)), ("stock", 0, Stock(3, 5))]
    assert engine.tokens("stock") == [(0, Stock(1, 10)), (0, Stock(7, 1))]
    assert engine.fire(0) is None


def test_join_without_a_match_is_not_enabled() -> None:
    orders = Place("orders", Order, initial=[Order("ann", 2)])
    stock = Place("stock", Stock, initial=[Stock(1, 10), Stock(3, 5)])
    ship = Transition("ship", consume=[orders(o, item=i), stock(s, item=i)])
    engine = Engine(Net("shop", places=[orders, stock], transitions=[ship]))
    assert engine.fire(0) is None
    assert engine.enabled(0) == []


def test_guard_false_means_not_enabled() -> None:
    slots = Place("slots", Slot, initial=[Slot(1), Slot(3), Slot(4)])
    out = Place("out", Slot)
    even = Transition(
        "even", consume=[slots(s, n=n)], produce=[out.produce(s)], guard=lambda n: n % 2 == 0
    )
    engine = Engine(Net("g", places=[slots, out], transitions=[even]))
    steps = _drain(engine)
    assert [step.binding["n"] for step in steps] == [4]
    assert engine.tokens("slots") == [(0, Slot(1)), (0, Slot(3))]


def test_read_arc_does_not_consume() -> None:
    config = Place("config", Slot, initial=[Slot(7)])
    jobs = Place("jobs", Slot, initial=[Slot(1), Slot(2)])
    done = Place("done", Stock)
    work = Transition(
        "work",
        consume=[jobs(j, n=n)],
        read=[config(c, n=x)],
        produce=[done.produce(lambda n, x: Stock(item=n, qty=x))],
    )
    engine = Engine(Net("r", places=[config, jobs, done], transitions=[work]))
    steps = _drain(engine)
    assert len(steps) == 2
    assert all(step.consumed[0][0] == "jobs" and len(step.consumed) == 1 for step in steps)
    assert engine.tokens("config") == [(0, Slot(7))]
    assert engine.tokens("done") == [(0, Stock(1, 7)), (0, Stock(2, 7))]


def _inhibited_net() -> Net:
    jobs = Place("jobs", Job, key="queue", initial=[Job("a", 1), Job("b", 1)])
    locks = Place("locks", Job, key="queue")
    done = Place("done", Job, key="queue")
    work = Transition(
        "work",
        consume=[jobs(j, queue=q)],
        inhibit=[locks(queue=q)],
        produce=[done.produce(j)],
    )
    return Net("inh", places=[jobs, locks, done], transitions=[work])


def test_inhibitor_blocks_while_a_matching_token_is_available() -> None:
    engine = Engine(_inhibited_net())
    engine.add("locks", Job("a", 9))
    steps = _drain(engine)
    assert [step.binding["q"] for step in steps] == ["b"]
    engine.remove("locks", Job("a", 9), time=0)
    step = engine.fire(0)
    assert step is not None
    assert step.binding["q"] == "a"


def test_inhibitor_ignores_a_pending_future_token() -> None:
    engine = Engine(_inhibited_net())
    engine.add("locks", Job("a", 9), time=10)
    steps = _drain(engine)
    assert sorted(step.binding["q"] for step in steps) == ["a", "b"]
    assert engine.next_deadline() == 10


def test_inhibitor_applies_again_once_the_future_token_is_available() -> None:
    engine = Engine(_inhibited_net())
    engine.add("locks", Job("a", 9), time=10)
    assert engine.fire(10) is not None
    assert engine.fire(10) is None
    assert engine.tokens("jobs") == [(0, Job("a", 1))]


def test_many_arc_consumes_k_matching_tokens_and_needs_all_k() -> None:
    parts = Place("parts", Job, key="queue", initial=[Job("a", 2), Job("a", 1), Job("b", 5)])
    kits = Place("kits", Stock)
    assemble = Transition(
        "assemble",
        consume=[parts.many(3, t, queue=q)],
        produce=[kits.produce(lambda t: Stock(sum(p.n for p in t), len(t)))],
    )
    engine = Engine(Net("m", places=[parts, kits], transitions=[assemble]))
    assert engine.fire(0) is None  # two "a" parts (k-1) and one "b" part
    engine.add("parts", Job("b", 0))
    assert engine.fire(0) is None
    engine.add("parts", Job("a", 4))
    step = engine.fire(0)
    assert step is not None
    assert step.binding["t"] == (Job("a", 1), Job("a", 2), Job("a", 4))
    assert sorted(step.consumed) == [("parts", 0, Job("a", m)) for m in (1, 2, 4)]
    assert engine.tokens("kits") == [(0, Stock(7, 3))]
    assert engine.tokens("parts") == [(0, Job("b", 0)), (0, Job("b", 5))]


def test_timed_token_is_invisible_before_its_time() -> None:
    slots = Place("slots", Slot)
    out = Place("out", Slot)
    sink = Place("sink", Slot)
    move = Transition("move", consume=[slots(s)], produce=[out.produce(s, delay=7)])
    drain = Transition("drain", consume=[out(s)], produce=[sink.produce(s)])
    engine = Engine(Net("t", places=[slots, out, sink], transitions=[move, drain]))
    engine.add("slots", Slot(1), time=5)
    assert engine.next_deadline() == 5
    assert engine.fire(4) is None
    assert engine.next_deadline() == 5
    step = engine.fire(5)
    assert step is not None
    assert step.transition == "move"
    assert step.produced == (("out", 12, Slot(1)),)
    assert engine.next_deadline() == 12
    assert engine.fire(11) is None
    assert engine.tokens("out") == [(12, Slot(1))]
    assert engine.count("out") == 1
    step = engine.fire(12)
    assert step is not None
    assert step.consumed == (("out", 12, Slot(1)),)
    assert engine.next_deadline() is None


def test_future_tokens_of_an_unread_place_set_no_deadline_unless_watched() -> None:
    slots = Place("slots", Slot, initial=[Slot(1)])
    log = Place("log", Slot)
    move = Transition("move", consume=[slots(s)], produce=[log.produce(s, delay=7)])
    net = Net("t", places=[slots, log], transitions=[move])
    unwatched = Engine(net)
    assert unwatched.fire(0) is not None
    assert unwatched.next_deadline() is None  # nothing can wait for "log"
    assert unwatched.tokens("log") == [(7, Slot(1))]
    watched = Engine(net, watch=["log"])
    assert watched.fire(0) is not None
    assert watched.next_deadline() == 7
    assert watched.tokens("log") == [(7, Slot(1))]


def test_run_jumps_to_each_deadline() -> None:
    slots = Place("slots", Slot, initial=[Slot(0)])
    tick = Transition(
        "tick",
        consume=[slots(s, n=n)],
        produce=[slots.produce(lambda n: Slot(n + 1), delay=10)],
        guard=lambda n: n < 3,
    )
    engine = Engine(Net("t", places=[slots], transitions=[tick]))
    steps = list(engine.run(until=1000))
    assert [step.time for step in steps] == [0, 10, 20]
    assert engine.tokens("slots") == [(30, Slot(3))]


def test_higher_priority_fires_first() -> None:
    slots = Place("slots", Slot, initial=[Slot(1)])
    low_out = Place("low_out", Slot)
    high_out = Place("high_out", Slot)
    low = Transition("low", consume=[slots(s)], produce=[low_out.produce(s)])
    high = Transition("high", consume=[slots(s)], produce=[high_out.produce(s)], priority=1)
    engine = Engine(Net("p", places=[slots, low_out, high_out], transitions=[low, high]))
    assert [name for name, _ in engine.enabled(0)] == ["high", "low"]
    step = engine.fire(0)
    assert step is not None
    assert step.transition == "high"
    assert engine.fire(0) is None


def test_equal_priority_prefers_the_transition_declared_first() -> None:
    slots = Place("slots", Slot, initial=[Slot(1)])
    first = Transition("first", consume=[slots(s)])
    second = Transition("second", consume=[slots(s)])
    engine = Engine(Net("p", places=[slots], transitions=[first, second]))
    step = engine.fire(0)
    assert step is not None
    assert step.transition == "first"


def test_capacity_blocks_the_producer_until_the_place_loses_a_token() -> None:
    source = Place("source", Slot, initial=[Slot(n) for n in range(5)])
    buffer = Place("buffer", Slot, capacity=2)
    sink = Place("sink", Slot)
    produce = Transition("produce", consume=[source(s)], produce=[buffer.produce(s)], priority=1)
    drain = Transition("drain", consume=[buffer(s)], produce=[sink.produce(s)])
    net = Net("cap", places=[source, buffer, sink], transitions=[produce, drain])
    engine = Engine(net)
    names = [step.transition for step in _drain(engine)]
    # produce has priority but may only fill the buffer up to 2; drain makes room.
    assert names[:3] == ["produce", "produce", "drain"]
    assert names.count("produce") == 5
    assert names.count("drain") == 5
    assert engine.count("sink") == 5


def test_capacity_counts_pending_tokens_and_unblocks_on_removal() -> None:
    source = Place("source", Slot, initial=[Slot(1), Slot(2)])
    buffer = Place("buffer", Slot, capacity=1)
    fill = Transition("fill", consume=[source(s)], produce=[buffer.produce(s, delay=100)])
    engine = Engine(Net("cap", places=[source, buffer], transitions=[fill]))
    assert engine.fire(0) is not None
    assert engine.fire(0) is None  # the pending token fills the buffer
    assert engine.fire(100) is None
    engine.remove("buffer", Slot(1), time=100)
    step = engine.fire(100)
    assert step is not None
    assert step.consumed == (("source", 0, Slot(2)),)


def test_atomicity_failing_output_leaves_the_marking_unchanged() -> None:
    slots = Place("slots", Slot, initial=[Slot(1), Slot(0)])
    ok = Place("ok", Slot)
    ratio = Place("ratio", Slot)
    divide = Transition(
        "divide",
        consume=[slots(s, n=n)],
        produce=[ok.produce(s), ratio.produce(lambda n: Slot(10 // n))],
    )
    engine = Engine(Net("a", places=[slots, ok, ratio], transitions=[divide]))
    before = engine.marking()
    with pytest.raises(InscriptionError, match="ZeroDivisionError") as info:
        engine.fire(0)
    assert "'divide'" in str(info.value)
    assert engine.marking() == before
    assert engine.statistics().steps == 0


def test_atomicity_output_of_the_wrong_colour_leaves_the_marking_unchanged() -> None:
    slots = Place("slots", Slot, initial=[Slot(1)])
    out = Place("out", Slot)
    bad = Transition("bad", consume=[slots(s, n=n)], produce=[out.produce(lambda n: Stock(n, n))])
    engine = Engine(Net("a", places=[slots, out], transitions=[bad]))
    before = engine.marking()
    with pytest.raises(InscriptionError, match="Slot"):
        engine.fire(0)
    assert engine.marking() == before


def test_conflict_order_earliest_time_then_smallest_value() -> None:
    slots = Place("slots", Slot)
    out = Place("out", Slot)
    move = Transition("move", consume=[slots(s)], produce=[out.produce(s)])
    engine = Engine(Net("o", places=[slots, out], transitions=[move]))
    engine.add("slots", Slot(9), time=1)
    engine.add("slots", Slot(5), time=3)
    engine.add("slots", Slot(2), time=3)
    engine.add("slots", Slot(0), time=4)
    fired = [step.consumed for step in _drain(engine, now=4)]
    assert fired == [
        (("slots", 1, Slot(9)),),
        (("slots", 3, Slot(2)),),
        (("slots", 3, Slot(5)),),
        (("slots", 4, Slot(0)),),
    ]


def test_conflict_order_across_partition_keys() -> None:
    jobs = Place("jobs", Job, key="queue")
    done = Place("done", Job, key="queue")
    move = Transition("move", consume=[jobs(j, queue=q)], produce=[done.produce(j)])
    engine = Engine(Net("o", places=[jobs, done], transitions=[move]))
    for token, time in [(Job("b", 1), 0), (Job("a", 2), 0), (Job("c", 0), 1), (Job("a", 1), 2)]:
        engine.add("jobs", token, time=time)
    fired = [step.consumed[0][1:] for step in _drain(engine, now=2)]
    assert fired == [(0, Job("a", 2)), (0, Job("b", 1)), (1, Job("c", 0)), (2, Job("a", 1))]


def test_hooks_see_every_step() -> None:
    slots = Place("slots", Slot, initial=[Slot(n) for n in range(4)])
    out = Place("out", Slot)
    move = Transition("move", consume=[slots(s)], produce=[out.produce(s, delay=1)])
    engine = Engine(Net("h", places=[slots, out], transitions=[move]))
    seen: list[Step] = []
    engine.hooks.append(seen.append)
    steps = list(engine.run(until=100))
    assert len(steps) == 4
    assert seen == steps


def test_add_checks_the_colour_and_the_place() -> None:
    slots = Place("slots", Slot)
    move = Transition("move", consume=[slots(s)])
    engine = Engine(Net("e", places=[slots], transitions=[move]))
    with pytest.raises(TokenError, match="place 'slots': expected a Slot token, got Stock"):
        engine.add("slots", Stock(1, 2))
    with pytest.raises(TokenError, match=r"Slot\.n must be int"):
        engine.add("slots", Slot("1"))
    with pytest.raises(CpnError, match="no place 'nowhere'") as info:
        engine.add("nowhere", Slot(1))
    assert not isinstance(info.value, TokenError)
    assert "slots" in str(info.value)
    assert engine.marking() == {"slots": []}


def test_remove_takes_one_available_entry() -> None:
    slots = Place("slots", Slot, initial=[Slot(1), Slot(1)])
    move = Transition("move", consume=[slots(s)])
    engine = Engine(Net("e", places=[slots], transitions=[move]))
    engine.add("slots", Slot(2), time=5)
    engine.remove("slots", Slot(1), time=0)
    assert engine.tokens("slots") == [(0, Slot(1)), (5, Slot(2))]
    assert engine.count("slots") == 2
    with pytest.raises(CpnError, match="no available token"):
        engine.remove("slots", Slot(2), time=5)  # still pending
    with pytest.raises(CpnError, match="no available token"):
        engine.remove("slots", Slot(1), time=3)
    assert engine.tokens("slots") == [(0, Slot(1)), (5, Slot(2))]
    engine.remove("slots", Slot(1), time=0)
    assert engine.fire(4) is None


def test_withdraw_takes_a_pending_entry_out_before_it_comes_due() -> None:
    slots = Place("slots", Slot)
    move = Transition("move", consume=[slots(s)])
    engine = Engine(Net("e", places=[slots], transitions=[move]))
    engine.add("slots", Slot(1), time=5)
    engine.add("slots", Slot(1), time=5)  # an identical twin stays
    engine.add("slots", Slot(2), time=7)
    engine.withdraw("slots", Slot(1), time=5)
    assert engine.count("slots") == 2 and engine.statistics().pending == 2
    assert engine.tokens("slots") == [(5, Slot(1)), (7, Slot(2))]
    engine.withdraw("slots", Slot(1), time=5)
    assert engine.tokens("slots") == [(7, Slot(2))]
    assert engine.next_deadline() == 7, "a withdrawn head sets no deadline"
    assert engine.fire(6) is None, "withdrawn entries never come due"
    engine.add("slots", Slot(3), time=9)
    engine.withdraw("slots", Slot(3), time=9)
    engine.add("slots", Slot(3), time=9)  # the same entry again, after the withdrawal
    assert [step.consumed for step in _drain(engine, now=9)] == [
        (("slots", 7, Slot(2)),),
        (("slots", 9, Slot(3)),),
    ]
    assert engine.count("slots") == 0


def test_withdraw_checks_available_entries_and_extract_forgets_withdrawn_ones() -> None:
    slots = Place("slots", Slot, initial=[Slot(1)])
    move = Transition("move", consume=[slots(s)], guard=lambda s: s.n > 1)
    engine = Engine(Net("e", places=[slots], transitions=[move]))
    with pytest.raises(CpnError, match="no token Slot\\(n=2\\) at time 0 to withdraw"):
        engine.withdraw("slots", Slot(2), time=0)
    engine.withdraw("slots", Slot(1), time=0)
    assert engine.count("slots") == 0
    engine.add("slots", Slot(4), time=5)
    engine.add("slots", Slot(4), time=5)
    engine.withdraw("slots", Slot(4), time=5)
    engine.extract([("slots", 5, Slot(4))])  # the one not withdrawn
    assert engine.tokens("slots") == [] and engine.count("slots") == 0
    assert engine.next_deadline() is None and engine.fire(5) is None


def _tie_net() -> Net:
    slots = Place("slots", Slot, initial=[Slot(n) for n in range(6)])
    names = ("a", "b", "c")
    transitions = [Transition(name, consume=[slots(s)]) for name in names]
    return Net("tie", places=[slots], transitions=transitions)


def _tie_run(seed: int) -> list[tuple[str, tuple[object, ...]]]:
    engine = Engine(_tie_net(), seed=seed, tie_break="random")
    return [(step.transition, step.consumed) for step in _drain(engine)]


def test_random_tie_break_is_reproducible_per_seed(seed: int) -> None:
    first = _tie_run(seed)
    assert first == _tie_run(seed)
    # The binding of the chosen transition is still the preferred one.
    assert [consumed for _, consumed in first] == [((("slots", 0, Slot(n)),)) for n in range(6)]


def test_random_tie_break_picks_different_transitions_across_seeds() -> None:
    firsts = Counter(_tie_run(seed)[0][0] for seed in range(60))
    assert set(firsts) == {"a", "b", "c"}


def test_random_tie_break_respects_priority() -> None:
    slots = Place("slots", Slot, initial=[Slot(1)])
    low = Transition("low", consume=[slots(s)])
    high = Transition("high", consume=[slots(s)], priority=2)
    net = Net("tie", places=[slots], transitions=[low, high])
    for seed in range(20):
        step = Engine(net, seed=seed, tie_break="random").fire(0)
        assert step is not None
        assert step.transition == "high"


def test_ordered_mode_ignores_the_seed() -> None:
    assert len({tuple(_ordered_run(seed)) for seed in range(10)}) == 1


def _ordered_run(seed: int) -> list[str]:
    engine = Engine(_tie_net(), seed=seed)
    return [step.transition for step in _drain(engine)]


def test_whole_token_join_also_checks_the_other_fields() -> None:
    """A pattern ``q(t, n=x)`` with ``t`` and ``x`` bound needs a token equal to ``t``
    whose ``n`` equals ``x``: each field entry "joins on an already bound" variable
    (``nets.model.Pattern``). Here no token of ``q`` satisfies both, so nothing fires.
    """
    p = Place("p", Job, initial=[Job("a", 1)])
    q = Place("q", Job, initial=[Job("a", 1), Job("a", 2)])
    r = Place("r", Job, initial=[Job("b", 2)])
    join = Transition("join", consume=[p(t), r(n=x)], read=[q(t, n=x)])
    engine = Engine(Net("w", places=[p, q, r], transitions=[join]))
    assert engine.fire(0) is None


def test_whole_token_join_also_checks_constants() -> None:
    p = Place("p", Job, initial=[Job("a", 1)])
    q = Place("q", Job, initial=[Job("a", 2)])
    join = Transition("join", consume=[p(t)], read=[q(t, n=2)])
    engine = Engine(Net("w", places=[p, q], transitions=[join]))
    assert engine.fire(0) is None


def test_extract_takes_available_and_future_entries_alike() -> None:
    slots = Place("slots", Slot)
    out = Place("out", Slot)
    drain = Transition("drain", consume=[slots(s)], produce=[out.produce(s)])
    engine = Engine(Net("t", places=[slots, out], transitions=[drain]), initial_marking=False)
    engine.advance(10)
    engine.add("slots", Slot(1), time=5)  # available
    engine.add("slots", Slot(2), time=50)  # pending: becomes available later
    engine.add("slots", Slot(3), time=60)
    engine.extract([("slots", 5, Slot(1)), ("slots", 50, Slot(2))])
    assert engine.tokens("slots") == [(60, Slot(3))]
    assert engine.count("slots") == 1
    assert engine.next_deadline() == 60, "the heap holds only what is left"
    with pytest.raises(CpnError, match="has no token Slot\\(n=2\\) at time 50"):
        engine.extract([("slots", 50, Slot(2))])
    step = engine.fire(60)
    assert step is not None and step.consumed == (("slots", 60, Slot(3)),)


def test_an_inhibitor_on_a_keyed_place_blocks_and_frees_its_own_key_only() -> None:
    """Inhibitor arcs on keyed places are watched per key (nets/engine.py): a key's
    blocking token must still block that key, its removal must free it, and other keys
    must fire as before, whatever order the changes come in."""

    class Item(NamedTuple):
        k: str
        n: int

    class Block(NamedTuple):
        k: str

    todo = Place("todo", Item, key="k")
    blocked = Place("blocked", Block, key="k")
    done = Place("done", Item, key="k")
    i, k = variables("i k")
    net = Net(
        "inhibited",
        places=[todo, blocked, done],
        transitions=[
            Transition(
                "go", consume=[todo(i, k=k)], inhibit=[blocked(k=k)], produce=[done.produce(i)]
            )
        ],
    )
    engine = Engine(net)
    engine.add("blocked", Block("a"), time=0)
    for n in range(3):
        engine.add("todo", Item("a", n), time=0)
        engine.add("todo", Item("b", n), time=0)
    while engine.fire(0) is not None:
        pass
    assert sorted(t.k for _, t in engine.tokens("done")) == ["b", "b", "b"]
    engine.remove("blocked", Block("a"), time=0)  # frees key a
    engine.add("blocked", Block("b"), time=0)  # blocks b, which has nothing left anyway
    engine.add("todo", Item("b", 9), time=0)
    while engine.fire(0) is not None:
        pass
    assert sorted(t.k for _, t in engine.tokens("done")) == ["a", "a", "a", "b", "b", "b"]
    assert [t for _, t in engine.tokens("todo")] == [Item("b", 9)]
