"""nets/draw.py: what each construct looks like in DOT, safe quoting, determinism.

The DOT is read back by a small reader of the subset to_dot writes (one statement a
line: a node with attributes or an edge with attributes), so the tests check the
structure rather than the exact spelling, and a label that broke out of its quotes
would show up as a line the reader cannot parse.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest

from nets.draw import LABEL_LINE_CHARS_MAX, to_dot
from nets.loader import load_net
from nets.model import Net, Place, Transition, variables

_STRING = r'"(?:[^"\\]|\\.)*"'
_ATTR = re.compile(rf"(\w+)=({_STRING}|[\w.]+)")
_NODE = re.compile(rf"^  ({_STRING}) \[((?:\w+=(?:{_STRING}|[\w.]+)(?:, )?)*)\];$")
_EDGE = re.compile(rf"^  ({_STRING}) -> ({_STRING}) \[((?:\w+=(?:{_STRING}|[\w.]+)(?:, )?)*)\];$")
_HEADER = {
    "  graph [rankdir=LR];",
    '  node [fontname="Helvetica", fontsize=10];',
    '  edge [fontname="Helvetica", fontsize=9];',
}


def _unquote(text: str) -> str:
    assert text.startswith('"') and text.endswith('"'), text
    # DOT's \n in a label is a line break; \\ and \" are a backslash and a quote.
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text[1:-1])


def _attrs(text: str) -> dict[str, str]:
    return {k: _unquote(v) if v.startswith('"') else v for k, v in _ATTR.findall(text)}


class Dot(NamedTuple):
    name: str
    nodes: dict[str, dict[str, str]]
    edges: list[tuple[str, str, dict[str, str]]]


def read_dot(text: str) -> Dot:
    """The graph to_dot wrote; fails on any line outside the subset it writes."""
    lines = text.split("\n")
    assert lines[-1] == "" and lines[-2] == "}", "ends with '}' and a newline"
    head = re.fullmatch(rf"digraph ({_STRING}) {{", lines[0])
    assert head is not None, lines[0]
    nodes: dict[str, dict[str, str]] = {}
    edges = []
    for line in lines[1:-2]:
        if line in _HEADER:
            continue
        if (node := _NODE.match(line)) is not None:
            nodes[_unquote(node.group(1))] = _attrs(node.group(2))
        elif (edge := _EDGE.match(line)) is not None:
            edges.append((_unquote(edge.group(1)), _unquote(edge.group(2)), _attrs(edge.group(3))))
        else:
            pytest.fail(f"not a DOT statement of to_dot's subset: {line!r}")
    return Dot(_unquote(head.group(1)), nodes, edges)


class Job(NamedTuple):
    shard: str
    n: int


class Note(NamedTuple):
    shard: str
    text: str


class Lock(NamedTuple):
    shard: str


t, s, batch = variables("t s batch")
jobs = Place("jobs", Job, key="shard", initial=[Job("a", 1), Job("a", 2)])
locks = Place("locks", Lock, key="shard")
stop = Place("stop", Lock, key="shard")
workers = Place("workers", Lock, pool=True, capacity=4)
queue = Place("queue", Job, key="shard", work_queue=True, results=("done",))
done = Place("done", Job)


def small_net() -> Net:
    return Net(
        "small",
        places=[jobs, locks, stop, workers, queue, done],
        transitions=[
            Transition(
                "take",
                consume=[jobs(t, shard=s)],
                read=[locks(shard=s)],
                inhibit=[stop(shard=s)],
                guard=lambda t: t.n > 1,
                produce=[queue.produce(t, delay=250)],
                priority=2,
            ),
            Transition(
                "pair",
                consume=[jobs.many(2, batch, shard=s)],
                produce=[done.produce_all(lambda batch: [b._replace(n=0) for b in batch])],
            ),
        ],
    )


def test_places_are_ellipses_with_colour_partition_capacity_and_work_queue() -> None:
    dot = read_dot(to_dot(small_net()))
    assert dot.name == "small"
    assert dot.nodes["p:jobs"] == {
        "shape": "ellipse",
        "label": "jobs\nJob(shard, n)\nkey=shard, 2 initial",
    }
    assert dot.nodes["p:workers"]["label"] == "workers\nLock(shard)\npool, capacity=4"
    assert dot.nodes["p:done"]["label"] == "done\nJob(shard, n)\nfixed"
    assert dot.nodes["p:queue"]["label"] == "queue\nJob(shard, n)\nkey=shard\nwork queue → done"


def test_transitions_are_boxes_with_guard_source_and_priority() -> None:
    dot = read_dot(to_dot(small_net()))
    assert dot.nodes["t:take"] == {
        "shape": "box",
        "label": "take\n[lambda t: t.n > 1]\npriority=2",
    }
    assert dot.nodes["t:pair"] == {"shape": "box", "label": "pair"}


def test_each_arc_kind_has_its_style_and_label() -> None:
    edges = {(a, b): attrs for a, b, attrs in read_dot(to_dot(small_net())).edges}
    assert edges["p:jobs", "t:take"] == {"label": "t[shard=s]"}
    assert edges["p:locks", "t:take"] == {"label": "[shard=s]", "style": "dashed", "dir": "none"}
    assert edges["p:stop", "t:take"] == {"label": "[shard=s]", "arrowhead": "odot"}
    assert edges["t:take", "p:queue"] == {"label": "t\n@+250ms"}
    assert edges["p:jobs", "t:pair"] == {"label": "2 of batch[shard=s]"}
    assert edges["t:pair", "p:done"] == {
        "label": "all: lambda batch: [b._replace(n=0) for b in batch]"
    }
    assert len(edges) == 6


def test_hostile_text_stays_inside_its_label() -> None:
    hostile = 'a"b}{<c>\\N;\n] -> x [color=red'
    tricky = Place("tricky", Note, key="shard")
    net = Net(
        'evil"net{',
        places=[tricky, done],
        transitions=[
            Transition(
                "t1",
                consume=[tricky(t, shard=s, text=hostile)],
                guard=lambda t: t.text != '"}<br/>{' and "\\" not in t.text,
                produce=[done.produce(Job('"};\n', 0))],
            )
        ],
    )
    text = to_dot(net)
    dot = read_dot(text)
    assert dot.name == 'evil"net{'
    (consume, output) = dot.edges
    assert consume[2]["label"] == f"t[shard=s, text={hostile!r}]"
    assert output[2]["label"] == "Job(shard='\"};\\n', n=0)"
    guard = dot.nodes["t:t1"]["label"].split("\n")[1]
    assert guard.startswith("""[lambda t: t.text != '"}<br/>{' and""")
    # The "] -> x [color=red" in the constant added no edge and no attribute.
    assert [set(attrs) for _, _, attrs in dot.edges] == [{"label"}, {"label"}]
    assert set(dot.nodes) == {"p:tricky", "p:done", "t:t1"}


def test_long_guards_are_cut_to_one_short_line() -> None:
    long_guard = Transition(
        "slow",
        consume=[jobs(t, shard=s)],
        guard=lambda t: (
            t.n > 1
            and t.n < 1_000_000
            and t.shard not in ("a-very-long-shard-name", "another-very-long-shard-name")
        ),
    )
    dot = read_dot(to_dot(Net("long", places=[jobs], transitions=[long_guard])))
    guard = dot.nodes["t:slow"]["label"].split("\n")[1]
    assert guard.startswith("[lambda t: ( t.n > 1 and t.n < 1_000_000")
    assert len(guard) == LABEL_LINE_CHARS_MAX
    assert guard.endswith("…]")


def _named_guard(t: Job) -> bool:
    return t.n > 0


def test_a_guard_without_lambda_source_shows_its_name_and_parameters() -> None:
    named = Transition("named", consume=[jobs(t, shard=s)], guard=_named_guard)
    typed = Transition("typed", consume=[jobs(t, shard=s)], guard=eval("lambda t: t.n > 0"))
    dot = read_dot(to_dot(Net("guards", places=[jobs], transitions=[named, typed])))
    assert dot.nodes["t:named"]["label"] == "named\n[_named_guard(t)]"
    assert dot.nodes["t:typed"]["label"] == "typed\n[<lambda>(t)]"


def test_two_lambdas_on_one_line_are_told_apart() -> None:
    # Both lambdas take t and start on the same line; the columns tell them apart.
    outputs = [done.produce(lambda t: t), done.produce(lambda t: t._replace(n=0))]
    both = Transition("both", consume=[jobs(t, shard=s)], produce=outputs)
    dot = read_dot(to_dot(Net("two", places=[jobs, done], transitions=[both])))
    labels = [attrs["label"] for a, _, attrs in dot.edges if a == "t:both"]
    assert labels == ["lambda t: t", "lambda t: t._replace(n=0)"]


def test_the_same_net_draws_the_same_text() -> None:
    assert to_dot(small_net()) == to_dot(small_net())


@pytest.mark.parametrize("path", ["nets.scraper:net", "nets.jobs:net", "nets.scraper_sim:net"])
def test_the_bundled_nets_draw(path: str) -> None:
    net = load_net(path)
    dot = read_dot(to_dot(net))
    assert len(dot.nodes) == len(net.places) + len(net.transitions)
    arcs = sum(len(t.arcs) + len(t.produce) for t in net.transitions)
    assert len(dot.edges) == arcs
    assert to_dot(load_net(path)) == to_dot(net)
