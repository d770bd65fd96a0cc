"""The pytest plugin for users' nets: fixtures that run a net under virtual time, on a
real local cluster, and with worker processes (docs/testing.md).

* ``cpn_engine``: a factory of :class:`cluster.testing.VirtualNet` (the pure engine).
* ``cpn_cluster``: a factory of started :class:`cluster.testbed.LocalCluster` (a
  router and shards as real processes); every one is stopped after the test.
* ``cpn_workers``: a factory of started :class:`cluster.testbed.WorkerGroup` (``cpn
  worker run`` processes against such a cluster); every one is stopped after the test,
  before the clusters.

The assertions (``assert_marking``, ``assert_invariants``, ``assert_eventually``) are
plain functions of :mod:`cluster.testing`, to import.

pytest loads this module in every run of an environment where cpn-cluster is installed
(it is the ``cpn`` entry point of the ``pytest11`` group; ``-p no:cpn`` turns it off).
So it imports only pytest and typing when loaded: ``zmq``, ``lmdb`` and the engine are
imported by the fixtures that need them, and every fixture is named ``cpn_*`` so that
it cannot shadow a project's own fixtures. The factories' types (:class:`EngineFactory`,
:class:`ClusterFactory`, :class:`WorkersFactory`) are here for annotating a test's
arguments.
"""

# The imports inside the fixtures are deliberate (see above): ruff's PLC0415 is off for
# this file in pyproject.toml.

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from cluster.testbed import LocalCluster, WorkerGroup
    from cluster.testing import VirtualNet
    from nets.engine import TieBreak
    from nets.model import Net


class EngineFactory(Protocol):
    """The type of ``cpn_engine``."""

    def __call__(
        self,
        net: Net | str,
        *,
        seed: int = 0,
        params: Mapping[str, object] | None = None,
        tie_break: TieBreak | str = "ordered",
        check_invariants: bool = False,
    ) -> VirtualNet: ...


class ClusterFactory(Protocol):
    """The type of ``cpn_cluster``."""

    def __call__(
        self,
        net: str,
        *,
        shards: int = 2,
        seed: int = 0,
        params: Mapping[str, Any] | None = None,
        durability: str = "process",
        ready_timeout_s: float = 60.0,
    ) -> LocalCluster: ...


class WorkersFactory(Protocol):
    """The type of ``cpn_workers``."""

    def __call__(
        self,
        cluster: LocalCluster,
        function: str,
        *,
        count: int = 1,
        concurrency: int | None = None,
        args: Sequence[str] = (),
    ) -> WorkerGroup: ...


@pytest.fixture
def cpn_engine() -> EngineFactory:
    """A factory of nets on the pure engine under virtual time (no process, no clock).

    ``cpn_engine(net, *, seed=0, params=None, tie_break="ordered",
    check_invariants=False) -> VirtualNet``

    ``net`` is a :class:`nets.Net` or an import path ``package.module:attr`` (loaded
    as ``cpn run`` loads it: ``seed`` and the net parameters ``params`` go to a
    function that builds the net). ``check_invariants=True`` checks the net's declared
    invariants after every step. The :class:`~cluster.testing.VirtualNet` starts at
    t=0 ms with the initial marking: ``put``, ``take``, ``fire``, ``run(until_ms=...,
    for_ms=...)``, ``advance``, ``tokens``, ``counts``, ``marking``, ``trace``. Nothing
    to tear down.
    """
    from cluster.testing import virtual_net

    return virtual_net


@pytest.fixture
def cpn_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """A factory of real local clusters: a router and shards as processes of their own.

    ``cpn_cluster(net, *, shards=2, seed=0, params=None, durability="process",
    ready_timeout_s=60.0) -> LocalCluster``

    ``net`` is an import path ``package.module:attr`` (each process loads it; the
    directory its module is found in from the test is put on the processes'
    ``PYTHONPATH``). Each cluster gets a fresh data directory and free loopback ports,
    and is returned once the router reports every shard alive. The
    :class:`~cluster.testbed.LocalCluster` has ``client`` (a ``ClusterClient``),
    ``data_dir``, ``put``, ``counts``, ``tokens(place)``, ``wait_until(predicate, *,
    timeout_s)``, ``pids`` and ``running()``.

    Teardown, also when the test fails: each cluster's worker groups are stopped, its
    client closed, and its router and shards sent SIGTERM, SIGKILLed by pid if still
    running after 10 s, and reaped. No process of it runs afterwards.
    """
    from cluster.testbed import LocalCluster, close_all

    started: list[LocalCluster] = []

    def start(
        net: str,
        *,
        shards: int = 2,
        seed: int = 0,
        params: Mapping[str, Any] | None = None,
        durability: str = "process",
        ready_timeout_s: float = 60.0,
    ) -> LocalCluster:
        root = tmp_path_factory.mktemp("cpn-cluster")
        cluster = LocalCluster(
            net, root, shards=shards, seed=seed, params=params, durability=durability
        )
        started.append(cluster)  # tracked before any process starts
        return cluster.start(ready_timeout_s=ready_timeout_s)

    try:
        yield start
    finally:
        close_all(cluster.close for cluster in reversed(started))


@pytest.fixture
def cpn_workers(cpn_cluster: ClusterFactory) -> Iterator[WorkersFactory]:
    """A factory of worker processes against a ``cpn_cluster`` cluster.

    ``cpn_workers(cluster, function, *, count=1, concurrency=None, args=()) -> WorkerGroup``

    Starts ``count`` processes of ``python -m cluster.cli worker run FUNCTION --data
    DIR [--concurrency N] [ARGS...]`` (``args``: more options, e.g. ``("--drain",
    "1s")``); ``function`` is ``package.module:function``, a function decorated as a
    worker (its directory goes on the processes' ``PYTHONPATH``, as for the net). The
    :class:`~cluster.testbed.WorkerGroup` has ``pids``, ``alive()``, ``output(index)``,
    ``stop()`` (SIGTERM, then SIGKILL) and ``kill()`` (SIGKILL, to test a crashed
    worker); the cluster's ``wait_until`` fails at once, naming the worker, if one exits
    that the test did not stop.

    Teardown, also when the test fails, and before the clusters': every worker is sent
    SIGTERM, SIGKILLed by pid if still running after 10 s, and reaped.
    """
    from cluster.testbed import WorkerGroup, close_all

    # Requesting cpn_cluster makes this fixture's teardown run first: workers stop
    # before the cluster they lease from.
    del cpn_cluster
    started: list[WorkerGroup] = []

    def start(
        cluster: LocalCluster,
        function: str,
        *,
        count: int = 1,
        concurrency: int | None = None,
        args: Sequence[str] = (),
    ) -> WorkerGroup:
        group = WorkerGroup(cluster, function, count=count, concurrency=concurrency, args=args)
        started.append(group)  # tracked before any process starts
        return group.start()

    try:
        yield start
    finally:
        close_all(group.stop for group in reversed(started))
