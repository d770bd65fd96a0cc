"""The what-if report (cluster/sim/whatif.py): its figures on runs whose answers are known.

Each test runs a small configuration for a few virtual seconds: a chain of timed
transitions whose makespan is computed by hand, a work queue whose effect waits for a
planned start, and the crawler on a small site, where a constant population must show a
constant occupancy and more proxies must crawl faster.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest

from cluster.sim.cluster_run import SimConfig, SimError
from cluster.sim.whatif import QUIET_MS_MIN, Summary, measure, what_if
from nets.effects import Outcome
from nets.model import Net, Place, Token, Transition, variables

pytestmark = pytest.mark.simulation

A_MS, B_MS = 500, 250  # the chain's two delays
JOBS = 3
JOB_LATENCY_MS = 80
JOB_START_MS = 400


class Item(NamedTuple):
    key: str
    n: int


def chain() -> Net:
    """``start -> (500 ms) -> middle -> (250 ms) -> end``: one token, one key, one shard."""
    start = Place("start", Item, key="key", initial=[Item("k", 1)])
    middle = Place("middle", Item, key="key")
    end = Place("end", Item, key="key")
    done = Place("done", Item, key="key")
    i, k = variables("i k")
    return Net(
        "whatif_chain",
        places=[start, middle, end, done],
        transitions=[
            Transition("first", consume=[start(i, key=k)], produce=[middle.produce(i, delay=A_MS)]),
            Transition("second", consume=[middle(i, key=k)], produce=[end.produce(i, delay=B_MS)]),
            Transition("third", consume=[end(i, key=k)], produce=[done.produce(i)]),
        ],
    )


class JobEffects:
    """Every job completes ``JOB_LATENCY_MS`` after its planned start, ``JOB_START_MS``."""

    workers = 1

    def outcomes(self, token: Token, attempt: int) -> tuple[Outcome, ...]:
        del attempt
        return (
            Outcome(
                "ok",
                (("done", token),),
                latency_ms=JOB_LATENCY_MS,
                start_ms=JOB_START_MS,
            ),
        )


def jobs() -> Net:
    """``JOBS`` jobs in a work queue, each finished into ``archived``."""
    queue = Place(
        "jobs",
        Item,
        key="key",
        work_queue=True,
        results=("done",),
        initial=[Item("k", n) for n in range(JOBS)],
    )
    done = Place("done", Item, key="key")
    archived = Place("archived", Item, key="key")
    i, k = variables("i k")
    archive = Transition("archive", consume=[done(i, key=k)], produce=[archived.produce(i)])
    return Net(
        "whatif_jobs",
        places=[queue, done, archived],
        transitions=[archive],
        effects={"jobs": JobEffects()},
    )


HERE = "tests.simulation.test_whatif"


def test_the_makespan_of_a_timed_chain_is_the_sum_of_its_delays() -> None:
    figures = measure(1, SimConfig(f"{HERE}:chain", shards=1, until_ms=3_000))
    assert figures.ok, figures.failure
    assert figures.quiesced
    assert figures.makespan_ms == A_MS + B_MS
    fired = {t.name: t for t in figures.transitions}
    assert [fired[n].firings for n in ("first", "second", "third")] == [1, 1, 1]
    # The initial token waited for the cluster's start-up; then each transition fired
    # the moment its input became available.
    assert fired["first"].latency_ms.max == figures.started_ms > 0
    assert fired["second"].latency_ms.max == fired["third"].latency_ms.max == 0
    places = {p.name: p for p in figures.places}
    # The token sat in `middle` for 500 of the 750 ms, in `end` for 250.
    assert places["middle"].mean == pytest.approx(A_MS / (A_MS + B_MS))
    assert places["end"].mean == pytest.approx(B_MS / (A_MS + B_MS))
    assert places["done"].mean == 0.0 and places["done"].max == 1
    assert figures.per_s == pytest.approx(3 * 1_000 / (A_MS + B_MS))


def test_the_links_latency_is_a_what_if_of_its_own() -> None:
    config = SimConfig(f"{HERE}:chain", shards=1, until_ms=3_000)
    slow = measure(1, config, link_ms=(40, 40))
    # The chain's delays are the net's: only the start-up (the table's round trip) waits.
    assert slow.makespan_ms == A_MS + B_MS
    assert slow.started_ms >= 2 * 40
    with pytest.raises(SimError, match="link latency"):
        measure(1, config, link_ms=(5, 1))


def test_a_run_that_does_not_quiesce_has_no_makespan() -> None:
    # The chain ends at 750 ms: a run that stops before QUIET_MS_MIN more has passed
    # cannot tell that it was over.
    figures = measure(1, SimConfig(f"{HERE}:chain", shards=1, until_ms=A_MS + B_MS + 10))
    assert not figures.quiesced and figures.makespan_ms is None
    assert figures.window_ms == figures.virtual_ms - figures.started_ms


def test_lease_figures_follow_the_effect_model_and_its_planned_start() -> None:
    figures = measure(2, SimConfig(f"{HERE}:jobs", shards=1, until_ms=5_000))
    assert figures.ok, figures.failure
    assert figures.workers == (("jobs", 1),)
    (queue,) = figures.queues
    assert queue.leases == JOBS
    # One worker, one lane: the jobs go one after the other, each held from its lease
    # to its completion: the first waits for its start, the others start at once.
    assert queue.first_start_ms == JOB_START_MS
    assert queue.held_ms.count == JOBS
    assert queue.held_ms.max >= JOB_START_MS - 100 + JOB_LATENCY_MS
    assert queue.held_ms.p50 >= JOB_LATENCY_MS
    for total, wait, held in zip(
        (queue.turnaround_ms.max,), (queue.wait_ms.max,), (queue.held_ms.max,), strict=True
    ):
        assert held <= total <= wait + held
    assert figures.makespan_ms is not None
    # From the first lease: the wait for the start, then the three jobs one by one.
    assert figures.makespan_ms >= JOB_START_MS - figures.started_ms + JOBS * JOB_LATENCY_MS
    places = {p.name: p for p in figures.places}
    assert places["jobs__held"].max == 1  # one worker holds one lease at a time
    assert places["archived"].max == JOBS


SMALL_SITE = {"site_domains": 6, "site_pages": 3, "delay_ms": 100, "backoff_base_ms": 100}


def test_occupancy_of_the_scope_and_of_the_direct_slots() -> None:
    config = SimConfig("nets.scraper:net", params=SMALL_SITE, shards=2, until_ms=20_000)
    report = what_if(config, seeds=[1, 2])
    assert report.ok and report.quiesced == 2
    places = {name: (mean, peak) for name, mean, peak in report.places()}
    # The scope holds its 6 domains from the start. 64 direct-connection slots: one is
    # out of the pool while its fetch is in flight (at most one per domain), so the
    # pool holds 64 at its peak and at least 58 at any time.
    assert 58.0 <= places["proxies"][0].mean < 64.0
    assert places["proxies"][1].high == 64
    assert places["scope"][0].mean == pytest.approx(6.0)
    # Every page fetched was parsed and stored: the crawl's end is the last store.
    for figures in report.seeds:
        fired = {t.name: t.firings for t in figures.transitions}
        assert fired["page_fetched"] == fired["parse_finished"] == fired["store_finished"]
        held = {q.place: q for q in figures.queues}
        assert held["fetch_queue"].leases >= fired["page_fetched"]
        assert all(q.turnaround_ms.max >= q.held_ms.max for q in figures.queues)
    text = report.render()
    assert "makespan:" in text and "proxies" in text
    assert json.loads(json.dumps(report.to_json()))["quiesced"] == 2


def _crawl_ms(proxies: int) -> float:
    params = {
        **SMALL_SITE,
        "site_domains": 8,
        "proxies": [f"http://proxy{i}.example:3128" for i in range(proxies)],
        "proxy_interval_ms": 400,
    }
    report = what_if(
        SimConfig("nets.scraper:net", params=params, shards=2, until_ms=40_000), seeds=[3]
    )
    assert report.quiesced == 1, report.render()
    return report.makespan_ms().mean


def test_more_proxies_crawl_faster_when_proxies_are_the_bottleneck() -> None:
    # 8 domains x (robots + 3 pages) through proxies that may send once per 400 ms:
    # two proxies make 5 requests a second, four make 10.
    two, four = _crawl_ms(2), _crawl_ms(4)
    assert four < 0.75 * two


def test_worker_counts_are_checked() -> None:
    config = SimConfig(f"{HERE}:jobs", shards=1, until_ms=2_000)
    with pytest.raises(SimError, match="not a work queue"):
        measure(1, config, workers={"nope": 1})
    with pytest.raises(SimError, match="no seed"):
        what_if(config, seeds=[])


def test_summaries_use_the_nearest_rank() -> None:
    summary = Summary.of([5, 1, 4, 2, 3, 6, 7, 8, 9, 10])
    assert (summary.count, summary.mean, summary.p50, summary.p95, summary.max) == (
        10,
        5.5,
        5,
        10,
        10,
    )
    assert Summary.of([]) == Summary()
    assert QUIET_MS_MIN > 0
