"""`cpn sim` as a user runs it: the report, its JSON, exit codes, errors, a failing
seed's replay command, the determinism check and real LMDB stores.

Every run is the crawler on a small site (4 domains) for 20 s of virtual time: about a
second a seed on one core.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import CliRunner, Result

from cluster import cli as cli_module
from cluster.cli import cli
from cluster.commands.sim import Progress
from cluster.sim import cluster_run, world
from cluster.sim.campaign import duration_text, replay_command
from cluster.sim.cluster_run import SimConfig
from cluster.sim.ledger import LedgerEvent, LedgerReport, Present, check
from nets.model import Net, Place, Transition, variables

pytestmark = pytest.mark.simulation

NET = "nets.scraper:net"
SMALL = ["--until", "20s", "--net-param", "site_domains=4"]
JSON_KEYS = {
    "net",
    "params",
    "shards",
    "until_ms",
    "faults_given",
    "store",
    "seeds",
    "first_seed",
    "passed",
    "failed",
    "faults",
    "faults_total",
    "firings",
    "handoffs",
    "leases",
    "completions",
    "virtual_s",
    "wall_s",
    "elapsed_s",
    "virtual_over_wall",
    "seeds_per_min",
    "deterministic",
    "digest",
    "digests",
    "failures",
}


class Job(NamedTuple):
    name: str


def queue_without_effects() -> Net:
    """A net with a work-queue place and no effect model for it: `cpn sim` refuses it."""
    todo = Place("todo", Job, key="name", initial=[Job("a")])
    jobs = Place("jobs", Job, key="name", work_queue=True, results=())
    (j, n) = variables("j n")
    hand_out = Transition("hand_out", consume=[todo(j, name=n)], produce=[jobs.produce(j)])
    return Net("no_effects", places=[todo, jobs], transitions=[hand_out])


def _sim(*args: str) -> Result:
    return CliRunner().invoke(cli, ["sim", NET, *args])


def _cpn_main(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``cpn ARGV`` through the console script's entry point (where errors become lines)."""
    monkeypatch.setattr("sys.argv", ["cpn", *argv])
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    return int(exited.value.code or 0)


def test_the_report_counts_what_the_seeds_did_and_the_json_says_the_same() -> None:
    text = _sim("--seeds", "2", *SMALL, "--quiet")
    assert text.exit_code == 0, text.output
    assert "seeds          2 (0..1): 2 passed, 0 failed" in text.output
    for label in ("faults", "firings", "handoffs", "leases", "virtual time", "wall time"):
        assert f"\n  {label} " in text.output
    assert "virtual s per wall s" in text.output
    digests = dict(
        line.strip().removeprefix("seed ").split(": ")
        for line in text.output.splitlines()
        if line.startswith("    seed ")
    )
    assert sorted(digests) == ["0", "1"]

    single = _sim("--seed", "1", *SMALL, "--json")
    assert single.exit_code == 0, single.output
    report = json.loads(single.stdout.strip().splitlines()[-1])
    assert set(report) == JSON_KEYS
    assert report["seeds"] == 1 and report["failed"] == 0 and report["failures"] == []
    assert report["digests"] == {"1": digests["1"]}  # a seed's trace is the same every run
    assert report["firings"] > 0 and report["leases"] > 0 and report["virtual_s"] == 20.0
    assert report["deterministic"] is None
    # The progress line goes to stderr, as plain lines when stderr is not a terminal.
    assert "cpn sim: 1/1 seeds, 0 failed" in single.stderr


def test_errors_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cpn_main(["sim", NET, "--faults", "drop,earthquake"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("cpn: error: unknown fault 'earthquake'; known faults: drop, ")
    assert len(err.strip().splitlines()) == 1

    net = f"{__name__}:queue_without_effects"
    assert _cpn_main(["sim", net], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "no effect model for its work-queue place(s) jobs" in err
    assert len(err.strip().splitlines()) == 1

    assert _cpn_main(["sim", NET, "--until", "soon"], monkeypatch) == 2
    assert "'soon' is not a duration" in capsys.readouterr().err


def _check_losing_a_token(history: Iterable[LedgerEvent], *, drained: bool) -> LedgerReport:
    """The ledger's check, told that the first token present at the end vanished."""
    events = list(history)
    first = next(i for i, e in enumerate(events) if isinstance(e, Present))
    return check(events[:first] + events[first + 1 :], drained=drained)


def test_a_failing_seed_prints_its_replay_command_which_fails_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(world, "check", _check_losing_a_token)
    failed = _sim("--seed", "1", *SMALL, "--faults", "drop,crash_shard")
    assert failed.exit_code == 1, failed.output
    head = next(line for line in failed.output.splitlines() if "FAILED (ledger)" in line)
    assert head.startswith("seed 1 FAILED (ledger): ledger: 1 violation")
    assert "balance" in failed.output
    (replay,) = [line for line in failed.output.splitlines() if line.startswith("  replay: ")]
    words = shlex.split(replay.removeprefix("  replay: "))
    assert words[:6] == ["cpn", "sim", NET, "--seed", "1", "--seeds"]
    assert "--faults" in words and "drop,crash_shard" in words
    assert "  the steps that matter:" in failed.output
    assert " world end " in failed.output  # the story ends with the run's last line

    replayed = CliRunner().invoke(cli, words[1:])
    assert replayed.exit_code == 1, replayed.output
    assert head in replayed.output
    assert "1 passed" not in replayed.output and "0 passed, 1 failed" in replayed.output


def test_a_broken_invariant_fails_its_seed_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = cluster_run.Invariants.check

    def check(self: cluster_run.Invariants, run: world.World) -> None:
        if self.sim.seed == 0 and run.schedule.now_ms >= 5_000:
            raise cluster_run.InvariantBroken(
                f"one owner per slot: slot 7 may fire on shard-0 and on shard-1 "
                f"at t={run.schedule.now_ms}ms"
            )
        real(self, run)

    monkeypatch.setattr(cluster_run.Invariants, "check", check)
    result = _sim("--seeds", "2", *SMALL, "--json", "--quiet")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seeds"] == 2 and report["passed"] == 1
    (failure,) = report["failures"]
    assert failure["seed"] == 0 and failure["kind"] == "invariant"
    assert failure["failure"].startswith("InvariantBroken: one owner per slot: slot 7")
    assert failure["replay"] == f"cpn sim {NET} --seed 0 --seeds 1 " + " ".join(
        ["--shards", "3", "--until", "20s", "--net-param", "site_domains=4"]
    )
    # The story is the steps of the nodes it names, with their frames' fields.
    assert any("shard-1" in step and "Envelope(" in step for step in failure["steps"])


def test_check_determinism_on_real_lmdb_stores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    memory = _sim("--seed", "2", *SMALL, "--json", "--quiet")
    lmdb = _sim("--seed", "2", *SMALL, "--store", "lmdb", "--check-determinism")
    assert lmdb.exit_code == 0, lmdb.output
    digest = json.loads(memory.stdout.strip().splitlines()[-1])["digests"]["2"]
    assert "seed 2: " in lmdb.output and f"digest {digest} (same)" in lmdb.output
    assert "determinism    same in a fresh interpreter" in lmdb.output
    assert list(tmp_path.iterdir()) == []  # the LMDB files are gone


def test_the_replay_command_reads_back_as_the_same_settings() -> None:
    config = SimConfig(
        NET,
        params={"site_domains": 4, "name": "a b", "hosts": ["x", "y"]},
        shards=2,
        until_ms=1_500,
        faults="drop=0.5,partition",
        store="lmdb",
    )
    words = shlex.split(replay_command(config, 42))
    assert words[words.index("--until") + 1] == "1500ms"
    assert 'name="a b"' in words and 'hosts=["x","y"]' in words
    assert duration_text(60_000) == "60s"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_is_updated_in_place_on_a_terminal_only() -> None:
    terminal, plain = _Terminal(), io.StringIO()
    for stream in (terminal, plain):
        progress = Progress(20, stream)
        for done in range(1, 21):
            progress.show(done, done // 10, virtual_s=done * 60.0, wall_s=done * 2.0)
    assert terminal.getvalue().count("\r") == 20 and terminal.getvalue().count("\n") == 1
    assert terminal.getvalue().endswith(
        "cpn sim: 20/20 seeds, 2 failed, 30.0 virtual s per wall s\n"
    )
    assert plain.getvalue().count("\n") == 10 and "\r" not in plain.getvalue()


class _LostToken:
    """A mutation as tests/simulation/mutations.py declares them: the ledger loses a token."""

    config = SimConfig(NET, params={"site_domains": 4}, until_ms=20_000, faults="drop")
    recorded_seed = 1

    @contextlib.contextmanager
    def apply(self) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(world, "check", _check_losing_a_token)
            yield


def test_the_benchmark_replays_each_mutation_s_recorded_seed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import sim as bench_sim

    monkeypatch.setattr(bench_sim, "load_mutations", lambda: {"lost_token": _LostToken()})
    assert bench_sim.check_mutations(quick=True) == (1, 1)
    assert "mutation lost_token: caught, replayed: ledger: 1 violation" in capsys.readouterr().out


def test_the_full_benchmark_searches_from_seed_0_and_runs_the_search_again_without_the_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import sim as bench_sim

    monkeypatch.setattr(bench_sim, "load_mutations", lambda: {"lost_token": _LostToken()})
    assert bench_sim.check_mutations(quick=False) == (1, 1)
    out = capsys.readouterr().out
    # The search finds the bug at seed 0, before the recorded seed 1: it says so.
    assert (
        "mutation lost_token: caught, found at seed 0 "
        "(1 seeds searched; the recorded seed is 1: update it)"
    ) in out
    assert "without it seeds 0..0 pass" in out


def test_report_measures_the_run_with_faults_off() -> None:
    runner = CliRunner()
    args = ["sim", NET, "--report", "--quiet", "--seeds", "1", "--until", "30s"]
    args += ["--net-param", "site_domains=3", "--net-param", "site_pages=3"]
    shown = runner.invoke(cli, args)
    assert shown.exit_code == 0, shown.output
    assert "makespan:" in shown.output and "no faults" in shown.output
    as_json = runner.invoke(cli, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    figures = json.loads(as_json.output.strip().splitlines()[-1])
    assert figures["ok"] and figures["seeds"] == [0] and figures["quiesced"] == 1
    assert figures["makespan_ms"] and figures["transitions"]["page_fetched"]
    assert set(figures["queues"]) == {"fetch_queue", "parse_queue", "store_queue"}
