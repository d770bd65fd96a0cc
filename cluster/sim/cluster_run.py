"""The whole cluster simulated: the router core and N shard cores on one virtual clock.

Theory of operation: :func:`simulate` builds a :class:`~cluster.sim.world.World` of
actors, the production cores behind thin adapters (:mod:`cluster.sim.router_node`,
:mod:`cluster.sim.shard_node`), plus clients (:mod:`cluster.sim.client_node`): a
seeder for the tokens the run starts with, and workers that close every work-queue
place with its effect model. The seed's fault plan drives the network and the nemesis
until the heal phase; after it the run must drain.

The per-step invariants (:class:`Invariants`, after every event):

* **epochs only grow**: no node's table epoch ever goes back, across restarts too;
* **one owner per slot**: the slots that fenced, running shards may fire (owned by
  their table copy and not sealed for a move) never overlap, so no slot fires on two
  shards;
* **the partition rule**: every token a shard holds lives in a slot it owns (or is a
  pool token), checked every :data:`PARTITION_CHECK_EVERY` events and at the end.

The simulated supervisor retires a shard once the router says it left the cluster
(``cpn scale`` in), and a scale-out starts the next shard at once and tells the router.

At the end the token ledger (:mod:`cluster.sim.ledger`) checks the committed history:
every (place, value) balances, no outbox entry is applied twice or lost, and (drained)
every outbox and shipment is resolved; the router has no move in flight and no lease
is held.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cluster.sim.client_node import Worker
from cluster.sim.effects_run import EffectModelLike, OutcomeLike
from cluster.sim.faults import FaultCounts, FaultPlan, choose, parse_faults
from cluster.sim.ledger import LedgerReport
from cluster.sim.network import LinkModel
from cluster.sim.rng import derived_random
from cluster.sim.router_node import RouterActor, RouterMemoryStore
from cluster.sim.shard_node import (
    LmdbShardStore,
    MemoryShardStore,
    ShardActor,
    ShardStoreLike,
    SlotOf,
    shard_id_of,
    shard_node,
)
from cluster.sim.trace import Trace, wire_summary, wire_view
from cluster.sim.world import Actor, Send, Step, World
from nets.errors import CpnError
from nets.loader import load_net
from nets.model import Net
from router.slots import POOL_SLOT
from router.table import PartitionTable
from router.wire import Scale, Scaled, decode, encode
from shard.shard_setup import ShardSetup

ROUTER: Final = "router"
UNTIL_MS_DEFAULT: Final = 60_000
HEAL_AT_FRACTION: Final = 0.5  # faults stop half way; the rest must drain
WORKERS_PER_QUEUE: Final = 2
PARTITION_CHECK_EVERY: Final = 500
# Workers take no new lease in the run's last DRAIN_MS: what they hold is completed, or
# expires (client_node.LEASE_MS) and returns to its queue, so every lease is resolved.
DRAIN_MS: Final = 5_000
SHARDS_MAX_SIM: Final = 8
CONFIG_ENV: Final = "CPN_SIM_CONFIG"  # how a determinism rerun gets the run's settings
FAULT_POINT_RATE: Final = 0.1  # per fault point, once a run, when crashes are in the plan


class SimError(CpnError):
    """A simulation cannot run as asked (a net without effect models, a bad setting)."""


class InvariantBroken(CpnError):
    """A per-step invariant failed: the message names it, the node and the time."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation's settings (every seed of a ``cpn sim`` run shares them).

    ``faults``: the plan's text (``drop=0.05,partition``), or "" for the seed's own
    choice of at least ``faults_min``; ``store``: ``memory`` or ``lmdb`` (real LMDB
    files under ``lmdb_dir``).
    """

    net_path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    shards: int = 3
    until_ms: int = UNTIL_MS_DEFAULT
    heal_at_fraction: float = HEAL_AT_FRACTION
    faults: str = ""
    faults_min: int = 3
    workers_per_queue: int = WORKERS_PER_QUEUE
    store: str = "memory"
    lmdb_dir: str = ""
    # The chance that a shard dies at its store's crash point ``store_catch_up`` (in the
    # middle of folding its batch log) each time it passes it; 0: never. Not drawn by
    # seeds (the menu's draws, and so every recorded seed, stay as they were).
    store_crash_rate: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "net_path": self.net_path,
                "params": dict(self.params),
                "shards": self.shards,
                "until_ms": self.until_ms,
                "heal_at_fraction": self.heal_at_fraction,
                "faults": self.faults,
                "faults_min": self.faults_min,
                "workers_per_queue": self.workers_per_queue,
                "store": self.store,
                "lmdb_dir": self.lmdb_dir,
                "store_crash_rate": self.store_crash_rate,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SimConfig:
        values = json.loads(text)
        return cls(**values)

    def plan(self, seed: int) -> FaultPlan:
        return parse_faults(self.faults) if self.faults else choose(seed, minimum=self.faults_min)


@dataclass(slots=True)
class SimResult:
    """What one seed's run did, and whether it passed."""

    seed: int
    plan: FaultPlan
    trace: Trace
    faults: FaultCounts
    ledger: LedgerReport
    events: int
    virtual_ms: int
    firings: int
    handoffs: int
    leases: int
    completions: int
    failure: str  # "" when every check passed

    @property
    def ok(self) -> bool:
        return not self.failure


def effect_models(net: Net) -> dict[str, EffectModelLike[OutcomeLike]]:
    """The effect model of every work-queue place of ``net``.

    Raises:
        SimError: a work-queue place has none (the message names it).
    """
    models = net.effects
    missing = [p.name for p in net.places if p.work_queue and p.name not in models]
    if missing:
        raise SimError(
            f"net {net.name!r} has no effect model for its work-queue place(s) "
            f"{', '.join(missing)}: declare them with Net(..., effects={{...}}) so that "
            "the simulator can stand in for the workers"
        )
    return {p.name: models[p.name] for p in net.places if p.work_queue}


class _Roster:
    """The shard nodes clients ask, as the simulated supervisor runs them."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.nodes = list(nodes)

    def __call__(self) -> list[str]:
        return list(self.nodes)


class _Operator:
    """``cpn scale COUNT``: one Scale request to the router, asked until answered."""

    RETRY_MS: Final = 500

    def __init__(self, count: int) -> None:
        self.count = count
        self.payload = encode(Scale(count), message_id=1)
        self.router = ""
        self.answered = False
        self.sent_ms = 0

    def start(self, now_ms: int, endpoint: str, directory: Any) -> Step:
        del endpoint
        self.router = directory(ROUTER) or ""
        return self._send(now_ms)

    def _send(self, now_ms: int) -> Step:
        self.sent_ms = now_ms
        return Step(sends=(Send(self.router, self.payload),) if self.router else ())

    def receive(self, now_ms: int, frame: Any) -> Step:
        del now_ms
        self.answered = isinstance(decode(frame.payload).message, Scaled) or self.answered
        return Step()

    def wake(self, now_ms: int) -> Step:
        return Step() if self.answered else self._send(now_ms)

    def next_deadline_ms(self) -> int | None:
        return None if self.answered else self.sent_ms + self.RETRY_MS

    def crash(self) -> None:
        raise AssertionError("the operator is a client: never crashed")

    def present(self) -> tuple[()]:
        return ()


class ClusterSim:
    """One seed of one configuration (see the module docstring)."""

    def __init__(
        self, seed: int, config: SimConfig, net: Net | None = None, *, verbose: bool = False
    ) -> None:
        if not 1 <= config.shards <= SHARDS_MAX_SIM:
            raise SimError(f"--shards must be in 1..{SHARDS_MAX_SIM}, got {config.shards}")
        if config.store not in ("memory", "lmdb"):
            raise SimError(f"the store is 'memory' or 'lmdb', not {config.store!r}")
        self.seed = seed
        self.config = config
        self.net = net or load_net(config.net_path, seed=seed, params=config.params)
        self.models = effect_models(self.net)
        self.plan = config.plan(seed)
        self.faults = FaultCounts()
        self.heal_at_ms = int(config.until_ms * config.heal_at_fraction)
        self.base_setup = ShardSetup.of(self.net, shard_count=config.shards)
        self.roster = _Roster([shard_node(k) for k in range(config.shards)])
        self.shard_actors: dict[str, ShardActor] = {}
        self.router = RouterActor(
            self.net,
            RouterMemoryStore(config.shards),
            rng=derived_random(seed, "router-faults"),
            fault_rate=FAULT_POINT_RATE if "crash_router" in self.plan.names() else 0.0,
            faults_end_ms=self.heal_at_ms,
        )
        actors: dict[str, Actor] = {ROUTER: self.router}
        for shard_id in range(config.shards):
            actors[shard_node(shard_id)] = self._shard(shard_id)
        self.workers: list[Worker] = []
        for place, model in self.models.items():
            for index in range(config.workers_per_queue):
                name = f"worker-{place}-{index}"
                worker = Worker(
                    name,
                    place,
                    model,
                    roster=self.roster,
                    seed=seed,
                    plan=self.plan,
                    rng=derived_random(seed, "worker", name),
                    faults=self.faults,
                    leases_end_ms=config.until_ms - DRAIN_MS,
                )
                self.workers.append(worker)
                actors[name] = worker
        self.shards_created = config.shards
        self.desired_shards = config.shards  # what the last `cpn scale` asked for
        self.operators = 0
        self.invariants = Invariants(self)
        until_ms = config.until_ms
        self.world = World(
            seed,
            self.plan,
            actors,
            shards=list(self.roster.nodes),
            routers=[ROUTER],
            until_ms=until_ms,
            heal_at_ms=self.heal_at_ms,
            check_step=self.invariants.check,
            scale=self._scale,
            describe=wire_view if verbose else wire_summary,
            links=LinkModel(latency_ms_min=1, latency_ms_max=5),
            pinned=[ROUTER],
            faults=self.faults,
        )

    def _shard(self, shard_id: int) -> ShardActor:
        node = shard_node(shard_id)
        store: ShardStoreLike
        if self.config.store == "lmdb":
            directory = Path(self.config.lmdb_dir) / f"seed-{self.seed}" / node
            store = LmdbShardStore(
                self.base_setup.net, directory, shard_id=shard_id, shard_count=self.config.shards
            )
        else:
            store = MemoryShardStore(self.base_setup.net)
        crashes = "crash_shard" in self.plan.names()
        actor = ShardActor(
            node,
            ShardSetup(
                self.base_setup.net,
                self.base_setup.queues,
                shard_id=shard_id,
                shard_count=self.config.shards,
            ),
            store,
            rng=derived_random(self.seed, "shard-faults", node),
            fault_rate=FAULT_POINT_RATE if crashes else 0.0,
            faults_end_ms=self.heal_at_ms,
            store_crash_rate=self.config.store_crash_rate,
            store_rng=derived_random(self.seed, "store-faults", node),
        )
        self.shard_actors[node] = actor
        return actor

    # -- the simulated supervisor and operator ------------------------------------------------

    def _scale(self, world: World, delta: int) -> bool:
        """The operator's ``cpn scale``: whether it was carried out."""
        plane = self.router.plane
        if plane is None:
            return False  # the operator finds no router: this scale does not happen
        coordinator = plane.coordinator
        members, span = coordinator.members, coordinator.span()
        if members != plane.table.shard_count or coordinator.active():
            return False  # a scale is still going on: one at a time
        if delta > 0:
            if span != self.shards_created or span >= SHARDS_MAX_SIM:
                return False  # the next shard id would be one that left: not modelled
            node = shard_node(span)
            world.add_actor(node, self._shard(span))
            self.shards_created += 1
            self.roster.nodes.append(node)
            count = members + 1
        else:
            if members <= 1:
                return False
            count = members - 1
        self.desired_shards = count
        self.operators += 1
        world.add_actor(f"operator-{self.operators}", _Operator(count), shard=False)
        return True  # the nemesis counts it

    def supervise(self, world: World) -> None:
        """Stop for good the shards the router retired (cluster/supervisor.py's rule: a
        shard beyond the count asked for, which the router says is retired), and start
        again a retired shard the router counts as a member again (a late copy of an
        earlier, larger ``Scale``: the supervisor runs every shard the router has not
        let go)."""
        plane = self.router.plane
        if plane is None:
            return
        members = plane.coordinator.members
        for node in sorted(world.retired):
            shard_id = shard_id_of(node)
            if shard_id is not None and shard_id < members:
                world.rejoin(node)
                self.roster.nodes.append(node)
                self.roster.nodes.sort(key=lambda n: shard_id_of(n) or 0)
        first_gone = max(members, plane.table.shard_count)
        for node in list(self.roster.nodes):
            shard_id = shard_id_of(node)
            if (
                shard_id is not None
                and shard_id >= max(first_gone, self.desired_shards)
                and node not in world.retired
            ):
                world.retire(node)
                self.roster.nodes.remove(node)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> SimResult:
        with _quiet_cores():
            result = self.world.run()
        failure = "" if result.ledger.ok else str(result.ledger)
        if not failure:
            failure = self.invariants.at_end()
        firings = sum(actor.firings for actor in self.shard_actors.values())
        handoffs = sum(actor.handoffs for actor in self.shard_actors.values())
        leases = sum(worker.leased for worker in self.workers)
        completions = sum(worker.completed for worker in self.workers)
        return SimResult(
            self.seed,
            self.plan,
            result.trace,
            self.faults,
            result.ledger,
            result.events,
            result.virtual_ms,
            firings,
            handoffs,
            leases,
            completions,
            failure,
        )


@contextlib.contextmanager
def _quiet_cores() -> Iterator[None]:
    """The cores log what a real process would log (a peer's error, a refused table);
    thousands of simulated runs would bury the report in them, so they are dropped."""
    logger = logging.getLogger("cpn")
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate


class Invariants:
    """The per-step checks of the run (see the module docstring)."""

    def __init__(self, sim: ClusterSim) -> None:
        self.sim = sim
        self.epochs: dict[str, int] = {}
        self.slot_of = SlotOf(sim.base_setup.net)
        # node -> (its table copy, its sealed slots, the slots it may fire)
        self.owned: dict[str, tuple[PartitionTable, frozenset[int], frozenset[int]]] = {}
        self.events = 0

    def check(self, world: World) -> None:
        self.events += 1
        self.sim.supervise(world)
        now_ms = world.schedule.now_ms
        plane = self.sim.router.plane
        if plane is not None:
            self._epoch(ROUTER, plane.table.epoch, now_ms)
        changed = False
        owned = self.owned
        for node, actor in self.sim.shard_actors.items():
            core = actor.core
            if core is None or node in world.retired or not core.mover.fenced(core.exchange):
                if node in owned:
                    del owned[node]
                    changed = True
                if core is not None:
                    self._epoch(node, core.exchange.table.epoch, now_ms)
                continue
            exchange = core.exchange
            table, sealed = exchange.table, exchange.sealed
            known = owned.get(node)
            # A table copy is replaced, never changed in place: its identity and the
            # sealed slots say whether the slots it may fire changed.
            if known is not None and known[0] is table and known[1] == sealed.keys():
                continue
            self._epoch(node, table.epoch, now_ms)
            keys = frozenset(sealed)
            me = core.setup.shard_id
            slots = frozenset(s for s in table.slots_of(me) if s not in keys)
            owned[node] = (table, keys, slots)
            changed = True
        if changed:
            self._one_owner(now_ms)
        if self.events % PARTITION_CHECK_EVERY == 0:
            self._partition_rule(now_ms)

    def _epoch(self, node: str, epoch: int, now_ms: int) -> None:
        before = self.epochs.get(node, 0)
        if epoch < before:
            raise InvariantBroken(
                f"epochs only grow: {node}'s table went from epoch {before} to {epoch} "
                f"at t={now_ms}ms"
            )
        self.epochs[node] = epoch

    def _one_owner(self, now_ms: int) -> None:
        seen: dict[int, str] = {}
        for node in sorted(self.owned):
            for slot in self.owned[node][2]:
                other = seen.setdefault(slot, node)
                if other != node:
                    raise InvariantBroken(
                        f"one owner per slot: slot {slot} may fire on {other} "
                        f"(epoch {self.owned[other][0].epoch}) and on {node} "
                        f"(epoch {self.owned[node][0].epoch}) at t={now_ms}ms"
                    )

    def _partition_rule(self, now_ms: int) -> None:
        for node, actor in self.sim.shard_actors.items():
            core = actor.core
            if core is None:
                continue
            table, me = core.exchange.table, core.setup.shard_id
            for place, entries in core.engine.marking().items():
                for _time_ms, token in entries:
                    slot = self.slot_of(place, token)
                    if slot != POOL_SLOT and table.owner(slot) != me:
                        raise InvariantBroken(
                            f"partition rule: {node} holds {place} {tuple(token)!r} of slot "
                            f"{slot}, which its table (epoch {table.epoch}) gives to shard "
                            f"{table.owner(slot)}, at t={now_ms}ms"
                        )

    def at_end(self) -> str:
        """The drained cluster's checks: '' if they hold, else what failed."""
        try:
            self._partition_rule(self.sim.world.schedule.now_ms)
        except InvariantBroken as exc:
            return str(exc)
        plane = self.sim.router.plane
        if plane is not None:
            active = plane.coordinator.active()
            if active:
                return f"drained: {len(active)} slot move(s) still in flight at the end"
        for node, actor in self.sim.shard_actors.items():
            core = actor.core
            if core is None or node in self.sim.world.retired:
                continue
            for queue in core.queues.values():
                held = core.engine.count(queue.held.name)
                if held:
                    return (
                        f"drained: {node} still holds {held} leased token(s) of {queue.queue.name}"
                    )
        return ""


def simulate(
    seed: int, config: SimConfig, net: Net | None = None, *, verbose: bool = False
) -> SimResult:
    """Run ``seed`` of ``config`` (see the module docstring); ``verbose`` traces every
    frame's fields (for a replay), not just its type and digest.

    Raises:
        SimError: the configuration cannot run (the net lacks effect models...).
        InvariantBroken: a per-step invariant failed (the run stops there).
    """
    return ClusterSim(seed, config, net, verbose=verbose).run()


def run(seed: int) -> Trace:
    """The determinism runner (cluster/sim/trace.py): the seed's trace under the
    configuration in ``CPN_SIM_CONFIG`` (JSON), as ``cpn sim`` set it."""
    config = SimConfig.from_json(os.environ[CONFIG_ENV])
    try:
        return simulate(seed, config).trace
    except InvariantBroken as exc:
        # A failing seed must fail the same way in every interpreter: its trace so far
        # is not available here, so the failure itself is the trace.
        trace = Trace()
        trace.record(0, "world", "invariant_broken", str(exc))
        return trace
