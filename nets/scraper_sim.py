"""The scraper's decision net: polite, proxy-rate-limited crawling with retries.

The net decides *when* to fetch *what* through *which* proxy; the fetch itself is an
effect outside the net. Here the fetch is simulated: its duration is ``latency_ms`` and
its outcome is a pure function of (seed, url, attempt), never of firing order, so a run
is reproducible and the same decisions can be checked against a hand-written scheduler.

Read it as the policy in prose:

* every domain has one ``domains`` token: at most one request in flight per domain,
  and the token comes back ``politeness_ms`` after the response, so two requests to one
  domain start at least ``politeness_ms`` apart;
* ``scrape`` joins a free domain, one of its targets (earliest, then smallest priority
  number first) and a free proxy; the proxy comes back ``proxy_interval_ms`` later (a
  per-proxy rate limit carried by the token's time);
* a successful fetch puts the target in ``done``, cooling down for ``cooldown_ms``
  before it could be crawled again;
* a failed fetch is logged in ``fail_log`` and goes back into ``targets`` with
  ``attempt + 1`` after an exponential backoff, until ``max_attempts`` is reached.

Places are keyed by domain (every firing is local to one domain's partition) except
``proxies``, a pool whose tokens move between shards on demand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from nets.model import MarkingView, Net, Place, Transition, variables


class Domain(NamedTuple):
    name: str


class Target(NamedTuple):
    domain: str
    priority: int  # smaller is crawled first
    url: str
    attempt: int  # 0 for the first try


class Proxy(NamedTuple):
    name: str


class Fetch(NamedTuple):
    domain: str
    priority: int
    url: str
    attempt: int
    proxy: str
    ok: bool  # the simulated outcome, decided when the request starts


class Failure(NamedTuple):
    domain: str
    url: str
    attempt: int
    final: bool  # True when no retry follows


@dataclass(frozen=True, slots=True)
class ScraperParams:
    """The size and timing of a simulated crawl (all durations in milliseconds)."""

    domains: int = 20
    targets: int = 1_000
    proxies: int = 5
    politeness_ms: int = 1_000
    proxy_interval_ms: int = 250
    latency_ms: int = 200
    cooldown_ms: int = 60_000
    failure_rate: float = 0.1
    max_attempts: int = 3
    backoff_base_ms: int = 500
    seed: int = 0


def fetch_succeeds(seed: int, url: str, attempt: int, failure_rate: float) -> bool:
    """The simulated outcome of fetching ``url``: a hash of (seed, url, attempt)."""
    digest = hashlib.blake2b(f"{seed}|{url}|{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / (1 << 64) >= failure_rate


def backoff_ms(base_ms: int, attempt: int) -> int:
    """Exponential backoff before retry number ``attempt + 1``."""
    return base_ms << attempt


def domain_name(i: int) -> str:
    return f"d{i:04d}.example"


def initial_targets(params: ScraperParams) -> list[Target]:
    """``params.targets`` targets spread round-robin over the domains.

    A domain's targets share one name string, as every token a shard decodes does (a
    shard interns the partition key of what it decodes: ``nets.codec.share_key``). A
    string per target would be a fifth of what a target costs in memory, and no shard
    holds its tokens that way (bench/engine.py measures bytes per token).
    """
    names = [domain_name(i) for i in range(params.domains)]
    return [
        Target(
            names[n % params.domains],
            (n * 7) % 3,
            f"https://{names[n % params.domains]}/p/{n}",
            0,
        )
        for n in range(params.targets)
    ]


def scraper_net(params: ScraperParams = ScraperParams()) -> Net:
    """Build the scraper decision net for ``params``."""
    p = params
    dom, d, t, f, proxy = variables("dom d t f proxy")

    domains = Place(
        "domains", Domain, key="name", initial=[Domain(domain_name(i)) for i in range(p.domains)]
    )
    targets = Place("targets", Target, key="domain", initial=initial_targets(p))
    proxies = Place(
        "proxies", Proxy, pool=True, initial=[Proxy(f"proxy{i:03d}") for i in range(p.proxies)]
    )
    in_flight = Place("in_flight", Fetch, key="domain")
    done = Place("done", Target, key="domain")
    fail_log = Place("fail_log", Failure, key="domain")

    def start(t: Target, proxy: Proxy) -> Fetch:
        ok = fetch_succeeds(p.seed, t.url, t.attempt, p.failure_rate)
        return Fetch(t.domain, t.priority, t.url, t.attempt, proxy.name, ok)

    def free_domain(d: str) -> Domain:
        return Domain(d)

    free_domain_again = domains.produce(free_domain, delay=p.politeness_ms)

    scrape = Transition(
        "scrape",
        consume=[domains(dom, name=d), targets(t, domain=d), proxies(proxy)],
        produce=[
            in_flight.produce(start, delay=p.latency_ms),
            proxies.produce(proxy, delay=p.proxy_interval_ms),
        ],
    )
    fetched = Transition(
        "fetched",
        consume=[in_flight(f, domain=d)],
        guard=lambda f: f.ok,
        produce=[
            done.produce(
                lambda f: Target(f.domain, f.priority, f.url, f.attempt), delay=p.cooldown_ms
            ),
            free_domain_again,
        ],
        priority=1,
    )
    retry = Transition(
        "retry",
        consume=[in_flight(f, domain=d)],
        guard=lambda f: not f.ok and f.attempt + 1 < p.max_attempts,
        produce=[
            fail_log.produce(lambda f: Failure(f.domain, f.url, f.attempt, False)),
            targets.produce(
                lambda f: Target(f.domain, f.priority, f.url, f.attempt + 1),
                delay=lambda f: backoff_ms(p.backoff_base_ms, f.attempt),
            ),
            free_domain_again,
        ],
        priority=1,
    )
    give_up = Transition(
        "give_up",
        consume=[in_flight(f, domain=d)],
        guard=lambda f: not f.ok and f.attempt + 1 >= p.max_attempts,
        produce=[
            fail_log.produce(lambda f: Failure(f.domain, f.url, f.attempt, True)),
            free_domain_again,
        ],
        priority=1,
    )
    return Net(
        "scraper",
        places=[domains, targets, proxies, in_flight, done, fail_log],
        transitions=[fetched, retry, give_up, scrape],
    )


def net(seed: int = 0) -> Net:
    """The default instance, for ``cpn run nets.scraper_sim:net [--seed S]``."""
    return scraper_net(ScraperParams(seed=seed))


# -- A small instance with its properties, for `cpn verify` -----------------------------


def politeness_holds(m: MarkingView) -> bool:
    """At most one fetch in flight per domain (each domain has one ``domains`` token)."""
    per_domain = [Fetch(*f).domain for f in m["in_flight"]]
    return len(per_domain) == len(set(per_domain))


def crawl_finished(m: MarkingView) -> bool:
    """A final marking: nothing left to fetch or in flight, and every target's URL is in
    exactly one of ``done`` or ``fail_log`` as a final failure."""
    if m["targets"] or m["in_flight"]:
        return False
    done = [Target(*t).url for t in m["done"]]
    failures = [Failure(*f) for f in m["fail_log"]]
    failed = [f.url for f in failures if f.final]
    urls = set(done) | {f.url for f in failures}
    return all(done.count(u) + failed.count(u) == 1 for u in urls)


def verified_net(
    domains: int = 2, pages: int = 3, proxies: int = 1, retries: int = 1, seed: int = 0
) -> Net:
    """The decision net at small parameters, with its invariants, for ``cpn verify``.

    ``seed`` picks which fetches fail (half of them, by the hash of :func:`fetch_succeeds`).
    """
    params = ScraperParams(
        domains=domains,
        targets=domains * pages,
        proxies=proxies,
        max_attempts=retries + 1,
        failure_rate=0.5,
        seed=seed,
    )
    built = scraper_net(params)
    names = sorted(f"proxy{i:03d}" for i in range(proxies))
    return Net(
        built.name,
        places=built.places,
        transitions=built.transitions,
        invariants={
            "at_most_one_fetch_in_flight_per_domain": politeness_holds,
            "proxy_tokens_conserved": lambda m: (
                sorted(Proxy(*x).name for x in m["proxies"]) == names
            ),
            "every_target_once_in_targets_in_flight_done_or_failed": lambda m: _accounted(
                m, params
            ),
        },
    )


def _accounted(m: MarkingView, params: ScraperParams) -> bool:
    # A target is pending (targets or in_flight) or finished (done, final failure): once.
    where = [Target(*t).url for t in m["targets"]] + [Fetch(*f).url for f in m["in_flight"]]
    where += [Target(*t).url for t in m["done"]]
    where += [f.url for f in (Failure(*f) for f in m["fail_log"]) if f.final]
    return sorted(where) == sorted(t.url for t in initial_targets(params))
