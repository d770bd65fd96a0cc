"""``cpn top --data DIR``: a live view of a running cluster in the terminal (SHELL).

Every refresh takes one :class:`cluster.topview.Sample` through the same clients and
requests as ``cpn status`` (the router's status, table and statistics, each live
shard's statistics) and draws :func:`cluster.topview.render`'s lines with curses from
the standard library, so it works over SSH with no extra dependency. ``q`` quits (exit
0); ``--once`` prints one frame, with rates over one interval, for scripts and for
output that is not a terminal.
"""

from __future__ import annotations

import curses
import os
import sys
import time
from pathlib import Path
from typing import Final

import click

from cluster.client import ClusterClient
from cluster.commands.options import DURATION, cluster_data_option
from cluster.layout import ClusterLayout, live_endpoint
from cluster.topview import Sample, View, advance, render
from nets.errors import CpnError

# A refresh must not hang on a dead process: one short try per request (a shard the
# router calls dead is not asked at all).
REQUEST_TIMEOUT_MS: Final = 800
QUIT_KEYS: Final = frozenset({ord("q"), ord("Q")})


def _wall_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def take_sample(layout: ClusterLayout, client: ClusterClient) -> Sample:
    """The cluster's figures now (see :class:`cluster.topview.Sample`).

    Raises:
        CpnError: the router did not answer.
    """
    state = client.status()
    owners = client.table(refresh=True).owners
    router_stats = client.router_statistics()
    stats = {}
    for shard_id, shard in enumerate(state.shards):
        if not shard["alive"]:
            continue
        try:
            stats.update(client.statistics([shard_id]))
        except CpnError:
            continue  # shown as a shard without figures; the next refresh asks again
    pids = {}
    for shard_id in range(len(state.shards)):
        published = live_endpoint(layout.shard_dir(shard_id))
        if published is not None:
            pids[shard_id] = published[1]
    router = live_endpoint(layout.router_dir)
    return Sample(
        _wall_ms(),
        state.net,
        state.epoch,
        state.shards,
        tuple(owners),
        stats,
        router_stats,
        pids,
        router[1] if router else None,
    )


class _Sampler:
    """A client that is opened again after the router stopped answering (it may come
    back on another endpoint), and the view carried between refreshes."""

    def __init__(self, layout: ClusterLayout) -> None:
        self.layout = layout
        self.view: View | None = None
        self._client: ClusterClient | None = self._open()

    def _open(self) -> ClusterClient:
        return ClusterClient.for_data_dir(
            self.layout.root, timeout_ms=REQUEST_TIMEOUT_MS, retries=0
        )

    def refresh(self) -> View:
        try:
            if self._client is None:
                self._client = self._open()
            sample = take_sample(self.layout, self._client)
        except CpnError as exc:
            self.close()
            sample = Sample(_wall_ms(), error=str(exc))
            # A view is only advanced by samples with figures: rates and restarts
            # compare the shard's statistics across the outage.
            previous = self.view
            if previous is None:
                return View(sample, {}, {}, {}, {}, 0)
            return View(sample, previous.last_stats, previous.restarts, {}, {}, previous.samples)
        self.view = advance(self.view, sample)
        return self.view

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _loop(screen: curses.window, sampler: _Sampler, interval_ms: int) -> None:
    curses.curs_set(0)
    screen.timeout(interval_ms)  # getch waits at most one interval for a key
    while True:
        view = sampler.refresh()
        height, width = screen.getmaxyx()
        screen.erase()
        for row, line in enumerate(
            render(view, width=width, height=height, interval_ms=interval_ms)
        ):
            # The bottom-right cell cannot be written without moving the cursor out of
            # the window (a curses error): the last column of the last row stays blank.
            screen.addnstr(row, 0, line, width - 1 if row == height - 1 else width)
        screen.refresh()
        deadline_ms = _wall_ms() + interval_ms
        while (left_ms := deadline_ms - _wall_ms()) > 0:
            screen.timeout(left_ms)
            key = screen.getch()
            if key in QUIT_KEYS:
                return
            if key == curses.KEY_RESIZE:
                break  # draw again at the new size now


@click.command()
@cluster_data_option
@click.option(
    "--interval",
    "interval_ms",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Refresh this often (rates are measured over it).",
)
@click.option(
    "--once",
    is_flag=True,
    help="Print one frame (rates over one --interval) and exit; needs no terminal.",
)
def top(data_dir: Path, interval_ms: int, once: bool) -> None:
    """Watch the cluster in DATA live: shards, firing rates, tokens, outboxes, slot
    moves and restarts, refreshed every --interval; q quits."""
    if interval_ms <= 0:
        raise click.BadParameter("must be above 0", param_hint="--interval")
    layout = ClusterLayout(data_dir.resolve())
    if not once and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CpnError(
            "cpn top draws on a terminal, and stdin or stdout is not one; "
            "use `cpn top --once` to print one frame"
        )
    sampler = _Sampler(layout)  # fails here, in one line, if no cluster runs in DATA
    try:
        if once:
            first = sampler.refresh()
            if not first.sample.error:
                time.sleep(interval_ms / 1000)  # a rate needs a second sample
                first = sampler.refresh()
            # Not cut to a window: a script reads every line.
            lines = render(first, width=10_000, height=10_000, interval_ms=interval_ms)
            click.echo("\n".join(lines))
            return
        os.environ.setdefault("ESCDELAY", "25")  # Esc sequences; q must not lag
        curses.wrapper(_loop, sampler, interval_ms)
    finally:
        sampler.close()
