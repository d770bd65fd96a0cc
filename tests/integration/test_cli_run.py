"""`cpn run` as a user runs it: a real process, its output and its exit codes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _cpn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_run_scraper_prints_a_summary() -> None:
    result = _cpn("run", "nets.scraper_sim:net", "--until", "1h", "--seed", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "net 'scraper', seed 3" in out
    assert "dead (nothing enabled, nothing pending)" in out
    for name in ("scrape", "fetched", "retry", "give_up", "domains", "done", "fail_log"):
        assert name in out
    done_line = next(line for line in out.splitlines() if line.strip().startswith("done"))
    fail_line = next(line for line in out.splitlines() if line.strip().startswith("fetched"))
    assert done_line.split()[-1] == fail_line.split()[-1], "every fetched target is in done"


def test_until_stops_early() -> None:
    result = _cpn("run", "nets.scraper_sim:net", "--until", "5s")
    assert result.returncode == 0, result.stderr
    assert "stopped at --until 5000 ms" in result.stdout


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nets.scraper_sim", "must look like package.module:attr"),
        ("nets.no_such_module:net", "cannot import module 'nets.no_such_module'"),
        ("nets.scraper_sim:no_such_attr", "has no attribute 'no_such_attr'"),
        ("nets.scraper_sim:ScraperParams", "is a ScraperParams, not a Net"),
    ],
)
def test_bad_net_path_is_one_line_and_exit_2(path: str, message: str) -> None:
    result = _cpn("run", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_invalid_net_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "broken_net.py").write_text(
        textwrap.dedent("""
        from typing import NamedTuple
        from nets import Net, Place, Transition, variables

        class Job(NamedTuple):
            queue: str

        jobs = Place("jobs", Job, key="queue")
        j, q = variables("j q")

        def net():
            return Net("broken", places=[jobs], transitions=[
                Transition("t", consume=[jobs(j, queue=q)],
                           produce=[jobs.produce(lambda nope: nope)])])
    """)
    )
    result = _cpn("run", "broken_net:net", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "transition 't'" in lines[0] and "'nope'" in lines[0]


def test_bad_duration_is_a_usage_error() -> None:
    result = _cpn("run", "nets.scraper_sim:net", "--until", "soon")
    assert result.returncode == 2
    assert "is not a duration" in result.stderr


def test_run_accepts_a_pnml_file() -> None:
    model = Path(__file__).resolve().parents[1] / "data/pnml/mcc/Philosophers-PT-000005.pnml"
    result = _cpn("run", str(model), "--max-steps", "50")
    assert result.returncode == 0, result.stderr
    assert "net 'Philosophers-PT-000005'" in result.stdout


def test_run_reports_a_bad_pnml_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pnml"
    bad.write_text("<pnml>\n<net>\n</pnml>\n")
    result = _cpn("run", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cpn: error: {bad}:3: not well-formed XML (mismatched tag, column 2)"
    ]
