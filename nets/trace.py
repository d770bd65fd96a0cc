"""Counterexample traces: a file recording a net, its parameters and the steps to replay.

A trace is JSON::

    {"format": "cpn-trace/1", "net": "nets.scraper:net", "params": {...},
     "property": "...", "semantics": "untimed",
     "steps": [{"transition": "scrape", "binding": {"d": "a.example", ...}}, ...]}

Values are encoded so that they compare exactly after a JSON round trip: a token is
``{"colour": name, "fields": [...]}``, a tuple ``{"tuple": [...]}``, bytes ``{"bytes":
hex}``; ints, floats, strings and booleans are themselves.

Theory of operation (replay): an :class:`~nets.engine.Engine` holds the marking.

* An untimed trace: before each step every pending token is released (token times do
  not gate it); the step's binding element must then be one the engine's rules enable
  (nets/explore_bindings.py) in the engine's marking (and, if the trace keeps
  priorities, no transition of a higher priority may be enabled); its consumed and
  produced tokens are taken from and put into the engine.
* A timed-relative trace is played in time: a ``time`` step advances the engine's clock
  by its ``delta_ms`` (only when nothing is enabled and a token comes due then); a
  step's binding refers to the available tokens, with their time fields relative to the
  engine's ``now``; produced tokens are put with their delays.
* Work-queue steps (``<q>__lease``, ``<q>__complete``, ``<q>__expire``) move tokens
  between the queue, the replay's held multiset and the outcome's result places.

A step that cannot be played is a :class:`TraceError` naming the step; the marking is
left as it was before that step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nets.engine import Engine
from nets.errors import CpnError
from nets.explore import HELD_SUFFIX, Label
from nets.explore_bindings import CompiledTransition, bindings, compile_transition
from nets.explore_timed import TIME_STEP, shift, time_fields, timed_outputs
from nets.model import Net, Token

FORMAT = "cpn-trace/1"
TRACE_BYTES_MAX = 64 * 1024 * 1024


class TraceError(CpnError):
    """A trace file is malformed, or one of its steps cannot be replayed."""


def encode_value(value: Any) -> Any:
    """``value`` (a token, a field value, a tuple of tokens) in JSON-ready form."""
    if isinstance(value, tuple):
        if hasattr(value, "_fields"):
            return {"colour": type(value).__name__, "fields": [encode_value(v) for v in value]}
        return {"tuple": [encode_value(v) for v in value]}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    return value


def encode_binding(binding: Mapping[str, Any]) -> dict[str, Any]:
    return {name: encode_value(binding[name]) for name in sorted(binding)}


@dataclass(frozen=True, slots=True)
class Trace:
    net: str
    params: Mapping[str, Any]
    property: str
    semantics: str
    steps: tuple[tuple[str, dict[str, Any]], ...]  # (transition, encoded binding)


def trace_document(
    net_path: str,
    params: Mapping[str, Any],
    property_name: str,
    semantics: str,
    path: Sequence[Label],
) -> dict[str, Any]:
    """The JSON document of a counterexample ``path``."""
    return {
        "format": FORMAT,
        "net": net_path,
        "params": dict(params),
        "property": property_name,
        "semantics": semantics,
        "steps": [
            {"transition": label.transition, "binding": encode_binding(label.binding)}
            for label in path
        ],
    }


def parse_trace(text: str, *, where: str = "trace") -> Trace:
    """Read a trace document.

    Raises:
        TraceError: naming what is missing or malformed.
    """
    if len(text) > TRACE_BYTES_MAX:
        raise TraceError(f"{where}: larger than {TRACE_BYTES_MAX:,} bytes")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TraceError(f"{where}: not a {FORMAT} document")
    steps = doc.get("steps")
    if not isinstance(steps, list):
        raise TraceError(f"{where}: 'steps' must be a list")
    parsed = []
    for i, step in enumerate(steps):
        if (
            not isinstance(step, dict)
            or not isinstance(step.get("transition"), str)
            or not isinstance(step.get("binding"), dict)
        ):
            raise TraceError(f"{where}: step {i} needs a 'transition' and a 'binding'")
        parsed.append((step["transition"], step["binding"]))
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise TraceError(f"{where}: 'params' must be an object")
    return Trace(
        net=str(doc.get("net", "")),
        params=params,
        property=str(doc.get("property", "")),
        semantics=str(doc.get("semantics", "untimed")),
        steps=tuple(parsed),
    )


def _untimed(engine: Engine, net: Net) -> tuple[tuple[Token, ...], ...]:
    marking = engine.marking()
    return tuple(tuple(sorted(token for _t, token in marking[p.name])) for p in net.places)


def _take(engine: Engine, place: str, token: Token) -> None:
    for time, held in engine.tokens(place):
        if held == token:
            engine.remove(place, token, time=time)
            return
    raise AssertionError(f"token {token!r} vanished from {place!r}")


def replay(net: Net, trace: Trace) -> Iterator[str]:
    """Play ``trace`` on an engine of ``net``, yielding one line per step.

    Raises:
        TraceError: a step names an unknown transition or a binding element that is
            not enabled; the message names the step (counted from 1).
    """
    engine = Engine(net)
    compiled = {t.name: compile_transition(net, t) for t in net.transitions}
    held: dict[str, list[Token]] = {q: [] for q in net.effects}
    relative = trace.semantics.startswith("timed-relative")
    shifts = [time_fields(p.colour) for p in net.places]
    for number, (name, binding) in enumerate(trace.steps, start=1):
        where = f"trace step {number} ({name})"
        if relative and name == TIME_STEP:
            yield _time_step(net, engine, compiled, shifts, binding, where, number)
            continue
        if not relative:
            latest = max((t for p in net.places for t, _ in engine.tokens(p.name)), default=0)
            engine.advance(max(engine.now, latest))  # untimed: every token is available
        queue, _, kind = name.rpartition("__")
        if name in compiled:
            ct = compiled[name]
            marking, originals = _view(engine, net, shifts if relative else None)
            match = None
            for values, taken in bindings(ct, marking):
                if encode_binding(values) == binding:
                    match = (values, taken)
                    break
            full = [
                p for p, delta, cap in ct.capacity if engine.count(net.places[p].name) + delta > cap
            ]
            if match is None or full:
                raise TraceError(
                    f"{where}: binding {binding} is not enabled in the replayed marking"
                    + (f" (place {net.places[full[0]].name!r} is full)" if full else "")
                    + (f" at t={engine.now}ms" if relative else "")
                )
            values, taken = match
            if "priorities" in trace.semantics:
                counts = [engine.count(place.name) for place in net.places]
                _check_priority(ct, compiled.values(), marking, counts, where)
            # Relative: outputs see now = 0 and relative time fields, shifted back here.
            produced = timed_outputs(ct, values, 0 if relative else engine.now)
            for p, token in taken:
                _take(engine, net.places[p].name, originals[p].get(token, token))
            for p, delay, token in produced:
                if relative:
                    engine.add(
                        net.places[p].name,
                        shift(token, shifts[p], engine.now),
                        time=engine.now + delay,
                    )
                else:
                    engine.add(net.places[p].name, token)
            shown = ", ".join(f"{k}={values[k]!r}" for k in sorted(values))
            yield f"{number:>4}  {name}({shown})"
        elif queue in held and kind in ("lease", "complete", "expire"):
            yield _environment_step(net, engine, held[queue], queue, kind, binding, where, number)
        else:
            raise TraceError(f"{where}: net {net.name!r} has no transition {name!r}")


def _view(
    engine: Engine, net: Net, shifts: list[tuple[int, ...]] | None
) -> tuple[tuple[tuple[Token, ...], ...], list[dict[Token, Token]]]:
    """The marking the trace's bindings refer to, and each shown token's original.

    Untimed (``shifts`` None): every token. Timed-relative: the available tokens, with
    their time fields made relative to the engine's ``now``.
    """
    view: list[tuple[Token, ...]] = []
    originals: list[dict[Token, Token]] = []
    for p, place in enumerate(net.places):
        entries = engine.tokens(place.name)
        if shifts is None:
            view.append(tuple(sorted(token for _t, token in entries)))
            originals.append({})
            continue
        mapping = {
            shift(token, shifts[p], -engine.now): token
            for time, token in entries
            if time <= engine.now
        }
        shown = [
            shift(token, shifts[p], -engine.now) for time, token in entries if time <= engine.now
        ]
        view.append(tuple(sorted(shown)))
        originals.append(mapping)
    return tuple(view), originals


def _time_step(
    net: Net,
    engine: Engine,
    compiled: Mapping[str, CompiledTransition],
    shifts: list[tuple[int, ...]],
    binding: dict[str, Any],
    where: str,
    number: int,
) -> str:
    """Advance the engine's clock by the step's ``delta_ms``, when nothing is enabled."""
    delta = binding.get("delta_ms")
    if type(delta) is not int or delta <= 0:
        raise TraceError(f"{where}: delta_ms must be a positive int, got {delta!r}")
    marking, _ = _view(engine, net, shifts)
    for ct in compiled.values():
        if any(engine.count(net.places[p].name) + d > cap for p, d, cap in ct.capacity):
            continue
        if next(bindings(ct, marking), None) is not None:
            raise TraceError(
                f"{where}: time cannot advance at t={engine.now}ms: transition "
                f"{ct.transition.name!r} is enabled"
            )
    deadline = engine.next_deadline()
    if deadline is None or deadline != engine.now + delta:
        raise TraceError(
            f"{where}: the next token comes due at {deadline}, not at t={engine.now + delta}ms"
        )
    engine.advance(engine.now + delta)
    return f"{number:>4}  time(+{delta} ms, now {engine.now} ms)"


def _check_priority(
    ct: CompiledTransition,
    compiled: Iterable[CompiledTransition],
    marking: tuple[tuple[Token, ...], ...],
    counts: Sequence[int],
    where: str,
) -> None:
    """Under ``priorities`` no transition of a higher priority may be enabled."""
    for other in compiled:
        if other.transition.priority <= ct.transition.priority:
            continue
        if any(counts[p] + d > cap for p, d, cap in other.capacity):
            continue
        if next(bindings(other, marking), None) is not None:
            raise TraceError(
                f"{where}: transition {other.transition.name!r} of priority "
                f"{other.transition.priority} is enabled too, and the trace keeps priorities"
            )


def _environment_step(
    net: Net,
    engine: Engine,
    held: list[Token],
    queue: str,
    kind: str,
    binding: dict[str, Any],
    where: str,
    number: int,
) -> str:
    if kind == "lease":
        for _time, token in engine.tokens(queue):
            if encode_value(token) == binding.get("token"):
                _take(engine, queue, token)
                held.append(token)
                return f"{number:>4}  {queue}__lease(token={token!r})"
        raise TraceError(f"{where}: no token {binding.get('token')} in {queue!r} to lease")
    matching = [t for t in held if encode_value(t) == binding.get("token")]
    if not matching:
        raise TraceError(
            f"{where}: token {binding.get('token')} is not leased ({queue}{HELD_SUFFIX})"
        )
    token = matching[0]
    if kind == "expire":
        held.remove(token)
        engine.add(queue, token)
        return f"{number:>4}  {queue}__expire(token={token!r})"
    outcomes = net.effects[queue].outcomes(token, 0)
    k = binding.get("outcome")
    if not isinstance(k, int) or not 0 <= k < len(outcomes) or outcomes[k].kind == "stall":
        raise TraceError(f"{where}: the effect model of {queue!r} has no outcome {k!r} to complete")
    held.remove(token)
    for place, result in outcomes[k].results:
        engine.add(place, result)
    return f"{number:>4}  {queue}__complete(token={token!r}, outcome={k} {outcomes[k].kind})"
