"""Many seeds of one simulation: each seed's outcome, a failure's story, and the report.

``cpn sim`` (cluster/commands/sim.py) and ``bench/sim.py`` run seeds through this module;
they own the wall clock, the terminal and the temporary directories, this module owns
what a seed's run means.

Theory of operation:

* **One seed, one outcome.** :func:`run_seed` runs :class:`~cluster.sim.cluster_run.
  ClusterSim` for a seed and turns every way it can end into a :class:`SeedOutcome`: it
  passed; the ledger or the drained cluster's checks failed (the run's own
  ``failure``); a per-step invariant broke (``InvariantBroken``), the run took too many
  events (``SimulationStuck``) or piled up too many (``ScheduleFull``). The last three
  raise out of the run, so the adapter keeps the world's trace up to the failure,
  which :func:`~cluster.sim.cluster_run.simulate` cannot return. Any other error is a
  setting or a net that cannot run, and propagates.
* **The steps that matter.** A failure names what it is about: a ledger violation its
  (place, value), an invariant the nodes and the places in its message. Those become
  *needles* (a value in its canonical trace form, a node's name, a quoted place), and
  :func:`steps_that_matter` keeps the trace lines that contain one, plus every life
  event (starts, crashes, fault points, retirements, skews, scaling, the heal), cut to
  head and tail by :func:`~cluster.sim.trace.shorten`. A replay runs with
  ``verbose=True``, so frames show their fields and a token's value can be found in
  them.
* **One command replays a seed.** :func:`replay_command` writes the ``cpn sim`` line
  that runs exactly that seed with the same settings. A seed's plan is a pure function
  of the seed (or the ``--faults`` given), so nothing else is needed.
* **The report.** :class:`CampaignReport` sums the outcomes: faults injected by kind,
  firings, handoffs, leases, completions, virtual time; it keeps each seed's trace
  digest and a combined digest (BLAKE2b over ``SEED DIGEST`` lines in seed order) that
  names the whole campaign. Wall time is given by the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cluster.sim.cluster_run import CONFIG_ENV, ClusterSim, InvariantBroken, SimConfig
from cluster.sim.faults import NAMES as FAULT_NAMES
from cluster.sim.schedule import ScheduleFull
from cluster.sim.trace import DIGEST_BYTES, Trace, canonical, shorten
from cluster.sim.world import SimulationStuck
from nets.errors import CpnError

# What a failing seed's story keeps: the first and last lines of its steps that matter.
STORY_HEAD: Final = 10
STORY_TAIL: Final = 30
VIOLATIONS_TRACED_MAX: Final = 3  # ledger violations whose values are looked for
# Trace kinds that change who is up, where, or when: always part of the story.
LIFE_KINDS: Final = frozenset(
    {
        "start",
        "crash",
        "crash_armed",
        "crash_after_commit",
        "fault_point",
        "retire",
        "skew",
        "scale",
        "heal_all",
        "down_at_end",
        "end",
    }
)
_NODE = re.compile(r"\b(router|shard-\d+|worker-[A-Za-z0-9_]+-\d+)\b")

# How a seed ended, for the report.
PASSED: Final = "passed"
LEDGER: Final = "ledger"
DRAIN: Final = "drain"  # the drained cluster's checks at the end
INVARIANT: Final = "invariant"
STUCK: Final = "stuck"


@dataclass(frozen=True, slots=True)
class SeedOutcome:
    """What one seed's run did, and how it ended (``kind`` is :data:`PASSED` or a failure)."""

    seed: int
    plan: str
    kind: str
    failure: str
    needles: tuple[str, ...]
    digest: str
    events: int
    virtual_ms: int
    firings: int
    handoffs: int
    leases: int
    completions: int
    faults: Mapping[str, int]

    @property
    def ok(self) -> bool:
        return self.kind == PASSED


def run_seed(seed: int, config: SimConfig, *, verbose: bool = False) -> tuple[SeedOutcome, Trace]:
    """Run ``seed`` of ``config``; its outcome and trace (up to the failure, if one broke).

    Raises:
        SimError, LoadError, FaultError...: the configuration cannot run (not a seed's
            failure: every seed would fail the same way).
    """
    sim = ClusterSim(seed, config, verbose=verbose)
    try:
        result = sim.run()
    except (InvariantBroken, SimulationStuck, ScheduleFull) as exc:
        kind = INVARIANT if isinstance(exc, InvariantBroken) else STUCK
        failure = f"{type(exc).__name__}: {exc}"
        trace = sim.world.trace
        shards = sim.shard_actors.values()
        outcome = SeedOutcome(
            seed,
            sim.plan.describe(),
            kind,
            failure,
            _message_needles(str(exc), sim.net.places),
            trace.digest(),
            len(trace),
            sim.world.schedule.now_ms,
            sum(a.firings for a in shards),
            sum(a.handoffs for a in shards),
            sum(w.leased for w in sim.workers),
            sum(w.completed for w in sim.workers),
            sim.faults.by_kind(),
        )
        return outcome, trace
    needles: tuple[str, ...] = ()
    if result.ok:
        kind = PASSED
    elif not result.ledger.ok:
        kind = LEDGER
        needles = tuple(
            dict.fromkeys(
                canonical(v.value) for v in result.ledger.violations[:VIOLATIONS_TRACED_MAX]
            )
        )
    else:
        kind, needles = DRAIN, _message_needles(result.failure, sim.net.places)
    outcome = SeedOutcome(
        seed,
        result.plan.describe(),
        kind,
        result.failure,
        needles,
        result.trace.digest(),
        len(result.trace),
        result.virtual_ms,
        result.firings,
        result.handoffs,
        result.leases,
        result.completions,
        result.faults.by_kind(),
    )
    return outcome, result.trace


def seed_failure(seed: int, config: SimConfig) -> str:
    """Why ``seed`` of ``config`` fails ('' if it passes), for a search for a bug put back
    (tests/simulation/mutations.py, bench/sim.py). A run that crashes fails too: a bug may
    break the simulated store's contracts rather than the ledger.

    Raises:
        CpnError: the configuration cannot run (every seed would fail the same way).
    """
    try:
        outcome, _ = run_seed(seed, config)
    except CpnError:
        raise
    except Exception as exc:  # noqa: BLE001 - a crash is this seed's failure (docstring)
        return f"{type(exc).__name__}: {exc}"
    return outcome.failure


def _message_needles(message: str, places: Sequence[Any]) -> tuple[str, ...]:
    """The nodes a failure message names, and the places it names (quoted, as in frames)."""
    nodes = _NODE.findall(message)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message))
    named = [json.dumps(p.name) for p in places if p.name in words]
    return tuple(dict.fromkeys([*nodes, *named]))


def steps_that_matter(
    trace: Trace, needles: Sequence[str], *, head: int = STORY_HEAD, tail: int = STORY_TAIL
) -> list[str]:
    """The trace lines that contain a needle, and every life event, shortened."""
    picked = [
        (index, line)
        for index, line in enumerate(trace.lines())
        if _life(line) or any(needle in line for needle in needles)
    ]
    return shorten(picked, head=head, tail=tail)


def _life(line: str) -> bool:
    """A life event, but not the first starts at time 0 (every run has them)."""
    parts = line.split(" ", 3)
    return (
        len(parts) > 2 and parts[2] in LIFE_KINDS and not (parts[0] == "0" and parts[2] == "start")
    )


# -- replaying ---------------------------------------------------------------------------


def duration_text(ms: int) -> str:
    """``60s`` or ``1500ms``: how ``--until`` is written back (read by
    cluster/commands/options.py)."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def sim_options(config: SimConfig) -> list[str]:
    """The ``cpn sim`` options that give ``config`` (besides NET and the seeds)."""
    options = ["--shards", str(config.shards), "--until", duration_text(config.until_ms)]
    if config.faults:
        options += ["--faults", config.faults]
    for key, value in config.params.items():
        options += ["--net-param", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    if config.store != "memory":
        options += ["--store", config.store]
    return options


def replay_command(config: SimConfig, seed: int) -> str:
    """The one ``cpn sim`` command that runs ``seed`` of ``config`` again."""
    words = ["cpn", "sim", config.net_path, "--seed", str(seed), "--seeds", "1"]
    return shlex.join([*words, *sim_options(config)])


@contextlib.contextmanager
def config_in_environment(config: SimConfig) -> Iterator[None]:
    """``CPN_SIM_CONFIG`` set to ``config`` for a determinism rerun (the runner
    ``cluster.sim.cluster_run:run`` reads it, here and in the child), then put back."""
    before = os.environ.get(CONFIG_ENV)
    os.environ[CONFIG_ENV] = config.to_json()
    try:
        yield
    finally:
        if before is None:
            del os.environ[CONFIG_ENV]
        else:
            os.environ[CONFIG_ENV] = before


# -- the report --------------------------------------------------------------------------


def combined_digest(digests: Mapping[int, str]) -> str:
    """One digest for many seeds: BLAKE2b over ``SEED DIGEST`` lines, in seed order."""
    hasher = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for seed in sorted(digests):
        hasher.update(f"{seed} {digests[seed]}\n".encode())
    return hasher.hexdigest()


@dataclass(frozen=True, slots=True)
class Failure:
    """A failing seed as the report shows it: what failed, its replay and its story."""

    seed: int
    kind: str
    failure: str
    replay: str
    steps: tuple[str, ...]

    def render(self) -> str:
        lines = [f"seed {self.seed} FAILED ({self.kind}): {self.failure}"]
        lines.append(f"  replay: {self.replay}")
        if self.steps:
            lines.append("  the steps that matter:")
            lines += [f"    {line}" for line in self.steps]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "kind": self.kind,
            "failure": self.failure,
            "replay": self.replay,
            "steps": list(self.steps),
        }


@dataclass(slots=True)
class CampaignReport:
    """The sums over the seeds run so far (see the module docstring)."""

    config: SimConfig
    seeds: int = 0
    firings: int = 0
    handoffs: int = 0
    leases: int = 0
    completions: int = 0
    virtual_ms: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    digests: dict[int, str] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    deterministic: bool | None = None  # None: not checked

    def add(self, outcome: SeedOutcome) -> None:
        self.seeds += 1
        self.firings += outcome.firings
        self.handoffs += outcome.handoffs
        self.leases += outcome.leases
        self.completions += outcome.completions
        self.virtual_ms += outcome.virtual_ms
        self.faults.update(outcome.faults)
        self.digests[outcome.seed] = outcome.digest

    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)

    @property
    def ok(self) -> bool:
        return not self.failures and self.deterministic is not False

    def faults_by_kind(self) -> dict[str, int]:
        """Faults injected, summed over the seeds, in menu order."""
        return {name: self.faults[name] for name in FAULT_NAMES if self.faults[name]}

    def to_json(self, wall_s: float) -> dict[str, Any]:
        """The report as one JSON object; ``wall_s``: the wall time the seeds took."""
        virtual_s = self.virtual_ms / 1000
        return {
            "net": self.config.net_path,
            "params": dict(self.config.params),
            "shards": self.config.shards,
            "until_ms": self.config.until_ms,
            "faults_given": self.config.faults or None,
            "store": self.config.store,
            "seeds": self.seeds,
            "first_seed": min(self.digests, default=None),
            "passed": self.seeds - len(self.failures),
            "failed": len(self.failures),
            "faults": self.faults_by_kind(),
            "faults_total": sum(self.faults.values()),
            "firings": self.firings,
            "handoffs": self.handoffs,
            "leases": self.leases,
            "completions": self.completions,
            "virtual_s": round(virtual_s, 3),
            "wall_s": round(wall_s, 3),
            "virtual_over_wall": round(virtual_s / wall_s, 2) if wall_s > 0 else None,
            "seeds_per_min": round(self.seeds * 60 / wall_s, 1) if wall_s > 0 else None,
            "deterministic": self.deterministic,
            "digest": combined_digest(self.digests),
            "digests": {str(seed): self.digests[seed] for seed in sorted(self.digests)},
            "failures": [f.to_json() for f in self.failures],
        }

    def render(self, wall_s: float, *, digests_listed_max: int = 10) -> str:
        """The report as text (the same figures as :meth:`to_json`)."""
        data = self.to_json(wall_s)
        plan = (
            self.config.faults
            if self.config.faults
            else f"chosen per seed (at least {self.config.faults_min})"
        )
        first = data["first_seed"]
        span = f"{first}..{first + self.seeds - 1}" if first is not None else "none"
        faults = ", ".join(f"{name} {count:,}" for name, count in data["faults"].items())
        ratio = data["virtual_over_wall"]
        speed = (
            f"{ratio:,.1f} virtual s per wall s, {data['seeds_per_min']:,.1f} seeds/min"
            if ratio is not None
            else "n/a"
        )
        checked = {None: "not checked", True: "same in a fresh interpreter", False: "DIVERGED"}
        lines = [
            f"cpn sim {self.config.net_path}: {self.config.shards} shards, "
            f"{duration_text(self.config.until_ms)} virtual per seed, "
            f"store {self.config.store}, faults {plan}",
            f"  seeds          {self.seeds:,} ({span}): {data['passed']:,} passed, "
            f"{data['failed']:,} failed",
            f"  faults         {data['faults_total']:,}" + (f" ({faults})" if faults else ""),
            f"  firings        {self.firings:,}",
            f"  handoffs       {self.handoffs:,}",
            f"  leases         {self.leases:,} ({self.completions:,} completed)",
            f"  virtual time   {data['virtual_s']:,.1f} s",
            f"  wall time      {wall_s:,.1f} s ({speed})",
            f"  determinism    {checked[self.deterministic]}",
            f"  digest         {data['digest']} (all seeds)",
        ]
        if len(self.digests) <= digests_listed_max:
            lines += [f"    seed {s}: {d}" for s, d in data["digests"].items()]
        if self.failures:
            listed = ", ".join(str(f.seed) for f in self.failures)
            lines.append(f"  FAILED seeds   {listed}")
        return "\n".join(lines)
