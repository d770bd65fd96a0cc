"""Benchmark: state-space exploration for ``cpn verify``.

``python -m bench.verify [--quick]`` runs, in one invocation:

1. **P/T nets** through :func:`nets.explore.explore` (the packed P/T path): Kanban with
   N=5 (2,546,432 states, published) and N=4 (454,475), or N=4 only with ``--quick``;
   each run produces the MCC StateSpace answer (states, arcs, bounds, tokens per
   marking), and its states are checked against the published count. The rate of the
   full CPN Tools report (SCCs, liveness, fairness) on Kanban N=3 is printed apart.
2. **The baseline**: a plain breadth-first explorer written below (tuples of counts, a
   dict of seen markings, a loop over transitions), on the same model in the same run.
3. **Memory**: peak RSS growth per state of the P/T exploration (states, parent links,
   the seen set while it lives), measured in a fresh child interpreter.
4. **Coloured nets**: the closed crawler (nets/scraper.py ``verified_net``) at small
   parameters, through the general explorer, and its properties with those of the
   decision model (nets/scraper_sim.py), counted in ``properties_proved``.
5. **Corpus**: every model of the PNML conformance corpus (``tests/data/pnml``, read by
   ``nets.pnml``) explored, and compared with its published StateSpace answers (states,
   transitions, tokens in a place of the unfolded net, tokens per marking) and its
   ReachabilityDeadlock answer. Where the corpus or ``nets.pnml`` is absent,
   ``corpus_models`` and ``corpus_agree`` are 0.

The last line is one JSON object with the keys ``pt_states_per_s``,
``coloured_states_per_s``, ``bytes_per_state``, ``corpus_models``, ``corpus_agree``,
``properties_proved``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nets.classic_nets import kanban
from nets.explore import explore
from nets.explore_pt import PTNet, as_pt_net
from nets.model import Net
from nets.properties import (
    HOLDS,
    check_deadlocks,
    check_invariant,
    check_semiflows,
    check_termination,
)
from nets.report import build_report

KANBAN_STATES = {1: 160, 2: 4_600, 3: 58_400, 4: 454_475, 5: 2_546_432}
PT_STATES_PER_S_MIN = 200_000
COLOURED_STATES_PER_S_MIN = 20_000
BYTES_PER_STATE_MAX = 150
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "pnml"


def baseline_bfs(pt: PTNet, max_states: int) -> tuple[int, int]:
    """A plain breadth-first explorer: tuples of counts and a dict of seen markings."""
    moves = [(t.needs, t.empty, t.capacity, dict(t.delta)) for t in pt.transitions]
    initial = tuple(pt.initial)
    seen = {initial: 0}
    queue = [initial]
    edges = 0
    i = 0
    while i < len(queue):
        m = queue[i]
        i += 1
        for needs, empty, capacity, delta in moves:
            if (
                all(m[p] >= w for p, w in needs)
                and all(m[p] == 0 for p in empty)
                and all(m[p] <= c for p, c in capacity)
            ):
                succ = tuple(n + delta.get(p, 0) for p, n in enumerate(m))
                edges += 1
                if succ not in seen:
                    if len(seen) >= max_states:
                        return len(seen), edges
                    seen[succ] = len(seen)
                    queue.append(succ)
    return len(seen), edges


def _timed(run: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def _memory_child(n: int) -> float:
    """Peak RSS growth per state of exploring Kanban ``n``, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.verify", "--memory-only", str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _peak_rss_bytes() -> int:
    # VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss across fork and exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_only(n: int) -> None:
    net = kanban(n)
    gc.collect()
    before = _peak_rss_bytes()
    space = explore(net, max_states=10**7)
    after = _peak_rss_bytes()
    print((after - before) / space.state_count)


def _properties(net: Net, finals: dict[str, Any], *, priorities: bool) -> tuple[int, int, int]:
    """(properties that hold, properties checked, states) for one verified net."""
    space = explore(net, keep_edges=True, priorities=priorities)
    verdicts = [check_invariant(space, n, p) for n, p in net.invariants.items()]
    verdicts.append(check_deadlocks(space, finals))
    verdicts += check_semiflows(net, space)
    verdicts.append(check_termination(build_report(net, space)))
    return sum(v.status == HOLDS for v in verdicts), len(verdicts), space.state_count


def _corpus() -> tuple[int, int, int, float]:
    """(models explored, models agreeing with every published answer, states, seconds)."""
    answers = CORPUS / "answers.json"
    try:
        pnml = importlib.import_module("nets.pnml")
    except ModuleNotFoundError:
        return 0, 0, 0, 0.0
    if not answers.is_file():
        return 0, 0, 0, 0.0
    models = json.loads(answers.read_text())["models"]
    agree = states = 0
    seconds = 0.0
    for name, entry in sorted(models.items()):
        net = pnml.load(CORPUS / entry["file"])
        space, took = _timed(lambda net=net: explore(net, max_states=2_000_000))
        seconds += took
        states += space.state_count
        found = {
            "states": space.state_count,
            "transitions": space.edge_count,
            "max_tokens_in_place": space.max_tokens_per_value,  # a place of the unfolded net
            "max_tokens_per_marking": space.max_tokens_per_marking,
        }
        published = {k: v for k, v in entry["state_space"].items() if k in found}
        same = not space.partial and {k: found[k] for k in published} == published
        if "deadlock" in entry:
            same = same and (space.dead_markings > 0) == entry["deadlock"]
        agree += same
        if not same:
            print(f"  corpus model {name}: found {found}, published {entry['state_space']}")
    return len(models), agree, states, seconds


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark cpn verify's explorer.")
    parser.add_argument("--quick", action="store_true", help="smaller models, under 60 s")
    parser.add_argument("--memory-only", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_only is not None:
        _memory_only(args.memory_only)
        return 0
    wall_start = time.perf_counter()
    sizes = [4] if args.quick else [5, 4]
    pt_states = 0
    pt_s = 0.0
    for n in sizes:
        net = kanban(n)
        space, seconds = _timed(lambda net=net: explore(net, max_states=10**7))
        assert space.state_count == KANBAN_STATES[n], (n, space.state_count)
        pt_states += space.state_count
        pt_s += seconds
        print(
            f"kanban-{n}: {space.state_count:,} states (published {KANBAN_STATES[n]:,}), "
            f"{space.edge_count:,} arcs, max {space.max_tokens_per_marking} tokens per marking, "
            f"{seconds:.2f} s = {space.state_count / seconds:,.0f} states/s ({space.technique})"
        )
    pt = as_pt_net(kanban(4))
    assert pt is not None
    (base_states, base_edges), base_s = _timed(lambda: baseline_bfs(pt, 10**7))
    assert base_states == KANBAN_STATES[4]
    print(
        f"baseline plain BFS, kanban-4: {base_states:,} states, {base_edges:,} arcs, "
        f"{base_s:.2f} s = {base_states / base_s:,.0f} states/s"
    )
    report_net = kanban(3)
    (_space, _report), report_s = _timed(
        lambda: (s := explore(report_net, keep_edges=True), build_report(report_net, s))
    )
    print(
        f"full report (SCCs, home, liveness, impartiality), kanban-3: {KANBAN_STATES[3]:,} "
        f"states in {report_s:.2f} s = {KANBAN_STATES[3] / report_s:,.0f} states/s"
    )
    memory_n = 4 if args.quick else 5
    bytes_per_state = _memory_child(memory_n)
    pt_rate = pt_states / pt_s
    print(
        f"P/T: {pt_rate:,.0f} states/s [target >= {PT_STATES_PER_S_MIN:,}: "
        f"{_verdict(pt_rate >= PT_STATES_PER_S_MIN)}]; {pt_rate / (base_states / base_s):.1f}x "
        f"the baseline; {bytes_per_state:.0f} bytes/state on kanban-{memory_n} "
        f"[target <= {BYTES_PER_STATE_MAX}: {_verdict(bytes_per_state <= BYTES_PER_STATE_MAX)}]"
    )
    from nets import scraper, scraper_sim  # the showcase nets

    crawler_params = (
        {"domains": 2, "pages": 1, "failures": "one"}
        if args.quick
        else {"domains": 2, "pages": 1, "failures": "all"}
    )
    crawler = scraper.verified_net(**crawler_params)  # type: ignore[arg-type]
    coloured, coloured_s = _timed(lambda: explore(crawler, priorities=True))
    coloured_rate = coloured.state_count / coloured_s
    print(
        f"crawler {crawler_params}: {coloured.state_count:,} states, {coloured.edge_count:,} "
        f"arcs, {coloured_s:.2f} s = {coloured_rate:,.0f} states/s [target >= "
        f"{COLOURED_STATES_PER_S_MIN:,}: {_verdict(coloured_rate >= COLOURED_STATES_PER_S_MIN)}]"
    )
    proved = checked = 0
    for name, net, finals in (
        ("crawler", scraper.verified_net(domains=1, pages=2, failures="one"),
         {"finished": scraper.crawl_finished}),
        ("decision model", scraper_sim.verified_net(),
         {"finished": scraper_sim.crawl_finished}),
    ):  # fmt: skip
        holds, total, states = _properties(net, finals, priorities=True)
        proved += holds
        checked += total
        print(f"properties of the {name}: {holds} of {total} hold ({states:,} states)")
    corpus_models, corpus_agree, corpus_states, corpus_s = _corpus()
    if corpus_models:
        print(
            f"corpus: {corpus_agree} of {corpus_models} models agree with their published "
            f"answers ({corpus_states:,} states in {corpus_s:.1f} s)"
        )
    else:
        print("corpus: none here (tests/data/pnml and nets.pnml are needed): corpus_* are 0")
    print(f"benchmark wall time: {time.perf_counter() - wall_start:.1f} s")
    print(
        json.dumps(
            {
                "pt_states_per_s": round(pt_rate),
                "coloured_states_per_s": round(coloured_rate),
                "bytes_per_state": round(bytes_per_state, 1),
                "corpus_models": corpus_models,
                "corpus_agree": corpus_agree,
                "properties_proved": proved,
                "properties_checked": checked,
                "baseline_states_per_s": round(base_states / base_s),
                "report_states_per_s": round(KANBAN_STATES[3] / report_s),
                "quick": args.quick,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
