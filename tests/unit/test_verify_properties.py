"""The report, the properties and the traces of ``cpn verify``, on small nets."""

import json
from array import array

import pytest

from nets.classic_nets import kanban, philosophers
from nets.explore import explore
from nets.properties import (
    HOLDS,
    PARTIAL,
    VIOLATED,
    check_deadlocks,
    check_invariant,
    check_reachable,
    check_semiflows,
    check_termination,
    farkas,
)
from nets.report import as_json, build_report, render_text, scc_graph
from nets.scraper_sim import crawl_finished, verified_net
from nets.trace import TraceError, parse_trace, replay, trace_document


def test_scc_graph_finds_components_and_terminal_ones() -> None:
    # 0 -> 1 -> 2 -> 1, 0 -> 3: components {1, 2} and {3} are terminal.
    sccs = scc_graph(4, array("i", [0, 1, 2, 0]), array("i", [1, 2, 1, 3]))
    assert sccs.count == 3
    assert sccs.component[1] == sccs.component[2] != sccs.component[0]
    assert sorted(sccs.terminal) == sorted({sccs.component[1], sccs.component[3]})
    assert sccs.arcs == 2


def test_report_of_kanban_has_one_home_scc_and_live_transitions() -> None:
    net = kanban(1)
    report = build_report(net, explore(net, keep_edges=True))
    assert (report.nodes, report.arcs, report.scc_nodes) == (160, 616, 1)
    assert report.home_markings is not None and len(report.home_markings) == 160
    assert report.live_transitions == tuple(t.name for t in net.transitions)
    assert report.dead_transitions == ()
    text = render_text(report)
    assert "Semantics: untimed" in text and "Home markings: 160" in text
    assert as_json(report)["statistics"]["full"] is True


def test_partial_report_does_not_claim_liveness() -> None:
    net = kanban(2)
    space = explore(net, keep_edges=True, max_states=100)
    report = build_report(net, space)
    assert report.live_transitions is None and report.home_markings is None
    assert check_invariant(space, "true", lambda m: True).status == PARTIAL
    assert check_termination(report).status == PARTIAL


def test_properties_give_shortest_counterexamples() -> None:
    net = philosophers(3)
    space = explore(net, keep_edges=True)
    eats = check_invariant(space, "nobody eats", lambda m: not any(m[f"eat{i}"] for i in range(3)))
    assert eats.status == VIOLATED and len(eats.path) == 2
    assert (
        check_reachable(space, "deadlock", lambda m: all(m[f"left{i}"] for i in range(3))).status
        == HOLDS
    )
    assert check_deadlocks(space, {}).status == VIOLATED
    allowed = check_deadlocks(space, {"all left": lambda m: all(m[f"left{i}"] for i in range(3))})
    assert allowed.status == HOLDS
    report = build_report(net, space)
    assert check_termination(report).status == HOLDS
    assert (
        check_termination(build_report(kanban(1), explore(kanban(1), keep_edges=True))).status
        == VIOLATED
    )


def test_farkas_finds_minimal_semiflows() -> None:
    # p0 -> p1 -> p0, and p2 -> p2 + p3 (p3 grows): one semiflow, p0 + p1.
    columns = [(-1, 1, 0, 0), (1, -1, 0, 0), (0, 0, 0, 1)]
    assert farkas(columns, 4) == [(0, 0, 1, 0), (1, 1, 0, 0)]
    net = philosophers(3)
    verdicts = check_semiflows(net, explore(net, keep_edges=True))
    assert len(verdicts) == 6 and all(v.status == HOLDS for v in verdicts)


def test_the_decision_model_verifies() -> None:
    net = verified_net()
    space = explore(net, keep_edges=True)
    assert not space.partial
    assert all(check_invariant(space, n, p).status == HOLDS for n, p in net.invariants.items())
    assert check_deadlocks(space, {"finished": crawl_finished}).status == HOLDS


def test_a_trace_round_trips_and_replays() -> None:
    net = philosophers(3)
    space = explore(net, keep_edges=True)
    verdict = check_deadlocks(space, {})
    document = trace_document(
        "nets.classic_nets:philosophers", {"n": 3}, "deadlock", "untimed", verdict.path
    )
    trace = parse_trace(json.dumps(document))
    assert [line.split()[1].removesuffix("()") for line in replay(net, trace)] == [
        "take_left0",
        "take_left1",
        "take_left2",
    ]
    document["steps"].append({"transition": "release0", "binding": {}})
    with pytest.raises(TraceError, match="trace step 4 \\(release0\\)"):
        list(replay(net, parse_trace(json.dumps(document))))
    with pytest.raises(TraceError, match="not JSON"):
        parse_trace("{")
