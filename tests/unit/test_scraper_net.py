"""The scraper decision net keeps its promises under virtual time.

Checked from the steps themselves (a hook sees every firing): each target ends in
``done`` or as a final failure in ``fail_log`` exactly once; a domain never has two
requests in flight nor two starts closer than its politeness delay; a proxy is never
used more often than its interval allows; retries back off exponentially and stop at
the maximum number of attempts.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from nets import Engine, Step
from nets.scraper_sim import (
    Failure,
    ScraperParams,
    Target,
    backoff_ms,
    fetch_succeeds,
    initial_targets,
    scraper_net,
)

CASES = [
    ScraperParams(domains=5, targets=120, proxies=2, failure_rate=0.3, seed=1),
    ScraperParams(domains=13, targets=400, proxies=7, failure_rate=0.5, max_attempts=4, seed=7),
    ScraperParams(
        domains=3,
        targets=60,
        proxies=5,
        politeness_ms=0,
        latency_ms=0,
        proxy_interval_ms=0,
        failure_rate=0.2,
        seed=3,
    ),
]


def _run(params: ScraperParams) -> tuple[Engine, list[Step]]:
    engine = Engine(scraper_net(params))
    steps: list[Step] = []
    engine.hooks.append(steps.append)
    for _ in engine.run(until=10**12, max_steps=1_000_000):
        pass
    assert engine.next_deadline() is None and not engine.enabled(engine.now)
    return engine, steps


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"seed{p.seed}-fail{p.failure_rate}")
def test_every_target_ends_exactly_once(params: ScraperParams) -> None:
    engine, _steps = _run(params)
    done = Counter(t.url for _, t in engine.tokens("done"))
    finals = Counter(f.url for _, f in engine.tokens("fail_log") if f.final)
    urls = {t.url for t in initial_targets(params)}
    assert set(done) | set(finals) == urls
    assert not set(done) & set(finals), "a target both succeeded and failed for good"
    assert max(done.values(), default=1) == 1 and max(finals.values(), default=1) == 1
    assert engine.count("targets") == 0 and engine.count("in_flight") == 0
    assert engine.count("domains") == params.domains and engine.count("proxies") == params.proxies


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"seed{p.seed}-fail{p.failure_rate}")
def test_politeness_and_proxy_intervals(params: ScraperParams) -> None:
    _engine, steps = _run(params)
    starts: dict[str, list[int]] = defaultdict(list)
    proxy_uses: dict[str, list[int]] = defaultdict(list)
    in_flight: Counter[str] = Counter()
    for step in steps:
        if step.transition == "scrape":
            target = step.binding["t"]
            starts[target.domain].append(step.time)
            proxy_uses[step.binding["proxy"].name].append(step.time)
            in_flight[target.domain] += 1
            assert in_flight[target.domain] == 1, f"two requests in flight to {target.domain}"
        else:
            in_flight[step.binding["f"].domain] -= 1
    for domain, times in starts.items():
        gaps = [b - a for a, b in pairwise(times)]
        assert min(gaps, default=params.politeness_ms) >= params.politeness_ms, domain
    for proxy, times in proxy_uses.items():
        gaps = [b - a for a, b in pairwise(times)]
        assert min(gaps, default=params.proxy_interval_ms) >= params.proxy_interval_ms, proxy


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"seed{p.seed}-fail{p.failure_rate}")
def test_retries_back_off_and_stop(params: ScraperParams) -> None:
    _engine, steps = _run(params)
    for step in steps:
        if step.transition == "retry":
            fetch = step.binding["f"]
            (retried,) = [(t, tok) for place, t, tok in step.produced if place == "targets"]
            time, target = retried
            assert target == Target(fetch.domain, fetch.priority, fetch.url, fetch.attempt + 1)
            assert time - step.time == backoff_ms(params.backoff_base_ms, fetch.attempt)
            assert target.attempt < params.max_attempts
        if step.transition == "give_up":
            fetch = step.binding["f"]
            assert fetch.attempt == params.max_attempts - 1
            logged = [tok for place, _t, tok in step.produced if place == "fail_log"]
            assert logged == [Failure(fetch.domain, fetch.url, fetch.attempt, True)]
        if step.transition == "scrape":
            target = step.binding["t"]
            (fetch,) = [tok for place, _t, tok in step.produced if place == "in_flight"]
            assert fetch.ok == fetch_succeeds(
                params.seed, target.url, target.attempt, params.failure_rate
            )


def test_outcome_depends_on_seed_url_and_attempt_only() -> None:
    a = [fetch_succeeds(5, f"https://x.example/{i}", 0, 0.5) for i in range(200)]
    b = [fetch_succeeds(5, f"https://x.example/{i}", 0, 0.5) for i in range(200)]
    assert a == b
    assert 40 < sum(a) < 160, "a 50% failure rate should fail about half the fetches"
    assert a != [fetch_succeeds(6, f"https://x.example/{i}", 0, 0.5) for i in range(200)]


def test_same_params_same_steps() -> None:
    params = CASES[1]
    _, first = _run(params)
    _, second = _run(params)
    assert first == second
