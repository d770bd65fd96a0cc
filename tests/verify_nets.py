"""Nets and properties for the tests of ``cpn verify`` (``tests.verify_nets:NAME``).

* :func:`broken_crawler`: the crawler of nets/scraper.py with a bug planted in
  ``scrape``: it *reads* a free slot of the domain instead of taking it, so a domain
  with two targets gets two fetches in flight although ``concurrency`` is 1. The
  politeness invariant must fail with a shortest counterexample.
* :func:`philosophers`: the dining philosophers, which deadlock.
* :func:`ticking`: a clock that ticks every 100 ms three times, counting its ticks in a
  time field; its invariant "fewer than two ticks" fails after a time step.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from nets.classic_nets import philosophers as classic_philosophers
from nets.explore_timed import TIME_MS
from nets.model import MarkingView, Net, Place, Transition, variables
from nets.scraper import (
    CrawlPolicy,
    FetchEffects,
    Link,
    ParseEffects,
    SmallSite,
    StoreEffects,
    crawler_net,
    politeness_holds,
)


def broken_crawler() -> Net:
    site = SmallSite(domains=1, pages=2)
    domain = site.domain(0)
    policy = CrawlPolicy(
        proxies=("http://proxy0.example:3128",),
        max_attempts=1,
        max_pages_per_domain=2,
        delay_ms=0,
        lead_ms=0,
        ready_ms=0,
        late_ms=0,
        margin_ms=0,
        late_anchored_ms=0,
    )
    good = crawler_net(
        policy,
        seeds=[Link(domain, site.url(domain, 0), 0), Link(domain, site.url(domain, 1), 0)],
        scope_domains=[domain],
        effects={
            "fetch_queue": FetchEffects(site, ((503, ""),)),
            "parse_queue": ParseEffects(site),
            "store_queue": StoreEffects(),
        },
    )
    scrape = good.transition("scrape")
    free = good.place("free")
    taken = [p for p in scrape.consume if p.place is free]
    broken = Transition(
        "scrape",
        consume=[p for p in scrape.consume if p.place is not free],
        read=[*scrape.read, *taken],  # the bug: the slot is tested, not taken
        produce=scrape.produce,
    )
    return Net(
        "broken_crawler",
        places=good.places,
        transitions=[broken if t is scrape else t for t in good.transitions],
        effects=good.effects,
        invariants={"at_most_concurrency_in_flight": politeness_holds(1)},
    )


def philosophers(n: int = 3) -> Net:
    return classic_philosophers(n)


def all_thinking(m: MarkingView) -> bool:
    return all(m[name] for name in m if name.startswith("think"))


def someone_eats(m: MarkingView) -> bool:
    return any(m[name] for name in m if name.startswith("eat"))


class Tick(NamedTuple):
    count: int
    last_ms: Annotated[int, TIME_MS]  # when it last ticked


def ticking() -> Net:
    k = variables("k")[0]
    clock = Place("clock", Tick, initial=[Tick(0, 0)])
    tick = Transition(
        "tick",
        consume=[clock(k)],
        guard=lambda k: k.count < 3,
        produce=[clock.produce(lambda k, now: Tick(k.count + 1, now), delay=100)],
    )
    return Net(
        "ticking",
        places=[clock],
        transitions=[tick],
        invariants={"fewer_than_two_ticks": lambda m: all(t[0] < 2 for t in m["clock"])},
    )
