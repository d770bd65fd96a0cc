"""The explorer against the engine and against itself, on random nets.

* Every step the engine takes in a run (random tie break, virtual time) is an edge of
  the explorer's untimed graph: its marking before, untimed, enables that very binding
  element, and firing it leads to the engine's marking after. Nets with inhibitor arcs
  are only drawn without delays: a pending token inhibits nothing in the engine, but
  the untimed net sees it (docs/verify.md, "Time").
* Every step of an engine's virtual-time run, and every jump of its clock to the next
  deadline, is an arc of the timed-relative graph (nets/explore_timed.py).
* The packed P/T explorer and the general explorer find the same state space on random
  P/T nets (weights, read and inhibitor arcs, capacities, priorities).
"""

from typing import NamedTuple

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_engine_vs_reference import nets

from nets import Engine, Net, Place, Transition
from nets.classic_nets import kanban, philosophers
from nets.explore import _Environment, explore, successors
from nets.explore_bindings import bindings, compile_transition
from nets.explore_timed import relative_stepper

STEPS_MAX = 25


def _canonical(net: Net, transition: str, binding: object) -> dict[str, object]:
    """A binding with each many-token arc's tuple in value order, consume and read arcs.

    The engine binds a ``many`` arc's tokens in marking order, time first; the explorer
    drops (untimed) or clamps (relative) the times of available tokens, so it binds them
    in value order. Both are the same sub-multiset (docs/verify.md, Limits).
    """
    values = dict(binding)  # type: ignore[call-overload]
    arcs = net.transition(transition)
    for pattern in (*arcs.consume, *arcs.read):
        if pattern.count != 1 and pattern.var is not None:
            values[pattern.var.name] = tuple(sorted(values[pattern.var.name]))
    return values


def _untimed(engine: Engine, net: Net) -> tuple[tuple[object, ...], ...]:
    marking = engine.marking()
    return tuple(tuple(sorted(token for _t, token in marking[p.name])) for p in net.places)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets(), seed=st.integers(0, 2**32 - 1))
def test_every_engine_step_is_an_edge_of_the_graph(net: Net, seed: int) -> None:
    delayed = any(o.delay != 0 for t in net.transitions for o in t.produce)
    assume(not (delayed and any(t.inhibit for t in net.transitions)))
    env = _Environment.of(net)
    compiled = [
        compile_transition(net, t) for t in sorted(net.transitions, key=lambda t: -t.priority)
    ]
    engine = Engine(net, seed=seed, tie_break="random")
    for steps, step in enumerate(engine.run(until=1_000, max_steps=STEPS_MAX)):
        after = _untimed(engine, net)
        # Undo the step on the untimed marking to get the marking before it.
        before_lists = [list(tokens) for tokens in after]
        position = {p.name: i for i, p in enumerate(net.places)}
        for place, _time, token in step.produced:
            before_lists[position[place]].remove(token)
        for place, _time, token in step.consumed:
            before_lists[position[place]].append(token)
        before = tuple(tuple(sorted(tokens)) for tokens in before_lists)
        edges = [
            (name, values, succ)
            for name, values, succ in successors(compiled, env, before)
            if name == step.transition
            and _canonical(net, name, values) == _canonical(net, name, step.binding)
        ]
        assert edges, f"step {steps}: {step.transition} {dict(step.binding)} is not an edge"
        assert any(succ == after for _n, _v, succ in edges), f"step {steps}: other successor"
        if sum(map(len, after)) > 24:
            break


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets(), seed=st.integers(0, 2**32 - 1))
def test_generated_enumerators_find_what_the_generic_walk_finds(net: Net, seed: int) -> None:
    compiled = [compile_transition(net, t) for t in net.transitions]
    engine = Engine(net, seed=seed, tie_break="random")
    markings = [_untimed(engine, net)]
    for _step in engine.run(until=1_000, max_steps=STEPS_MAX):
        markings.append(_untimed(engine, net))
        if sum(map(len, markings[-1])) > 24:
            break
    for marking in markings:
        for ct in compiled:
            if ct.search is not None:
                assert ct.search(marking) == list(bindings(ct, marking)), ct.transition.name


class Dot(NamedTuple):
    dot: bool = True


DOT = Dot()


@st.composite
def pt_nets(draw: st.DrawFn) -> Net:
    n_places = draw(st.integers(1, 4))
    places = [
        Place(
            f"p{i}",
            Dot,
            initial=[DOT] * draw(st.integers(0, 2)),
            capacity=draw(st.sampled_from([None, None, 3])),
        )
        for i in range(n_places)
    ]
    places = [
        p if p.capacity is None or len(p.initial) <= p.capacity else Place(p.name, Dot)
        for p in places
    ]
    transitions = []
    for k in range(draw(st.integers(1, 4))):
        take = draw(st.lists(st.integers(0, n_places - 1), min_size=1, max_size=2, unique=True))
        consume = [
            places[p].many(w) if (w := draw(st.integers(1, 2))) > 1 else places[p]() for p in take
        ]
        read = [places[p]() for p in draw(st.lists(st.integers(0, n_places - 1), max_size=1))]
        inhibit = [places[p]() for p in draw(st.lists(st.integers(0, n_places - 1), max_size=1))]
        give = draw(st.lists(st.integers(0, n_places - 1), max_size=3))
        transitions.append(
            Transition(
                f"t{k}",
                consume=consume,
                read=read,
                inhibit=inhibit,
                produce=[places[p].produce(DOT) for p in give],
                priority=draw(st.sampled_from([0, 0, 1])),
            )
        )
    return Net("random_pt", places=places, transitions=transitions)


@settings(max_examples=80, deadline=None)
@given(net=pt_nets(), priorities=st.booleans())
def test_packed_pt_explorer_agrees_with_the_general_one(net: Net, priorities: bool) -> None:
    fast = explore(net, method="pt", max_states=300, priorities=priorities)
    slow = explore(net, method="general", max_states=300, priorities=priorities)
    assert fast.partial == slow.partial
    assume(not fast.partial)
    assert fast.state_count == slow.state_count
    assert fast.edge_count == slow.edge_count
    assert fast.dead_markings == slow.dead_markings
    assert fast.place_bounds == slow.place_bounds
    assert fast.max_tokens_per_marking == slow.max_tokens_per_marking
    assert {fast.graph.counts(s) for s in fast.graph.states} == {
        slow.graph.counts(s) for s in slow.graph.states
    }


def test_packed_pt_explorer_agrees_on_the_classic_nets() -> None:
    for net in (kanban(1), kanban(2), philosophers(4)):
        fast, slow = explore(net, method="pt"), explore(net, method="general")
        assert (fast.state_count, fast.edge_count, fast.dead_markings) == (
            slow.state_count,
            slow.edge_count,
            slow.dead_markings,
        )
        assert fast.place_bounds == slow.place_bounds


def _relative(engine: Engine, net: Net, read: set[str]) -> tuple[tuple[object, ...], ...]:
    """The engine's state as the timed-relative explorer sees it (no time fields here)."""
    marking = engine.marking()
    return tuple(
        tuple(
            sorted(
                (max(0, time - engine.now) if p.name in read else 0, token)
                for time, token in marking[p.name]
            )
        )
        for p in net.places
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets(), seed=st.integers(0, 2**32 - 1))
def test_every_timed_engine_step_is_an_edge_of_the_relative_graph(net: Net, seed: int) -> None:
    stepper = relative_stepper(net, priorities=False)
    read = {pat.place.name for t in net.transitions for pat in (*t.consume, *t.read, *t.inhibit)}
    engine = Engine(net, seed=seed, tie_break="random")
    now = 0
    for i in range(STEPS_MAX):
        before = _relative(engine, net, read)
        step = engine.fire(now)
        if step is None:
            deadline = engine.next_deadline()
            if deadline is None:
                assert not list(stepper.successors(before)), f"step {i}: engine is dead"
                break
            engine.advance(deadline)
            after = _relative(engine, net, read)
            assert ("time", {"delta_ms": deadline - now}, after) in list(
                stepper.successors(before)
            ), f"step {i}: no time step of {deadline - now} ms"
            now = deadline
            continue
        after = _relative(engine, net, read)
        found = [
            succ
            for name, values, succ in stepper.successors(before)
            if name == step.transition
            and _canonical(net, name, values) == _canonical(net, name, step.binding)
        ]
        assert after in found, f"step {i}: {step.transition} {dict(step.binding)} is no edge"
        if sum(map(len, after)) > 24:
            break
