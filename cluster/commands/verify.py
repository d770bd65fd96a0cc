"""``cpn verify``: explore a net's state space, print its report and check properties.

The clock lives here, not in nets/: ``--timeout`` becomes the explorer's stop callback.
Exit codes: 0 every property holds, 1 one is violated, 2 usage or input error (raised
as :class:`~nets.errors.CpnError` and turned into a message by cluster/cli.py), 3 the
exploration is partial and nothing was violated in the states it saw.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from cluster.commands.options import allow_impure_option, net_params_option, refuse_impure
from nets.errors import CpnError, LoadError
from nets.explore import StateSpace, explore
from nets.loader import load_net_or_pnml
from nets.model import MarkingView, Net
from nets.properties import (
    PARTIAL,
    VIOLATED,
    Verdict,
    check_deadlocks,
    check_invariant,
    check_reachable,
    check_semiflows,
    check_termination,
)
from nets.report import as_json, build_report, render_text
from nets.trace import parse_trace, replay, trace_document

EXIT_HOLDS, EXIT_VIOLATED, EXIT_PARTIAL = 0, 1, 3

Predicate = Callable[[MarkingView], bool]


def load_predicates(spec: str) -> dict[str, Predicate]:
    """``module:attr`` naming a predicate over a marking, or a mapping of named ones.

    Raises:
        LoadError: naming the spec and what is wrong with it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"property {spec!r} must look like package.module:attr")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"property {spec!r}: cannot import {module_name!r}: {exc}") from exc
    value = getattr(module, attr, None)
    if value is None:
        raise LoadError(f"property {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if isinstance(value, Mapping):
        if not all(callable(p) for p in value.values()):
            raise LoadError(f"property {spec!r}: every value of the mapping must be callable")
        return {str(name): p for name, p in value.items()}
    if not callable(value):
        raise LoadError(f"property {spec!r} is a {type(value).__name__}, not a predicate")
    return {attr: value}


def _trace_name(net: Net, verdict: Verdict) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", verdict.name)[:60].strip("_") or verdict.kind
    return f"{net.name}-{verdict.kind}-{slug}.trace.json"


def mcc_lines(space: StateSpace) -> list[str]:
    """The Model Checking Contest's StateSpace answer lines."""
    techniques = f"TECHNIQUES {space.technique}"
    max_in_place = space.max_tokens_per_value
    if space.partial:
        return [
            f"STATE_SPACE {what} CANNOT_COMPUTE"
            for what in ("STATES", "TRANSITIONS", "MAX_TOKEN_IN_PLACE", "MAX_TOKEN_PER_MARKING")
        ]
    return [
        f"STATE_SPACE STATES {space.state_count} {techniques}",
        f"STATE_SPACE TRANSITIONS {space.edge_count} {techniques}",
        f"STATE_SPACE MAX_TOKEN_IN_PLACE {max_in_place} {techniques}",
        f"STATE_SPACE MAX_TOKEN_PER_MARKING {space.max_tokens_per_marking} {techniques}",
    ]


@click.command()
@click.argument("net_path", metavar="NET")
@net_params_option
@click.option("--json", "as_json_output", is_flag=True, help="Print the report as JSON.")
@click.option("--mcc", is_flag=True, help="Print only the MCC's STATE_SPACE lines.")
@click.option(
    "--max-states",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Stop exploring (partial) after this many states.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop exploring (partial) after this many seconds.",
)
@click.option(
    "--invariant",
    "invariants",
    multiple=True,
    metavar="MOD:ATTR",
    help="An invariant (AG) over the marking, besides those the net declares; repeatable.",
)
@click.option(
    "--reachable",
    "reachables",
    multiple=True,
    metavar="MOD:ATTR",
    help="A marking predicate that some reachable marking must satisfy (EF); repeatable.",
)
@click.option(
    "--final",
    "finals",
    multiple=True,
    metavar="MOD:ATTR",
    help="A predicate of the dead markings that are allowed (deadlock freedom except them).",
)
@click.option(
    "--terminates",
    is_flag=True,
    help="Check that every terminal SCC is a dead marking (termination under fairness).",
)
@click.option(
    "--time",
    "time_mode",
    type=click.Choice(["untimed", "relative"]),
    default="untimed",
    show_default=True,
    help="untimed: token times ignored; relative: times kept relative to the current step "
    "(docs/verify.md).",
)
@click.option(
    "--priorities", is_flag=True, help="Keep transition priorities (the engine's conflict rule)."
)
@click.option(
    "--trace-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="Where counterexample traces are written.",
)
@allow_impure_option
def verify(
    net_path: str,
    net_params: tuple[tuple[str, Any], ...],
    as_json_output: bool,
    mcc: bool,
    max_states: int,
    timeout_s: float | None,
    invariants: tuple[str, ...],
    reachables: tuple[str, ...],
    finals: tuple[str, ...],
    terminates: bool,
    time_mode: str,
    priorities: bool,
    trace_dir: Path,
    allow_impure: bool,
) -> None:
    """Explore NET's state space, print the report and check its properties.

    NET is package.module:attr or a .pnml file. Exit 0: all hold; 1: one is violated
    (a shortest counterexample trace is written); 3: partial, nothing violated.
    """
    params = dict(net_params)
    net = load_net_or_pnml(net_path, params=params)
    refuse_impure(net, allow_impure=allow_impure)
    extra = {name: p for spec in invariants for name, p in load_predicates(spec).items()}
    goals = {name: p for spec in reachables for name, p in load_predicates(spec).items()}
    final = {name: p for spec in finals for name, p in load_predicates(spec).items()}
    should_stop = None
    if timeout_s is not None:
        deadline = time.monotonic() + timeout_s
        should_stop = lambda: time.monotonic() > deadline  # noqa: E731 - the CLI owns the clock
    started = time.perf_counter()
    space = explore(
        net,
        max_states=max_states,
        should_stop=should_stop,
        keep_edges=not mcc,
        priorities=priorities,
        time=time_mode,
    )
    explored_s = time.perf_counter() - started
    if mcc:
        for line in mcc_lines(space):
            click.echo(line)
        sys.exit(EXIT_PARTIAL if space.partial else EXIT_HOLDS)
    verdicts = [check_invariant(space, n, p) for n, p in {**net.invariants, **extra}.items()]
    verdicts += [check_reachable(space, n, p) for n, p in goals.items()]
    verdicts.append(check_deadlocks(space, final))
    verdicts += check_semiflows(net, space)
    report = build_report(net, space)
    if terminates:
        verdicts.append(check_termination(report))
    traces: dict[str, str] = {}
    for verdict in verdicts:
        if verdict.status == VIOLATED and verdict.state is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
            target = trace_dir / _trace_name(net, verdict)
            document = trace_document(
                net_path, params, f"{verdict.kind} {verdict.name}", verdict.semantics, verdict.path
            )
            target.write_text(json.dumps(document, indent=1) + "\n")
            traces[verdict.name] = str(target)
    statuses = {v.status for v in verdicts}
    code = (
        EXIT_VIOLATED
        if VIOLATED in statuses
        else EXIT_PARTIAL
        if PARTIAL in statuses or space.partial
        else EXIT_HOLDS
    )
    if as_json_output:
        document = {
            "report": as_json(report),
            "properties": [
                {
                    "name": v.name,
                    "kind": v.kind,
                    "status": v.status,
                    "detail": v.detail,
                    "semantics": v.semantics,
                    "trace": traces.get(v.name),
                    "steps": len(v.path) if v.status == VIOLATED else None,
                }
                for v in verdicts
            ],
            "explore_s": round(explored_s, 3),
            "exit": code,
        }
        click.echo(json.dumps(document, indent=1))
    else:
        click.echo(render_text(report))
        click.echo("")
        click.echo("Properties")
        for verdict in verdicts:
            click.echo(f"  {verdict.line()}")
            if verdict.name in traces:
                click.echo(
                    f"    counterexample: {len(verdict.path)} steps, trace {traces[verdict.name]}"
                    f" (replay: cpn run {net_path} --replay {traces[verdict.name]})"
                )
        summary = {
            EXIT_HOLDS: "all properties hold",
            EXIT_VIOLATED: "a property is violated",
            EXIT_PARTIAL: f"not violated in {space.state_count:,} states, partial",
        }[code]
        click.echo(f"\nVerdict: {summary} ({space.semantics}; explored in {explored_s:.2f} s)")
    sys.exit(code)


def replay_trace(net_path: str, trace_path: Path) -> int:
    """Play a trace file on ``net_path`` with the engine, printing each step.

    Returns the number of steps played.

    Raises:
        TraceError: the file is malformed or a step is not enabled (naming the step).
    """
    try:
        text = trace_path.read_text()
    except OSError as exc:
        raise CpnError(f"cannot read trace {trace_path}: {exc.strerror}") from exc
    trace = parse_trace(text, where=str(trace_path))
    net = load_net_or_pnml(net_path, params=trace.params)
    played = 0
    for line in replay(net, trace):
        click.echo(line)
        played += 1
    click.echo(
        f"replayed {played} steps of {trace_path} on net {net.name!r} ({trace.semantics}): "
        f"every step was enabled; property: {trace.property}"
    )
    return played
