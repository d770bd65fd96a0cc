"""The scraper policy of ``nets/scraper_sim.py`` written by hand with dicts, heaps and lists.

This is the baseline the engine is measured against: the same decisions a competent
engineer would code directly, without a net. It makes *exactly* the engine's decisions
under :meth:`nets.Engine.run` semantics, so the benchmark can check the two agree.

Theory of operation (the engine's conflict resolution, specialised to this net):

* At virtual time ``now`` an entry ``(time, token)`` is available when ``time <= now``.
  Every collection below is a heap of entries, so "the least available entry" is the
  heap's head when the head's time is ``<= now`` (and there is none otherwise).
* Priority 1 first, in declaration order: ``fetched``, ``retry``, ``give_up``. Their
  guards depend only on the fetch token, so a fetch is classified once, when it starts,
  into one heap per transition; each fires its heap's least available entry.
* Then ``scrape`` (priority 0): the least ``(domain entry, target entry)`` over domains
  whose token is available and whose least target is available, joined with the least
  available proxy. Such domains sit in the ``ready`` heap keyed by exactly that pair.
  A domain's pair can change only when it fires or its token comes back, so a domain is
  re-examined only then (``_refresh``), or at the time it is due to become ready (a
  ``wakeups`` entry). Superseded ``ready`` items are dropped lazily at the head.
* When nothing is enabled, time jumps to the earliest time something could become
  enabled: a wakeup, an in-flight fetch, or a proxy when some domain is ready. (The
  engine may also wake when a token that enables nothing comes due; such a wakeup fires
  nothing, so skipping it leaves the decision sequence unchanged.)

Every decision is O(log n): a constant number of heap operations.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Any

from nets.scraper_sim import (
    Domain,
    Failure,
    Fetch,
    Proxy,
    ScraperParams,
    Target,
    backoff_ms,
    domain_name,
    fetch_succeeds,
    initial_targets,
)

PlacedEntry = tuple[str, int, Any]
Decision = tuple[str, int, tuple[PlacedEntry, ...]]  # (transition, time, consumed entries)
DomainEntry = tuple[int, Domain]
TargetEntry = tuple[int, Target]
# (domain time, domain name, target time, target): ordered exactly as the engine orders
# the pair (domain entry, target entry), since a Domain token orders by its name; flat,
# so that heap comparisons do not descend into nested tuples.
ReadyKey = tuple[int, str, int, Target]

TRANSITIONS = ("fetched", "retry", "give_up", "scrape")


class HandwrittenScheduler:
    """The scraper's decisions without a net.

    Args:
        params: the crawl to simulate (the same object the net is built from).
        record: keep every decision in :attr:`decisions` as ``(transition, time,
            consumed)``, with ``consumed`` in the engine's ``Step.consumed`` form
            (``(place, time, token)`` in consume-arc order). Off for timing.
    """

    def __init__(self, params: ScraperParams, *, record: bool = False) -> None:
        self.params = params
        self.now = 0
        self.firings = dict.fromkeys(TRANSITIONS, 0)
        self.decisions: list[Decision] | None = [] if record else None
        # Per domain: its token's entry, or None while a request to it is in flight.
        names = [domain_name(i) for i in range(params.domains)]
        self._domain: dict[str, DomainEntry | None] = {d: (0, Domain(d)) for d in names}
        # Per domain: a heap of (time, Target), available or not.
        self._targets: dict[str, list[TargetEntry]] = {d: [] for d in names}
        for target in initial_targets(params):
            self._targets[target.domain].append((0, target))
        for heap in self._targets.values():
            heapify(heap)
        self._proxies: list[tuple[int, Proxy]] = [
            (0, Proxy(f"proxy{i:03d}")) for i in range(params.proxies)
        ]
        heapify(self._proxies)
        # In-flight fetches, one heap per transition that will consume them.
        self._to_fetched: list[tuple[int, Fetch]] = []
        self._to_retry: list[tuple[int, Fetch]] = []
        self._to_give_up: list[tuple[int, Fetch]] = []
        # Domains that can be scraped now, keyed by (domain entry, target entry) (see
        # ReadyKey); ``_ready_key`` holds each domain's live key (older items are stale).
        self._ready: list[ReadyKey] = []
        self._ready_key: dict[str, ReadyKey] = {}
        # (time, domain): when a domain may become ready; re-examined then.
        self._wakeups: list[tuple[int, str]] = []
        # Outputs nothing consumes, kept as the net keeps them.
        self.done: list[TargetEntry] = []
        self.fail_log: list[tuple[int, Failure]] = []
        for d in names:
            self._refresh(d)

    def _refresh(self, d: str) -> None:
        """Re-examine domain ``d`` after its token or its target heap changed."""
        entry = self._domain[d]
        heap = self._targets[d]
        if entry is None or not heap:
            self._ready_key.pop(d, None)
            return
        head = heap[0]
        when = max(entry[0], head[0])
        if when <= self.now:
            key = (entry[0], d, head[0], head[1])
            if self._ready_key.get(d) != key:
                self._ready_key[d] = key
                heappush(self._ready, key)
        else:
            self._ready_key.pop(d, None)
            heappush(self._wakeups, (when, d))

    def run(self, *, until: int) -> int:
        """Fire in virtual time, as ``Engine.run(until=until)`` does.

        Returns:
            The number of decisions made.
        """
        fired = 0
        while True:
            fired += self._fire_all()
            now = self._next_time()
            if now is None or now > until:
                return fired
            self.now = now
            wakeups = self._wakeups
            while wakeups and wakeups[0][0] <= now:
                self._refresh(heappop(wakeups)[1])

    def _next_time(self) -> int | None:
        """The earliest future time at which something may become enabled."""
        now = self.now
        times = [
            heap[0][0]
            for heap in (self._wakeups, self._to_fetched, self._to_retry, self._to_give_up)
            if heap
        ]
        if self._ready and self._proxies and self._proxies[0][0] > now:
            times.append(self._proxies[0][0])
        return min(times) if times else None

    def _fire_all(self) -> int:
        """Fire until nothing is enabled at ``self.now``; return how many fired."""
        p = self.params
        now = self.now
        seed, failure_rate, max_attempts = p.seed, p.failure_rate, p.max_attempts
        to_fetched, to_retry, to_give_up = self._to_fetched, self._to_retry, self._to_give_up
        ready, ready_key, proxies = self._ready, self._ready_key, self._proxies
        targets, domain = self._targets, self._domain
        firings, decisions = self.firings, self.decisions
        fired = 0
        while True:
            # Priority 1, in declaration order.
            if to_fetched and to_fetched[0][0] <= now:
                name, entry = "fetched", heappop(to_fetched)
                f = entry[1]
                self.done.append(
                    (now + p.cooldown_ms, Target(f.domain, f.priority, f.url, f.attempt))
                )
            elif to_retry and to_retry[0][0] <= now:
                name, entry = "retry", heappop(to_retry)
                f = entry[1]
                self.fail_log.append((now, Failure(f.domain, f.url, f.attempt, False)))
                heappush(
                    targets[f.domain],
                    (
                        now + backoff_ms(p.backoff_base_ms, f.attempt),
                        Target(f.domain, f.priority, f.url, f.attempt + 1),
                    ),
                )
            elif to_give_up and to_give_up[0][0] <= now:
                name, entry = "give_up", heappop(to_give_up)
                f = entry[1]
                self.fail_log.append((now, Failure(f.domain, f.url, f.attempt, True)))
            else:
                # Priority 0: scrape, if a domain is ready and a proxy is free.
                while ready and ready_key.get(ready[0][1]) is not ready[0]:
                    heappop(ready)
                if not ready or not proxies or proxies[0][0] > now:
                    return fired
                d = heappop(ready)[1]
                del ready_key[d]
                domain_entry = domain[d]
                assert domain_entry is not None, f"ready domain {d!r} has no token"
                domain[d] = None
                target_entry = heappop(targets[d])
                proxy_entry = heappop(proxies)
                t, proxy = target_entry[1], proxy_entry[1]
                ok = fetch_succeeds(seed, t.url, t.attempt, failure_rate)
                fetch = (
                    now + p.latency_ms,
                    Fetch(t.domain, t.priority, t.url, t.attempt, proxy.name, ok),
                )
                if ok:
                    heappush(to_fetched, fetch)
                elif t.attempt + 1 < max_attempts:
                    heappush(to_retry, fetch)
                else:
                    heappush(to_give_up, fetch)
                heappush(proxies, (now + p.proxy_interval_ms, proxy))
                firings["scrape"] += 1
                fired += 1
                if decisions is not None:
                    decisions.append(
                        (
                            "scrape",
                            now,
                            (
                                ("domains", *domain_entry),
                                ("targets", *target_entry),
                                ("proxies", *proxy_entry),
                            ),
                        )
                    )
                continue
            # fetched, retry and give_up all give the domain's token back.
            d = f.domain
            domain[d] = (now + p.politeness_ms, Domain(d))
            self._refresh(d)
            firings[name] += 1
            fired += 1
            if decisions is not None:
                decisions.append((name, now, (("in_flight", *entry),)))
