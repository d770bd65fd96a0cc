"""The crawler's net: the whole coordination core of a polite, distributed web crawler.

The net decides *what* is fetched, *when*, and *through which proxy*; workers outside the
net do the effects (HTTP, HTML parsing, writing records) by leasing tokens from its work
queues and completing the leases with results (docs/scraper.md). Read it as the policy:

**Admission.** A discovered (or seeded) ``Link`` is admitted once per canonical URL
(``seen``), then checked: in scope (``scope``, unless the scope is "any"), not deeper than
``max_depth``, within the domain's page ``budget``, and allowed by the domain's robots.txt.
A link that fails a check goes to ``skipped`` with the reason.

**Domains.** The first in-scope link of a new domain creates its state: a politeness
``clock``, ``concurrency`` tokens in ``free``, a page ``budget``, and a robots.txt target
that is fetched before any page (its rules and ``Crawl-delay`` become the ``robots`` token).

**Scraping** is the join of a domain's ``clock`` (due), a ``free`` slot of the domain,
its best target (robots first, then shallowest) and an available proxy. The fetch gets a
start time: the latest of ``now + ready_ms`` (time for a worker to lease it; at most
the lead where a late send is not refused), the clock's
next start, the proxy's next start, and one ``politeness`` delay (max(delay, Crawl-delay))
after the answer that freed the slot. The clock comes back for ``start + gap`` (``gap`` =
that delay + the late allowance + a safety margin), the proxy for ``start + its
interval`` (plus the same allowance), both due ``lead_ms`` early so that the next
decision is made before its start. A fetch worker sends at ``start`` and refuses (result
``late``) rather than send later than ``start + late_ms``. So two requests at a host are
never closer than the delay, at the sender (the clock) and at the server too, which
cannot log a request after answering it (the answer anchor), whatever the jitter. With one
request in flight per domain and no proxy interval, the anchor alone keeps the gap
however late a request leaves, so the late limit there is ``late_anchored_ms``: a busy
worker's request goes out a little late instead of being refused and re-planned.

**Results.** A page goes into the pipeline; a transient failure (timeout, connection
error, 5xx, 429) is logged in ``fail_log`` and retried with exponential backoff until
``max_attempts``; a 4xx is final; a non-HTML or oversized answer is skipped; a redirect's
target becomes a discovered link; a late refusal goes back to the targets without counting
an attempt. A robots.txt that redirects on its own host is fetched where it points (up
to five redirects, RFC 9309); a redirect to another host, or a sixth, counts as no
robots.txt (allow all): that host's requests are its own clock's to space. A result
that moves the domain's clock later (robots.txt's ``Crawl-delay``, a 429's ``Retry-After``)
leaves a ``clock_holds`` token that ``hold_clock`` applies once the clock is due; the
result itself frees its slots at once.

**Pipeline** ``raw_html -> parse_queue -> parsed -> validated -> store_queue -> stored``.
Every stage has a capacity (per shard), so a slow stage backs up into the one before it,
all the way to ``fetching`` and thus to ``scrape``: back pressure by structure.

Every place is keyed by domain, so all of a domain's coordination fires on the shard that
owns it; discovered links are handed off to their domain's owner. ``proxies`` is a pool:
its tokens move between shards on demand and carry their next allowed start with them.
"""

from __future__ import annotations

import functools
import urllib.robotparser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from nets.effects import EffectModel, Outcome
from nets.errors import NetDefinitionError
from nets.model import (
    Invariant,
    MarkingView,
    Net,
    OutputArc,
    Pattern,
    Place,
    Token,
    Transition,
    variables,
)

# -- Colour sets ---------------------------------------------------------------------------


class Link(NamedTuple):
    """A canonical URL seeded or found on a page; ``domain`` is its netloc."""

    domain: str
    url: str
    depth: int  # 0 for a seed


class Domain(NamedTuple):
    name: str


class InScope(NamedTuple):
    domain: str


class Budget(NamedTuple):
    domain: str
    left: int  # pages the domain may still admit


class Seen(NamedTuple):
    domain: str
    url: str


class Robots(NamedTuple):
    domain: str
    text: str  # robots.txt as served ("" allows everything)
    crawl_delay_ms: int


class Clock(NamedTuple):
    """A domain's politeness clock: no request starts before ``next_start_ms``."""

    domain: str
    next_start_ms: int
    gap_ms: int


class ClockHold(NamedTuple):
    """A later start that a result asks of its domain's clock, applied once the clock is
    due: the gap of a Crawl-delay read in robots.txt (``gap_ms``; 0 keeps the clock's)
    and a start no sooner than ``not_before_ms`` (a 429's Retry-After)."""

    domain: str
    not_before_ms: int
    gap_ms: int


class Slot(NamedTuple):
    """One of a domain's ``concurrency`` request slots, freed by an answer."""

    domain: str
    answered_ms: int  # when the answer that freed it arrived (0: never used)


class Politeness(NamedTuple):
    """How a domain's requests are spaced and planned.

    ``delay_ms`` is the policy's delay, or the domain's Crawl-delay if longer;
    ``ready_ms`` is how far ahead of its start a fetch is decided. It doubles after a late
    refusal (workers needed more time) and shrinks by an eighth after a sent request,
    down to the policy's ``ready_ms``: a loaded cluster plans further ahead instead of
    refusing again and again. Where the late limit is ``late_anchored_ms`` (one request
    in flight per domain, no proxy interval) a start uses at most the lead instead.
    """

    domain: str
    delay_ms: int
    ready_ms: int


class Proxy(NamedTuple):
    name: str
    url: str  # "" for a direct connection
    next_start_ms: int
    interval_ms: int


class Target(NamedTuple):
    domain: str
    priority: int  # smaller first: robots.txt is -1, pages their depth
    url: str
    kind: str  # ROBOTS or PAGE
    depth: int
    attempt: int  # 0 for the first try


class Fetch(NamedTuple):
    """A fetch worker's job: GET ``url`` through ``proxy_url`` at ``start_at_ms``."""

    domain: str
    url: str
    kind: str
    depth: int
    attempt: int
    proxy: str
    proxy_url: str
    start_at_ms: int
    late_ms: int  # refuse (error "late") rather than send after start_at_ms + late_ms


class InFlight(NamedTuple):
    domain: str
    url: str
    kind: str
    depth: int
    attempt: int
    priority: int
    proxy: str
    answered_ms: int  # the slot's answer anchor, kept if this fetch sends nothing


class Fetched(NamedTuple):
    """A fetch worker's result; ``status`` is 0 when no HTTP answer came."""

    domain: str
    url: str
    kind: str
    attempt: int
    status: int
    error: str  # "" or one of FETCH_ERRORS
    final_url: str
    content_type: str  # media type, lowercased, without parameters
    body: str  # the text of an HTML page or of robots.txt, else ""
    started_ms: int
    answered_ms: int  # when the answer (or the error) arrived; 0 if nothing was sent
    proxy: str
    # The answer's Retry-After as a wall-clock time (the worker converts seconds or an
    # HTTP date); 0 when it had none. The net caps it at ``retry_after_max_ms``.
    retry_at_ms: int = 0
    # A page the fetch worker parsed itself (its links come with this result, ``body`` is
    # then ""): the title and the number of links found. -1: not parsed, the page goes
    # through ``parse_queue`` (docs/scraper.md, "Per request").
    title: str = ""
    links_count: int = -1


class Page(NamedTuple):
    domain: str
    url: str
    depth: int
    attempt: int
    proxy: str
    status: int
    final_url: str
    content_type: str
    fetched_at_ms: int
    body: str


class PageMeta(NamedTuple):
    """A page being parsed: what the parsed record needs besides the parser's findings."""

    domain: str
    url: str
    depth: int
    attempt: int
    proxy: str
    status: int
    final_url: str
    content_type: str
    fetched_at_ms: int


class ParseDone(NamedTuple):
    """A parse worker's result (the links it found go into ``links`` beside it)."""

    domain: str
    url: str
    title: str
    links_count: int


class Parsed(NamedTuple):
    domain: str
    url: str
    depth: int
    attempt: int
    proxy: str
    status: int
    final_url: str
    content_type: str
    fetched_at_ms: int
    title: str
    links_count: int


class Busy(NamedTuple):
    domain: str
    url: str


class StoreDone(NamedTuple):
    domain: str
    url: str


class Stored(NamedTuple):
    domain: str
    url: str


class Skipped(NamedTuple):
    domain: str
    url: str
    reason: str  # robots, scope, depth, budget, not_html, too_large, invalid, redirect


class Failure(NamedTuple):
    domain: str
    url: str
    attempt: int
    reason: str  # the error, or "http <status>"
    final: bool  # True when no retry follows


ROBOTS = "robots"
PAGE = "page"
FETCH_ERRORS = ("timeout", "connect", "reset", "too_large", "late", "proxy", "invalid")
_TRANSIENT_ERRORS = frozenset({"timeout", "connect", "reset", "proxy"})
_TRANSIENT_STATUSES = frozenset({408, 429})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
SCOPES = ("same-domains", "allow-list", "any")
# robots.txt that could not be fetched (RFC 9309, 2.3.1.4: unreachable means disallow all).
DISALLOW_ALL = "User-agent: *\nDisallow: /\n"
ROBOTS_REDIRECTS_MAX = 5  # RFC 9309, 2.3.1.2: follow at least five consecutive redirects

# -- The policy -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrawlPolicy:
    """Every knob of the crawl (durations in milliseconds; capacities per shard)."""

    delay_ms: int = 1_000  # minimum gap between two request starts at one domain
    margin_ms: int = 5  # safety margin added to every gap (measurement jitter at the server)
    late_ms: int = 5  # a worker refuses to send later than this after the start time
    # The late limit where the answer anchor alone keeps the gap (one request in flight
    # per domain, no proxy interval): a late send then only delays, it is refused only
    # when it is this late (a stalled worker), well within any lease.
    late_anchored_ms: int = 1_000
    lead_ms: int = 200  # decide up to this long before a start (the clock is due that early)
    # Without proxies, decide at most this long before a start instead, and give a worker
    # at most this long to lease it (ready_ms): a decided fetch holds one of the
    # ``direct_slots`` until its answer, so every millisecond between its decision and
    # its start is one the cluster-wide cap spends waiting (docs/scraper.md).
    direct_lead_ms: int = 10
    ready_ms: int = 20  # a start is at least this long after its decision: time to lease it
    concurrency: int = 1  # requests in flight per domain
    proxies: tuple[str, ...] = ()  # proxy URLs; none means direct connections
    proxy_interval_ms: int = 0  # minimum gap between two request starts through one proxy
    # Concurrent direct requests, cluster-wide, without proxies: a slot is held from the
    # decision until the answer (robots.txt included).
    direct_slots: int = 64
    max_attempts: int = 4
    backoff_base_ms: int = 500  # retry n waits backoff_base_ms * 2**(n-1)
    # The longest wait a Retry-After may impose (a 429: the host; a 503: the URL).
    retry_after_max_ms: int = 60_000
    max_depth: int = 10
    max_pages_per_domain: int = 10_000
    scope: str = "same-domains"  # "same-domains" | "allow-list" | "any"
    fetching_max: int = 64
    raw_html_max: int = 32
    parsing_max: int = 16
    parsed_max: int = 32
    validated_max: int = 32
    # Pages in the store stage per shard. A store worker leases up to 32 pages and holds
    # a lease of fewer a moment so that the next gathers more (cluster/crawler/workers.py,
    # STORE_BATCH, STORE_GATHER_MS); at 16 no lease was ever full, every one was held, and
    # the store stage's back pressure set a crawl's pace at about 230 pages a second.
    storing_max: int = 64
    body_max_bytes: int = 1_048_576
    user_agent: str = "cpn-cluster"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise NetDefinitionError(
                f"crawl policy: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise NetDefinitionError(f"crawl policy: {f.name} must be >= 0, got {value}")
        for name in ("concurrency", "max_attempts", "direct_slots"):
            if getattr(self, name) < 1:
                raise NetDefinitionError(f"crawl policy: {name} must be >= 1")

    def gap_ms(self, crawl_delay_ms: int = 0) -> int:
        """The planned gap between starts at one domain: safe against a late worker."""
        return max(self.delay_ms, crawl_delay_ms) + self.late_ms + self.margin_ms


# -- Pure inscriptions ---------------------------------------------------------------------


@functools.lru_cache(maxsize=4_096)
def _robots_parser(text: str) -> urllib.robotparser.RobotFileParser:
    parser = urllib.robotparser.RobotFileParser()
    parser.parse(text.splitlines())
    return parser


def robots_allows(text: str, url: str, agent: str) -> bool:
    """Whether robots.txt ``text`` lets ``agent`` fetch ``url`` (the standard library's rules)."""
    return text == "" or _robots_parser(text).can_fetch(agent, url)


def crawl_delay_ms(text: str, agent: str) -> int:
    """The ``Crawl-delay`` of the group that applies to ``agent``, in ms (0 if none).

    Written here because ``urllib.robotparser`` ignores fractional delays ("0.5").
    A group names its agents on consecutive ``User-agent`` lines; the group whose name
    occurs in ``agent`` wins over ``*``.
    """
    delays: dict[str, float] = {}
    agents: list[str] = []
    in_rules = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
        else:
            in_rules = True
            if key == "crawl-delay":
                try:
                    seconds = float(value)
                except ValueError:
                    continue
                if 0 <= seconds < 86_400:
                    for name in agents:
                        delays.setdefault(name, seconds)
    me = agent.lower()
    named = [s for name, s in delays.items() if name != "*" and name and name in me]
    seconds = named[0] if named else delays.get("*", 0.0)
    return round(seconds * 1_000)


def robots_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/robots.txt"


def _transient(r: Fetched) -> bool:
    if r.error:
        return r.error in _TRANSIENT_ERRORS
    return r.status >= 500 or r.status in _TRANSIENT_STATUSES


def verdict(r: Fetched, max_attempts: int, hops: int = 0) -> str:
    """What a fetch result means for the crawl: the one transition that takes it.

    ``late``, ``page`` (to be parsed), ``page_parsed`` (parsed by the fetch worker,
    its links already given), ``skip`` (not HTML, too large), ``redirect`` (``final_url`` is
    where it points), ``retry``, ``give_up``, ``final``,
    and for robots.txt ``robots`` (rules), ``robots_none`` (allow all),
    ``robots_unreachable`` (disallow all) or ``robots_redirect`` (fetch ``final_url``
    for the rules: up to ``ROBOTS_REDIRECTS_MAX`` redirects, ``hops`` so far, as RFC 9309
    asks, but on the same host only: a request to another host would escape that host's
    politeness clock; past them robots.txt counts as unavailable: allow all).
    """
    if r.error == "late":
        return "late"
    ok = not r.error and 200 <= r.status < 300
    retries_left = r.attempt + 1 < max_attempts
    redirect = not r.error and 300 <= r.status < 400 and r.final_url not in ("", r.url)
    if r.kind == ROBOTS:
        if ok:
            return "robots"
        if redirect:
            # Another host's requests are spaced by that host's clock, not this one's.
            same_host = urlsplit(r.final_url).netloc == r.domain
            return "robots_redirect" if same_host and hops < ROBOTS_REDIRECTS_MAX else "robots_none"
        if _transient(r):
            return "retry" if retries_left else "robots_unreachable"
        return "robots_none"
    if ok:
        if r.content_type not in HTML_TYPES:
            return "skip"
        return "page_parsed" if r.links_count >= 0 else "page"
    if redirect:
        return "redirect"
    if r.error == "too_large":
        return "skip"
    if _transient(r):
        return "retry" if retries_left else "give_up"
    return "final"


def failure_reason(r: Fetched) -> str:
    return r.error or f"http {r.status}"


def skip_reason(r: Fetched) -> str:
    return "too_large" if r.error == "too_large" else "not_html"


def valid(p: Parsed) -> bool:
    """A parsed page worth storing: a successful HTML answer with a URL it came from."""
    return 200 <= p.status < 300 and p.content_type in HTML_TYPES and p.final_url != ""


def backoff_ms(base_ms: int, attempt: int) -> int:
    """The wait before retry number ``attempt + 1``: doubles with every failure."""
    return base_ms << attempt


def initial_proxies(policy: CrawlPolicy) -> list[Proxy]:
    if policy.proxies:
        return [
            Proxy(f"proxy{i:03d}", url, 0, policy.proxy_interval_ms)
            for i, url in enumerate(policy.proxies)
        ]
    return [Proxy(f"direct{i:03d}", "", 0, 0) for i in range(policy.direct_slots)]


# -- The net --------------------------------------------------------------------------------


def crawler_net(
    policy: CrawlPolicy = CrawlPolicy(),
    *,
    seeds: Sequence[Link] = (),
    scope_domains: Sequence[str] = (),
    effects: Mapping[str, EffectModel] | None = None,
    invariants: Mapping[str, Invariant] | None = None,
) -> Net:
    """Build the crawler's net for ``policy``.

    A cluster puts seeds and scope into the running net; a closed net for verification
    (:func:`verified_net`) starts with them (``seeds``, ``scope_domains``) and closes
    its work queues with ``effects``.
    """
    p = policy
    c, b, d, u, i, r, t, s, x, pg, m, pd, q, pl, h = variables("c b d u i r t s x pg m pd q pl h")

    # Admission
    links = Place("links", Link, key="domain", initial=seeds)
    seen = Place("seen", Seen, key="domain")
    candidates = Place("candidates", Link, key="domain")
    scope = Place("scope", InScope, key="domain", initial=[InScope(d) for d in scope_domains])
    known = Place("known", Domain, key="name")
    budget = Place("budget", Budget, key="domain")
    robots = Place("robots", Robots, key="domain")
    skipped = Place("skipped", Skipped, key="domain")
    # Scraping
    clock = Place("clock", Clock, key="domain")
    clock_holds = Place("clock_holds", ClockHold, key="domain")
    free = Place("free", Slot, key="domain")
    politeness = Place("politeness", Politeness, key="domain")
    targets = Place("targets", Target, key="domain")
    proxies = Place("proxies", Proxy, pool=True, initial=initial_proxies(p))
    # A fetch worker parses the pages it fetched (their links come with the result: no
    # hop through parse_queue); parse_queue stays for results without links.
    fetch_queue = Place(
        "fetch_queue", Fetch, key="domain", work_queue=True, results=("fetched", "links")
    )
    fetching = Place("fetching", InFlight, key="domain", capacity=p.fetching_max)
    fetched = Place("fetched", Fetched, key="domain")
    fail_log = Place("fail_log", Failure, key="domain")
    # Pipeline
    raw_html = Place("raw_html", Page, key="domain", capacity=p.raw_html_max)
    parse_queue = Place(
        "parse_queue", Page, key="domain", work_queue=True, results=("parse_done", "links")
    )
    parsing = Place("parsing", PageMeta, key="domain", capacity=p.parsing_max)
    parse_done = Place("parse_done", ParseDone, key="domain")
    parsed = Place("parsed", Parsed, key="domain", capacity=p.parsed_max)
    validated = Place("validated", Parsed, key="domain", capacity=p.validated_max)
    store_queue = Place(
        "store_queue", Parsed, key="domain", work_queue=True, results=("store_done",)
    )
    storing = Place("storing", Busy, key="domain", capacity=p.storing_max)
    store_done = Place("store_done", StoreDone, key="domain")
    stored = Place("stored", Stored, key="domain")

    in_scope = [] if p.scope == "any" else [scope(domain=d)]

    def skip(reason: str) -> OutputArc:
        return skipped.produce(lambda c: Skipped(c.domain, c.url, reason))

    admission = [
        Transition(
            "admit",
            consume=[links(c, domain=d, url=u)],
            inhibit=[seen(domain=d, url=u)],
            produce=[seen.produce(lambda d, u: Seen(d, u)), candidates.produce(c)],  # noqa: PLW0108
            priority=2,
        ),
        Transition(
            "drop_seen",
            consume=[links(c, domain=d, url=u)],
            read=[seen(domain=d, url=u)],
            priority=2,
        ),
        Transition(
            "too_deep",
            consume=[candidates(c, domain=d)],
            guard=lambda c: c.depth > p.max_depth,
            produce=[skip("depth")],
            priority=2,
        ),
        *(
            []
            if p.scope == "any"
            else [
                Transition(
                    "out_of_scope",
                    consume=[candidates(c, domain=d)],
                    inhibit=[scope(domain=d)],
                    produce=[skip("scope")],
                    priority=2,
                )
            ]
        ),
        Transition(
            "new_domain",
            # The candidate is taken and put back: it waits for the domain's robots.txt.
            consume=[candidates(c, domain=d)],
            read=in_scope,
            inhibit=[known(name=d)],
            guard=lambda c: c.depth <= p.max_depth,
            produce=[
                candidates.produce(c),
                known.produce(lambda d: Domain(d)),  # noqa: PLW0108
                budget.produce(lambda d: Budget(d, p.max_pages_per_domain)),
                clock.produce(lambda d: Clock(d, 0, p.gap_ms())),
                free.produce_all(lambda d: [Slot(d, 0)] * p.concurrency),
                politeness.produce(lambda d: Politeness(d, p.delay_ms, p.ready_ms)),
                targets.produce(lambda c: Target(c.domain, -1, robots_url(c.url), ROBOTS, 0, 0)),
            ],
            priority=1,
        ),
        Transition(
            "over_budget",
            consume=[candidates(c, domain=d)],
            read=[budget(b, domain=d)],
            guard=lambda b: b.left <= 0,
            produce=[skip("budget")],
            priority=1,
        ),
        Transition(
            "disallowed",
            consume=[candidates(c, domain=d)],
            read=[robots(r, domain=d)],
            guard=lambda c, r: not robots_allows(r.text, c.url, p.user_agent),
            produce=[skip("robots")],
            priority=1,
        ),
        Transition(
            "accept",
            consume=[candidates(c, domain=d), budget(b, domain=d)],
            read=[robots(r, domain=d), *in_scope],
            guard=lambda c, b, r: (
                c.depth <= p.max_depth and b.left > 0 and robots_allows(r.text, c.url, p.user_agent)
            ),
            produce=[
                targets.produce(lambda c: Target(c.domain, c.depth, c.url, PAGE, c.depth, 0)),
                budget.produce(lambda b: Budget(b.domain, b.left - 1)),
            ],
        ),
    ]

    # How far ahead of its start a fetch is decided: the slot and the clock come back due
    # that early. Without proxies a decided fetch holds a direct slot (the cluster-wide
    # cap) while it waits for its start, so the lead is shorter there.
    lead_ms = p.lead_ms if p.proxies else min(p.lead_ms, p.direct_lead_ms)

    def start_ms(now: int, s: Clock, x: Proxy, q: Slot, pl: Politeness) -> int:
        # The server stamps a request when it has parsed it, which can lag its sending by
        # tens of ms on a new connection; it cannot stamp it after answering it. So a start
        # one delay after the previous answer arrived keeps the gap *at the server*, whatever
        # that lag; the clock alone (start + gap) keeps it at the sender. +1: both are
        # wall-clock readings rounded down to the millisecond.
        after_answer = q.answered_ms + pl.delay_ms + 1 if q.answered_ms else 0
        return max(now + ready_ms(x, pl), s.next_start_ms, x.next_start_ms, after_answer)

    def anchored(x: Proxy) -> bool:
        # With one request in flight per domain, the next start waits for this one's
        # answer (the anchor), so however late it is sent the gap holds at the server;
        # the clock's spacing matters only for concurrent requests and proxy intervals.
        return p.concurrency == 1 and not x.interval_ms

    def ready_ms(x: Proxy, pl: Politeness) -> int:
        # Where the anchor keeps the gap, the lease time is at most the lead
        # (direct_lead_ms without proxies): a late lease then costs a few ms, not a
        # refusal. Elsewhere the adapted ready_ms stands, which grows after late refusals.
        return min(pl.ready_ms, lead_ms) if anchored(x) else pl.ready_ms

    def late_limit_ms(x: Proxy) -> int:
        return p.late_anchored_ms if anchored(x) else p.late_ms

    def proxy_gap(x: Proxy) -> int:
        return x.interval_ms + p.late_ms + p.margin_ms if x.interval_ms else 0

    # A proxy comes back at once, due for its next start (its interval is the cap); a
    # direct slot is the cluster-wide concurrency cap, so it stays with the fetch until
    # the answer (every result transition puts it back, see ``on``).
    proxy_back = (
        [
            proxies.produce(
                lambda now, s, x, q, pl: Proxy(
                    x.name, x.url, start_ms(now, s, x, q, pl) + proxy_gap(x), x.interval_ms
                ),
                delay=lambda now, s, x, q, pl: max(
                    0, start_ms(now, s, x, q, pl) + proxy_gap(x) - p.lead_ms - now
                ),
            )
        ]
        if p.proxies
        else []
    )
    direct_back = [] if p.proxies else [proxies.produce(lambda i: Proxy(i.proxy, "", 0, 0))]

    # The engine takes the target that has been due longest: a page in the order it was
    # found, a retry in the order its backoff or Retry-After ended. Preferring due retries
    # makes a crawl longer: the first try of a page that will fail (no crawler knows which)
    # then waits behind them (docs/scraper.md, "The reference schedule").
    scrape = Transition(
        "scrape",
        consume=[clock(s, domain=d), free(q, domain=d), targets(t, domain=d), proxies(x)],
        read=[politeness(pl, domain=d)],
        produce=[
            fetch_queue.produce(
                lambda now, s, t, x, q, pl: Fetch(
                    t.domain,
                    t.url,
                    t.kind,
                    t.depth,
                    t.attempt,
                    x.name,
                    x.url,
                    start_ms(now, s, x, q, pl),
                    late_limit_ms(x),
                )
            ),
            fetching.produce(
                lambda t, x, q: InFlight(
                    t.domain,
                    t.url,
                    t.kind,
                    t.depth,
                    t.attempt,
                    t.priority,
                    x.name,
                    q.answered_ms,
                )
            ),
            clock.produce(
                lambda now, s, x, q, pl: Clock(
                    s.domain, start_ms(now, s, x, q, pl) + s.gap_ms, s.gap_ms
                ),
                delay=lambda now, s, x, q, pl: max(
                    0, start_ms(now, s, x, q, pl) + s.gap_ms - lead_ms - now
                ),
            ),
            *proxy_back,
        ],
    )

    # Results: each takes the in-flight record and the worker's result for one URL, and
    # frees the domain's slot. Exactly one verdict holds for a result.
    answer = [fetching(i, domain=d, url=u), fetched(r, domain=d, url=u)]

    # Inscriptions name their variables (d), not the colour's fields: keep the lambdas.
    def anchor_ms(i: InFlight, r: Fetched) -> int:
        # A late refusal may be the re-lease of a fetch that was sent and whose answer
        # was lost (its worker died): the refusal's time stands in for that answer.
        answered = r.started_ms if r.error == "late" else r.answered_ms
        return max(i.answered_ms, answered)

    # The slot comes back due lead_ms (direct_lead_ms without proxies) before the start it
    # allows (one delay after the answer), so that a fetch is never decided, and leased,
    # longer than that ahead.
    slot_back = free.produce(
        lambda d, i, r: Slot(d, anchor_ms(i, r)),
        delay=lambda now, i, r, pl: max(0, anchor_ms(i, r) + pl.delay_ms + 1 - lead_ms - now),
    )

    def adapted(pl: Politeness, r: Fetched, delay_ms: int | None = None) -> Politeness:
        ready = (
            min(p.lead_ms, 2 * pl.ready_ms)
            if r.error == "late"
            else max(p.ready_ms, pl.ready_ms - pl.ready_ms // 8)
        )
        return Politeness(pl.domain, pl.delay_ms if delay_ms is None else delay_ms, ready)

    def on(
        name: str,
        wanted: str,
        *produce: OutputArc,
        extra: tuple[Pattern, ...] = (),
        planning: OutputArc | None = None,
        throttled: bool | None = None,
    ) -> Transition:
        if planning is None:
            planning = politeness.produce(lambda pl, r: adapted(pl, r))  # noqa: PLW0108

        def guard(i: InFlight, r: Fetched) -> bool:
            # A robots.txt target's depth counts the redirects that led to it.
            wanted_here = verdict(r, p.max_attempts, i.depth) == wanted
            return wanted_here and (throttled is None or throttles_host(r) == throttled)

        return Transition(
            name,
            consume=[*answer, politeness(pl, domain=d), *extra],
            guard=guard,
            produce=[*produce, slot_back, planning, *direct_back],
            priority=3,
        )

    def retry_at_ms(r: Fetched) -> int:
        # Retry-After, capped: a server cannot park a URL or a host for longer.
        return min(r.retry_at_ms, r.answered_ms + p.retry_after_max_ms) if r.retry_at_ms else 0

    def throttles_host(r: Fetched) -> bool:
        return r.status == 429 and r.retry_at_ms > 0 and not r.error

    def retry_delay_ms(now: int, i: InFlight, r: Fetched) -> int:
        return max(backoff_ms(p.backoff_base_ms, i.attempt), retry_at_ms(r) - now)

    # After a 429 with Retry-After, no request starts at the host before that time: the
    # result holds the domain's clock back (``hold_clock``, below).
    def throttled_clock() -> OutputArc:
        return clock_holds.produce(lambda r: ClockHold(r.domain, retry_at_ms(r), 0))

    def retry_outputs() -> tuple[OutputArc, OutputArc]:
        return (
            fail_log.produce(
                lambda r: Failure(r.domain, r.url, r.attempt, failure_reason(r), False)
            ),
            targets.produce(
                lambda i: Target(i.domain, i.priority, i.url, i.kind, i.depth, i.attempt + 1),
                delay=retry_delay_ms,
            ),
        )

    def give_up_output() -> OutputArc:
        return fail_log.produce(
            lambda r: Failure(r.domain, r.url, r.attempt, failure_reason(r), True)
        )

    results = [
        on(
            "page_fetched",
            "page",
            raw_html.produce(
                lambda i, r: Page(
                    r.domain,
                    r.url,
                    i.depth,
                    r.attempt,
                    r.proxy,
                    r.status,
                    r.final_url,
                    r.content_type,
                    r.started_ms,
                    r.body,
                )
            ),
        ),
        # Parsed by the fetch worker: straight to ``parsed`` (its capacity is the back
        # pressure here), the links having come with the result.
        on(
            "page_parsed",
            "page_parsed",
            parsed.produce(
                lambda i, r: Parsed(
                    r.domain,
                    r.url,
                    i.depth,
                    r.attempt,
                    r.proxy,
                    r.status,
                    r.final_url,
                    r.content_type,
                    r.started_ms,
                    r.title,
                    r.links_count,
                )
            ),
        ),
        on(
            "not_stored",
            "skip",
            skipped.produce(lambda r: Skipped(r.domain, r.url, skip_reason(r))),
        ),
        # A redirect is not followed by the worker (that would be a request the clock did
        # not plan): its target is a discovered link, admitted like any other.
        on(
            "redirected",
            "redirect",
            links.produce(lambda i, r: Link(urlsplit(r.final_url).netloc, r.final_url, i.depth)),
            skipped.produce(lambda r: Skipped(r.domain, r.url, "redirect")),
        ),
        on(
            "fetch_late",
            "late",
            targets.produce(
                lambda i: Target(i.domain, i.priority, i.url, i.kind, i.depth, i.attempt)
            ),
        ),
        on("fetch_retry", "retry", *retry_outputs(), throttled=False),
        on(
            "fetch_retry_throttled",
            "retry",
            *retry_outputs(),
            throttled_clock(),
            throttled=True,
        ),
        on("fetch_give_up", "give_up", give_up_output(), throttled=False),
        on(
            "fetch_give_up_throttled",
            "give_up",
            give_up_output(),
            throttled_clock(),
            throttled=True,
        ),
        on(
            "fetch_failed",
            "final",
            fail_log.produce(
                lambda r: Failure(r.domain, r.url, r.attempt, failure_reason(r), True)
            ),
        ),
    ]

    def robots_known(name: str, wanted: str, text: str | Callable[[Fetched], str]) -> Transition:
        # The domain's clock is re-timed with its Crawl-delay (``hold_clock``, below).
        def rules(r: Fetched) -> Robots:
            body = text if isinstance(text, str) else text(r)
            return Robots(r.domain, body, crawl_delay_ms(body, p.user_agent))

        def retimed(r: Fetched) -> ClockHold:
            gap = p.gap_ms(rules(r).crawl_delay_ms)
            return ClockHold(r.domain, r.started_ms + gap, gap)

        return on(
            name,
            wanted,
            robots.produce(rules),
            clock_holds.produce(retimed),
            planning=politeness.produce(
                lambda pl, r: adapted(pl, r, max(p.delay_ms, rules(r).crawl_delay_ms))
            ),
        )

    robots_results = [
        # The rules found through a redirect, even on another host, are this domain's.
        on(
            "robots_redirected",
            "robots_redirect",
            targets.produce(lambda i, r: Target(i.domain, -1, r.final_url, ROBOTS, i.depth + 1, 0)),
        ),
        robots_known("robots_fetched", "robots", lambda r: r.body),
        robots_known("robots_missing", "robots_none", ""),
        robots_known("robots_unreachable", "robots_unreachable", DISALLOW_ALL),
    ]

    # A result that re-times its domain's clock (a Crawl-delay, a 429) leaves a hold,
    # applied here once the clock is due (``lead_ms`` before its next start), before any
    # decision can take it: the result itself must not wait for the clock, since it gives
    # back the direct slot (the cluster-wide cap), which would then sit idle for most of
    # a delay (at the start of a crawl every robots.txt fetch did: 16 slots went out in
    # a wave every ~240 ms at a 250 ms delay).
    def held(s: Clock, h: ClockHold) -> Clock:
        return Clock(s.domain, max(s.next_start_ms, h.not_before_ms), h.gap_ms or s.gap_ms)

    hold_clock = Transition(
        "hold_clock",
        consume=[clock(s, domain=d), clock_holds(h, domain=d)],
        produce=[
            clock.produce(
                held, delay=lambda now, s, h: max(0, held(s, h).next_start_ms - lead_ms - now)
            )
        ],
        priority=3,
    )

    pipeline = [
        Transition(
            "to_parse",
            consume=[raw_html(pg, domain=d)],
            produce=[parse_queue.produce(pg), parsing.produce(lambda pg: PageMeta(*pg[:9]))],
            priority=2,
        ),
        Transition(
            "parse_finished",
            consume=[parsing(m, domain=d, url=u), parse_done(pd, domain=d, url=u)],
            produce=[parsed.produce(lambda m, pd: Parsed._make((*m, pd.title, pd.links_count)))],
            priority=2,
        ),
        Transition(
            "validate",
            consume=[parsed(pd, domain=d)],
            guard=lambda pd: valid(pd),  # noqa: PLW0108
            produce=[validated.produce(pd)],
            priority=2,
        ),
        Transition(
            "invalid",
            consume=[parsed(pd, domain=d)],
            guard=lambda pd: not valid(pd),
            produce=[skipped.produce(lambda pd: Skipped(pd.domain, pd.url, "invalid"))],
            priority=2,
        ),
        Transition(
            "to_store",
            consume=[validated(pd, domain=d)],
            produce=[store_queue.produce(pd), storing.produce(lambda pd: Busy(pd.domain, pd.url))],
            priority=2,
        ),
        Transition(
            "store_finished",
            consume=[storing(m, domain=d, url=u), store_done(pd, domain=d, url=u)],
            produce=[stored.produce(lambda d, u: Stored(d, u))],  # noqa: PLW0108
            priority=2,
        ),
    ]

    return Net(
        "crawler",
        places=[
            links,
            seen,
            candidates,
            scope,
            known,
            budget,
            robots,
            skipped,
            clock,
            clock_holds,
            politeness,
            free,
            targets,
            proxies,
            fetch_queue,
            fetching,
            fetched,
            fail_log,
            raw_html,
            parse_queue,
            parsing,
            parse_done,
            parsed,
            validated,
            store_queue,
            storing,
            store_done,
            stored,
        ],
        transitions=[*results, *robots_results, hold_clock, *pipeline, *admission, scrape],
        effects=effects,
        invariants=invariants,
    )


# Places that hold work in progress: the crawl is done when all are empty cluster-wide
# (with the work queues' leased tokens) and no handoff is pending.
WORK_PLACES: tuple[str, ...] = (
    "links",
    "candidates",
    "targets",
    "fetch_queue",
    "fetch_queue__held",
    "fetching",
    "fetched",
    "raw_html",
    "parse_queue",
    "parse_queue__held",
    "parsing",
    "parse_done",
    "parsed",
    "validated",
    "store_queue",
    "store_queue__held",
    "storing",
    "store_done",
)


# The simulated site of `cpn sim nets.scraper:net` (--net-param site_domains=N ...): most
# fetches answer 200; each of the four failures of FETCH_FAILURES comes 2.5 % of the time.
SIM_SITE_PAGES: Final = 10
SIM_FETCH_OK_WEIGHT: Final = 0.9
SIM_FETCH_FAILURE_WEIGHT: Final = 0.025
SIM_FETCH_LATENCY_MS: Final = 30
SITE_PARAMS: Final = ("site_domains", "site_pages", "site_latency_ms")


def net(seed: int = 0, **params: object) -> Net:
    """The crawler net for ``cpn up --net nets.scraper:net [--net-param KEY=VALUE ...]``.

    ``params`` are :class:`CrawlPolicy` fields (lists become tuples), and three that
    describe a simulated site for ``cpn sim``: ``site_domains`` (default 0: the net
    starts empty, a cluster puts its seeds), ``site_pages`` per domain and
    ``site_latency_ms`` per fetch. With ``site_domains`` > 0 the net starts with each
    domain's first page as a seed, in scope. Its work queues always carry the effect
    models of :class:`SmallSite` (fetch, parse, store), which the simulator uses in
    place of workers; a real cluster ignores them. ``seed`` is accepted for the
    loader's convention and unused: the net makes no random choice.
    """
    del seed
    known_fields = {f.name for f in fields(CrawlPolicy)}
    unknown = sorted(set(params) - known_fields - set(SITE_PARAMS))
    if unknown:
        raise NetDefinitionError(
            f"crawler net: unknown parameter {unknown[0]!r} "
            f"(known: {', '.join(sorted(known_fields | set(SITE_PARAMS)))})"
        )
    site_values: dict[str, int] = {}
    for name in SITE_PARAMS:
        value = params.pop(name, None)
        if value is None:
            continue
        if type(value) is not int or value < 0:
            raise NetDefinitionError(f"crawler net: {name} must be an integer >= 0, got {value!r}")
        site_values[name] = value
    domains = site_values.get("site_domains", 0)
    site = SmallSite(domains, site_values.get("site_pages", SIM_SITE_PAGES), cross_links=True)
    latency_ms = site_values.get("site_latency_ms", SIM_FETCH_LATENCY_MS)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    fetch = FetchEffects(
        site,
        ok_weight=SIM_FETCH_OK_WEIGHT,
        failure_weight=SIM_FETCH_FAILURE_WEIGHT,
        latency_ms=latency_ms,
    )
    return crawler_net(
        CrawlPolicy(**values),  # type: ignore[arg-type]
        seeds=[Link(site.domain(i), site.url(site.domain(i), 0), 0) for i in range(domains)],
        scope_domains=[site.domain(i) for i in range(domains)],
        effects={
            "fetch_queue": fetch,
            "parse_queue": ParseEffects(site),
            "store_queue": StoreEffects(),
        },
    )


# -- A closed crawler, for `cpn verify` ---------------------------------------------------
#
# The effect models below answer exactly as the workers of cluster/crawler/workers.py do
# (a fetch completes with one ``fetched`` token, a parse with ``parse_done`` and one
# ``links`` token per link found, a store with ``store_done``), over a fixed small site:
# each domain serves an empty robots.txt and ``pages`` HTML pages that link to each
# other. Times in the results are the fetch's planned start (zero latency).

FETCH_FAILURES: tuple[tuple[int, str], ...] = ((503, ""), (429, ""), (0, "timeout"), (0, "reset"))


@dataclass(frozen=True, slots=True)
class SmallSite:
    """``domains`` domains of ``pages`` pages each; page ``k`` links to every other page
    of its domain, and with ``cross_links`` also to page ``k`` of the next domain (so a
    crawl partitioned by domain hands links across partitions)."""

    domains: int = 2
    pages: int = 3
    cross_links: bool = False

    def domain(self, i: int) -> str:
        return f"d{i}.example"

    def url(self, domain: str, k: int) -> str:
        return f"https://{domain}/p/{k}"

    def links(self, url: str) -> tuple[str, ...]:
        parts = urlsplit(url)
        k = int(parts.path.rsplit("/", 1)[1])
        found = tuple(self.url(parts.netloc, j) for j in range(self.pages) if j != k)
        if self.cross_links and self.domains > 1:
            index = int(parts.netloc.split(".", 1)[0].removeprefix("d"))
            found += (self.url(self.domain((index + 1) % self.domains), k),)
        return found

    def body(self, url: str) -> str:
        anchors = "".join(f'<a href="{link}">p</a>' for link in self.links(url))
        return f"<html><head><title>{url}</title></head><body>{anchors}</body></html>"


@dataclass(frozen=True, slots=True)
class FetchEffects:
    """A fetch worker over :class:`SmallSite`: 200, or each of ``failures`` (by default
    503, 429, timeout and reset).

    The explorer takes every outcome; a simulator draws one by ``ok_weight`` and
    ``failure_weight`` (each failure's), and the answer comes ``latency_ms`` after the
    planned start (the result's ``answered_ms`` says so, as a real worker's would; the
    outcome's ``start_ms`` is that start, which a simulated worker waits for).
    """

    site: SmallSite
    failures: tuple[tuple[int, str], ...] = FETCH_FAILURES
    ok_weight: float = 1.0
    failure_weight: float = 1.0
    latency_ms: int = 0

    def outcomes(self, token: Token, attempt: int) -> tuple[Outcome, ...]:
        del attempt  # the Fetch token carries the crawl's own attempt count
        f = Fetch(*token)
        start = f.start_at_ms
        answered = start + self.latency_ms
        if f.kind == ROBOTS:
            ok = Fetched(f.domain, f.url, f.kind, f.attempt, 200, "", f.url, "text/plain", "",
                         start, answered, f.proxy)  # fmt: skip
        else:
            ok = Fetched(f.domain, f.url, f.kind, f.attempt, 200, "", f.url, "text/html",
                         self.site.body(f.url), start, answered, f.proxy)  # fmt: skip
        latency = self.latency_ms
        # A worker sends at the planned start, not when it leased the fetch.
        found = [Outcome("ok", (("fetched", ok),), self.ok_weight, latency, start)]
        for status, error in self.failures:
            failed = Fetched(f.domain, f.url, f.kind, f.attempt, status, error, f.url, "", "",
                             start, answered, f.proxy)  # fmt: skip
            found.append(
                Outcome("fail", (("fetched", failed),), self.failure_weight, latency, start)
            )
        return tuple(found)


@dataclass(frozen=True, slots=True)
class ParseEffects:
    """A parse worker over :class:`SmallSite` (cluster/crawler/parse.py's results)."""

    site: SmallSite

    def outcomes(self, token: Token, attempt: int) -> tuple[Outcome, ...]:
        del attempt
        page = Page(*token)
        links = self.site.links(page.final_url or page.url)
        results: list[tuple[str, Token]] = [
            ("parse_done", ParseDone(page.domain, page.url, page.url, len(links)))
        ]
        results += [("links", Link(urlsplit(u).netloc, u, page.depth + 1)) for u in links]
        return (Outcome("ok", tuple(results)),)


class StoreEffects:
    """A store worker: it writes the record, then completes with ``store_done``."""

    def outcomes(self, token: Token, attempt: int) -> tuple[Outcome, ...]:
        del attempt
        return (Outcome("ok", (("store_done", StoreDone(token[0], token[1])),)),)


def politeness_holds(concurrency: int) -> Invariant:
    """At most ``concurrency`` fetches in flight per domain."""

    def at_most_concurrency_in_flight(m: MarkingView) -> bool:
        per_domain: dict[str, int] = {}
        for i in m["fetching"]:
            per_domain[i[0]] = per_domain.get(i[0], 0) + 1
        return all(n <= concurrency for n in per_domain.values())

    return at_most_concurrency_in_flight


def proxies_conserved(names: Sequence[str]) -> Invariant:
    """The proxy tokens are exactly the initial ones (by name), none lost or doubled."""
    expected = sorted(names)

    def proxy_tokens_conserved(m: MarkingView) -> bool:
        return sorted(x[0] for x in m["proxies"]) == expected

    return proxy_tokens_conserved


def crawl_finished(m: MarkingView) -> bool:
    """A final marking: no work in progress, and every admitted URL is in exactly one of
    ``stored``, ``failed`` (a final failure) or ``skipped``."""
    if any(m.get(place) for place in WORK_PLACES):
        return False
    stored = {(s[0], s[1]) for s in m["stored"]}
    failed = {(f[0], f[1]) for f in m["fail_log"] if f[4]}
    skipped = {(s[0], s[1]) for s in m["skipped"]}
    return all(
        ((s[0], s[1]) in stored) + ((s[0], s[1]) in failed) + ((s[0], s[1]) in skipped) == 1
        for s in m["seen"]
    )


def verified_net(
    domains: int = 2,
    pages: int = 3,
    proxies: int = 1,
    retries: int = 1,
    concurrency: int = 1,
    timing: str = "zero",
    failures: str = "all",
) -> Net:
    """The crawler closed over :class:`SmallSite`, with its invariants, for ``cpn verify``.

    ``timing="zero"`` sets every planning time of the policy to 0 (delay, lead, ready,
    late and margin), so the time-valued token fields stay 0 in the untimed exploration
    instead of counting planned starts (docs/verify.md says what this does and does not
    prove); ``timing="policy"`` keeps the default policy's times. ``failures="all"``
    lets every fetch fail in each of the four ways of :data:`FETCH_FAILURES`;
    ``failures="one"`` only with a 503. The four take the same transitions (all are
    transient failures) and differ only in the reason logged in ``fail_log``, a place no
    transition reads, so they multiply the markings without adding behaviour.
    """
    if failures not in ("all", "one"):
        raise NetDefinitionError(f"verified crawler: failures must be all or one, got {failures!r}")
    if timing not in ("zero", "policy"):
        raise NetDefinitionError(f"verified crawler: timing must be zero or policy, got {timing!r}")
    site = SmallSite(domains, pages)
    names = [f"http://proxy{i}.example:3128" for i in range(proxies)]
    times = (
        {
            "delay_ms": 0,
            "lead_ms": 0,
            "ready_ms": 0,
            "late_ms": 0,
            "margin_ms": 0,
            "late_anchored_ms": 0,
        }
        if timing == "zero"
        else {}
    )
    policy = CrawlPolicy(
        concurrency=concurrency,
        proxies=tuple(names),
        max_attempts=retries + 1,
        max_pages_per_domain=pages,
        **times,  # type: ignore[arg-type]
    )
    seeds = [Link(site.domain(i), site.url(site.domain(i), 0), 0) for i in range(domains)]
    return crawler_net(
        policy,
        seeds=seeds,
        scope_domains=[site.domain(i) for i in range(domains)],
        effects={
            "fetch_queue": FetchEffects(
                site, FETCH_FAILURES if failures == "all" else ((503, ""),)
            ),
            "parse_queue": ParseEffects(site),
            "store_queue": StoreEffects(),
        },
        invariants={
            "at_most_concurrency_in_flight": politeness_holds(concurrency),
            "proxy_tokens_conserved": proxies_conserved([f"proxy{i:03d}" for i in range(proxies)]),
        },
    )
