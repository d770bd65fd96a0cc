"""Benchmark: the scraper decision workload, fired by the engine and by hand-written code.

``python -m bench.engine [--quick]`` runs, in one process and one invocation:

1. the scraper decision net (``nets/scraper_sim.py``; 100,000 targets, or 20,000 with
   ``--quick``; 500 domains; 50 proxies; default delays) under ``Engine.run`` in
   virtual time, with engine construction timed apart from the run;
2. :class:`bench.handwritten.HandwrittenScheduler` on the same parameters, which makes
   the same decisions with dicts and heaps;
3. a check that both made the same number of decisions per transition, and with
   ``--quick`` (or ``--check-sequence``) the same decision sequence, compared through a
   digest in a separate, untimed pass;
4. the resident memory of one engine holding 1,000,000 tokens, measured in a fresh
   child interpreter so that memory freed by the runs above cannot hide any of it.

The garbage collector stays enabled in both timed runs; each starts after a
``gc.collect()`` so that neither pays for the other's (or its own construction's)
garbage. The last line of output is one JSON object whose first keys are
``engine_firings_per_s``, ``handwritten_per_s``, ``ratio`` (hand-written run time
divided by the engine's run time) and ``bytes_per_token``; ``cpu_ratio`` is the same
ratio in process CPU time, which a machine shared with other work disturbs less.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.handwritten import HandwrittenScheduler
from nets import Engine
from nets.scraper_sim import ScraperParams, scraper_net

DOMAINS = 500
PROXIES = 50
TARGETS_FULL = 100_000
TARGETS_QUICK = 20_000
MEMORY_TOKENS = 1_000_000
UNTIL_MS = 2**62  # "run until nothing is left to do"

ENGINE_FIRINGS_PER_S_MIN = 200_000
RATIO_MIN = 0.6  # issue 18
BYTES_PER_TOKEN_MAX = 300  # issue 18


@dataclass(frozen=True, slots=True)
class RunResult:
    """One timed run of the workload."""

    build_s: float
    run_s: float
    cpu_s: float  # process CPU time of the run: less sensitive to a shared machine
    decisions: int
    per_transition: dict[str, int]
    gc_collections: tuple[int, ...]  # per generation, during the run

    @property
    def per_s(self) -> float:
        return self.decisions / self.run_s


def _gc_counts() -> tuple[int, ...]:
    return tuple(s["collections"] for s in gc.get_stats())


def _gc_since(before: tuple[int, ...]) -> tuple[int, ...]:
    """Collections per generation since ``before`` was taken."""
    return tuple(a - b for a, b in zip(_gc_counts(), before, strict=True))


def time_engine(params: ScraperParams) -> RunResult:
    """Build the scraper net's engine, then fire the whole workload."""
    gc.collect()
    start = time.perf_counter()
    engine = Engine(scraper_net(params))
    build_s = time.perf_counter() - start
    gc.collect()
    gc_before = _gc_counts()
    fired = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    for _step in engine.run(until=UNTIL_MS):
        fired += 1
    run_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    gc_run = _gc_since(gc_before)
    firings = dict(engine.statistics().firings)
    assert sum(firings.values()) == fired, (firings, fired)
    return RunResult(build_s, run_s, cpu_s, fired, firings, gc_run)


def time_handwritten(params: ScraperParams) -> RunResult:
    """Build the hand-written scheduler, then make the whole workload's decisions."""
    gc.collect()
    start = time.perf_counter()
    scheduler = HandwrittenScheduler(params)
    build_s = time.perf_counter() - start
    gc.collect()
    gc_before = _gc_counts()
    cpu_start = time.process_time()
    start = time.perf_counter()
    decided = scheduler.run(until=UNTIL_MS)
    run_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    gc_run = _gc_since(gc_before)
    return RunResult(
        build_s,
        run_s,
        cpu_s,
        decided,
        dict(scheduler.firings),
        gc_run,
    )


def _digest(decisions: Iterable[tuple[str, int, tuple[Any, ...]]]) -> tuple[int, str]:
    """(count, blake2b of the decisions' reprs): equal iff the sequences are equal."""
    h = hashlib.blake2b(digest_size=16)
    n = 0
    for decision in decisions:
        h.update(repr(decision).encode())
        h.update(b"\n")
        n += 1
    return n, h.hexdigest()


def sequence_digests(params: ScraperParams) -> tuple[tuple[int, str], tuple[int, str]]:
    """Digests of the engine's and the hand-written decision sequences (untimed)."""
    engine = Engine(scraper_net(params))
    engine_digest = _digest(
        (step.transition, step.time, step.consumed) for step in engine.run(until=UNTIL_MS)
    )
    del engine
    scheduler = HandwrittenScheduler(params, record=True)
    scheduler.run(until=UNTIL_MS)
    assert scheduler.decisions is not None
    return engine_digest, _digest(scheduler.decisions)


def _rss_bytes() -> int:
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


def measure_memory(tokens: int) -> dict[str, float]:
    """RSS growth from building the scraper net and its engine holding ``tokens`` tokens.

    The tokens are 500 domains, 50 proxies and ``tokens - 550`` targets. The growth
    counts everything those tokens cost: the token objects and their strings, the
    net's initial marking and the engine's indexes.
    """
    params = ScraperParams(domains=DOMAINS, targets=tokens - DOMAINS - PROXIES, proxies=PROXIES)
    gc.collect()
    rss_start = _rss_bytes()
    start = time.perf_counter()
    net = scraper_net(params)
    gc.collect()
    rss_net = _rss_bytes()
    engine = Engine(net)
    build_s = time.perf_counter() - start
    gc.collect()
    rss_engine = _rss_bytes()
    held = sum(engine.statistics().tokens.values())
    assert held == tokens, (held, tokens)
    return {
        "tokens": held,
        "rss_delta_bytes": rss_engine - rss_start,
        "bytes_per_token": (rss_engine - rss_start) / held,
        "engine_bytes_per_token": (rss_engine - rss_net) / held,
        "build_s": build_s,
    }


def measure_memory_in_child(tokens: int) -> dict[str, float]:
    """:func:`measure_memory` in a fresh interpreter (a clean heap to measure against)."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "bench.engine", "--memory-only", "--tokens", str(tokens)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{TARGETS_QUICK:,} targets instead of {TARGETS_FULL:,}",
    )
    parser.add_argument(
        "--check-sequence",
        action="store_true",
        help="compare the full decision sequences (always on with --quick)",
    )
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=MEMORY_TOKENS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_only:
        print(json.dumps(measure_memory(args.tokens)))
        return 0

    wall_start = time.perf_counter()
    targets = TARGETS_QUICK if args.quick else TARGETS_FULL
    params = ScraperParams(domains=DOMAINS, targets=targets, proxies=PROXIES)
    print(
        f"scraper workload: {targets:,} targets, {DOMAINS} domains, {PROXIES} proxies, "
        f"virtual time; gc enabled in both runs (collected before each)"
    )

    engine = time_engine(params)
    print(
        f"engine:      build {engine.build_s:6.2f} s, run {engine.run_s:6.2f} s, "
        f"{engine.decisions:,} firings, {engine.per_s:,.0f} firings/s, "
        f"gc collections {engine.gc_collections}"
    )
    hand = time_handwritten(params)
    print(
        f"handwritten: build {hand.build_s:6.2f} s, run {hand.run_s:6.2f} s, "
        f"{hand.decisions:,} decisions, {hand.per_s:,.0f} decisions/s, "
        f"gc collections {hand.gc_collections}"
    )
    if engine.per_transition != hand.per_transition:
        print(
            f"error: decisions differ per transition: engine {engine.per_transition}, "
            f"handwritten {hand.per_transition}",
            file=sys.stderr,
        )
        return 1
    counts = ", ".join(f"{name} {n:,}" for name, n in engine.per_transition.items())
    print(f"same decisions per transition: {counts}")
    sequence_checked = args.quick or args.check_sequence
    if sequence_checked:
        engine_digest, hand_digest = sequence_digests(params)
        if engine_digest != hand_digest:
            print(
                f"error: decision sequences differ: engine {engine_digest}, "
                f"handwritten {hand_digest}",
                file=sys.stderr,
            )
            return 1
        print(f"same decision sequence: {engine_digest[0]:,} decisions, digest {engine_digest[1]}")

    ratio = hand.run_s / engine.run_s
    cpu_ratio = hand.cpu_s / engine.cpu_s
    print(
        f"ratio (handwritten run / engine run): {ratio:.3f} "
        f"[target >= {RATIO_MIN}: {_verdict(ratio >= RATIO_MIN)}]; "
        f"engine {engine.per_s:,.0f} firings/s "
        f"[target >= {ENGINE_FIRINGS_PER_S_MIN:,}: "
        f"{_verdict(engine.per_s >= ENGINE_FIRINGS_PER_S_MIN)}]"
    )
    print(
        f"cpu_ratio (the same, in process CPU time; steadier on a shared machine): {cpu_ratio:.3f}"
    )

    memory = measure_memory_in_child(MEMORY_TOKENS)
    bytes_per_token = memory["bytes_per_token"]
    print(
        f"memory: {memory['tokens']:,.0f} tokens in one engine: RSS +"
        f"{memory['rss_delta_bytes'] / 1e6:,.0f} MB, {bytes_per_token:.0f} bytes/token "
        f"({memory['engine_bytes_per_token']:.0f} of them the engine's, the rest the tokens "
        f"and the net's initial marking; built in {memory['build_s']:.1f} s) "
        f"[target <= {BYTES_PER_TOKEN_MAX}: {_verdict(bytes_per_token <= BYTES_PER_TOKEN_MAX)}]"
    )
    wall_s = time.perf_counter() - wall_start
    print(f"benchmark wall time: {wall_s:.1f} s")
    print(
        json.dumps(
            {
                "engine_firings_per_s": round(engine.per_s),
                "handwritten_per_s": round(hand.per_s),
                "ratio": round(ratio, 4),
                "bytes_per_token": round(bytes_per_token, 1),
                "quick": args.quick,
                "targets": targets,
                "firings": engine.decisions,
                "engine_build_s": round(engine.build_s, 3),
                "engine_run_s": round(engine.run_s, 3),
                "handwritten_build_s": round(hand.build_s, 3),
                "handwritten_run_s": round(hand.run_s, 3),
                "sequence_checked": sequence_checked,
                "engine_bytes_per_token": round(memory["engine_bytes_per_token"], 1),
                "cpu_ratio": round(cpu_ratio, 4),
                "engine_cpu_s": round(engine.cpu_s, 3),
                "handwritten_cpu_s": round(hand.cpu_s, 3),
                "wall_s": round(wall_s, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
