"""A net laid out in layers, left to right, for drawing without Graphviz (pure).

``cpn dashboard`` draws the net in the browser as SVG; Graphviz may not be installed
where the dashboard runs, so the layout is computed here, in a few milliseconds for a
net of a few hundred nodes, and the page only draws what it is given.

Theory of operation (a small Sugiyama-style layered layout):

1. **Graph.** One node per place and per transition, in declaration order (places,
   then transitions). One edge per arc: place -> transition for consume, read and
   inhibitor arcs, transition -> place for output arcs (as nets/draw.py draws them).
2. **Cycles broken.** A depth-first search, started from the nodes with no incoming
   edge and then from the rest, each in declaration order and following edges in
   arc order, marks the edges that close a cycle; those count reversed for the
   layering only (they are still drawn in their own direction).
3. **Layers.** Longest path from the sources of that acyclic graph: a node is one
   layer right of its rightmost predecessor; a node with no edge is in layer 0.
4. **Order in a layer.** Declaration order first, then ``ORDER_SWEEPS`` sweeps that
   sort each layer by the mean row of its neighbours (the barycenter heuristic), with
   ties kept in their current order: the sort is stable, so the result depends on
   the net only, never on ``PYTHONHASHSEED``.
5. **Coordinates.** Layer ``i`` at ``x = MARGIN + i * LAYER_GAP`` plus half a node;
   rows ``ROW_GAP`` apart, each layer centred on the tallest one.
6. **Edges.** A quadratic curve from border to border. Edges between the same two
   nodes (a place read and written by one transition, a token taken and put back)
   are bent apart by ``BEND_STEP`` each, so none hides another.

The result is a frozen :class:`NetLayout`; :meth:`NetLayout.to_json` gives plain data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from nets.draw import output_lines, pattern_text, place_lines, shorten, transition_lines
from nets.model import InhibitorArc, Net, ReadArc

MARGIN: Final = 40
LAYER_GAP: Final = 150
ROW_GAP: Final = 90
PLACE_DIAMETER: Final = 46
TRANSITION_WIDTH: Final = 18
TRANSITION_HEIGHT: Final = 50
BEND_STEP: Final = 26.0  # pixels between two curves joining the same pair of nodes
ORDER_SWEEPS: Final = 4
LABEL_BELOW: Final = 18  # room under the bottom row for the node's name

NodeKind = Literal["place", "transition"]
EdgeKind = Literal["consume", "read", "inhibit", "produce"]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class NodeBox:
    """A place (a circle) or a transition (a bar) at centre ``(x, y)``."""

    node_id: str  # "p:NAME" or "t:NAME": a place and a transition may share a name
    kind: NodeKind
    name: str
    layer: int
    row: int
    x: float
    y: float
    width: float
    height: float
    details: tuple[str, ...]  # nets/draw.py's label lines, for a tooltip


@dataclass(frozen=True, slots=True)
class EdgeCurve:
    """An arc drawn as a quadratic curve ``start`` -> ``control`` -> ``end``."""

    source: str
    target: str
    kind: EdgeKind
    label: str
    start: Point
    control: Point
    end: Point


@dataclass(frozen=True, slots=True)
class NetLayout:
    """Where every node and arc of a net is drawn, in a ``width`` x ``height`` box."""

    net: str
    width: float
    height: float
    nodes: tuple[NodeBox, ...]
    edges: tuple[EdgeCurve, ...]

    def node(self, node_id: str) -> NodeBox:
        """The node ``node_id``; raises KeyError naming it when there is none."""
        for box in self.nodes:
            if box.node_id == node_id:
                return box
        raise KeyError(f"net {self.net!r} has no node {node_id!r} in its layout")

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON: coordinates rounded to a tenth of a pixel."""
        return {
            "net": self.net,
            "width": self.width,
            "height": self.height,
            "nodes": [
                {
                    "id": n.node_id,
                    "kind": n.kind,
                    "name": n.name,
                    "x": n.x,
                    "y": n.y,
                    "width": n.width,
                    "height": n.height,
                    "details": list(n.details),
                }
                for n in self.nodes
            ],
            "edges": [
                {
                    "source": e.source,
                    "target": e.target,
                    "kind": e.kind,
                    "label": e.label,
                    "path": [_rounded(e.start), _rounded(e.control), _rounded(e.end)],
                }
                for e in self.edges
            ],
        }


@dataclass(frozen=True, slots=True)
class _Edge:
    source: int
    target: int
    kind: EdgeKind
    label: str


def layout_net(net: Net) -> NetLayout:
    """``net`` laid out left to right (see the module docstring); deterministic."""
    names: list[tuple[NodeKind, str, tuple[str, ...]]] = [
        ("place", p.name, tuple(place_lines(p))) for p in net.places
    ] + [("transition", t.name, tuple(transition_lines(t))) for t in net.transitions]
    index = {(kind, name): i for i, (kind, name, _) in enumerate(names)}
    edges: list[_Edge] = []
    for transition in net.transitions:
        t = index["transition", transition.name]
        for arc in transition.arcs:
            arc_kind: EdgeKind = (
                "read"
                if isinstance(arc, ReadArc)
                else "inhibit"
                if isinstance(arc, InhibitorArc)
                else "consume"
            )
            p = index["place", arc.pattern.place.name]
            edges.append(_Edge(p, t, arc_kind, shorten(pattern_text(arc.pattern))))
        for output in transition.produce:
            p = index["place", output.place.name]
            edges.append(_Edge(t, p, "produce", shorten(" ".join(output_lines(output)))))
    layers = _layers(len(names), edges)
    rows = _rows(layers, edges)
    tallest = max((len(layer) for layer in _by_layer(layers)), default=1)
    boxes = []
    for i, (kind, name, details) in enumerate(names):
        width, height = (
            (PLACE_DIAMETER, PLACE_DIAMETER)
            if kind == "place"
            else (TRANSITION_WIDTH, TRANSITION_HEIGHT)
        )
        in_layer = sum(1 for layer in layers if layer == layers[i])
        offset = (tallest - in_layer) * ROW_GAP / 2
        boxes.append(
            NodeBox(
                f"{kind[0]}:{name}",
                kind,
                name,
                layers[i],
                rows[i],
                MARGIN + layers[i] * LAYER_GAP + PLACE_DIAMETER / 2,
                MARGIN + offset + rows[i] * ROW_GAP + PLACE_DIAMETER / 2,
                width,
                height,
                details,
            )
        )
    layer_count = max(layers, default=0) + 1
    return NetLayout(
        net.name,
        2 * MARGIN + (layer_count - 1) * LAYER_GAP + PLACE_DIAMETER,
        2 * MARGIN + (tallest - 1) * ROW_GAP + PLACE_DIAMETER + LABEL_BELOW,
        tuple(boxes),
        _curves(boxes, edges),
    )


def _layers(count: int, edges: Sequence[_Edge]) -> list[int]:
    """Each node's layer: longest path over the edges, cycle-closing edges reversed."""
    successors: list[list[int]] = [[] for _ in range(count)]
    has_input = [False] * count
    for edge in edges:
        if edge.source != edge.target:
            successors[edge.source].append(edge.target)
            has_input[edge.target] = True
    # Iterative DFS (no recursion limit): colour 0 unseen, 1 on the stack, 2 done.
    colour = [0] * count
    forward: list[tuple[int, int]] = []  # the acyclic edges, some reversed
    roots = [v for v in range(count) if not has_input[v]] + list(range(count))
    for root in roots:
        if colour[root]:
            continue
        colour[root] = 1
        stack = [(root, 0)]
        while stack:
            node, next_child = stack[-1]
            if next_child == len(successors[node]):
                colour[node] = 2
                stack.pop()
                continue
            stack[-1] = (node, next_child + 1)
            child = successors[node][next_child]
            if colour[child] == 1:
                forward.append((child, node))  # closes a cycle: reversed for layering
            else:
                forward.append((node, child))
                if colour[child] == 0:
                    colour[child] = 1
                    stack.append((child, 0))
    after: list[list[int]] = [[] for _ in range(count)]
    indegree = [0] * count
    for source, target in forward:
        after[source].append(target)
        indegree[target] += 1
    layer = [0] * count
    ready = [v for v in range(count) if indegree[v] == 0]
    placed = 0
    while placed < len(ready):  # Kahn's order; `ready` doubles as the queue
        node = ready[placed]
        placed += 1
        for target in after[node]:
            layer[target] = max(layer[target], layer[node] + 1)
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    assert placed == count, "the reversed back edges leave no cycle"
    return layer


def _by_layer(layers: Sequence[int]) -> list[list[int]]:
    grouped: list[list[int]] = [[] for _ in range(max(layers, default=-1) + 1)]
    for node, layer in enumerate(layers):
        grouped[layer].append(node)
    return grouped


def _rows(layers: Sequence[int], edges: Sequence[_Edge]) -> list[int]:
    """Each node's row in its layer, by barycenter sweeps (see the module docstring)."""
    neighbours: list[list[int]] = [[] for _ in layers]
    for edge in edges:
        if edge.source != edge.target:
            neighbours[edge.source].append(edge.target)
            neighbours[edge.target].append(edge.source)
    grouped = _by_layer(layers)
    row = [0] * len(layers)
    for members in grouped:
        for position, node in enumerate(members):
            row[node] = position
    for sweep in range(ORDER_SWEEPS):
        order = grouped if sweep % 2 == 0 else grouped[::-1]
        for members in order:

            def barycenter(node: int) -> float:
                near = neighbours[node]
                return sum(row[n] for n in near) / len(near) if near else float(row[node])

            members.sort(key=barycenter)
            for position, node in enumerate(members):
                row[node] = position
    return row


def _curves(boxes: Sequence[NodeBox], edges: Sequence[_Edge]) -> tuple[EdgeCurve, ...]:
    pairs: dict[tuple[int, int], list[int]] = {}
    for number, edge in enumerate(edges):
        pairs.setdefault((min(edge.source, edge.target), max(edge.source, edge.target)), []).append(
            number
        )
    curves = []
    for number, edge in enumerate(edges):
        low, high = min(edge.source, edge.target), max(edge.source, edge.target)
        group = pairs[low, high]
        # The bend is measured in the frame of the pair's lower node, so an arc and
        # its opposite go round different sides.
        bend = (group.index(number) - (len(group) - 1) / 2) * BEND_STEP
        if edge.source != low:
            bend = -bend
        source, target = boxes[edge.source], boxes[edge.target]
        dx, dy = target.x - source.x, target.y - source.y
        length = math.hypot(dx, dy) or 1.0
        control = (
            (source.x + target.x) / 2 - dy / length * bend,
            (source.y + target.y) / 2 + dx / length * bend,
        )
        curves.append(
            EdgeCurve(
                source.node_id,
                target.node_id,
                edge.kind,
                edge.label,
                _border(source, control),
                control,
                _border(target, control),
            )
        )
    return tuple(curves)


def _border(box: NodeBox, toward: Point) -> Point:
    """Where the line from ``box``'s centre toward ``toward`` leaves its outline."""
    dx, dy = toward[0] - box.x, toward[1] - box.y
    length = math.hypot(dx, dy)
    if length == 0:
        return (box.x, box.y)
    if box.kind == "place":
        scale = box.width / 2 / length
    else:
        scale = min(
            box.width / 2 / abs(dx) if dx else math.inf,
            box.height / 2 / abs(dy) if dy else math.inf,
        )
    return (box.x + dx * scale, box.y + dy * scale)


def _rounded(point: Point) -> list[float]:
    return [round(point[0], 1), round(point[1], 1)]
