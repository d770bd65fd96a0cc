"""Finding the cluster a worker runs against (SHELL): a local data directory or a
cluster file, read once at the worker's start."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.client import ClusterClient
from cluster.config import ClusterFile
from cluster.layout import ClusterConfig, ClusterLayout
from cluster.sdk.lanes import REQUEST_RETRIES, REQUEST_TIMEOUT_MS
from cluster.sdk.runner import Target, connect_to
from nets.errors import CpnError
from nets.loader import load_net


def target_for(data_dir: Path, *, params: Mapping[str, Any] | None = None) -> Target:
    """The cluster of a local ``cpn up`` directory: its router (found again where it is
    now, should it move), its shard count, its net and parameters (``params`` added).

    Raises:
        CpnError: no cluster was started in ``data_dir``, or its net does not load.
    """
    layout = ClusterLayout(data_dir.resolve())
    recorded = ClusterConfig.read(layout)
    if recorded is None:
        raise CpnError(
            f"no cluster in {layout.root} (no {layout.cluster_file.name}); start one with `cpn up`"
        )
    merged = {**recorded.params, **(params or {})}
    return Target(
        lambda: ClusterClient.for_data_dir(
            layout.root, timeout_ms=REQUEST_TIMEOUT_MS, retries=REQUEST_RETRIES
        ),
        recorded.shards,
        load_net(recorded.net, seed=recorded.seed, params=merged),
        merged,
    )


def target_from_file(cluster: ClusterFile, *, params: Mapping[str, Any] | None = None) -> Target:
    """The cluster a cluster file describes (a worker on a host of its own).

    Raises:
        CpnError: its net does not load.
    """
    merged = dict(params or {})
    return Target(
        connect_to(cluster.router.endpoint),
        cluster.shard_count,
        load_net(cluster.net, seed=cluster.seed, params=merged),
        merged,
    )
