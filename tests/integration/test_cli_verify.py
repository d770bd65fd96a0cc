"""`cpn verify` and `cpn run --replay` as a user runs them: output, traces, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _cpn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def test_the_broken_crawler_gives_a_counterexample_that_replays(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "verify",
            "tests.verify_nets:broken_crawler",
            "--priorities",
            "--trace-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "invariant at_most_concurrency_in_flight: VIOLATED" in result.output
    assert "counterexample: 12 steps" in result.output
    (trace,) = tmp_path.glob("*-invariant-*.trace.json")
    document = json.loads(trace.read_text())
    assert document["net"] == "tests.verify_nets:broken_crawler"
    assert [s["transition"] for s in document["steps"]][-2:] == ["scrape", "scrape"]
    replayed = CliRunner().invoke(
        cli, ["run", "tests.verify_nets:broken_crawler", "--replay", str(trace)]
    )
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 12 steps" in replayed.output
    # A trace that does not match the net is an error naming the step.
    document["steps"][3]["binding"]["t"]["fields"][2] = "https://d0.example/nowhere"
    trace.write_text(json.dumps(document))
    broken = _cpn("run", "tests.verify_nets:broken_crawler", "--replay", str(trace))
    assert broken.returncode == 2
    assert "trace step 4 (scrape)" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1


def test_exit_codes_hold_violated_partial_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    holds = runner.invoke(
        cli,
        [
            "verify",
            "nets.scraper_sim:verified_net",
            "--final",
            "nets.scraper_sim:crawl_finished",
            "--terminates",
        ],
    )
    assert holds.exit_code == 0, holds.output
    assert "Verdict: all properties hold (untimed;" in holds.output
    violated = runner.invoke(
        cli, ["verify", "tests.verify_nets:philosophers", "--trace-dir", str(tmp_path)]
    )
    assert violated.exit_code == 1
    assert "deadlock deadlock_free: VIOLATED" in violated.output
    reached = runner.invoke(
        cli,
        [
            "verify",
            "tests.verify_nets:philosophers",
            "--json",
            "--reachable",
            "tests.verify_nets:someone_eats",
            "--final",
            "tests.verify_nets:all_thinking",
            "--trace-dir",
            str(tmp_path),
        ],
    )
    document = json.loads(reached.output)
    kinds = {p["kind"]: p["status"] for p in document["properties"]}
    assert kinds["reachable"] == "holds" and kinds["deadlock"] == "violated"
    assert document["report"]["statistics"]["nodes"] == 14
    partial = runner.invoke(cli, ["verify", "nets.classic_nets:kanban", "--max-states", "50"])
    assert partial.exit_code == 3
    assert "not violated in 50 states, partial" in partial.output
    timed_out = runner.invoke(
        cli,
        ["verify", "nets.classic_nets:kanban", "--net-param", "n=5", "--mcc", "--timeout", "0.2"],
    )
    assert timed_out.exit_code == 3
    assert "STATE_SPACE STATES CANNOT_COMPUTE" in timed_out.output
    mcc = runner.invoke(cli, ["verify", "nets.classic_nets:kanban", "--net-param", "n=2", "--mcc"])
    assert mcc.exit_code == 0
    assert mcc.output.splitlines()[:2] == [
        "STATE_SPACE STATES 4600 TECHNIQUES EXPLICIT SEQUENTIAL_PROCESSING PACKED_PT",
        "STATE_SPACE TRANSITIONS 28120 TECHNIQUES EXPLICIT SEQUENTIAL_PROCESSING PACKED_PT",
    ]
    open_queue = _cpn("verify", "tests.nets_for_tests:jobs")
    assert open_queue.returncode == 2
    assert "work-queue place 'work' is open" in open_queue.stderr
    bad = _cpn("verify", "nets.classic_nets:kanban", "--invariant", "nets.classic_nets:nothing")
    assert bad.returncode == 2
    assert "has no attribute 'nothing'" in bad.stderr


def test_a_timed_relative_counterexample_replays_in_time(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["verify", "tests.verify_nets:ticking", "--time", "relative", "--trace-dir", str(tmp_path)],
    )
    assert result.exit_code == 1, result.output
    assert "Semantics: timed-relative" in result.output
    assert "invariant fewer_than_two_ticks: VIOLATED" in result.output
    (trace,) = tmp_path.glob("*-invariant-*.trace.json")
    steps = json.loads(trace.read_text())["steps"]
    assert [s["transition"] for s in steps] == ["tick", "time", "tick"]
    replayed = runner.invoke(cli, ["run", "tests.verify_nets:ticking", "--replay", str(trace)])
    assert replayed.exit_code == 0, replayed.output
    assert "time(+100 ms, now 100 ms)" in replayed.output
    assert "replayed 3 steps" in replayed.output
