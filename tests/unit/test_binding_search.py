"""The compiled binding searches (nets/binding.py): early probes, many-token arcs, and
arcs sharing a place; each test checks the binding chosen is the least one."""

from itertools import combinations, permutations
from typing import NamedTuple

from nets import Engine, Net, Place, Transition, variables


class Item(NamedTuple):
    k: str
    n: int


x, y, z, g = variables("x y z g")


def test_a_later_arc_with_an_empty_bucket_prunes_the_loops_before_it() -> None:
    # The guard sits on the middle arc; the last arc's lookup (n=x) is known after
    # the first arc. Only x == 9 has a partner in `c`, so the probe placed after the
    # first arc keeps the guard from being called for any other x.
    calls: list[tuple[int, int]] = []

    def smaller(x: int, y: int) -> bool:
        calls.append((x, y))
        return x < y

    a = Place("a", Item, initial=[Item("a", n) for n in range(10)])
    b = Place("b", Item, initial=[Item("b", n) for n in range(20)])
    c = Place("c", Item, initial=[Item("c", 9)])
    out = Place("out", Item)
    t = Transition(
        "t",
        consume=[a(k="a", n=x), b(k="b", n=y), c(k="c", n=x)],
        guard=smaller,
        produce=[out.produce(lambda x, y: Item("out", x * 100 + y))],
    )
    step = Engine(Net("probe", places=[a, b, c, out], transitions=[t])).fire(0)
    assert step is not None
    assert step.binding == {"x": 9, "y": 10}
    assert {x for x, _y in calls} == {9}


def test_a_many_token_arc_takes_the_least_group_that_completes_the_binding() -> None:
    parts = Place("parts", Item, initial=[Item("p", n) for n in (5, 1, 4, 2)])
    sizes = Place("sizes", Item, initial=[Item("s", 6)])
    out = Place("out", Item)
    # Two parts whose numbers sum to the size: (1, 5) and (2, 4) qualify; (1, 5) is
    # the least group in entry order.
    t = Transition(
        "pair",
        consume=[sizes(z), parts.many(2, g)],
        guard=lambda z, g: sum(p.n for p in g) == z.n,
        produce=[out.produce(lambda z: z)],
    )
    step = Engine(Net("many", places=[parts, sizes, out], transitions=[t])).fire(0)
    assert step is not None
    assert step.binding["g"] == (Item("p", 1), Item("p", 5))
    least = min(
        group
        for group in combinations(sorted((0, Item("p", n)) for n in (5, 1, 4, 2)), 2)
        if sum(e[1].n for e in group) == 6
    )
    assert sorted(step.consumed)[:2] == [("parts", *entry) for entry in least]


def test_two_arcs_on_one_place_never_take_the_same_token_instance() -> None:
    # Two equal tokens are two instances: the second arc may take the other one; a
    # single token cannot serve both arcs.
    pool = Place("pool", Item, initial=[Item("q", 3), Item("q", 3), Item("q", 7)])
    out = Place("out", Item)
    t = Transition(
        "both",
        consume=[pool(x), pool.many(2, g), pool(y)],
        guard=lambda x, y: x.n <= y.n,
        produce=[out.produce(lambda x: x)],
    )
    engine = Engine(Net("shared", places=[pool, out], transitions=[t]))
    assert engine.fire(0) is None  # four tokens needed, three held
    engine.add("pool", Item("q", 1))
    step = engine.fire(0)
    assert step is not None
    tokens = sorted([Item("q", 1), Item("q", 3), Item("q", 3), Item("q", 7)])
    # The least (x, g, y) over distinct instances, as the reference interpreter orders.
    least = min(
        (order[0], tuple(sorted(order[1:3])), order[3])
        for order in permutations(tokens)
        if order[0].n <= order[3].n
    )
    assert (step.binding["x"], step.binding["g"], step.binding["y"]) == least
    assert engine.tokens("pool") == []
