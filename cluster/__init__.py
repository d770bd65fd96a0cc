"""The cluster: processes, clients, the CLI, and the applications that run on it.

``from cluster import worker, to, current`` is the worker SDK's short import path
(:mod:`cluster.sdk`); it is loaded on first use, so that importing anything else from
``cluster`` (the CLI, every restarted shard) does not pay for it.
"""

from typing import Any

_SDK_NAMES = frozenset({"worker", "to", "current", "LeaseContext", "Output", "WorkerSpec"})


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        import cluster.sdk  # noqa: PLC0415 - loaded on first use, see the docstring

        return getattr(cluster.sdk, name)
    raise AttributeError(f"module 'cluster' has no attribute {name!r}")
