"""The state-space report: CPN Tools' standard sections, computed from an exploration.

Theory of operation (the definitions are CPN Tools' and Jensen and Kristensen's,
*Coloured Petri Nets*, 2009, chapter 9):

* **Statistics**: states (nodes) and binding elements fired (arcs) of the reachability
  graph; the nodes and arcs of its SCC graph (strongly connected components, Tarjan's
  algorithm, iterative); full or partial.
* **Boundedness**: the most and fewest tokens each place holds over the reachable
  markings (integer bounds) and, for a place whose tokens take at most
  ``MULTISET_VALUES_MAX`` values, the most and fewest copies of each value (multiset
  bounds).
* **Home markings**: a marking reachable from every reachable marking. They exist
  exactly when the SCC graph has a single terminal component, and are its markings.
* **Liveness**: dead markings (no binding element enabled); dead transitions (no
  binding of them ever enabled); live transitions (from every reachable marking some
  binding of them can still fire: each terminal SCC contains one of their arcs).
* **Fairness** (the subset computed honestly): a transition is *impartial* when every
  infinite occurrence sequence fires it infinitely often, i.e. removing its arcs leaves
  no cycle in the graph. CPN Tools' fair and just transitions are not computed.

Every verdict holds under the exploration's semantics (``untimed`` or ``untimed,
priorities``), printed with it. A partial exploration only has statistics and bounds
over the explored states, and says so; home markings, liveness and fairness need the
whole graph and are not given for it.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nets.explore import StateGraph, StateSpace
from nets.model import Net, Token

MULTISET_VALUES_MAX = 6  # multiset bounds for places whose tokens take at most this many values
MULTISET_LINE_MAX = 120  # longer multiset bounds are only counted in the text report
DEAD_LISTED_MAX = 10  # dead markings listed by state number (all are counted)
FAIRNESS_WORK_MAX = 50_000_000  # transitions x arcs: above this, impartiality is not computed


@dataclass(frozen=True, slots=True)
class SccGraph:
    """The strongly connected components of a graph: ``component[state]``, in Tarjan order."""

    component: array[int]
    count: int
    arcs: int  # arcs of the SCC graph: distinct pairs of components joined by an arc
    terminal: tuple[int, ...]  # components no arc leaves


def scc_graph(states: int, src: array[int], dst: array[int]) -> SccGraph:
    """Tarjan's algorithm without recursion over the arcs ``src[k] -> dst[k]``."""
    offsets = array("i", [0]) * (states + 1)
    for s in src:
        offsets[s + 1] += 1
    for i in range(states):
        offsets[i + 1] += offsets[i]
    targets = array("i", [0]) * len(src)
    fill = array("i", offsets[:states])
    for s, d in zip(src, dst, strict=True):
        targets[fill[s]] = d
        fill[s] += 1
    del fill
    unvisited = -1
    index = array("i", [unvisited]) * states
    low = array("i", [0]) * states
    on_stack = bytearray(states)
    component = array("i", [-1]) * states
    stack: list[int] = []
    count = 0
    counter = 0
    for root in range(states):
        if index[root] != unvisited:
            continue
        work = [(root, offsets[root])]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = 1
        while work:
            v, k = work[-1]
            end = offsets[v + 1]
            if k < end:
                work[-1] = (v, k + 1)
                w = targets[k]
                if index[w] == unvisited:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = 1
                    work.append((w, offsets[w]))
                elif on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                for _ in range(states):
                    w = stack.pop()
                    on_stack[w] = 0
                    component[w] = count
                    if w == v:
                        break
                count += 1
    leaving = [False] * count
    pairs: set[tuple[int, int]] = set()
    for s, d in zip(src, dst, strict=True):
        a, b = component[s], component[d]
        if a != b:
            leaving[a] = True
            pairs.add((a, b))
    terminal = tuple(c for c in range(count) if not leaving[c])
    return SccGraph(component, count, len(pairs), terminal)


@dataclass(frozen=True, slots=True)
class PlaceBounds:
    upper: int
    lower: int
    # token value -> (most copies, fewest copies), for places with few values
    multiset: tuple[tuple[Token, int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """CPN Tools' standard report of one exploration (see the module docstring)."""

    net: str
    semantics: str
    technique: str
    partial: bool
    stop_reason: str
    nodes: int
    arcs: int
    scc_nodes: int | None
    scc_arcs: int | None
    bounds: dict[str, PlaceBounds]
    home_markings: tuple[int, ...] | None  # None: not computed (partial); () none exist
    dead_markings: int
    dead_listed: tuple[int, ...]
    terminal_sccs: int | None
    terminal_sccs_dead: int | None
    dead_transitions: tuple[str, ...] | None
    live_transitions: tuple[str, ...] | None
    impartial_transitions: tuple[str, ...] | None
    fairness_note: str


def _transition_names(net: Net, graph: StateGraph) -> list[str]:
    names = [t.name for t in net.transitions]
    for q in net.effects:
        names += [f"{q}__lease", f"{q}__complete", f"{q}__expire"]
    names += sorted({label.transition for label in graph.labels} - set(names))
    return names


def _multiset_bounds(graph: StateGraph) -> dict[str, tuple[tuple[Token, int, int], ...]]:
    found: dict[str, tuple[tuple[Token, int, int], ...]] = {}
    values: dict[str, set[Token]] = {name: set() for name in graph.places}
    states = range(len(graph.states))
    for s in states:
        for name, tokens in graph.marking(s).items():
            bucket = values[name]
            if len(bucket) <= MULTISET_VALUES_MAX:
                bucket.update(tokens)
    few = [name for name, vals in values.items() if 0 < len(vals) <= MULTISET_VALUES_MAX]
    most: dict[str, Counter[Token]] = {name: Counter() for name in few}
    fewest: dict[str, dict[Token, int]] = {
        name: dict.fromkeys(values[name], 1 << 30) for name in few
    }
    for s in states:
        marking = graph.marking(s)
        for name in few:
            counts = Counter(marking[name])
            for token in values[name]:
                n = counts.get(token, 0)
                most[name][token] = max(most[name][token], n)
                fewest[name][token] = min(fewest[name][token], n)
    for name in few:
        found[name] = tuple(
            (token, most[name][token], fewest[name][token]) for token in sorted(values[name])
        )
    return found


def _impartial(
    names: Iterable[str], graph: StateGraph, sccs: SccGraph
) -> tuple[tuple[str, ...] | None, str]:
    assert graph.edges is not None
    src, dst, lab = graph.edges
    component = sccs.component
    inner = [
        (s, d, graph.labels[label].transition)
        for s, d, label in zip(src, dst, lab, strict=True)
        if component[s] == component[d]
    ]
    if not inner:
        return (), "no infinite occurrence sequence: fairness is vacuous"
    names = list(names)
    if len(names) * len(inner) > FAIRNESS_WORK_MAX:
        return None, f"not computed: {len(inner):,} arcs on cycles is too many"
    impartial = [
        name for name in names if not _has_cycle([(s, d) for s, d, t in inner if t != name])
    ]
    return tuple(
        impartial
    ), "impartial: every infinite occurrence sequence fires it infinitely often"


def _has_cycle(arcs: list[tuple[int, int]]) -> bool:
    """Kahn's algorithm: a cycle remains when some node keeps an incoming arc."""
    indegree: Counter[int] = Counter(d for _, d in arcs)
    out: dict[int, list[int]] = {}
    for s, d in arcs:
        out.setdefault(s, []).append(d)
    ready = [s for s in out if indegree[s] == 0]
    removed = 0
    while ready:
        v = ready.pop()
        for w in out.get(v, ()):
            indegree[w] -= 1
            removed += 1
            if indegree[w] == 0:
                ready.append(w)
    return removed < len(arcs)


def build_report(net: Net, space: StateSpace) -> Report:
    """The report of ``space``, an exploration of ``net`` with ``keep_edges=True``."""
    graph = space.graph
    # A P/T exploration has one value per place: its integer bounds say everything.
    multiset = {} if space.technique.endswith("PT") else _multiset_bounds(graph)
    bounds = {
        name: PlaceBounds(
            space.place_bounds[name], space.place_lower_bounds[name], multiset.get(name)
        )
        for name in graph.places
    }
    common: dict[str, Any] = {
        "net": net.name,
        "semantics": space.semantics,
        "technique": space.technique,
        "partial": space.partial,
        "stop_reason": space.stop_reason,
        "nodes": space.state_count,
        "arcs": space.edge_count,
        "bounds": bounds,
        "dead_markings": space.dead_markings,
        "dead_listed": tuple(graph.dead[:DEAD_LISTED_MAX]),
    }
    if space.partial or graph.edges is None:
        return Report(
            **common,
            scc_nodes=None,
            scc_arcs=None,
            home_markings=None,
            terminal_sccs=None,
            terminal_sccs_dead=None,
            dead_transitions=None,
            live_transitions=None,
            impartial_transitions=None,
            fairness_note="not computed: the exploration is partial",
        )
    src, dst, lab = graph.edges
    sccs = scc_graph(space.state_count, src, dst)
    component = sccs.component
    dead_set = set(graph.dead)
    members: dict[int, list[int]] = {c: [] for c in sccs.terminal}
    for s in range(space.state_count):
        c = component[s]
        if c in members:
            members[c].append(s)
    terminal_dead = sum(1 for c in sccs.terminal if members[c][0] in dead_set)
    home = tuple(members[sccs.terminal[0]]) if len(sccs.terminal) == 1 else ()
    names = _transition_names(net, graph)
    fired = {graph.labels[label].transition for label in set(lab)}
    inside: dict[int, set[str]] = {c: set() for c in sccs.terminal}
    for s, d, label in zip(src, dst, lab, strict=True):
        c = component[s]
        if c in inside and component[d] == c:
            inside[c].add(graph.labels[label].transition)
    live = tuple(n for n in names if all(n in inside[c] for c in sccs.terminal))
    impartial, note = _impartial(names, graph, sccs)
    return Report(
        **common,
        scc_nodes=sccs.count,
        scc_arcs=sccs.arcs,
        home_markings=home,
        terminal_sccs=len(sccs.terminal),
        terminal_sccs_dead=terminal_dead,
        dead_transitions=tuple(n for n in names if n not in fired),
        live_transitions=live,
        impartial_transitions=impartial,
        fairness_note=note,
    )


def _names(items: tuple[str, ...] | None) -> str:
    if items is None:
        return "not computed (partial)"
    return ", ".join(items) if items else "none"


def render_text(report: Report) -> str:
    """The report as text, in CPN Tools' sections."""
    full = "Partial" if report.partial else "Full"
    lines = [
        f"CPN state space report: net {report.net!r}",
        f"Semantics: {report.semantics} (every verdict below holds under it; docs/verify.md)",
        "",
        "Statistics",
        f"  State space   nodes: {report.nodes:,}  arcs: {report.arcs:,}  {full}"
        + (f" ({report.stop_reason})" if report.partial else ""),
    ]
    if report.scc_nodes is not None:
        lines.append(f"  SCC graph     nodes: {report.scc_nodes:,}  arcs: {report.scc_arcs:,}")
    lines += ["", "Boundedness", "  place" + " " * 25 + "upper  lower"]
    for name, b in report.bounds.items():
        lines.append(f"  {name:<28} {b.upper:>6} {b.lower:>6}")
    multiset = {n: b.multiset for n, b in report.bounds.items() if b.multiset}
    if multiset:
        lines.append("  multiset bounds (value: upper/lower copies)")
        for name, entries in multiset.items():
            parts = "  ".join(f"{tuple(tok)}: {hi}/{lo}" for tok, hi, lo in entries)
            if len(parts) > MULTISET_LINE_MAX:
                parts = f"{len(entries)} values (--json lists them)"
            lines.append(f"    {name}: {parts}")
    lines += ["", "Home properties"]
    if report.home_markings is None:
        lines.append("  Home markings: not computed (partial)")
    elif report.home_markings:
        shown = ", ".join(str(s) for s in report.home_markings[:DEAD_LISTED_MAX])
        more = " ..." if len(report.home_markings) > DEAD_LISTED_MAX else ""
        lines.append(f"  Home markings: {len(report.home_markings):,} [{shown}{more}]")
    else:
        lines.append("  Home markings: none")
    lines += ["", "Liveness properties"]
    listed = ", ".join(str(s) for s in report.dead_listed)
    more = " ..." if report.dead_markings > len(report.dead_listed) else ""
    lines.append(f"  Dead markings: {report.dead_markings:,} [{listed}{more}]")
    if report.terminal_sccs is not None:
        lines.append(
            f"  Terminal SCCs: {report.terminal_sccs:,}, of which dead markings: "
            f"{report.terminal_sccs_dead:,}"
        )
    lines.append(f"  Dead transitions: {_names(report.dead_transitions)}")
    lines.append(f"  Live transitions: {_names(report.live_transitions)}")
    lines += ["", "Fairness properties"]
    lines.append(f"  Impartial transitions: {_names(report.impartial_transitions)}")
    lines.append(f"  ({report.fairness_note}; fair and just transitions are not computed)")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {"colour": type(value).__name__, "fields": [_jsonable(v) for v in value]}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def as_json(report: Report) -> dict[str, Any]:
    """The report as a JSON-ready dict, with the same sections."""
    return {
        "net": report.net,
        "semantics": report.semantics,
        "statistics": {
            "nodes": report.nodes,
            "arcs": report.arcs,
            "scc_nodes": report.scc_nodes,
            "scc_arcs": report.scc_arcs,
            "full": not report.partial,
            "stop_reason": report.stop_reason,
            "technique": report.technique,
        },
        "boundedness": {
            name: {
                "upper": b.upper,
                "lower": b.lower,
                "multiset": None
                if b.multiset is None
                else [
                    {"token": _jsonable(t), "upper": hi, "lower": lo} for t, hi, lo in b.multiset
                ],
            }
            for name, b in report.bounds.items()
        },
        "home": {
            "home_markings": None if report.home_markings is None else len(report.home_markings)
        },
        "liveness": {
            "dead_markings": report.dead_markings,
            "dead_listed": list(report.dead_listed),
            "terminal_sccs": report.terminal_sccs,
            "terminal_sccs_dead": report.terminal_sccs_dead,
            "dead_transitions": report.dead_transitions,
            "live_transitions": report.live_transitions,
        },
        "fairness": {
            "impartial_transitions": report.impartial_transitions,
            "note": report.fairness_note,
        },
    }
