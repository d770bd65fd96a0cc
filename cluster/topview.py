"""What ``cpn top`` shows: samples of a running cluster in, lines of text out (pure).

Theory of operation. The shell (cluster/commands/top.py) takes a :class:`Sample` every
refresh, exactly the figures ``cpn status`` reads: the router's view of each shard, the
partition table's owners, the router's statistics and each live shard's statistics.
:func:`advance` folds a sample into the :class:`View` carried from the last refresh:

* A shard has restarted since the last sample that it answered if its incarnation
  changed, or if a counter that only grows (its firings) went down. Restarts are counted
  per shard for as long as ``cpn top`` runs.
* A rate is the growth of a counter between two samples of the same incarnation divided
  by the time between them on the shard's own clock (``now_ms`` of its statistics). A
  restarted shard has no rate for that refresh, unless it reports ``firings_total``
  (firings persisted across restarts), which keeps growing through a restart.

:func:`render` lays a view out in at most ``height`` lines of at most ``width``
characters, so that a small terminal over SSH shows the head of every section rather
than a curses error. Nothing here reads a clock, a socket or the terminal: the time of a
sample is a parameter, and the tests drive these functions with made-up samples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

MOVES_SHOWN_MAX: Final = 10
TRANSITIONS_SHOWN_MAX: Final = 30
PLACES_SHOWN_MAX: Final = 30

Stats = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Sample:
    """One refresh's figures, as the clients returned them.

    ``shards[k]`` is the router's view of shard ``k`` (``ClusterState.shards``);
    ``stats`` holds the statistics of the shards that answered; ``pids`` the pids that
    shards published in their data directories; ``error`` why the router did not answer
    (then only ``at_ms`` and ``error`` mean anything).
    """

    at_ms: int
    net: str = ""
    epoch: int = 0
    shards: tuple[Stats, ...] = ()
    owners: tuple[int, ...] = ()
    stats: Mapping[int, Stats] = field(default_factory=dict)
    router: Stats = field(default_factory=dict)
    pids: Mapping[int, int] = field(default_factory=dict)
    router_pid: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class View:
    """A sample with what only two samples tell: rates and restarts.

    ``last_stats`` keeps each shard's latest answered statistics, so that a shard that
    missed a refresh is still compared with what it said before.
    """

    sample: Sample
    last_stats: Mapping[int, Stats]
    restarts: Mapping[int, int]
    shard_rates: Mapping[int, float]  # firings per second, shards with a rate only
    transition_rates: Mapping[str, float]
    samples: int


def firings_of(stats: Stats) -> int:
    """A shard's firings: the persisted total if it reports one, else this incarnation's."""
    total = stats.get("firings_total")
    if isinstance(total, int):
        return total
    return sum(stats.get("firings", {}).values())


def restarted(before: Stats, after: Stats) -> bool:
    """Whether the shard restarted between two of its statistics (see the module doc)."""
    if before.get("incarnation") != after.get("incarnation"):
        return True
    this_incarnation = sum(after.get("firings", {}).values())
    return this_incarnation < sum(before.get("firings", {}).values()) or (
        firings_of(after) < firings_of(before)
    )


def _restarts_seen(before: Stats, after: Stats) -> int:
    old, new = before.get("incarnation"), after.get("incarnation")
    if isinstance(old, int) and isinstance(new, int) and new > old:
        return new - old  # several restarts may fall between two samples
    return 1


def _per_s(delta: float, elapsed_ms: int) -> float:
    return delta * 1000 / elapsed_ms


def advance(previous: View | None, sample: Sample) -> View:
    """Fold ``sample`` into the view of the last refresh (``None`` for the first)."""
    if previous is None:
        return View(sample, dict(sample.stats), {}, {}, {}, 1)
    last = dict(previous.last_stats)
    restarts = Counter(previous.restarts)
    shard_rates: dict[int, float] = {}
    transition_rates: dict[str, float] = {}
    for shard_id, after in sample.stats.items():
        before = last.get(shard_id)
        last[shard_id] = after
        if before is None:
            continue
        again = restarted(before, after)
        if again:
            restarts[shard_id] += _restarts_seen(before, after)
        elapsed_ms = after.get("now_ms", 0) - before.get("now_ms", 0)
        if elapsed_ms <= 0:
            continue
        persisted = isinstance(after.get("firings_total"), int) and isinstance(
            before.get("firings_total"), int
        )
        if not again or persisted:
            shard_rates[shard_id] = _per_s(firings_of(after) - firings_of(before), elapsed_ms)
        if not again:
            old = before.get("firings", {})
            for name, count in after.get("firings", {}).items():
                rate = _per_s(count - old.get(name, 0), elapsed_ms)
                transition_rates[name] = transition_rates.get(name, 0.0) + rate
    return View(
        sample,
        last,
        dict(restarts),
        shard_rates,
        transition_rates,
        previous.samples + 1,
    )


# -- the frame -----------------------------------------------------------------------------


def _columns(rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(f"{cell!s:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _shard_rows(view: View) -> list[str]:
    sample = view.sample
    slots = Counter(sample.owners)
    header = ("shard", "alive", "pid", "incarnation", "restarts", "slots", "firings")
    rows: list[Sequence[object]] = [(*header, "firings/s", "outbox", "leases")]
    for shard_id, shard in enumerate(sample.shards):
        stats = sample.stats.get(shard_id, {})
        if not shard.get("alive"):
            alive = "no"
        else:
            alive = "yes" if shard.get("progressing", True) else "stuck"
        rows.append(
            (
                shard_id,
                alive,
                sample.pids.get(shard_id, "-"),
                stats.get("incarnation", shard.get("incarnation", "-")),
                view.restarts.get(shard_id, 0),
                stats.get("owned_slots", shard.get("slots", slots.get(shard_id, 0))),
                _count(firings_of(stats)) if stats else "-",
                _rate(view.shard_rates.get(shard_id)),
                _count(stats.get("outbox_tokens")),
                _count(stats.get("leases_live")),
            )
        )
    return _columns(rows)


def _named(title: str, values: Mapping[str, Sequence[object]], shown_max: int) -> list[str]:
    if not values:
        return [f"{title}: (none yet)"]
    names = sorted(values)
    rows = [(name, *values[name]) for name in names[:shown_max]]
    lines = [title + ":"] + [f"  {line}" for line in _columns(rows)]
    if len(names) > shown_max:
        lines.append(f"  ... and {len(names) - shown_max} more")
    return lines


def _moves(router: Stats) -> list[str]:
    """Slot moves in flight (docs/handoff.md, "Slot moves")."""
    active = router.get("moves_active", [])
    lines = [
        f"slot moves: {len(active)} in flight, {_count(router.get('moves_done', 0))} done, "
        f"{_count(router.get('moves_aborted', 0))} aborted; heading for "
        f"{router.get('members', '-')} shards"
    ]
    if active:
        rows: list[Sequence[object]] = [("move", "slot", "from", "to", "state")]
        rows += [
            (m.get("move_id"), m.get("slot"), m.get("source"), m.get("target"), m.get("state"))
            for m in active[:MOVES_SHOWN_MAX]
        ]
        lines += [f"  {line}" for line in _columns(rows)]
    if len(active) > MOVES_SHOWN_MAX:
        lines.append(f"  ... and {len(active) - MOVES_SHOWN_MAX} more")
    return lines


def render(view: View, *, width: int, height: int, interval_ms: int) -> list[str]:
    """The frame for ``view``: at most ``height`` lines, each at most ``width`` long."""
    sample = view.sample
    every = f"every {interval_ms / 1000:g} s"
    if sample.error:
        lines = [
            f"cpn top: the router does not answer ({sample.error}); trying again {every}",
            "q quits",
        ]
        return _fit(lines, width, height)
    alive = sum(1 for shard in sample.shards if shard.get("alive"))
    answered = [sample.stats[k] for k in sorted(sample.stats)]
    router_pid = sample.router_pid if sample.router_pid is not None else "-"
    lines = [
        f"cpn top: net {sample.net!r}, epoch {sample.epoch}, {alive}/{len(sample.shards)} "
        f"shards alive, router pid {router_pid}; refreshed {every}, q quits",
        "",
        *_shard_rows(view),
        "",
    ]
    missing = [str(k) for k in range(len(sample.shards)) if k not in sample.stats]
    partial = f" (without shards {', '.join(missing)})" if missing else ""
    firings: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for stats in answered:
        firings.update(stats.get("firings", {}))
        tokens.update(stats.get("tokens", {}))
    rates = view.transition_rates
    per_transition = {
        name: (_rate(rates.get(name)) + "/s", _count(count)) for name, count in firings.items()
    }
    lines += _named(f"transitions{partial}", per_transition, TRANSITIONS_SHOWN_MAX)
    lines += _named(
        f"tokens per place{partial}",
        {name: (_count(count),) for name, count in tokens.items()},
        PLACES_SHOWN_MAX,
    )
    outbox = sum(stats.get("outbox_tokens", 0) for stats in answered)
    lines.append(f"outbox tokens (in flight between shards){partial}: {outbox:,}")
    lines += _moves(sample.router)
    restarts = sum(view.restarts.values())
    if restarts:
        which = ", ".join(f"shard {k}: {n}" for k, n in sorted(view.restarts.items()))
        lines.append(f"restarts seen since cpn top started: {restarts} ({which})")
    return _fit(lines, width, height)


def _fit(lines: list[str], width: int, height: int) -> list[str]:
    """Cut to the window; the last line says what did not fit."""
    assert width > 0, width
    assert height > 0, height
    if len(lines) > height:
        hidden = len(lines) - height + 1
        lines = [*lines[: height - 1], f"... {hidden} more lines (a taller window shows them)"]
    return [line[:width] for line in lines]
