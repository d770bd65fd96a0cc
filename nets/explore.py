"""State-space exploration: every marking a net can reach, and how.

Theory of operation:

* **Semantics.** The explorer fires the net by the engine's own rules
  (nets/explore_bindings.py enumerates every binding the engine could choose), but
  untimed: token times and output delays are ignored, every enabled binding element is
  a successor, and ``now`` (for outputs that read it) is 0. With ``priorities=True``
  only the enabled transitions of the highest priority fire, as in the engine. Which
  untimed verdicts carry over to timed runs is stated in docs/verify.md.
* **Closed work queues.** A work-queue place is open (workers lease its tokens), so it
  must be closed by an effect model (``Net(..., effects=...)``, nets/effects.py). The
  environment then adds three kinds of steps: ``<q>__lease`` moves a token into a
  ``<q>__held`` multiset (shown as a place), ``<q>__complete`` removes a held token and
  adds one outcome's results (one step per outcome that is not a stall), and
  ``<q>__expire`` puts a held token back into ``<q>``. An open queue raises
  :class:`OpenNetError` naming the place.
* **Search.** Breadth first from the initial marking, so each state's parent link lies
  on a shortest path from the initial marking: counterexamples are shortest. A state
  is a tuple of sorted token tuples, one per place (and per held multiset); states are
  numbered in discovery order. The search is bounded by ``max_states`` and by the
  caller's ``should_stop`` (polled every 256 states; the clock stays with the caller);
  either makes the result ``partial``.
* **P/T nets** (one token value per place, no guards, no joins) take the packed path
  of nets/explore_pt.py: the same state space, an order of magnitude faster.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from nets.errors import CpnError
from nets.explore_bindings import (
    Binding,
    CompiledTransition,
    Marking,
    apply,
    compile_transition,
    fire_all,
)
from nets.explore_pt import PTNet, PTResult, as_pt_net, run_pt
from nets.explore_timed import Stepper, relative_stepper
from nets.model import MarkingView, Net, Token

_POLL_STATES = 256
_BOUNDS_CHUNK_STATES = 65_536
HELD_SUFFIX = "__held"


class OpenNetError(CpnError):
    """A work-queue place has no effect model, so the net is open to the environment."""


@dataclass(frozen=True, slots=True)
class Label:
    """A binding element: the transition (or environment step) and its binding."""

    transition: str
    binding: Mapping[str, Any]


@dataclass(eq=False, slots=True)
class StateGraph:
    """The explored states, parent links and (optionally) every edge.

    State ``0`` is the initial marking; states are numbered breadth first.
    ``edges`` is ``None`` unless the exploration kept them (``keep_edges=True``).
    """

    places: tuple[str, ...]
    decode: Callable[[Any], MarkingView]
    states: list[Any]
    parents: array[int]
    via: array[int]  # label id of the edge from the parent (-1 for the initial state)
    labels: list[Label]
    edges: tuple[array[int], array[int], array[int]] | None = None  # src, dst, label id
    dead: array[int] = field(default_factory=lambda: array("i"))  # states enabling nothing
    counts: Callable[[Any], tuple[int, ...]] = field(default=tuple)

    def marking(self, state: int) -> MarkingView:
        """The marking of ``state``: each place's sorted tokens."""
        return self.decode(self.states[state])

    def path(self, state: int) -> list[Label]:
        """The binding elements fired from the initial marking to ``state`` (shortest)."""
        steps: list[Label] = []
        for _ in range(len(self.states)):
            if state <= 0:
                break
            steps.append(self.labels[self.via[state]])
            state = self.parents[state]
        steps.reverse()
        return steps


@dataclass(frozen=True, slots=True)
class StateSpace:
    """What an exploration found.

    ``edge_count`` counts binding elements fired (the MCC's TRANSITIONS);
    ``place_bounds`` is the most tokens each place held in any explored marking and
    ``place_lower_bounds`` the fewest; ``dead_markings`` counts explored markings that
    enable nothing. With ``partial`` these hold for the explored part only.
    """

    state_count: int
    edge_count: int
    partial: bool
    place_bounds: Mapping[str, int]
    place_lower_bounds: Mapping[str, int]
    max_tokens_per_marking: int
    # The most copies of one token value in one place: the MCC's MAX_TOKEN_IN_PLACE, a
    # place of the unfolded net (for a P/T net, the largest place bound).
    max_tokens_per_value: int
    dead_markings: int
    technique: str
    semantics: str
    stop_reason: str  # "done", "limit" (max_states) or "stopped" (should_stop)
    graph: StateGraph = field(repr=False, compare=False)


def explore(
    net: Net,
    *,
    max_states: int = 1_000_000,
    should_stop: Callable[[], bool] | None = None,
    keep_edges: bool = False,
    priorities: bool = False,
    method: str = "auto",
    time: str = "untimed",
) -> StateSpace:
    """Explore the state space of ``net`` breadth first.

    Args:
        net: a validated net; every work-queue place must have an effect model.
        max_states: stop (partial) once this many states are known.
        should_stop: polled during the search; returning True stops it (partial).
        keep_edges: keep every edge (for SCCs, home markings, liveness); parent links
            are always kept.
        priorities: only the highest-priority enabled transitions fire (the engine's
            conflict rule); the default lets every enabled transition fire.
        method: ``"auto"`` (the packed P/T path when the net allows it), ``"general"``
            or ``"pt"`` (raises if the net is not a P/T net).
        time: ``"untimed"`` (token times and delays ignored) or ``"relative"``: token
            times kept relative to the current step, time advancing to the next due
            token only when nothing is enabled, declared time fields shifted with it
            (nets/explore_timed.py; the general path only).

    Raises:
        OpenNetError: a work-queue place has no effect model.
        InscriptionError: a guard or output raised while exploring.
        CpnError: ``method="pt"`` for a net that is not a P/T net, or a bad argument.
    """
    if type(max_states) is not int or max_states < 1:
        raise CpnError(f"max_states must be a positive int, got {max_states!r}")
    if method not in ("auto", "general", "pt"):
        raise CpnError(f"method must be auto, general or pt, got {method!r}")
    for place in net.places:
        if place.work_queue and place.name not in net.effects:
            raise OpenNetError(
                f"net {net.name!r}: work-queue place {place.name!r} is open (workers lease "
                "it); close it with Net(..., effects={...}) (see docs/verify.md)"
            )
    if time not in ("untimed", "relative"):
        raise CpnError(f"time must be untimed or relative, got {time!r}")
    if time == "relative":
        if method == "pt":
            raise CpnError("the packed P/T explorer is untimed; use method='general'")
        semantics = "timed-relative, priorities" if priorities else "timed-relative"
        stepper = relative_stepper(net, priorities=priorities)
        return _explore_general(
            net, max_states, should_stop, keep_edges, priorities, semantics, stepper
        )
    semantics = "untimed, priorities" if priorities else "untimed"
    pt = None if (method == "general" or net.effects) else as_pt_net(net)
    if method == "pt" and pt is None:
        raise CpnError(f"net {net.name!r} is not a P/T net (see nets/explore_pt.py)")
    if pt is not None:
        result = run_pt(
            pt,
            max_states=max_states,
            should_stop=should_stop,
            graph=keep_edges,
            priorities=priorities,
        )
        return _pt_space(pt, result, keep_edges, semantics)
    return _explore_general(net, max_states, should_stop, keep_edges, priorities, semantics)


def _pt_space(pt: PTNet, result: PTResult, keep_edges: bool, semantics: str) -> StateSpace:
    states = result.states
    n = len(pt.places)
    upper, lower = [0] * n, [255 if result.packed else 1 << 62] * n
    # Chunk by chunk: a column of a joined chunk is a C-level slice, and the copy stays
    # small next to the states themselves.
    for start in range(0, len(states), _BOUNDS_CHUNK_STATES):
        chunk = states[start : start + _BOUNDS_CHUNK_STATES]
        columns: Any
        if result.packed:
            joined = b"".join([s.to_bytes(n, "little") for s in chunk])
            columns = [joined[p::n] for p in range(n)]
        else:
            columns = list(zip(*chunk, strict=True))
        del chunk
        for p in range(n):
            upper[p] = max(upper[p], *columns[p])
            lower[p] = min(lower[p], *columns[p])
    tokens = pt.tokens

    def counts(state: Any) -> tuple[int, ...]:
        return tuple(state.to_bytes(n, "little")) if result.packed else tuple(state)

    def decode(state: Any) -> MarkingView:
        state = counts(state)
        return {
            name: (tokens[p],) * state[p] if state[p] else () for p, name in enumerate(pt.places)
        }

    labels = [Label(t.name, t.binding) for t in pt.transitions]
    graph = StateGraph(
        places=pt.places,
        decode=decode,
        states=states,
        parents=result.parents,
        via=result.via,
        labels=labels,
        edges=(result.src, result.dst, result.lab) if keep_edges else None,
        dead=result.deads,
        counts=counts,
    )
    return StateSpace(
        state_count=len(states),
        edge_count=result.edges,
        partial=result.reason != "done",
        place_bounds=dict(zip(pt.places, upper, strict=True)),
        place_lower_bounds=dict(zip(pt.places, lower, strict=True)),
        max_tokens_per_marking=max(map(sum, map(counts, states))),
        max_tokens_per_value=max(upper),
        dead_markings=result.dead,
        technique="EXPLICIT SEQUENTIAL_PROCESSING PACKED_PT"
        if result.packed
        else "EXPLICIT SEQUENTIAL_PROCESSING PT",
        semantics=semantics,
        stop_reason=result.reason,
        graph=graph,
    )


@dataclass(eq=False, slots=True)
class _Environment:
    """The closed work queues: slot positions of each queue and its held multiset."""

    net: Net
    queues: tuple[tuple[str, int, int], ...]  # (queue name, queue slot, held slot)
    position: dict[str, int]

    @classmethod
    def of(cls, net: Net) -> _Environment:
        position = {p.name: i for i, p in enumerate(net.places)}
        queues = []
        for k, name in enumerate(sorted(net.effects, key=position.__getitem__)):
            queues.append((name, position[name], len(net.places) + k))
        return cls(net, tuple(queues), position)

    def slots(self) -> tuple[str, ...]:
        held = tuple(name + HELD_SUFFIX for name, _, _ in self.queues)
        return tuple(p.name for p in self.net.places) + held

    def steps(self, marking: Marking) -> Iterator[tuple[str, Binding, Marking]]:
        for name, queue, held in self.queues:
            model = self.net.effects[name]
            declared = self.net.place(name).results or ()
            for token in _distinct(marking[queue]):
                yield (
                    name + "__lease",
                    {"token": token},
                    apply(marking, [(queue, token)], [(held, token)]),
                )
            for token in _distinct(marking[held]):
                for k, outcome in enumerate(_outcomes(model, name, token)):
                    if outcome.kind == "stall":
                        continue  # a stall is the lease expiring, the step below
                    produced = []
                    for place, result in outcome.results:
                        if place not in self.position:
                            raise CpnError(
                                f"effect model of {name!r}: outcome {k} for {token!r} produces "
                                f"into {place!r}, which is not a place of net {self.net.name!r}"
                            )
                        if place not in declared:
                            # A shard refuses such a completion (wrong_place): a model
                            # that makes one explores a net no cluster can run.
                            raise CpnError(
                                f"effect model of {name!r}: outcome {k} for {token!r} produces "
                                f"into {place!r}, which the work queue does not declare "
                                f"(results: {', '.join(declared) or 'none'})"
                            )
                        produced.append((self.position[place], result))
                    yield (
                        name + "__complete",
                        {"token": token, "outcome": k, "kind": outcome.kind},
                        apply(marking, [(held, token)], produced),
                    )
                yield (
                    name + "__expire",
                    {"token": token},
                    apply(marking, [(held, token)], [(queue, token)]),
                )


def _outcomes(model: Any, name: str, token: Token) -> tuple[Any, ...]:
    try:
        outcomes = tuple(model.outcomes(token, 0))
    except CpnError:
        raise
    except Exception as exc:
        raise CpnError(
            f"effect model of {name!r} raised {type(exc).__name__} for {token!r}: {exc}"
        ) from exc
    return outcomes


def _distinct(tokens: tuple[Token, ...]) -> Iterator[Token]:
    previous = None
    for token in tokens:
        if token != previous:
            previous = token
            yield token


def successors(
    compiled: list[CompiledTransition],
    env: _Environment,
    marking: Marking,
    *,
    priorities: bool = False,
) -> Iterator[tuple[str, Binding, Marking]]:
    """Every binding element enabled in ``marking`` and the marking it leads to."""
    fired_priority: int | None = None
    for ct in compiled:
        priority = ct.transition.priority
        if priorities and fired_priority is not None and priority < fired_priority:
            break
        for place, count in ct.needs:
            if len(marking[place]) < count:
                break  # too few tokens for its arcs: not enabled (the common case)
        else:
            for values, succ in fire_all(ct, marking):
                fired_priority = priority
                yield ct.transition.name, values, succ
    yield from env.steps(marking)


def _same(tokens: tuple[Any, ...]) -> tuple[Token, ...]:
    return tokens


def _most_copies(tokens: tuple[Token, ...]) -> int:
    """The longest run of equal tokens in a sorted tuple."""
    best = run = 1
    for a, b in pairwise(tokens):
        run = run + 1 if a == b else 1
        best = max(best, run)
    return best


def _binding_key(values: Binding) -> tuple[tuple[str, Any], ...]:
    # A transition's bindings are built in the same variable order every time.
    return tuple(values.items())


def _explore_general(
    net: Net,
    max_states: int,
    should_stop: Callable[[], bool] | None,
    keep_edges: bool,
    priorities: bool,
    semantics: str,
    timed: Stepper | None = None,
) -> StateSpace:
    """Breadth-first search over tuples of token tuples (or, ``timed``, of timed entries)."""
    env = _Environment.of(net)
    order = sorted(range(len(net.transitions)), key=lambda i: -net.transitions[i].priority)
    compiled = [compile_transition(net, net.transitions[i]) for i in order]
    slots = env.slots()
    initial: Marking = tuple(tuple(sorted(p.initial)) for p in net.places) + tuple(
        () for _ in env.queues
    )

    def untimed_step(m: Marking) -> Iterator[tuple[str, Binding, Marking]]:
        return successors(compiled, env, m, priorities=priorities)

    step: Callable[[Marking], Iterator[tuple[str, Binding, Marking]]] = untimed_step
    strip: Callable[[tuple[Any, ...]], tuple[Token, ...]] = _same
    if timed is not None:
        initial, step, strip = timed.initial, timed.successors, timed.tokens
    index: dict[Marking, int] = {initial: 0}
    states: list[Marking] = [initial]
    parents, via = array("i", [-1]), array("i", [-1])
    src, dst, lab, deads = array("i"), array("i"), array("i"), array("i")
    labels: list[Label] = []
    label_ids: dict[tuple[str, tuple[tuple[str, Any], ...]], int] = {}
    edges = dead = 0
    reason = "done"
    i = 0
    while i < len(states):
        if not (i % _POLL_STATES) and should_stop is not None and should_stop():
            reason = "stopped"
            break
        marking = states[i]
        before = edges
        for name, values, succ in step(marking):
            edges += 1
            key = (name, _binding_key(values))
            label = label_ids.get(key)
            if label is None:
                label = label_ids[key] = len(labels)
                labels.append(Label(name, values))
            j = index.get(succ)
            if j is None:
                if len(states) >= max_states:
                    reason = "limit"
                    break
                j = index[succ] = len(states)
                states.append(succ)
                parents.append(i)
                via.append(label)
            if keep_edges:
                src.append(i)
                dst.append(j)
                lab.append(label)
        if reason != "done":
            break
        if edges == before:
            dead += 1
            deads.append(i)
        i += 1
    del index
    upper = [0] * len(slots)
    lower = [max_states] * len(slots)
    most = most_copies = 0
    # Places keep their token tuples from state to state, so each is measured once.
    copies: dict[tuple[Any, ...], int] = {}
    for state in states:
        total = 0
        for p, tokens in enumerate(state):
            n = len(tokens)
            total += n
            upper[p] = max(upper[p], n)
            lower[p] = min(lower[p], n)
            if n:
                c = copies.get(tokens)
                if c is None:
                    c = copies[tokens] = _most_copies(strip(tokens))
                most_copies = max(most_copies, c)
        most = max(most, total)
    del copies

    def decode(state: Any) -> MarkingView:
        return {slot: strip(tokens) for slot, tokens in zip(slots, state, strict=True)}

    graph = StateGraph(
        places=slots,
        decode=decode,
        states=states,
        parents=parents,
        via=via,
        labels=labels,
        edges=(src, dst, lab) if keep_edges else None,
        dead=deads,
        counts=lambda s: tuple(len(tokens) for tokens in s),
    )
    return StateSpace(
        state_count=len(states),
        edge_count=edges,
        partial=reason != "done",
        place_bounds=dict(zip(slots, upper, strict=True)),
        place_lower_bounds=dict(zip(slots, lower, strict=True)),
        max_tokens_per_marking=most,
        max_tokens_per_value=most_copies,
        dead_markings=dead,
        technique="EXPLICIT SEQUENTIAL_PROCESSING",
        semantics=semantics,
        stop_reason=reason,
        graph=graph,
    )
