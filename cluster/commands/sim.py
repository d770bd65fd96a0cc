"""``cpn sim``: run many seeds of the whole cluster simulated, and report what they found.

The seeds run one after another in this process (cluster/sim/campaign.py says what a
seed's run means); this module owns what a shell owns: the wall clock, the progress
line, the temporary directory of ``--store lmdb``, the environment of a determinism
rerun, and the exit code.

Exit codes: 0 every seed passed (and, with ``--check-determinism``, replayed byte for
byte), 1 a seed failed or diverged, 2 usage or input error (raised as
:class:`~nets.errors.CpnError` and turned into one line by cluster/cli.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final, TextIO

import click

from cluster.commands.options import (
    DURATION,
    allow_impure_option,
    net_params_option,
    refuse_impure,
)
from cluster.sim import cluster_run
from cluster.sim.campaign import (
    INVARIANT,
    STUCK,
    CampaignReport,
    Failure,
    SeedOutcome,
    config_in_environment,
    replay_command,
    run_seed,
    steps_that_matter,
)
from cluster.sim.cluster_run import SHARDS_MAX_SIM, SimConfig, SimError
from cluster.sim.faults import parse_faults
from cluster.sim.trace import DeterminismReport, Trace, check_determinism
from cluster.sim.whatif import what_if
from nets.loader import load_net
from nets.model import Net

EXIT_PASSED, EXIT_FAILED = 0, 1
RUNNER: Final = "cluster.sim.cluster_run:run"  # the determinism rerun's entry point
PLAIN_PROGRESS_LINES: Final = 10  # lines a non-terminal gets over a whole run
SEEDS_MAX: Final = 10_000_000


class Progress:
    """The progress line on stderr: updated in place on a terminal, plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.every = max(1, total // PLAIN_PROGRESS_LINES)
        self.width = 0

    def show(self, done: int, failed: int, virtual_s: float, wall_s: float) -> None:
        if not self.enabled:
            return
        ratio = f"{virtual_s / wall_s:,.1f}" if wall_s > 0 else "-"
        line = (
            f"cpn sim: {done:,}/{self.total:,} seeds, {failed:,} failed, "
            f"{ratio} virtual s per wall s"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            if done == self.total:
                self.stream.write("\n")
                self.width = 0
        elif done % self.every == 0 or done == self.total:
            self.stream.write(line + "\n")
        self.stream.flush()

    def interrupt(self) -> None:
        """Something else is printed: end the line being updated."""
        if self.enabled and self.tty and self.width:
            self.stream.write("\n")
            self.width = 0


def _scratch(config: SimConfig, seed: int) -> None:
    """Forget a seed's LMDB files: every run of a seed must start from empty stores."""
    if config.store == "lmdb":
        shutil.rmtree(Path(config.lmdb_dir) / f"seed-{seed}", ignore_errors=True)


def _with_lmdb_dir(config: SimConfig, lmdb_dir: Path) -> SimConfig:
    return dataclasses.replace(config, lmdb_dir=str(lmdb_dir))


def check_seed(config: SimConfig, outcome: SeedOutcome, trace: Trace) -> DeterminismReport | None:
    """Run ``outcome``'s seed again in a fresh interpreter and compare (None: not checked).

    A stuck seed is not rerun (the child would be stuck as long, and fail). A seed that
    broke an invariant is run here again through the runner, whose trace of such a seed
    is the failure alone. Under ``--store lmdb`` each run gets empty stores of its own.

    Raises:
        TraceError: the rerun could not be run or read.
    """
    if outcome.kind == STUCK:
        return None
    seed = outcome.seed
    local: Trace | None = trace
    here, child = config, config
    if config.store == "lmdb":
        here = _with_lmdb_dir(config, Path(config.lmdb_dir) / "determinism-here")
        child = _with_lmdb_dir(config, Path(config.lmdb_dir) / "determinism-child")
    try:
        if outcome.kind == INVARIANT:
            with config_in_environment(here):
                local = cluster_run.run(seed)
        with config_in_environment(child):
            return check_determinism(RUNNER, seed, local=local)
    finally:
        _scratch(here, seed)
        _scratch(child, seed)


def validate(config: SimConfig, seed: int) -> Net:
    """Refuse what no seed could run, before running any (a one-line error each);
    return the net as seed ``seed`` builds it.

    Raises:
        UnknownFault, FaultError: ``--faults`` does not parse.
        LoadError: NET does not load.
        SimError: the net lacks an effect model for a work-queue place (named), or a
            setting is out of range.
    """
    if config.until_ms <= 0:
        raise SimError(f"--until must be a positive duration, got {config.until_ms} ms")
    if config.faults:
        parse_faults(config.faults)
    net = load_net(config.net_path, seed=seed, params=config.params)
    cluster_run.effect_models(net)
    return net


def failure_of(config: SimConfig, outcome: SeedOutcome) -> Failure:
    """The failing seed's story: replayed with frames in full, its steps that matter."""
    _scratch(config, outcome.seed)
    replayed, trace = run_seed(outcome.seed, config, verbose=True)
    _scratch(config, outcome.seed)
    steps = steps_that_matter(trace, replayed.needles)
    if replayed.failure != outcome.failure:
        # The same seed must fail the same way; only the frames' rendering differs.
        steps.insert(0, f"(the replay with frames in full ended otherwise: {replayed.failure!r})")
    replay = replay_command(config, outcome.seed)
    return Failure(outcome.seed, outcome.kind, outcome.failure, replay, tuple(steps))


@click.command()
@click.argument("net_path", metavar="NET")
@click.option(
    "--seeds",
    "seed_count",
    type=click.IntRange(1, SEEDS_MAX),
    default=1,
    show_default=True,
    help="How many seeds to run, one after another.",
)
@click.option(
    "--seed",
    "first_seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The first seed.",
)
@click.option(
    "--shards",
    type=click.IntRange(1, SHARDS_MAX_SIM),
    default=3,
    show_default=True,
    help="Shards the cluster starts with.",
)
@click.option(
    "--faults",
    default="",
    metavar="NAME[=RATE],...",
    help="The faults to inject, e.g. drop=0.01,partition; 'none' for none. "
    "Default: each seed chooses at least 3 of the menu (docs/simulation.md).",
)
@click.option(
    "--until",
    "until_ms",
    type=DURATION,
    default="60s",
    show_default=True,
    help="Virtual time per seed (e.g. 10s, 2m); the faults stop half way, then it must drain.",
)
@net_params_option
@click.option("--json", "as_json", is_flag=True, help="End with the report as one JSON line.")
@click.option(
    "--check-determinism",
    "determinism",
    is_flag=True,
    help="Run each seed again in a fresh interpreter with another PYTHONHASHSEED; "
    "fail at the first divergence.",
)
@click.option(
    "--store",
    type=click.Choice(["memory", "lmdb"]),
    default="memory",
    show_default=True,
    help="The shards' stores: simulated, or real LMDB files in a temporary directory.",
)
@click.option(
    "--report",
    "what_if_report",
    is_flag=True,
    help="What-if instead of what-breaks: run the seeds with every fault off and report "
    "throughput, waits per transition, place occupancy, lease turnaround and makespan "
    "(docs/simulation-whatif.md); compare two --net-param or --shards settings.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
@allow_impure_option
def sim(
    net_path: str,
    seed_count: int,
    first_seed: int,
    shards: int,
    faults: str,
    until_ms: int,
    net_params: tuple[tuple[str, Any], ...],
    as_json: bool,
    determinism: bool,
    store: str,
    what_if_report: bool,
    quiet: bool,
    allow_impure: bool,
) -> None:
    """Simulate the whole cluster running NET (package.module:attr) under faults, per seed.

    Each seed runs the router and the shard cores on one virtual clock, with simulated
    workers (the net's effect models), and checks the invariants at every step and the
    token ledger at the end. A failing seed prints the command that replays it.
    Exit 0: every seed passed; 1: a seed failed or diverged; 2: usage or input error.
    """
    with contextlib.ExitStack() as stack:
        lmdb_dir = ""
        if store == "lmdb":
            lmdb_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cpn-sim-"))
        config = SimConfig(
            net_path,
            params=dict(net_params),
            shards=shards,
            until_ms=until_ms,
            faults=faults.strip(),
            store=store,
            lmdb_dir=lmdb_dir,
        )
        refuse_impure(validate(config, first_seed), allow_impure=allow_impure)
        seeds = range(first_seed, first_seed + seed_count)
        if what_if_report:
            _what_if(config, seeds, as_json, quiet)
            return
        report = run_seeds(
            config, range(first_seed, first_seed + seed_count), as_json, determinism, quiet
        )
    sys.exit(EXIT_PASSED if report.ok else EXIT_FAILED)


def _what_if(config: SimConfig, seeds: range, as_json: bool, quiet: bool) -> None:
    """``--report``: the seeds with the faults off, measured (cluster/sim/whatif.py)."""
    progress = Progress(len(seeds), sys.stderr, enabled=not quiet)
    started = time.perf_counter()
    done = 0

    def seed_done(_figures: object) -> None:
        nonlocal done
        done += 1
        progress.show(done, 0, done * config.until_ms / 1000, time.perf_counter() - started)

    report = what_if(config, seeds=seeds, progress=seed_done)
    progress.interrupt()
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        click.echo(report.render())


def run_seeds(
    config: SimConfig, seeds: range, as_json: bool, determinism: bool, quiet: bool
) -> CampaignReport:
    """Run ``seeds`` in order, printing failures as found and the report at the end."""
    progress = Progress(len(seeds), sys.stderr, enabled=not quiet)
    report = CampaignReport(config)
    if determinism:
        report.deterministic = True
    started = time.perf_counter()
    running_s = 0.0  # wall time inside the seeds' runs: the speed figure
    diverged = None
    for seed in seeds:
        _scratch(config, seed)
        before = time.perf_counter()
        outcome, trace = run_seed(seed, config)
        running_s += time.perf_counter() - before
        _scratch(config, seed)
        report.add(outcome)
        if not outcome.ok:
            failure = failure_of(config, outcome)
            report.fail(failure)
            if not as_json:
                progress.interrupt()
                click.echo(failure.render())
        if determinism:
            checked = check_seed(config, outcome, trace)
            if not as_json:
                progress.interrupt()
                click.echo(str(checked) if checked else f"seed {seed}: stuck, not rerun")
            if checked is not None and not checked.ok:
                report.deterministic = False
                diverged = seed
                break
        progress.show(report.seeds, len(report.failures), report.virtual_ms / 1000, running_s)
    progress.interrupt()
    data = report.to_json(running_s)
    data["elapsed_s"] = round(time.perf_counter() - started, 3)
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        click.echo(report.render(running_s))
        if diverged is not None:
            click.echo(f"  stopped at seed {diverged}: it diverged")
    return report
