"""Properties checked on an explored state space, with shortest counterexamples.

Theory of operation:

* **Invariants (AG p)**: a predicate over the marking (:data:`nets.model.MarkingView`)
  must hold in every reachable marking. States are numbered breadth first, so the
  first violating state found is one of the fewest steps from the initial marking, and
  its parent links give the shortest counterexample.
* **Reachability (EF p)**: some reachable marking satisfies the predicate; the witness
  path is shortest for the same reason.
* **Deadlock freedom except final markings**: every dead marking (nothing enabled)
  satisfies one of the declared final predicates.
* **P-semiflows**: non-negative integer weightings ``y`` of the places with
  ``y . C = 0`` for the incidence matrix ``C`` (places x transitions, tokens produced
  minus consumed per firing, by count), so that ``y . M`` is the same in every
  reachable marking. They are computed exactly with integers by the Farkas algorithm,
  keeping only rows of minimal support (Martinez and Silva's rule), and then checked
  on every explored marking. A transition whose outputs produce a varying number of
  tokens (``produce_all``), and the completion of a leased token (one column per
  outcome), get their columns from the explored arcs instead (stated in the result).
* A verdict on a partial exploration never says "holds": it says "not violated in N
  states, partial".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from math import gcd

from nets.errors import CpnError
from nets.explore import Label, StateSpace
from nets.model import MarkingView, Net
from nets.report import Report

HOLDS, VIOLATED, PARTIAL = "holds", "violated", "partial"
SEMIFLOW_ROWS_MAX = 20_000  # the Farkas algorithm can blow up; stop beyond this many rows

Predicate = Callable[[MarkingView], bool]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one property.

    ``status`` is ``"holds"``, ``"violated"`` or ``"partial"`` (not violated in the
    explored states). ``state`` and ``path`` give the counterexample (or, for EF, the
    witness) when there is one.
    """

    name: str
    kind: str  # "invariant", "reachable", "deadlock", "semiflow"
    status: str
    detail: str
    semantics: str
    state: int | None = None
    path: tuple[Label, ...] = field(default=())

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.status.upper()} - {self.detail} [{self.semantics}]"


def _call(name: str, predicate: Predicate, marking: MarkingView, state: int) -> bool:
    try:
        return bool(predicate(marking))
    except Exception as exc:
        raise CpnError(
            f"property {name!r} raised {type(exc).__name__} in state {state}: {exc}"
        ) from exc


def check_invariant(space: StateSpace, name: str, predicate: Predicate) -> Verdict:
    """AG ``predicate``: the first (shallowest) violating state, if any."""
    graph = space.graph
    for state in range(space.state_count):
        if not _call(name, predicate, graph.marking(state), state):
            path = tuple(graph.path(state))
            return Verdict(
                name,
                "invariant",
                VIOLATED,
                f"violated in state {state}, {len(path)} steps from the initial marking",
                space.semantics,
                state,
                path,
            )
    return _not_violated(space, name, "invariant", "holds in")


def _not_violated(space: StateSpace, name: str, kind: str, what: str) -> Verdict:
    if space.partial:
        return Verdict(
            name,
            kind,
            PARTIAL,
            f"not violated in {space.state_count:,} states, partial ({space.stop_reason})",
            space.semantics,
        )
    return Verdict(
        name, kind, HOLDS, f"{what} all {space.state_count:,} reachable markings", space.semantics
    )


def check_reachable(space: StateSpace, name: str, predicate: Predicate) -> Verdict:
    """EF ``predicate``: the first (shallowest) state satisfying it is the witness."""
    graph = space.graph
    for state in range(space.state_count):
        if _call(name, predicate, graph.marking(state), state):
            path = tuple(graph.path(state))
            return Verdict(
                name,
                "reachable",
                HOLDS,
                f"reached in state {state}, {len(path)} steps from the initial marking",
                space.semantics,
                state,
                path,
            )
    if space.partial:
        return Verdict(
            name,
            "reachable",
            PARTIAL,
            f"not reached in {space.state_count:,} states, partial ({space.stop_reason})",
            space.semantics,
        )
    return Verdict(
        name, "reachable", VIOLATED, "no reachable marking satisfies it", space.semantics
    )


def check_deadlocks(space: StateSpace, finals: Mapping[str, Predicate]) -> Verdict:
    """Every dead marking satisfies one of ``finals`` (deadlock freedom otherwise)."""
    graph = space.graph
    name = "deadlock_free" + (f" except {', '.join(finals)}" if finals else "")
    for state in sorted(graph.dead):
        marking = graph.marking(state)
        if not any(_call(n, p, marking, state) for n, p in finals.items()):
            path = tuple(graph.path(state))
            return Verdict(
                name,
                "deadlock",
                VIOLATED,
                f"dead marking {state} is not final, {len(path)} steps from the initial marking",
                space.semantics,
                state,
                path,
            )
    return _not_violated(
        space, name, "deadlock", f"{len(graph.dead):,} dead markings, all final, in"
    )


def check_termination(report: Report) -> Verdict:
    """Every terminal SCC is a dead marking: from every reachable marking, every
    continuation that does not loop forever in a cycle with an exit ends in a dead
    marking (the fairness assumption: a cycle that can be left is left, e.g. a token
    whose lease keeps expiring is eventually completed)."""
    name = "terminal SCCs are dead markings"
    if report.terminal_sccs is None or report.terminal_sccs_dead is None:
        return Verdict(
            name,
            "termination",
            PARTIAL,
            f"not violated in {report.nodes:,} states, partial ({report.stop_reason})",
            report.semantics,
        )
    live = report.terminal_sccs - report.terminal_sccs_dead
    if live:
        return Verdict(
            name,
            "termination",
            VIOLATED,
            f"{live:,} of {report.terminal_sccs:,} terminal SCCs are cycles the net never leaves",
            report.semantics,
        )
    return Verdict(
        name,
        "termination",
        HOLDS,
        f"all {report.terminal_sccs:,} terminal SCCs are dead markings (fairness: cycles with "
        "an exit are left)",
        report.semantics,
    )


# -- P-semiflows ------------------------------------------------------------------------


def incidence(net: Net, space: StateSpace) -> tuple[list[tuple[int, ...]], str]:
    """The distinct columns of the incidence matrix over ``space.graph.places``.

    Returns the columns and where they come from (structure, or explored arcs too).
    """
    places = space.graph.places
    position = {name: i for i, name in enumerate(places)}
    columns: set[tuple[int, ...]] = set()
    observed: set[str] = set()
    for t in net.transitions:
        if any(out.many for out in t.produce):
            observed.add(t.name)
            continue
        column = [0] * len(places)
        for pattern in t.consume:
            column[position[pattern.place.name]] -= pattern.count
        for out in t.produce:
            column[position[out.place.name]] += 1
        columns.add(tuple(column))
    for q in net.effects:
        column = [0] * len(places)
        column[position[q]], column[position[q + "__held"]] = -1, 1
        columns.add(tuple(column))
        columns.add(tuple(-c for c in column))
        observed.add(q + "__complete")
    source = "structure"
    if observed:
        graph = space.graph
        if graph.edges is None:
            raise CpnError("P-semiflows of a net with produce_all or effects need the edges")
        src, dst, lab = graph.edges
        for s, d, label in zip(src, dst, lab, strict=True):
            if graph.labels[label].transition in observed:
                before, after = graph.counts(graph.states[s]), graph.counts(graph.states[d])
                columns.add(tuple(a - b for a, b in zip(after, before, strict=True)))
        source = f"structure, and explored arcs for {', '.join(sorted(observed))}"
    columns.discard(tuple(0 for _ in places))
    return sorted(columns), source


def _normalise(row: list[int]) -> list[int]:
    g = 0
    for v in row:
        g = gcd(g, v)
    return [v // g for v in row] if g > 1 else row


def farkas(columns: Sequence[tuple[int, ...]], places: int) -> list[tuple[int, ...]]:
    """The minimal-support P-semiflows ``y >= 0`` with ``y . c = 0`` for every column.

    Raises:
        CpnError: more than ``SEMIFLOW_ROWS_MAX`` intermediate rows.
    """
    m = len(columns)
    # Each row: the incidence row of a place combination, then the combination itself.
    rows = [
        [columns[j][p] for j in range(m)] + [int(q == p) for q in range(places)]
        for p in range(places)
    ]
    for j in range(m):
        keep = [r for r in rows if r[j] == 0]
        positive = [r for r in rows if r[j] > 0]
        negative = [r for r in rows if r[j] < 0]
        for a in positive:
            for b in negative:
                combined = [-b[j] * x + a[j] * y for x, y in zip(a, b, strict=True)]
                keep.append(_normalise(combined))
        rows = _minimal(keep, m)
        if len(rows) > SEMIFLOW_ROWS_MAX:
            raise CpnError(
                f"P-semiflows: the Farkas algorithm needs more than {SEMIFLOW_ROWS_MAX:,} rows"
            )
    return sorted({tuple(r[m:]) for r in rows})


def _minimal(rows: list[list[int]], m: int) -> list[list[int]]:
    """Rows whose support (over the place part) contains no other row's support."""
    unique: dict[tuple[int, ...], list[int]] = {tuple(r): r for r in rows}
    supports = [(frozenset(i for i, v in enumerate(r[m:]) if v), r) for r in unique.values()]
    supports.sort(key=lambda item: len(item[0]))
    kept: list[tuple[frozenset[int], list[int]]] = []
    for support, row in supports:
        if any(other < support for other, _ in kept):
            continue
        kept.append((support, row))
    return [row for _, row in kept]


def check_semiflows(net: Net, space: StateSpace) -> list[Verdict]:
    """Compute the P-semiflows and check each on every explored marking."""
    places = space.graph.places
    columns, source = incidence(net, space)
    verdicts = []
    graph = space.graph
    for weights in farkas(columns, len(places)):
        terms = [(w, p) for p, w in enumerate(weights) if w]
        name = " + ".join(f"{w}*{places[p]}" if w != 1 else places[p] for w, p in terms)
        first = graph.counts(graph.states[0])
        value = sum(w * first[p] for w, p in terms)
        broken = None
        for state in range(space.state_count):
            counts = graph.counts(graph.states[state])
            if sum(w * counts[p] for w, p in terms) != value:
                broken = state
                break
        if broken is not None:
            path = tuple(graph.path(broken))
            verdicts.append(
                Verdict(
                    f"{name} = {value}",
                    "semiflow",
                    VIOLATED,
                    f"the weighted count changes in state {broken} (from {source})",
                    space.semantics,
                    broken,
                    path,
                )
            )
        else:
            verdict = _not_violated(space, f"{name} = {value}", "semiflow", "holds in")
            verdicts.append(
                Verdict(
                    verdict.name,
                    verdict.kind,
                    verdict.status,
                    f"{verdict.detail} (from {source})",
                    verdict.semantics,
                )
            )
    return verdicts
