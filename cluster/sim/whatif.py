"""What-if: the simulated cluster without faults, measured, to compare configurations.

``cpn sim NET --net-param K=V --report`` asks "what happens if I change this" before
deploying: two configurations (2 and 4 proxies, 2 and 4 shards) are each run over the
same seeds with every fault off, and their figures set side by side. :func:`what_if`
runs the seeds and returns a :class:`WhatIfReport` (``render()`` for people,
``to_json()`` for tools).

Theory of operation. Each seed is one :class:`~cluster.sim.cluster_run.ClusterSim` of
the configuration with the fault plan ``none``: the production cores on the virtual
clock, the simulated network's latencies, and workers that close every work-queue
place with its effect model. Nothing here reads a clock; the figures are virtual time.
Three adapters watch the run through public attributes only:

* every shard node is wrapped (in ``world.actors``) by a probe that reads the ledger
  events of each committed batch (cluster/sim/ledger.py): the marking delta of one
  turn, netted. It keeps, per place, the cluster-wide token count and its
  time-integral, and per work queue when each token entered the queue, was leased
  (``<q>__held`` produced) and was completed (``<q>__held`` consumed);
* the probe also hooks the shard engine's ``hooks`` (every firing's
  :class:`~nets.firing.Step`) for the per-transition times;
* the workers are rebuilt with the effect model seen at the time of each lease, so
  that an outcome's ``start_ms`` holds (a fetch does not begin before its planned
  start, as the real fetch worker waits for it), and in the number each place's model
  asks for (its ``workers`` attribute: the real crawl runs 32 fetch leases at once,
  but one parse at a time).

The figures, per seed, then averaged over the seeds with their spread:

* **makespan**: from the first firing or lease (the cluster's start-up before it, a
  few milliseconds while the shards learn their table, is left out) to the last firing
  of a net transition (the companions of work queues, ``<q>__lease_expired`` and
  ``<q>__timer_spent``, do not count), once the run *quiesced*: at its end no shard has
  a net transition enabled, no work-queue token waits or is leased, and nothing fired
  in the last :data:`QUIET_MS_MIN`. For the crawler it is the crawl's end. A run that
  does not quiesce within ``until_ms`` has no makespan (the report says so: give it a
  longer ``--until``).
* **throughput**: firings per virtual second over the makespan's window (from the
  start to the run's end when it did not quiesce), in all and per transition.
* **latency per transition**: for each firing, its time minus the latest time of the
  tokens it consumed, i.e. how long its last input waited in its place before the
  firing took it (a timed token counts from the time it became available). Zero means
  it fired as soon as its inputs were there; a wait is a guard, a capacity, a read arc
  or an inhibitor, a competing transition, or a shard's turn. Mean, p50, p95, max.
* **place occupancy**: the cluster-wide token count of each place, time-weighted over
  the same window (mean) and its maximum; a token handed off between shards counts in
  its place while in transit. ``<q>__held`` is the work leased and not yet completed.
* **lease turnaround** per work queue: ``wait`` from the token entering the queue to its
  lease, ``held`` from the lease to its completion (the effect's latency, plus the wait
  for its start, plus the network), ``turnaround`` the sum. A token leased in the turn
  that produced it waited 0.

Percentiles are nearest-rank. The spread over seeds is (min, max) of the per-seed figure.
The figures and the report live in :mod:`cluster.sim.whatif_report`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cluster.sim.client_node import Worker
from cluster.sim.cluster_run import ClusterSim, SimConfig, SimError
from cluster.sim.effects_run import EffectModelLike, OutcomeLike
from cluster.sim.ledger import Consumed, LedgerEvent, Produced
from cluster.sim.network import Delivered, LinkModel
from cluster.sim.rng import derived_random
from cluster.sim.whatif_report import (
    PlaceFigures,
    QueueFigures,
    SeedFigures,
    Spread,
    Summary,
    TransitionFigures,
    WhatIfReport,
)
from cluster.sim.world import Directory, Step
from nets.firing import Step as FiringStep
from nets.model import Net, Token

__all__ = [
    "QUIET_MS_MIN",
    "PlaceFigures",
    "QueueFigures",
    "SeedFigures",
    "Spread",
    "Summary",
    "TransitionFigures",
    "WhatIfReport",
    "measure",
    "what_if",
]

NO_FAULTS: Final = "none"
QUIET_MS_MIN: Final = 1_000  # a quiesced run fired nothing this long before its end
SEEDS_MAX: Final = 10_000
WORKERS_PER_QUEUE_MAX: Final = 256
COMPANION_MARK: Final = "__"  # work-queue companions: <q>__held, <q>__lease_expired...


# -- the probes ------------------------------------------------------------------------------


class _Probe:
    """One run's measurements (module docstring), fed by the adapters below."""

    def __init__(self, net: Net, queues: Iterable[str]) -> None:
        self.places = [p.name for p in net.places]
        self.counts = dict.fromkeys(self.places, 0)
        self.peaks = dict.fromkeys(self.places, 0)
        self.areas = dict.fromkeys(self.places, 0)
        self.changed_ms = dict.fromkeys(self.places, 0)
        self.queues = list(queues)
        self.held_of = {f"{q}{COMPANION_MARK}held": q for q in self.queues}
        self.entered: dict[str, dict[Token, deque[int]]] = {q: {} for q in self.queues}
        self.leased: dict[Token, tuple[int, int]] = {}  # held value -> (entered, leased)
        self.waits: dict[str, list[int]] = {q: [] for q in self.queues}
        self.helds: dict[str, list[int]] = {q: [] for q in self.queues}
        self.turnarounds: dict[str, list[int]] = {q: [] for q in self.queues}
        self.first_start: dict[str, int] = {}
        self.latencies: dict[str, list[int]] = {t.name: [] for t in net.transitions}
        self.started_ms: int | None = None
        self.last_firing_ms: int | None = None
        self.areas_at_first: dict[str, int] = {}

    # The engine hook: one call per firing, kept small (it runs for every firing).
    def step(self, step: FiringStep) -> None:
        consumed = step.consumed
        if self.started_ms is None:
            self._started(step.time)
        latest = max(entry[1] for entry in consumed) if consumed else step.time
        self.latencies[step.transition].append(step.time - latest)
        if COMPANION_MARK not in step.transition:
            self.last_firing_ms = step.time

    def _started(self, now_ms: int) -> None:
        # The window starts at the first firing or lease: what the places held before
        # counts from now on.
        self.started_ms = now_ms
        self.areas_at_first = {
            place: self.areas[place] + self.counts[place] * (now_ms - self.changed_ms[place])
            for place in self.places
        }

    def batch(self, now_ms: int, events: Sequence[LedgerEvent]) -> None:
        """A committed batch's ledger events (arrivals first, then departures)."""
        counts = self.counts
        touched = set()
        for event in events:
            kind = type(event)
            if kind is Produced:
                change = 1
            elif kind is Consumed:
                change = -1
            else:
                continue  # hand-offs and moves: the token stays in its place, cluster-wide
            place = event.place  # type: ignore[union-attr]
            if place not in touched:
                touched.add(place)
                self.areas[place] += counts[place] * (now_ms - self.changed_ms[place])
                self.changed_ms[place] = now_ms
            counts[place] += change
            if place in self.entered or place in self.held_of:
                self._lease_event(now_ms, place, event.value, change)  # type: ignore[union-attr]
        # A batch lists its arrivals before its departures: only its end is a marking.
        for place in touched:
            self.peaks[place] = max(self.peaks[place], counts[place])

    def _lease_event(self, now_ms: int, place: str, value: Token, change: int) -> None:
        if place in self.entered:
            if change > 0:
                self.entered[place].setdefault(value, deque()).append(now_ms)
            return  # a queue token leaves only by a lease, measured at its held form
        queue = self.held_of[place]
        if change > 0:
            if self.started_ms is None:
                self._started(now_ms)
            times = self.entered[queue].get(tuple(value[2:]))
            entered_ms = times.popleft() if times else now_ms  # leased in the same turn
            if times is not None and not times:
                del self.entered[queue][tuple(value[2:])]
            self.waits[queue].append(now_ms - entered_ms)
            self.leased[value] = (entered_ms, now_ms)
            return
        found = self.leased.pop(value, None)
        if found is None:
            return  # held before the probe saw it: not measured
        entered_ms, leased_ms = found
        self.helds[queue].append(now_ms - leased_ms)
        self.turnarounds[queue].append(now_ms - entered_ms)

    def effect_began(self, place: str, begin_ms: int) -> None:
        if place not in self.first_start or begin_ms < self.first_start[place]:
            self.first_start[place] = begin_ms

    def close(self, end_ms: int) -> tuple[tuple[PlaceFigures, ...], tuple[QueueFigures, ...]]:
        """The places' and queues' figures over the window from the start to ``end_ms``."""
        first_ms = self.started_ms or 0
        places = []
        for place in self.places:
            area = self.areas[place] + self.counts[place] * (end_ms - self.changed_ms[place])
            area -= self.areas_at_first.get(place, 0)
            span_ms = end_ms - first_ms
            mean = area / span_ms if span_ms > 0 else float(self.counts[place])
            places.append(PlaceFigures(place, mean, self.peaks[place]))
        queues = tuple(
            QueueFigures(
                q,
                len(self.waits[q]),
                Summary.of(self.waits[q]),
                Summary.of(self.helds[q]),
                Summary.of(self.turnarounds[q]),
                self.first_start.get(q),
            )
            for q in self.queues
        )
        return tuple(places), queues


class _ShardProbe:
    """A shard node as the world sees it, its committed batches and firings measured."""

    def __init__(self, actor: Any, probe: _Probe) -> None:
        self.actor = actor
        self.probe = probe
        self._hooked: object = None

    def _after(self, now_ms: int, step: Step) -> Step:
        self.probe.batch(now_ms, step.ledger)
        core = self.actor.core
        if core is not None and core is not self._hooked:
            core.engine.hooks.append(self.probe.step)
            self._hooked = core
        return step

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        return self._after(now_ms, self.actor.start(now_ms, endpoint, directory))

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        return self._after(now_ms, self.actor.receive(now_ms, frame))

    def wake(self, now_ms: int) -> Step:
        return self._after(now_ms, self.actor.wake(now_ms))

    def next_deadline_ms(self) -> int | None:
        deadline: int | None = self.actor.next_deadline_ms()
        return deadline

    def crash(self) -> None:
        raise AssertionError("a what-if run has no faults: no shard crashes")

    def present(self) -> Iterable[LedgerEvent]:
        events: Iterable[LedgerEvent] = self.actor.present()
        return events


@dataclass(frozen=True, slots=True)
class _Planned:
    """An outcome as a worker leasing at ``now`` lives it: its wait for ``start_ms``
    is part of its latency."""

    kind: str
    results: tuple[tuple[str, Token], ...]
    weight: float
    latency_ms: int
    start_ms: int = 0  # the wait is in latency_ms already


class _PlannedEffects:
    """A place's effect model seen from the time of the lease (module docstring)."""

    def __init__(self, place: str, model: EffectModelLike[OutcomeLike], probe: _Probe) -> None:
        self.place = place
        self.model = model
        self.probe = probe
        self.now_ms = 0

    def outcomes(self, token: Token, attempt: int) -> tuple[_Planned, ...]:
        found = self.model.outcomes(token, attempt)
        planned = []
        begin_ms = self.now_ms
        for outcome in found:
            start_ms = outcome.start_ms
            wait_ms = max(0, start_ms - self.now_ms)
            begin_ms = max(begin_ms, self.now_ms + wait_ms)
            planned.append(
                _Planned(
                    outcome.kind, outcome.results, outcome.weight, outcome.latency_ms + wait_ms
                )
            )
        self.probe.effect_began(self.place, begin_ms)
        return tuple(planned)


class _WorkerProbe:
    """A worker whose effect model knows the time of each call."""

    def __init__(self, worker: Worker, effects: _PlannedEffects) -> None:
        self.worker = worker
        self.effects = effects

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        self.effects.now_ms = now_ms
        return self.worker.start(now_ms, endpoint, directory)

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        self.effects.now_ms = now_ms
        return self.worker.receive(now_ms, frame)

    def wake(self, now_ms: int) -> Step:
        self.effects.now_ms = now_ms
        return self.worker.wake(now_ms)

    def next_deadline_ms(self) -> int | None:
        return self.worker.next_deadline_ms()

    def crash(self) -> None:
        self.worker.crash()

    def present(self) -> Iterable[LedgerEvent]:
        return self.worker.present()


def _worker_counts(
    models: Mapping[str, EffectModelLike[OutcomeLike]],
    default: int,
    asked: Mapping[str, int] | None,
) -> dict[str, int]:
    counts = {}
    for place, model in models.items():
        hint = getattr(model, "workers", None)
        count = (asked or {}).get(place, hint if isinstance(hint, int) else default)
        if not 1 <= count <= WORKERS_PER_QUEUE_MAX:
            raise SimError(
                f"what-if: {count} workers for work queue {place!r}; expected "
                f"1..{WORKERS_PER_QUEUE_MAX}"
            )
        counts[place] = count
    unknown = sorted(set(asked or {}) - set(models))
    if unknown:
        raise SimError(
            f"what-if: workers asked for {unknown[0]!r}, which is not a work queue "
            f"(work queues: {', '.join(models) or 'none'})"
        )
    return counts


# -- one seed ----------------------------------------------------------------------------------


def measure(
    seed: int,
    config: SimConfig,
    net: Net | None = None,
    *,
    workers: Mapping[str, int] | None = None,
    link_ms: tuple[int, int] | None = None,
) -> SeedFigures:
    """Run ``seed`` of ``config`` with every fault off and measure it (module docstring).

    ``workers`` overrides, per work-queue place, how many simulated workers lease from
    it (default: the place's effect model's ``workers`` attribute, else
    ``config.workers_per_queue``). ``link_ms`` sets every link's latency bounds
    ``(min, max)`` in place of the runner's (1..5 ms): a what-if of the network.

    Raises:
        SimError: the configuration cannot run (a net without effect models, a bad
            worker count).
        InvariantBroken: a per-step invariant failed.
    """
    # No faults, and no heal phase: healing would put the runner's link model back.
    config = dataclasses.replace(config, faults=NO_FAULTS, heal_at_fraction=1.0)
    probe_sim = ClusterSim(seed, config, net)  # only to read the models and counts
    counts = _worker_counts(probe_sim.models, config.workers_per_queue, workers)
    widest = max(counts.values(), default=config.workers_per_queue)
    if widest != config.workers_per_queue:
        # The world keeps a clock per node it was built with: build it with the most
        # workers any place needs, then leave out those a place does not.
        config = dataclasses.replace(config, workers_per_queue=widest)
        sim = ClusterSim(seed, config, probe_sim.net)
    else:
        sim = probe_sim
    probe = _Probe(sim.base_setup.net, sim.models)
    world = sim.world
    for node, actor in sim.shard_actors.items():
        world.actors[node] = _ShardProbe(actor, probe)
    workers_kept: list[Worker] = []
    for place, model in sim.models.items():
        for index in range(config.workers_per_queue):
            name = f"worker-{place}-{index}"
            assert name in world.actors, f"the runner names its workers otherwise: {name}"
            if index >= counts[place]:
                del world.actors[name]
                continue
            effects = _PlannedEffects(place, model, probe)
            worker = Worker(
                name,
                place,
                effects,
                roster=sim.roster,
                seed=seed,
                plan=sim.plan,
                rng=derived_random(seed, "worker", name),
                faults=sim.faults,
            )
            workers_kept.append(worker)
            world.actors[name] = _WorkerProbe(worker, effects)
    sim.workers = workers_kept
    if link_ms is not None:
        low, high = link_ms
        if not 0 <= low <= high:
            raise SimError(f"what-if: link latency {low}..{high} ms; expected 0 <= min <= max")
        world.network.set_model(LinkModel(latency_ms_min=low, latency_ms_max=high))
    result = sim.run()
    end_ms = result.virtual_ms
    quiesced = _quiesced(sim, probe, end_ms)
    first_ms = probe.started_ms or 0
    last_ms = probe.last_firing_ms if quiesced else None
    makespan = None if last_ms is None else last_ms - first_ms
    window = makespan if makespan is not None else end_ms - first_ms
    places, queues = probe.close(first_ms + window)
    firings = 0
    transitions = []
    for name, latencies in probe.latencies.items():
        firings += len(latencies)
        transitions.append(
            TransitionFigures(name, len(latencies), _per_s(len(latencies), window),
                              Summary.of(latencies))
        )  # fmt: skip
    # The hooks go on each core after its start: a firing in a start's own turn would
    # be missed, and the counts would disagree with the shards' own.
    assert firings == result.firings, f"probed {firings} firings, shards fired {result.firings}"
    return SeedFigures(
        seed=seed,
        failure=result.failure,
        virtual_ms=end_ms,
        started_ms=first_ms,
        quiesced=quiesced,
        makespan_ms=makespan,
        window_ms=window,
        firings=firings,
        per_s=_per_s(firings, window),
        transitions=tuple(transitions),
        places=places,
        queues=queues,
        handoffs=result.handoffs,
        events=result.events,
        workers=tuple(counts.items()),
    )


def _per_s(count: int, window_ms: int) -> float:
    return count * 1_000 / window_ms if window_ms > 0 else 0.0


def _quiesced(sim: ClusterSim, probe: _Probe, end_ms: int) -> bool:
    last = probe.last_firing_ms
    if last is None or end_ms - last < QUIET_MS_MIN:
        return False
    for queue in probe.queues:
        if probe.counts[queue] or probe.counts[f"{queue}{COMPANION_MARK}held"]:
            return False
    for node, actor in sim.shard_actors.items():
        core = actor.core
        if core is None or node in sim.world.retired:
            continue
        enabled = core.engine.enabled(end_ms)
        if any(COMPANION_MARK not in name for name, _binding in enabled):
            return False
    return True


def what_if(
    config: SimConfig,
    *,
    seeds: Sequence[int],
    workers: Mapping[str, int] | None = None,
    link_ms: tuple[int, int] | None = None,
    progress: Callable[[SeedFigures], None] | None = None,
) -> WhatIfReport:
    """Run every seed of ``config`` with the faults off and report (module docstring).

    ``config.faults`` and ``config.heal_at_fraction`` are ignored (a what-if run has no
    faults). ``workers`` sets, per work-queue place, how many simulated workers lease
    from it, ``link_ms`` the links' latency bounds (see :func:`measure`); ``progress``
    is called after each seed.

    Raises:
        SimError: no seed, too many, or a configuration that cannot run.
        InvariantBroken: a per-step invariant failed (a bug in the cores).
    """
    if not seeds:
        raise SimError("what-if: no seed to run; give at least one")
    if len(seeds) > SEEDS_MAX:
        raise SimError(f"what-if: {len(seeds)} seeds, at most {SEEDS_MAX}")
    figures = []
    for seed in seeds:
        found = measure(seed, config, workers=workers, link_ms=link_ms)
        figures.append(found)
        if progress is not None:
            progress(found)
    return WhatIfReport(config, tuple(figures), dict(figures[0].workers))
