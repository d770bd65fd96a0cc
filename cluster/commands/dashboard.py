"""``cpn dashboard``: serve a live web page of the cluster in ``--data`` (SHELL).

The page draws the net (laid out by nets/layout.py, no Graphviz needed), with token
counts and firing rates as a heat overlay, the slot map with the moves in flight, each
shard's health and restarts, and a place's tokens on a click. One sampler thread reads
the cluster every ``--interval-ms`` (cluster/dashboard/sampler.py); the HTTP server
only hands out its latest snapshot.

Like every socket of the cluster, the page is served on loopback only unless
``--allow-remote`` is given (the rule of router/endpoints.py). Errors are raised as
:class:`~nets.errors.CpnError` and become one line and exit status 2 in cluster/cli.py.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from cluster.commands.deploy import config_option
from cluster.commands.options import cluster_data_option
from cluster.dashboard.sampler import Sampler
from cluster.dashboard.server import DashboardServer
from cluster.layout import ClusterConfig, ClusterLayout
from nets.errors import CpnError
from nets.layout import layout_net
from nets.loader import load_net
from router.endpoints import listen_address


@click.command()
@config_option("client")  # --config: a cluster file's data directory and CURVE keys
@cluster_data_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to serve on; anything but loopback needs --allow-remote.",
)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8765,
    show_default=True,
    help="The port to serve on (0: a free port; the URL is printed).",
)
@click.option(
    "--allow-remote", is_flag=True, help="Allow serving on an address other than loopback."
)
@click.option(
    "--interval-ms",
    type=click.IntRange(min=50, max=60_000),
    default=250,
    show_default=True,
    help="How often the cluster is sampled (the page updates as often).",
)
def dashboard(data_dir: Path, host: str, port: int, allow_remote: bool, interval_ms: int) -> None:
    """Serve a live web page of the cluster in DATA: the net, counts, rates, slots, shards."""
    # The sockets' own rule, with its message: loopback unless --allow-remote.
    listen_address(f"tcp://{host}:{port}", allow_remote=allow_remote)
    layout = ClusterLayout(data_dir.resolve())
    config = ClusterConfig.read(layout)
    if config is None:
        raise CpnError(f"no cluster in {layout.root} (no {layout.cluster_file.name})")
    net = load_net(config.net, seed=config.seed, params=config.params)
    net_json = {
        "layout": layout_net(net).to_json(),
        "fields": {p.name: list(p.colour_set.fields) for p in net.places},
        "interval_ms": interval_ms,
    }
    with Sampler(layout.root, net.name, interval_ms=interval_ms) as sampler:
        try:
            server = DashboardServer(
                host.strip("[]"),
                port,
                sampler=sampler,
                net_json=net_json,
                allow_remote=allow_remote,
            )
        except OSError as exc:
            raise CpnError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
        try:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            click.echo(
                f"dashboard of net {net.name!r} (cluster in {layout.root}) at {server.url} ; "
                "stop with Ctrl-C",
            )
            sys.stdout.flush()
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # serve_forever returns through the exception; the finally blocks close the port
    # and the sampler's sockets.
    raise KeyboardInterrupt
