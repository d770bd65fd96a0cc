"""PNML import and export (nets/pnml*.py): each construct, bad files, round trips."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import Engine, Net, Place, Transition, variables
from nets.pnml import DOT, Dot, ExportError, PnmlError, dumps, is_place_transition, load, parse
from nets.pnml_xml import PNML_BYTES_MAX

PT = "http://www.pnml.org/version-2009/grammar/ptnet"
SN = "http://www.pnml.org/version-2009/grammar/symmetricnet"


def doc(body: str, *, kind: str = PT, declarations: str = "") -> bytes:
    decl = (
        f"<declaration><structure><declarations>{declarations}</declarations></structure>"
        "</declaration>"
        if declarations
        else ""
    )
    return (
        '<?xml version="1.0"?>\n'
        '<pnml xmlns="http://www.pnml.org/version-2009/grammar/pnml">\n'
        f'<net id="n" type="{kind}">\n{decl}\n<page id="pg">\n{body}\n</page>\n</net>\n</pnml>\n'
    ).encode()


def marking(net: Net) -> dict[str, int]:
    return {p.name: len(p.initial) for p in net.places}


def fire_all(net: Net) -> list[str]:
    return [step.transition for step in Engine(net).run(until=0, max_steps=100)]


# -- P/T nets ------------------------------------------------------------------------------


def test_pt_net_with_weights_and_initial_marking_runs() -> None:
    net = parse(
        doc(
            """
            <place id="p"><name><text>P</text></name>
              <initialMarking><text>5</text></initialMarking></place>
            <place id="q"/>
            <transition id="t"><graphics><position x="1" y="2"/></graphics></transition>
            <arc id="a1" source="p" target="t"><inscription><text>2</text></inscription></arc>
            <arc id="a2" source="t" target="q"><inscription><text>3</text></inscription></arc>
            <toolspecific tool="x" version="1"><anything/></toolspecific>
            """
        )
    )
    assert marking(net) == {"p": 5, "q": 0}
    assert is_place_transition(net)
    assert fire_all(net) == ["t", "t"]
    engine = Engine(net)
    list(engine.run(until=0))
    assert engine.count("p") == 1
    assert engine.count("q") == 6


def test_core_model_reads_as_a_pt_net_and_other_types_are_refused() -> None:
    core = "http://www.pnml.org/version-2009/grammar/pnmlcoremodel"
    body = '<place id="p"><initialMarking><text>1</text></initialMarking></place>'
    assert marking(parse(doc(body, kind=core))) == {"p": 1}
    with pytest.raises(PnmlError, match="net type 'hlpng' is not supported"):
        parse(doc(body, kind="http://www.pnml.org/version-2009/grammar/hlpng"))


def test_nested_pages_and_reference_nodes_resolve_to_their_targets() -> None:
    net = parse(
        doc(
            """
            <place id="p"><initialMarking><text>1</text></initialMarking></place>
            <page id="inner">
              <referencePlace id="rp" ref="p"/>
              <referencePlace id="rrp" ref="rp"/>
              <transition id="t"/>
              <page id="deeper"><place id="q"/><referenceTransition id="rt" ref="t"/></page>
              <arc id="a1" source="rrp" target="t"/>
            </page>
            <arc id="a2" source="rt" target="q"/>
            """
        )
    )
    assert [p.name for p in net.places] == ["p", "q"]
    assert [t.name for t in net.transitions] == ["t"]
    assert fire_all(net) == ["t"]


def test_ids_that_are_not_identifiers_become_distinct_names() -> None:
    net = parse(
        doc(
            """
            <place id="p-1"><initialMarking><text>1</text></initialMarking></place>
            <place id="p.1"/><place id="1p"/>
            <transition id="t 1"/>
            <arc id="a" source="p-1" target="t 1"/>
            """
        )
    )
    names = [p.name for p in net.places]
    assert len(set(names)) == 3
    assert all(n.isidentifier() for n in names)


# -- symmetric nets ------------------------------------------------------------------------

SORTS = """
<namedsort id="philo" name="Philo"><cyclicenumeration>
  <feconstant id="p1" name="1"/><feconstant id="p2" name="2"/><feconstant id="p3" name="3"/>
</cyclicenumeration></namedsort>
<namedsort id="lvl" name="Level"><finiteenumeration>
  <feconstant id="lo" name="low"/><feconstant id="hi" name="high"/>
</finiteenumeration></namedsort>
<namedsort id="pair" name="Pair"><productsort>
  <usersort declaration="philo"/><usersort declaration="lvl"/>
</productsort></namedsort>
<variabledecl id="vx" name="x"><usersort declaration="philo"/></variabledecl>
<variabledecl id="vl" name="l"><usersort declaration="lvl"/></variabledecl>
"""


def one(term: str, n: int = 1) -> str:
    return (
        f'<numberof><subterm><numberconstant value="{n}"><positive/></numberconstant></subterm>'
        f"<subterm>{term}</subterm></numberof>"
    )


def sub(*terms: str) -> str:
    return "".join(f"<subterm>{t}</subterm>" for t in terms)


def c(ident: str) -> str:
    return f'<useroperator declaration="{ident}"/>'


def tup(*terms: str) -> str:
    return f"<tuple>{sub(*terms)}</tuple>"


def op(tag: str, *terms: str) -> str:
    return f"<{tag}>{sub(*terms)}</{tag}>"


X = '<variable refvariable="vx"/>'
L = '<variable refvariable="vl"/>'


def place(ident: str, sort: str, initial: str = "") -> str:
    init = (
        f"<hlinitialMarking><structure>{initial}</structure></hlinitialMarking>" if initial else ""
    )
    return (
        f'<place id="{ident}"><type><structure><usersort declaration="{sort}"/></structure>'
        f"</type>{init}</place>"
    )


def arc(ident: str, source: str, target: str, term: str) -> str:
    return (
        f'<arc id="{ident}" source="{source}" target="{target}">'
        f"<hlinscription><structure>{term}</structure></hlinscription></arc>"
    )


def test_symmetric_net_all_successor_predecessor_and_sums() -> None:
    # Each philosopher takes its own fork and its left neighbour's (x--1), and gives
    # back its own and its right neighbour's (x++1): forks rotate, which tests both.
    body = "\n".join(
        [
            place("think", "philo", "<all><usersort declaration='philo'/></all>"),
            place("fork", "philo", "<all><usersort declaration='philo'/></all>"),
            place("eat", "philo"),
            '<transition id="take"/>',
            arc("a1", "think", "take", one(X)),
            arc("a2", "fork", "take", op("add", one(X), one(op("predecessor", X)))),
            arc("a3", "take", "eat", one(X)),
            '<transition id="drop"/>',
            arc("a4", "eat", "drop", one(X)),
            arc("a5", "drop", "think", one(X)),
            arc("a6", "drop", "fork", op("add", one(X), one(op("successor", X)))),
        ]
    )
    net = parse(doc(body, kind=SN, declarations=SORTS))
    think = net.place("think")
    assert think.colour.__name__ == "Philo"
    assert sorted(t[0] for t in think.initial) == ["1", "2", "3"]
    take = net.transition("take")
    assert len(take.consume) == 3  # x from think, x and a fresh variable from fork
    engine = Engine(net)
    step = engine.fire(0)
    assert step is not None
    assert step.transition == "take"
    assert step.binding["x"] == "1"
    # Philosopher 1 takes fork 1 and fork 3 (the predecessor of 1 wraps around).
    assert sorted(tok[0] for p, _, tok in step.consumed if p == "fork") == ["1", "3"]
    # Fork 2 alone is left: nobody else can eat, philosopher 1 drops forks 1 and 2.
    step = engine.fire(0)
    assert step is not None
    assert step.transition == "drop"
    assert sorted(tok[0] for p, _, tok in step.produced if p == "fork") == ["1", "2"]


def test_products_tuples_constants_and_guards() -> None:
    body = "\n".join(
        [
            place(
                "src", "pair", op("add", one(tup(c("p1"), c("hi"))), one(tup(c("p2"), c("lo")), 2))
            ),
            place("dst", "pair"),
            '<transition id="t"><condition><structure>'
            + op("and", op("inequality", X, c("p3")), op("lessthan", L, c("hi")))
            + "</structure></condition></transition>",
            arc("a1", "src", "t", one(tup(X, L))),
            arc("a2", "t", "dst", one(tup(op("successor", X), L))),
        ]
    )
    net = parse(doc(body, kind=SN, declarations=SORTS))
    src = net.place("src")
    assert src.colour_set.fields == ("philo", "level")
    assert len(src.initial) == 3
    engine = Engine(net)
    fired = list(engine.run(until=0))
    # Only the two (2, low) tokens pass the guard (low < high in declaration order).
    assert len(fired) == 2
    assert [tuple(tok) for _, tok in engine.tokens("dst")] == [("3", "low"), ("3", "low")]


def test_unsupported_term_names_the_element_and_line() -> None:
    body = "\n".join(
        [
            place("p", "philo"),
            '<transition id="t"/>',
            arc("a1", "p", "t", "<subtract/>"),
        ]
    )
    with pytest.raises(PnmlError, match=r"<pnml>:\d+: <subtract>: unsupported term"):
        parse(doc(body, kind=SN, declarations=SORTS))


def test_a_variable_bound_only_by_an_output_is_refused() -> None:
    body = "\n".join(
        [
            place("p", "philo", "<all><usersort declaration='philo'/></all>"),
            place("q", "lvl"),
            '<transition id="t"/>',
            arc("a1", "p", "t", one(X)),
            arc("a2", "t", "q", one(L)),
        ]
    )
    with pytest.raises(PnmlError, match=r"<transition id='t'>: variable 'l' is not bound"):
        parse(doc(body, kind=SN, declarations=SORTS))


def test_a_term_of_the_wrong_sort_is_refused() -> None:
    body = "\n".join([place("p", "philo"), '<transition id="t"/>', arc("a1", "p", "t", one(L))])
    with pytest.raises(PnmlError, match="'Level' value where sort 'Philo' is expected"):
        parse(doc(body, kind=SN, declarations=SORTS))


# -- bad files -----------------------------------------------------------------------------


def test_malformed_xml_names_the_line() -> None:
    with pytest.raises(PnmlError, match=r"^m.pnml:3: not well-formed XML"):
        parse(b"<pnml>\n<net>\n<place></net>\n</pnml>", source="m.pnml")


def test_dtd_and_entities_are_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?>\n<!DOCTYPE pnml [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>\n'
        b"<pnml>&b;</pnml>"
    )
    with pytest.raises(PnmlError, match="document type declaration"):
        parse(bomb)
    external = b'<?xml version="1.0"?>\n<!DOCTYPE pnml SYSTEM "file:///etc/passwd">\n<pnml/>'
    with pytest.raises(PnmlError, match="document type declaration"):
        parse(external)
    with pytest.raises(PnmlError, match="not well-formed XML"):
        parse(b"<pnml>&undeclared;</pnml>")


def test_oversize_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.pnml"
    big.write_bytes(b" " * (PNML_BYTES_MAX + 1))
    with pytest.raises(PnmlError, match="more than the"):
        load(big)


def test_missing_file_is_a_pnml_error(tmp_path: Path) -> None:
    with pytest.raises(PnmlError, match="cannot read"):
        load(tmp_path / "absent.pnml")


def test_unknown_element_names_itself_and_its_line() -> None:
    data = doc('<place id="p"/>\n<widget id="w"/>')
    line = data.decode().splitlines().index('<widget id="w"/>') + 1
    with pytest.raises(PnmlError, match=rf"^<pnml>:{line}: <widget id='w'>: unknown element"):
        parse(data)


def test_dangling_arc_reference_names_the_arc() -> None:
    data = doc('<place id="p"/>\n<transition id="t"/>\n<arc id="a9" source="p" target="nowhere"/>')
    with pytest.raises(PnmlError, match=r":\d+: <arc id='a9'>: target 'nowhere' is not a place"):
        parse(data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('<place id="p"/><place id="p"/>', "duplicate id"),
        ('<place id="p"><initialMarking><text>x</text></initialMarking></place>', "not an integer"),
        ('<place id="p"/><transition id="t"/><arc id="a" source="t" target="p"/>', "no input arc"),
        ('<place id="p"/><place id="q"/><arc id="a" source="p" target="q"/>', "connects a place"),
        ('<referencePlace id="r" ref="r"/>', "a cycle?"),
        ('<referencePlace id="r" ref="gone"/>', "refers to 'gone'"),
        (
            '<referencePlace id="r" ref="t"/><transition id="t"/>'
            '<arc id="a" source="r" target="t"/>',
            "which is not a place",
        ),
    ],
)
def test_other_bad_structures_are_one_line_errors(body: str, message: str) -> None:
    with pytest.raises(PnmlError) as caught:
        parse(doc(body))
    text = str(caught.value)
    assert "\n" not in text
    assert message in text
    assert re.match(r"<pnml>:\d+: ", text)


def test_error_is_a_cpn_error_with_one_line() -> None:
    from nets.errors import CpnError

    with pytest.raises(CpnError):
        parse(b"not xml")


# -- export --------------------------------------------------------------------------------


class Job(NamedTuple):
    queue: str
    n: int


def test_python_inscriptions_are_refused_naming_the_transition() -> None:
    jobs = Place("jobs", Job, initial=[Job("a", 1)])
    done = Place("done", Job)
    (j,) = variables("j")
    work = Transition(
        "work", consume=[jobs(j)], produce=[done.produce(lambda j: j._replace(n=j.n + 1))]
    )
    net = Net("jobs", places=[jobs, done], transitions=[work])
    with pytest.raises(ExportError, match="transition 'work': the output to 'done' is a Python"):
        dumps(net)
    skeleton = dumps(net, skeleton=True)
    assert b"P/T skeleton" in skeleton
    again = parse(skeleton)
    assert is_place_transition(again)
    assert marking(again) == {"jobs": 1, "done": 0}
    assert fire_all(again) == ["work"]


def test_what_pnml_cannot_express_is_refused_or_noted_in_the_skeleton() -> None:
    a = Place("a", Dot, initial=[DOT])
    b = Place("b", Dot)
    inhibited = Transition("t", consume=[a()], inhibit=[b()], produce=[b.produce(DOT)])
    net = Net("inh", places=[a, b], transitions=[inhibited])
    with pytest.raises(ExportError, match=r"transition 't' has an inhibitor arc.*skeleton=True"):
        dumps(net)
    skeleton = dumps(net, skeleton=True)
    assert b"because transition 't' has an inhibitor arc" in skeleton
    assert fire_all(parse(skeleton)) == ["t"]
    full = Place("full", Dot, capacity=1)
    capped = Net(
        "cap",
        places=[a, full],
        transitions=[Transition("t", consume=[a()], produce=[full.produce(DOT)])],
    )
    with pytest.raises(ExportError, match="place 'full' has a capacity"):
        dumps(capped)
    assert b"because place 'full' has a capacity" in dumps(capped, skeleton=True)
    spread = Net(
        "spread",
        places=[a, b],
        transitions=[Transition("t", consume=[a()], produce=[b.produce_all(lambda: [DOT])])],
    )
    for skeleton_mode in (False, True):
        with pytest.raises(ExportError, match=r"'t': the output to 'b' produces a variable"):
            dumps(spread, skeleton=skeleton_mode)


def test_read_arcs_export_as_loops() -> None:
    a = Place("a", Dot, initial=[DOT, DOT])
    key = Place("key", Dot, initial=[DOT])
    b = Place("b", Dot)
    t = Transition("t", consume=[a()], read=[key()], produce=[b.produce(DOT)])
    again = parse(dumps(Net("r", places=[a, key, b], transitions=[t])))
    engine = Engine(again)
    list(engine.run(until=0))
    assert engine.count("key") == 1
    assert engine.count("b") == 2


@st.composite
def pt_nets(draw: st.DrawFn) -> Net:
    n_places = draw(st.integers(1, 5))
    places = [Place(f"p{i}", Dot, initial=[DOT] * draw(st.integers(0, 3))) for i in range(n_places)]
    transitions = []
    for k in range(draw(st.integers(1, 4))):
        inputs = draw(st.dictionaries(st.integers(0, n_places - 1), st.integers(1, 3), min_size=1))
        outputs = draw(st.dictionaries(st.integers(0, n_places - 1), st.integers(1, 3)))
        transitions.append(
            Transition(
                f"t{k}",
                consume=[places[i].many(w) if w > 1 else places[i]() for i, w in inputs.items()],
                produce=[places[i].produce(DOT) for i, w in outputs.items() for _ in range(w)],
            )
        )
    return Net("random", places=places, transitions=transitions)


def _pt_shape(net: Net) -> object:
    return (
        [(p.name, len(p.initial)) for p in net.places],
        [
            (
                t.name,
                sorted((a.place.name, a.count) for a in t.consume),
                sorted(o.place.name for o in t.produce),
            )
            for t in net.transitions
        ],
    )


@settings(max_examples=60, deadline=None)
@given(pt_nets())
def test_random_pt_nets_round_trip(net: Net) -> None:
    text = dumps(net)
    again = parse(text)
    assert _pt_shape(again) == _pt_shape(net)
    assert dumps(again) == text
    # Same behaviour, step by step.
    first = [(s.transition, s.consumed, s.produced) for s in Engine(net).run(until=0, max_steps=20)]
    second = [
        (s.transition, s.consumed, s.produced) for s in Engine(again).run(until=0, max_steps=20)
    ]
    assert first == second


@st.composite
def symmetric_documents(draw: st.DrawFn) -> bytes:
    """Random symmetric nets over one cyclic enumeration, in PNML."""
    size = draw(st.integers(1, 4))
    constants = "".join(f'<feconstant id="k{i}" name="v{i}"/>' for i in range(size))
    declarations = (
        f'<namedsort id="s" name="S"><cyclicenumeration>{constants}</cyclicenumeration>'
        '</namedsort><variabledecl id="vx" name="x"><usersort declaration="s"/></variabledecl>'
    )
    x = '<variable refvariable="vx"/>'
    n_places = draw(st.integers(1, 3))
    all_s = "<all><usersort declaration='s'/></all>"
    body = []
    for i in range(n_places):
        initial = draw(st.sampled_from(["", all_s, one(c("k0"), 2)]))
        body.append(place(f"p{i}", "s", initial))

    def term() -> str:
        choice = draw(st.sampled_from(["x", "succ", "pred", "const"]))
        if choice == "x":
            return x
        if choice == "const":
            return c(f"k{draw(st.integers(0, size - 1))}")
        return op("successor" if choice == "succ" else "predecessor", x)

    arcs = 0
    for k in range(draw(st.integers(1, 3))):
        guard = draw(st.sampled_from(["", "equality", "inequality"]))
        condition = (
            f"<condition><structure>{op(guard, x, c('k0'))}</structure></condition>"
            if guard
            else ""
        )
        body.append(f'<transition id="t{k}">{condition}</transition>')
        src = draw(st.integers(0, n_places - 1))
        body.append(arc(f"a{arcs}", f"p{src}", f"t{k}", one(x)))
        arcs += 1
        if draw(st.booleans()):
            other = draw(st.integers(0, n_places - 1))
            body.append(arc(f"a{arcs}", f"p{other}", f"t{k}", one(term())))
            arcs += 1
        for _ in range(draw(st.integers(0, 2))):
            dst = draw(st.integers(0, n_places - 1))
            body.append(arc(f"a{arcs}", f"t{k}", f"p{dst}", one(term(), draw(st.integers(1, 2)))))
            arcs += 1
    return doc("\n".join(body), kind=SN, declarations=declarations)


@settings(max_examples=60, deadline=None)
@given(symmetric_documents())
def test_random_symmetric_nets_round_trip(data: bytes) -> None:
    net = parse(data)
    text = dumps(net)
    again = parse(text)
    assert dumps(again) == text

    def run(n: Net) -> list[object]:
        return [
            (s.transition, sorted(s.binding.items()), s.consumed, s.produced)
            for s in Engine(n).run(until=0, max_steps=20)
        ]

    assert run(again) == run(net)
