"""nets/layout.py: the dashboard's layered layout of a net, without Graphviz."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from itertools import combinations
from typing import NamedTuple

import pytest

from nets.layout import LAYER_GAP, NetLayout, layout_net
from nets.loader import load_net
from nets.model import Net, Place, Transition, variables
from tests.nets_for_tests import circulation, hopping, jobs_and_circulation


class Item(NamedTuple):
    key: str


def _chain() -> Net:
    """a -> t1 -> b -> t2 -> c, plus an isolated place and a read arc."""
    a, b, c = (Place(name, Item, key="key") for name in "abc")
    lone = Place("lone", Item, key="key")
    x, k = variables("x k")
    t1 = Transition("t1", consume=[a(x, key=k)], produce=[b.produce(x)])
    t2 = Transition("t2", consume=[b(x, key=k)], read=[lone(key=k)], produce=[c.produce(x)])
    return Net("chain", places=[a, b, c, lone], transitions=[t1, t2])


def _layer(layout: NetLayout, node_id: str) -> int:
    return layout.node(node_id).layer


def test_a_chain_goes_left_to_right_one_layer_per_step() -> None:
    layout = layout_net(_chain())
    assert [_layer(layout, n) for n in ("p:a", "t:t1", "p:b", "t:t2", "p:c")] == [0, 1, 2, 3, 4]
    assert layout.node("p:c").x - layout.node("p:a").x == 4 * LAYER_GAP


def test_every_place_and_transition_is_placed_once_and_every_arc_drawn() -> None:
    net = jobs_and_circulation()
    layout = layout_net(net)
    ids = [n.node_id for n in layout.nodes]
    assert ids == [f"p:{p.name}" for p in net.places] + [f"t:{t.name}" for t in net.transitions]
    arcs = sum(len(t.arcs) + len(t.produce) for t in net.transitions)
    assert len(layout.edges) == arcs


@pytest.mark.parametrize("build", [hopping, circulation, jobs_and_circulation, _chain])
def test_nodes_stay_inside_the_box_and_never_overlap(build: object) -> None:
    assert callable(build)
    layout = layout_net(build())
    for node in layout.nodes:
        assert node.width / 2 <= node.x <= layout.width - node.width / 2
        assert node.height / 2 <= node.y <= layout.height - node.height / 2
    for one, other in combinations(layout.nodes, 2):
        apart_x = abs(one.x - other.x) >= (one.width + other.width) / 2
        apart_y = abs(one.y - other.y) >= (one.height + other.height) / 2
        assert apart_x or apart_y, (one.node_id, other.node_id)


def test_a_cycle_is_laid_out_and_its_two_arcs_between_one_pair_do_not_coincide() -> None:
    layout = layout_net(hopping())  # hop takes a ticket and puts one back: a 2-cycle
    between = [e for e in layout.edges if {e.source, e.target} == {"p:tickets", "t:hop"}]
    assert len(between) == 2
    assert between[0].control != between[1].control


def test_edges_start_and_end_on_the_node_outlines() -> None:
    layout = layout_net(_chain())
    edge = next(e for e in layout.edges if e.source == "p:a")
    place, transition = layout.node("p:a"), layout.node("t:t1")
    assert math.dist(edge.start, (place.x, place.y)) == pytest.approx(place.width / 2)
    dx, dy = edge.end[0] - transition.x, edge.end[1] - transition.y
    on_outline = max(abs(dx) / (transition.width / 2), abs(dy) / (transition.height / 2))
    assert on_outline == pytest.approx(1.0)


def test_the_json_is_plain_data() -> None:
    data = layout_net(hopping()).to_json()
    assert json.loads(json.dumps(data)) == data
    assert {n["kind"] for n in data["nodes"]} == {"place", "transition"}


def test_the_layout_does_not_depend_on_the_hash_seed() -> None:
    # One other interpreter with a fixed hash seed, compared with this one's (random,
    # or whatever the run set): a set or dict order leaking into the layout shows.
    probe = (
        "import json; from nets.layout import layout_net; from nets.loader import load_net; "
        "print(json.dumps(layout_net(load_net('nets.scraper:net')).to_json()))"
    )
    other = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(other) == layout_net(load_net("nets.scraper:net")).to_json()
