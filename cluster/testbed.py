"""A real local cluster, and worker processes, for a test (SHELL).

:class:`LocalCluster` runs a router and N shards as real ``cpn router`` / ``cpn shard``
processes (:mod:`cluster.processes`), each bound to a free loopback port and with its
own data directory under one root, laid out as ``cpn up`` lays it out
(:class:`cluster.layout.ClusterLayout`): ``cluster.json`` is written, so
:meth:`ClusterClient.for_data_dir`, ``cpn status --data ROOT`` and ``cpn worker run
--data ROOT`` find the cluster. Unlike ``cpn up`` there is no supervisor: a shard that
dies stays dead and the test sees it (:meth:`LocalCluster.wait_until` fails naming it
and quoting its last line of stderr) rather than a restart hiding it.

:class:`WorkerGroup` runs ``python -m cluster.cli worker run MODULE:FUNCTION --data
ROOT`` processes against a cluster.

Both stop exactly the processes they started, by pid: SIGTERM, then SIGKILL after
``STOP_TIMEOUT_S``. Children inherit the test's environment, with the directory that
the net's (or the worker function's) module was found in put first on ``PYTHONPATH``,
so that a net defined next to the tests loads in every child as it does in the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from cluster.client import ClusterClient, PutSummary
from cluster.layout import ClusterConfig, ClusterLayout, net_param_args
from cluster.logtail import tail
from cluster.processes import (
    STDERR_FILE,
    STOP_TIMEOUT_S,
    ChildProcess,
    start_router,
    start_shard,
    stop_all,
    wait_ready,
)
from cluster.testing import WAIT_TIMEOUT_S_DEFAULT, as_token
from nets.errors import CpnError
from nets.loader import load_net
from nets.model import Net, Place, Token
from router.shell.metrics import METRICS_FILE
from shard.shell.store import Durability

READY_TIMEOUT_S: Final = 60.0
POLL_INTERVAL_S: Final = 0.05
# A test cluster's client gives up on a silent shard after (retries + 1) * timeout, so
# that a dead shard fails a test in seconds rather than after a long retry budget.
CLIENT_TIMEOUT_MS: Final = 3_000
CLIENT_RETRIES: Final = 2
COUNTS_IN_MESSAGE: Final = "tokens per place now"
WORKER_LOGS: Final = "workers"
OUTPUT_LINES_QUOTED: Final = 6  # of a process that exited, in a failure message


def module_root(module: str) -> Path | None:
    """The ``sys.path`` directory that ``module`` (a dotted name) is found in, or None
    for a module that is not a file (built in, frozen, a namespace package).

    Parent packages of a dotted name are imported to find it, as an import would.

    Raises:
        CpnError: the module cannot be found from this process.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise CpnError(f"cannot find module {module!r}: {exc}") from exc
    if spec is None:
        raise CpnError(
            f"cannot find module {module!r} from this process (sys.path[0] is "
            f"{sys.path[0]!r}); is its directory on sys.path?"
        )
    if spec.origin is None or not spec.has_location:
        return None
    origin = Path(spec.origin).resolve()
    depth = module.count(".") + (1 if origin.name == "__init__.py" else 0)
    return origin.parents[depth]


def child_env(*modules: str) -> dict[str, str]:
    """Environment additions for a child that must import ``modules`` as this process
    does: their directories first on ``PYTHONPATH``, then the inherited one."""
    roots = [root for module in modules if (root := module_root(module)) is not None]
    paths = list(
        dict.fromkeys([*map(str, roots), *os.environ.get("PYTHONPATH", "").split(os.pathsep)])
    )
    paths = [path for path in paths if path]
    return {"PYTHONPATH": os.pathsep.join(paths)} if paths else {}


def _exited(handle: ChildProcess, name: str) -> str:
    """Why ``handle`` is gone: its exit code and the end of its output.

    Several lines, not one: a usage error or a traceback ends with lines that make no
    sense alone.
    """
    log = handle.data_dir / STDERR_FILE
    lines = tail(log, OUTPUT_LINES_QUOTED) or ["(no output)"]
    quoted = "\n".join(f"    {line}" for line in lines)
    return (
        f"{name} (pid {handle.pid}) exited with code {handle.process.returncode}; the end "
        f"of its output ({log}):\n{quoted}"
    )


class LocalCluster:
    """A router and ``shards`` shards of net ``net``, run by this process under ``root``.

    Creating one checks the net (it is loaded here, so a bad path or parameter fails in
    the test with one line) and writes ``cluster.json``; :meth:`start` starts the
    processes. :meth:`close` (or leaving a ``with`` block) stops every process it
    started and any worker group started against it.

    Args:
        net: import path ``package.module:attr`` (each process loads the net itself).
        root: the cluster's data directory (created if missing; a fresh one per test).
        shards: how many shards.
        seed, params: passed to the net's builder in every process (``cpn up --seed``,
            ``--net-param``).
        durability: ``"process"`` (default here: commits survive a killed process, and
            tests do not wait for fsync) or ``"fsync"``.

    Raises:
        LoadError, NetDefinitionError: the net does not load.
        CpnError: a bad shard count or durability mode.
    """

    def __init__(
        self,
        net: str,
        root: Path,
        *,
        shards: int = 2,
        seed: int = 0,
        params: Mapping[str, Any] | None = None,
        durability: str = "process",
    ) -> None:
        if not isinstance(net, str):
            raise CpnError(
                "a cluster's processes load the net by import path: pass 'package.module:attr',"
                f" not {net!r}"
            )
        if shards < 1:
            raise CpnError(f"a cluster needs at least one shard, not {shards}")
        modes = [mode.value for mode in Durability]
        if durability not in modes:
            raise CpnError(f"durability {durability!r} is not one of {', '.join(modes)}")
        self.net_path = net
        self.params = dict(params or {})
        self.seed = seed
        self.net: Net = load_net(net, seed=seed, params=self.params)
        self.layout = ClusterLayout(root.resolve())
        self.shard_count = shards
        self.durability = durability
        self.env = child_env(net.partition(":")[0])
        self.router: ChildProcess | None = None
        self.shards: list[ChildProcess] = []
        self.worker_groups: list[WorkerGroup] = []
        self._client: ClusterClient | None = None
        self.layout.root.mkdir(parents=True, exist_ok=True)
        config = ClusterConfig(net, shards, seed, durability, self.params)
        self.layout.cluster_file.write_text(config.to_json())

    def __repr__(self) -> str:
        return f"LocalCluster({self.net_path!r}, shards={self.shard_count}, {self.data_dir})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory: ``--data`` for any ``cpn`` command."""
        return self.layout.root

    @property
    def processes(self) -> list[ChildProcess]:
        """The router, then the shards, as started (workers are in ``worker_groups``)."""
        return ([self.router] if self.router is not None else []) + self.shards

    @property
    def pids(self) -> list[int]:
        """The pids of the router and the shards."""
        return [handle.pid for handle in self.processes]

    # -- starting and stopping -----------------------------------------------------------

    def start(self, *, ready_timeout_s: float = READY_TIMEOUT_S) -> Self:
        """Start the router, then the shards, and wait until the router reports every
        shard alive and knows where each listens.

        Raises:
            CpnError: a process exited before it served (its last line of stderr is
                quoted), or the cluster was not ready in ``ready_timeout_s``. What was
                started is stopped then.
        """
        assert self.router is None, "start() is called once"
        options = ("--seed", str(self.seed), *net_param_args(self.params))
        try:
            self.router = start_router(
                self.net_path,
                self.layout.router_dir,
                shards=self.shard_count,
                extra_args=options,
                env=self.env,
            )
            for shard_id in range(self.shard_count):
                identity = ("--shard-id", str(shard_id), "--shards", str(self.shard_count))
                self.shards.append(
                    start_shard(
                        self.net_path,
                        self.layout.shard_dir(shard_id),
                        durability=self.durability,
                        extra_args=(*identity, "--router", self.router.endpoint, *options),
                        env=self.env,
                        wait=False,  # the shards start side by side
                    )
                )
            for handle in self.shards:
                wait_ready(handle, timeout_s=ready_timeout_s)
            self._wait_members(ready_timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_members(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_children()
            state = self.client.status()
            table = self.client.table(refresh=True)
            if all(shard["alive"] for shard in state.shards) and all(table.endpoints):
                return
            if time.monotonic() >= deadline:
                raise CpnError(
                    f"the cluster in {self.data_dir} is not ready after {timeout_s} s: the "
                    f"router sees {state.shards!r}"
                )
            time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        """Stop every worker group, then the router and the shards: SIGTERM to all at
        once, SIGKILL to any still running after ``STOP_TIMEOUT_S``; each is reaped.
        Safe to call again."""
        try:
            for group in self.worker_groups:
                group.stop()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            stop_all(self.processes)

    def running(self) -> list[int]:
        """The pids of this cluster's processes (workers included) still running."""
        handles = [*self.processes, *(h for g in self.worker_groups for h in g.processes)]
        return [handle.pid for handle in handles if handle.alive()]

    # -- talking to it -------------------------------------------------------------------

    @property
    def client(self) -> ClusterClient:
        """A :class:`ClusterClient` of this cluster (made on first use, closed by
        :meth:`close`)."""
        if self._client is None:
            self._client = ClusterClient.for_data_dir(
                self.data_dir, timeout_ms=CLIENT_TIMEOUT_MS, retries=CLIENT_RETRIES
            )
        return self._client

    def _place(self, name: str) -> Place:
        try:
            return self.net.place(name)
        except KeyError:
            places = ", ".join(p.name for p in self.net.places)
            raise CpnError(
                f"net {self.net.name!r} has no place {name!r} (places: {places})"
            ) from None

    def put(self, place: str, *tokens: object, delay_ms: int = 0) -> PutSummary:
        """Put ``tokens`` into ``place``, each on the shard that owns its key.

        Tokens are given as for :meth:`cluster.testing.VirtualNet.put` and checked here
        first, so a token that does not fit fails before anything is sent.

        Raises:
            CpnError: no such place; TokenError: a token does not fit; and as
                :meth:`ClusterClient.put` (a shard refused or did not answer).
        """
        where = self._place(place)
        checked = [as_token(where, token) for token in tokens]
        return self.client.put(place, checked, delay_ms=delay_ms)

    def counts(self) -> dict[str, int]:
        """Tokens per place summed over the shards (work queues' companion places,
        ``<queue>__held`` and ``<queue>__timer``, included)."""
        return self.client.counts()

    def tokens(self, place: str) -> list[Token]:
        """Every token of ``place`` on every shard, in shard order, then marking order;
        as the place's NamedTuple when the place is the net's own."""
        try:
            cls = self.net.place(place).colour_set.cls
        except KeyError:
            cls = None  # a companion place of a work queue
        return [
            cls(*fields) if cls is not None else tuple(fields)
            for _shard, _time, fields in self.client.tokens(place)
        ]

    def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        timeout_s: float = WAIT_TIMEOUT_S_DEFAULT,
        what: str = "the condition",
    ) -> None:
        """Poll ``predicate`` until it returns true, for at most ``timeout_s``.

        Between polls it checks that every process of the cluster and of its worker
        groups still runs, so a crash fails the wait at once, named, instead of after
        the timeout.

        Raises:
            AssertionError: the timeout passed (the message names ``what`` and shows
                the tokens per place), or a process exited (named, with its last line
                of stderr and its log file).
        """
        __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_processes()
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{what} did not hold within {timeout_s} s; {COUNTS_IN_MESSAGE}: "
                    f"{self._counts_for_message()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _counts_for_message(self) -> str:
        try:
            return repr(self.counts())
        except CpnError as exc:
            return f"(unavailable: {exc})"

    def _check_children(self) -> None:
        if self.router is not None and not self.router.alive():
            raise CpnError(_exited(self.router, "the router"))
        for shard_id, handle in enumerate(self.shards):
            if not handle.alive():
                raise CpnError(_exited(handle, f"shard {shard_id}"))

    def check_processes(self) -> None:
        """Raise :class:`AssertionError` if a process of the cluster, or a worker not
        stopped by the test, has exited (named, with its last line of stderr)."""
        __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
        try:
            self._check_children()
        except CpnError as exc:
            raise AssertionError(str(exc)) from None
        for group in self.worker_groups:
            group.check()


class WorkerGroup:
    """``count`` processes of ``cpn worker run FUNCTION --data ROOT`` against ``cluster``.

    Each writes its output to ``ROOT/workers/<group>-<index>/stderr.log``.
    :meth:`stop` and :meth:`kill` act on every process of the group; the cluster's
    :meth:`LocalCluster.close` stops the group too.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        function: str,
        *,
        count: int = 1,
        concurrency: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        module, sep, attr = function.partition(":")
        if not sep or not module or not attr:
            raise CpnError(f"worker function {function!r} must look like package.module:function")
        if count < 1:
            raise CpnError(f"a worker group needs at least one process, not {count}")
        if concurrency is not None and concurrency < 1:
            raise CpnError(f"worker concurrency must be at least 1, not {concurrency}")
        self.cluster = cluster
        self.function = function
        self.count = count
        self.concurrency = concurrency
        self.extra_args = tuple(args)  # more `cpn worker run` options, e.g. --drain 200ms
        self.processes: list[ChildProcess] = []
        self.stopped = False
        # The worker's module may import the net's module (for its colour sets).
        self.env = child_env(module, cluster.net_path.partition(":")[0])
        self.serial = len(cluster.worker_groups)
        cluster.worker_groups.append(self)  # tracked before anything starts

    def __repr__(self) -> str:
        return f"WorkerGroup({self.function!r}, pids={self.pids})"

    @property
    def pids(self) -> list[int]:
        return [handle.pid for handle in self.processes]

    def args(self) -> list[str]:
        """The command line of each worker process."""
        args = [sys.executable, "-m", "cluster.cli", "worker", "run", self.function]
        args += ["--data", str(self.cluster.data_dir)]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        args += self.extra_args
        return args

    def start(self) -> Self:
        """Start the processes (they are not waited for: a worker has no endpoint to
        publish; :meth:`check` and :meth:`LocalCluster.wait_until` notice one that
        exits)."""
        assert not self.processes, "start() is called once"
        for index in range(self.count):
            log_dir = self.cluster.data_dir / WORKER_LOGS / f"{self.serial}-{index}"
            log_dir.mkdir(parents=True, exist_ok=True)
            # The worker publishes its /metrics URL where a shard would: its directory.
            args = [*self.args(), "--metrics-file", str(log_dir / METRICS_FILE)]
            with (log_dir / STDERR_FILE).open("ab") as log:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env={**os.environ, **self.env},
                )
            self.processes.append(ChildProcess(log_dir, process, args=args, role="worker"))
        return self

    def alive(self) -> bool:
        """Every process of the group runs."""
        return bool(self.processes) and all(handle.alive() for handle in self.processes)

    def check(self) -> None:
        """Raise :class:`AssertionError` if a worker exited although the test did not
        stop it (named, with its last line of output)."""
        __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
        if self.stopped:
            return
        for index, handle in enumerate(self.processes):
            if not handle.alive():
                raise AssertionError(_exited(handle, f"worker {index} of {self.function}"))

    def output(self, index: int = 0) -> str:
        """What worker ``index`` wrote to its stdout and stderr so far."""
        return (self.processes[index].data_dir / STDERR_FILE).read_text(errors="replace")

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every worker, SIGKILL those still running after ``timeout_s``; reap
        them all. Safe to call again."""
        self.stopped = True
        stop_all(self.processes, timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL every worker at once (their leases expire and the tokens go back to
        the queue) and reap them."""
        self.stopped = True
        for handle in self.processes:
            handle.kill()


def start_workers(
    cluster: LocalCluster,
    function: str,
    *,
    count: int = 1,
    concurrency: int | None = None,
    args: Sequence[str] = (),
) -> WorkerGroup:
    """Start a :class:`WorkerGroup` of ``function`` (``package.module:function``)."""
    return WorkerGroup(cluster, function, count=count, concurrency=concurrency, args=args).start()


def close_all(closers: Iterable[Callable[[], None]]) -> None:
    """Call every closer, even when one raises; an error is raised after all ran (a
    later one with the earlier as its context)."""
    with contextlib.ExitStack() as stack:
        for close in closers:
            stack.callback(close)
