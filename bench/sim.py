"""Benchmark: `cpn sim`, the whole cluster simulated, on the crawler under faults.

``python -m bench.sim [--quick] [--seeds N] [--seed S]`` runs, in one process:

1. **Seeds** (100 from seed 0; ``--quick``: 5): ``nets.scraper:net`` at its default
   policy on a simulated site of :data:`SITE_DOMAINS` domains, 3 shards and the router,
   with the crawler's effect models, 60 s of virtual time per seed with at least 5
   faults of the menu chosen by the seed (``SimConfig(faults_min=5)``; faults stop half
   way, then the cluster must drain). Each seed prints its counts; each must reach the
   floors of issue 13 (:data:`FIRINGS_MIN` firings, :data:`HANDOFFS_MIN` handoffs,
   :data:`LEASES_MIN` leases, :data:`FAULTS_MIN` faults), and a seed below one is named.
   ``virtual_over_wall`` is the seeds' virtual seconds over the wall seconds their runs
   took (the baseline is the real clock: 1.0); ``seeds_per_min`` counts the same runs.
2. **Determinism**: a sample of the seeds (every 20th; ``--quick``: the first) is run
   again in a fresh interpreter with another ``PYTHONHASHSEED``
   (``cluster.sim.trace.check_determinism``) and must give the same trace digest.
3. **Mutations**: each of ``MUTATIONS`` in ``tests/simulation/mutations.py`` (``name ->
   Mutation`` with ``apply()``, a context manager that puts a fixed bug back,
   ``recorded_seed``, a seed that found it, and ``config``) is searched for from scratch:
   seeds from 0 up with the bug in, until one fails (at most :data:`SEARCH_SEEDS`);
   every seed of that search must then pass without the bug. ``--quick`` only replays
   each recorded seed with the bug in, which must fail.

The last line is one JSON object with exactly the keys ``seeds``, ``seeds_per_min``,
``virtual_over_wall``, ``faults``, ``failures``, ``deterministic``, ``mutations``,
``mutations_caught``. Targets: at least 100 seeds per minute, 0 failures,
deterministic, every mutation caught.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Mapping
from typing import Any

from cluster.sim.campaign import (
    CampaignReport,
    SeedOutcome,
    config_in_environment,
    run_seed,
    seed_failure,
)
from cluster.sim.cluster_run import SimConfig
from cluster.sim.trace import check_determinism

NET = "nets.scraper:net"
SITE_DOMAINS = 20  # the smallest site whose every seed reaches the floors below
UNTIL_MS = 60_000
SHARDS = 3
FIRINGS_MIN, HANDOFFS_MIN, LEASES_MIN, FAULTS_MIN = 1_000, 100, 50, 5
SEEDS_PER_MIN_TARGET = 100
SEEDS_FULL, SEEDS_QUICK = 100, 5
DETERMINISM_EVERY = 20
MUTATIONS_MODULE = "tests.simulation.mutations"
SEARCH_SEEDS = 1_000  # each bug must be found among this many seeds from seed 0
RUNNER = "cluster.sim.cluster_run:run"

CONFIG = SimConfig(
    NET, params={"site_domains": SITE_DOMAINS}, shards=SHARDS, until_ms=UNTIL_MS, faults_min=5
)


def floors_missed(outcome: SeedOutcome) -> list[str]:
    """The floors of issue 13 that ``outcome`` did not reach."""
    missed = []
    for name, value, floor in (
        ("firings", outcome.firings, FIRINGS_MIN),
        ("handoffs", outcome.handoffs, HANDOFFS_MIN),
        ("leases", outcome.leases, LEASES_MIN),
        ("faults", sum(outcome.faults.values()), FAULTS_MIN),
        ("virtual ms", outcome.virtual_ms, UNTIL_MS),
    ):
        if value < floor:
            missed.append(f"{name} {value:,} < {floor:,}")
    return missed


def load_mutations() -> Mapping[str, Any]:
    """``MUTATIONS`` of tests/simulation/mutations.py, or nothing until it exists."""
    try:
        module = importlib.import_module(MUTATIONS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is not None and MUTATIONS_MODULE.startswith(exc.name):
            return {}
        raise
    mutations: Mapping[str, Any] = getattr(module, "MUTATIONS", {})
    return mutations


def failure_of(seed: int, config: SimConfig) -> str:
    """The first line of why ``seed`` fails, cut to 100 characters ('' if it passes)."""
    failure = seed_failure(seed, config)
    return failure.splitlines()[0][:100] if failure else ""


def check_mutations(quick: bool) -> tuple[int, int]:
    """Each mutation caught: (mutations, caught).

    ``--quick`` replays each recorded seed with the bug put back (it must fail). The full
    run searches for each bug from scratch, from seed 0, among :data:`SEARCH_SEEDS`
    seeds, and runs every seed of the search again without the bug (each must pass).
    """
    mutations = load_mutations()
    if not mutations:
        print(f"mutations: none ({MUTATIONS_MODULE} has no MUTATIONS yet): mutations are 0")
        return 0, 0
    caught = 0
    for name in sorted(mutations):
        mutation = mutations[name]
        config = getattr(mutation, "config", CONFIG)
        started = time.perf_counter()
        seeds = [int(mutation.recorded_seed)] if quick else range(SEARCH_SEEDS)
        found, why = None, ""
        with mutation.apply():
            for seed in seeds:
                why = failure_of(seed, config)
                if why:
                    found = seed
                    break
        if found is None:
            searched = "its recorded seed" if quick else f"seeds 0..{SEARCH_SEEDS - 1}"
            print(f"mutation {name}: MISSED in {searched} [{time.perf_counter() - started:.1f} s]")
            continue
        failing_without = [] if quick else [s for s in range(found + 1) if failure_of(s, config)]
        ok = not failing_without
        caught += ok
        recorded = int(mutation.recorded_seed)
        how = (
            "replayed"
            if quick
            else f"found at seed {found} ({found + 1} seeds searched"
            + (")" if found == recorded else f"; the recorded seed is {recorded}: update it)")
        )
        print(
            f"mutation {name}: {'caught' if ok else 'MISSED'}, {how}: {why}"
            + ("" if quick else f"; without it seeds 0..{found} pass" if ok else "")
            + (f"; without it seeds {failing_without} fail too" if failing_without else "")
            + f" [{time.perf_counter() - started:.1f} s]"
        )
    return len(mutations), caught


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark cpn sim on the crawler.")
    parser.add_argument("--quick", action="store_true", help="5 seeds, in under 60 s.")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds to run.")
    parser.add_argument("--seed", type=int, default=0, help="The first seed.")
    args = parser.parse_args(argv)
    count = args.seeds or (SEEDS_QUICK if args.quick else SEEDS_FULL)
    seeds = range(args.seed, args.seed + count)
    wall_start = time.perf_counter()
    print(
        f"cpn sim {NET} --net-param site_domains={SITE_DOMAINS} --shards {SHARDS} "
        f"--until {UNTIL_MS // 1000}s, at least {FAULTS_MIN} faults a seed, "
        f"seeds {seeds.start}..{seeds.stop - 1}"
    )
    report = CampaignReport(CONFIG)
    outcomes: list[SeedOutcome] = []
    below: list[int] = []
    sampled: list[int] = []
    deterministic = True
    running_s = 0.0
    for index, seed in enumerate(seeds):
        started = time.perf_counter()
        outcome, trace = run_seed(seed, CONFIG)
        running_s += time.perf_counter() - started
        report.add(outcome)
        outcomes.append(outcome)
        missed = floors_missed(outcome)
        if missed:
            below.append(seed)
        print(
            f"seed {seed:>4}: {outcome.firings:>6,} firings {outcome.handoffs:>4,} handoffs "
            f"{outcome.leases:>5,} leases {sum(outcome.faults.values()):>4,} faults "
            f"{outcome.events:>7,} events  {outcome.kind}"
            + (f"  below the floor: {', '.join(missed)}" if missed else "")
            + (f"\n  {outcome.failure.splitlines()[0]}" if not outcome.ok else "")
        )
        if index % DETERMINISM_EVERY == 0:
            with config_in_environment(CONFIG):
                checked = check_determinism(RUNNER, seed, local=trace if outcome.ok else None)
            sampled.append(seed)
            deterministic = deterministic and checked.ok
            print("  " + str(checked).replace("\n", "\n  "))
    failures = sum(1 for o in outcomes if not o.ok)
    virtual_s = report.virtual_ms / 1000
    for name, values in (
        ("firings", [o.firings for o in outcomes]),
        ("handoffs", [o.handoffs for o in outcomes]),
        ("leases", [o.leases for o in outcomes]),
        ("faults", [sum(o.faults.values()) for o in outcomes]),
    ):
        print(
            f"{name:>9} per seed: min {min(values):,}, median {statistics.median(values):,.0f}, "
            f"max {max(values):,}"
        )
    print(f"faults by kind: {json.dumps(report.faults_by_kind())}")
    print(f"seeds below a floor: {below or 'none'}")
    seeds_per_min = count * 60 / running_s
    ratio = virtual_s / running_s
    print(
        f"{count} seeds, {virtual_s:,.0f} virtual s in {running_s:,.1f} wall s: "
        f"{ratio:,.1f} virtual s per wall s (baseline: the real clock, 1.0), "
        f"{seeds_per_min:,.1f} seeds/min [target {SEEDS_PER_MIN_TARGET}]"
    )
    print(f"determinism checked on seeds {sampled}: {'same' if deterministic else 'DIVERGED'}")
    print(f"combined digest of the seeds' traces: {report.to_json(running_s)['digest']}")
    mutations, caught = check_mutations(args.quick)
    print(f"benchmark wall time: {time.perf_counter() - wall_start:.1f} s")
    print(
        json.dumps(
            {
                "seeds": count,
                "seeds_per_min": round(seeds_per_min, 1),
                "virtual_over_wall": round(ratio, 1),
                "faults": report.faults.total(),
                "failures": failures,
                "deterministic": deterministic,
                "mutations": mutations,
                "mutations_caught": caught,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
