"""The engine and the benchmark's hand-written scheduler make the same decisions.

``bench/handwritten.py`` re-implements the scraper net's policy (``nets/scraper_sim.py``)
with dicts and heaps. The benchmark's ratio only means something if both do the same
work, so here, on small crawls, the engine's step sequence under ``Engine.run`` (each
step's transition, time and consumed entries ``(place, time, token)``) must equal the
hand-written decision sequence exactly, and the places nothing consumes (``done``,
``fail_log``) must end up with the same entries. The zero-delay cases put many
firings at one instant, where only the tie-breaking rules (priority, declaration
order, then entries by time and token value) decide the order.
"""

import pytest

from bench.handwritten import HandwrittenScheduler
from nets import Engine
from nets.scraper_sim import ScraperParams, scraper_net

SMALL = {"domains": 7, "targets": 300, "proxies": 3, "failure_rate": 0.3, "max_attempts": 3}
CASES = {
    "default_delays": {},
    "no_latency_no_politeness": {"latency_ms": 0, "politeness_ms": 0},
    "all_delays_zero": {
        "latency_ms": 0,
        "politeness_ms": 0,
        "proxy_interval_ms": 0,
        "backoff_base_ms": 0,
        "failure_rate": 0.5,
        "max_attempts": 4,
    },
    "more_proxies_than_domains": {"proxies": 11, "domains": 4, "latency_ms": 0},
}
UNTIL_ALL_MS = 2**62


def _engine_run(params: ScraperParams, until: int) -> tuple[Engine, list[tuple]]:
    engine = Engine(scraper_net(params))
    steps = [(step.transition, step.time, step.consumed) for step in engine.run(until=until)]
    return engine, steps


def _first_difference(left: list, right: list) -> str:
    for i, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return f"decision {i}: engine {a!r}, handwritten {b!r}"
    return f"lengths differ: engine {len(left)}, handwritten {len(right)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_handwritten_makes_the_engines_decisions(case: str, seed: int) -> None:
    params = ScraperParams(**{**SMALL, **CASES[case], "seed": seed})
    engine, engine_steps = _engine_run(params, UNTIL_ALL_MS)
    scheduler = HandwrittenScheduler(params, record=True)
    decided = scheduler.run(until=UNTIL_ALL_MS)

    assert scheduler.decisions is not None
    assert decided == len(scheduler.decisions)
    assert engine_steps == scheduler.decisions, _first_difference(engine_steps, scheduler.decisions)
    assert dict(engine.statistics().firings) == scheduler.firings
    assert engine.tokens("done") == sorted(scheduler.done)
    assert engine.tokens("fail_log") == sorted(scheduler.fail_log)
    # Every target was either crawled or given up on, and nothing is left in flight.
    assert engine.count("targets") == engine.count("in_flight") == 0
    given_up = sum(1 for _time, failure in scheduler.fail_log if failure.final)
    assert len(scheduler.done) + given_up == params.targets


@pytest.mark.parametrize("until_ms", [0, 999, 5_000, 20_000])
def test_handwritten_stops_where_the_engine_stops(until_ms: int, seed: int) -> None:
    params = ScraperParams(**{**SMALL, "seed": seed})
    _engine, engine_steps = _engine_run(params, until_ms)
    scheduler = HandwrittenScheduler(params, record=True)
    scheduler.run(until=until_ms)

    assert engine_steps == scheduler.decisions, _first_difference(
        engine_steps, scheduler.decisions or []
    )


def test_small_cases_fire_every_transition() -> None:
    # With seed 0 each case retries and gives up at least once, so the comparison
    # above covers every transition (with a random seed it almost always does too).
    for case in CASES.values():
        scheduler = HandwrittenScheduler(ScraperParams(**{**SMALL, **case, "seed": 0}))
        scheduler.run(until=UNTIL_ALL_MS)
        assert min(scheduler.firings.values()) > 0, (case, scheduler.firings)
