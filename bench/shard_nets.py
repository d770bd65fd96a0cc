"""Nets for the shard benchmark (``bench/shard.py``), importable by a ``cpn shard`` process.

``cpn shard --net bench.shard_nets:NAME`` loads these by import path and takes no size
option, so the sizes come from environment variables that the benchmark passes to the
subprocess (with ``PYTHONPATH`` set to the repository root):

* :func:`scraper_zero_delay`: the scraper decision net (``nets/scraper_sim.py``) with every
  delay set to 0, so that the clock never bounds the firing rate; its number of
  targets is ``CPN_BENCH_TARGETS``;
* :func:`scraper_zero_delay_empty`: the same net without targets and proxies, which
  the cluster benchmark puts once every shard serves;
* :func:`scraper_real_delays`: the scraper decision net with real delays, sized by
  net parameters (``cpn up --net-param targets=...``), for the chaos benchmark
  (``bench/chaos.py``);
* :func:`sink`: one keyed place that no transition consumes, so the marking only grows
  with every put (put throughput, acknowledgement latency), and whose initial marking
  of ``CPN_BENCH_SINK_TOKENS`` tokens fills a store quickly (recovery).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Final, NamedTuple

from nets.model import Net, Place
from nets.scraper_sim import ScraperParams, scraper_net

TARGETS_ENV: Final = "CPN_BENCH_TARGETS"
TARGETS_DEFAULT: Final = 20_000
SINK_TOKENS_ENV: Final = "CPN_BENCH_SINK_TOKENS"
DOMAINS: Final = 500
PROXIES: Final = 50
SINK_KEYS: Final = 1_000  # distinct key values of sink tokens (partitions they spread over)


def zero_delay_params(targets: int, *, seed: int = 0) -> ScraperParams:
    """The scraper workload of ``bench/engine.py`` with every delay set to 0."""
    return ScraperParams(
        domains=DOMAINS,
        targets=targets,
        proxies=PROXIES,
        politeness_ms=0,
        proxy_interval_ms=0,
        latency_ms=0,
        cooldown_ms=0,
        backoff_base_ms=0,
        seed=seed,
    )


def scraper_zero_delay(seed: int = 0) -> Net:
    """The zero-delay scraper net, ``$CPN_BENCH_TARGETS`` targets (for ``cpn shard``)."""
    targets = int(os.environ.get(TARGETS_ENV, str(TARGETS_DEFAULT)))
    return scraper_net(zero_delay_params(targets, seed=seed))


def scraper_zero_delay_empty(seed: int = 0) -> Net:
    """The zero-delay scraper net without targets and proxies (for bench/cluster.py).

    The benchmark puts the targets once every shard serves, then the proxies: nothing
    fires before the proxies come, so all shards start together (with an initial
    marking, the first shard up would fire alone while the others start).
    """
    return scraper_net(dataclasses.replace(zero_delay_params(0, seed=seed), proxies=0))


def scraper_real_delays(
    seed: int = 0, *, targets: int = 300_000, domains: int = 3_000, proxies: int = 300
) -> Net:
    """The scraper decision net with real delays (politeness 1 s, a proxy every 250 ms,
    200 ms fetches), ``targets`` targets over ``domains`` domains (bench/chaos.py)."""
    return scraper_net(ScraperParams(domains=domains, targets=targets, proxies=proxies, seed=seed))


class Item(NamedTuple):
    key: str
    n: int


def sink_item(n: int) -> Item:
    """The ``n``-th distinct sink token."""
    return Item(f"k{n % SINK_KEYS:04d}", n)


def sink() -> Net:
    """One keyed place, ``items``, that no transition consumes: puts only add tokens.

    It starts with ``$CPN_BENCH_SINK_TOKENS`` tokens (default none): a shard commits
    them on its first start, which fills a store faster than putting them.
    """
    initial = int(os.environ.get(SINK_TOKENS_ENV, "0"))
    items = Place("items", Item, key="key", initial=[sink_item(n) for n in range(initial)])
    return Net("bench_sink", places=[items], transitions=[])
