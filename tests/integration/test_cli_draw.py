"""`cpn draw` as a user runs it: DOT to stdout or a file, SVG through Graphviz's dot."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli, main
from nets.draw import to_dot
from nets.loader import load_net
from tests.system_packages import require_debian_packages

pytestmark = pytest.mark.integration


def test_dot_goes_to_stdout() -> None:
    result = CliRunner().invoke(cli, ["draw", "nets.scraper_sim:net"])
    assert result.exit_code == 0, result.output
    assert result.output == to_dot(load_net("nets.scraper_sim:net"))
    assert result.output.startswith('digraph "scraper" {\n')


def test_dot_goes_to_a_file_with_net_params(tmp_path: Path) -> None:
    out = tmp_path / "jobs.dot"
    args = ["draw", "nets.jobs:net", "--net-param", "concurrency=3", "--seed", "1", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert out.read_text() == to_dot(load_net("nets.jobs:net", seed=1, params={"concurrency": 3}))
    assert out.read_text() != to_dot(load_net("nets.jobs:net")), "the parameter reached the net"


@pytest.mark.parametrize("how", [["--format", "svg"], ["-o", "net.svg"]])
def test_svg_without_dot_is_one_line_saying_how_to_get_it(
    how: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the cwd first
    monkeypatch.setattr(sys, "argv", ["cpn", "draw", "nets.scraper_sim:net", *how])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("cpn: error: Graphviz's `dot` is not on the PATH")
    assert "apt-get install graphviz" in captured.err
    assert "--format dot" in captured.err
    assert not (tmp_path / "net.svg").exists()


def _fake_dot(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    dot = bin_dir / "dot"
    dot.write_text("#!/bin/sh\n" + script)
    dot.chmod(0o755)


def test_svg_is_what_dot_prints_and_its_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for Graphviz checks the plumbing (arguments, stdin, stdout, status)
    # on machines without it; the test below runs the real one (installing Debian's graphviz).
    cat = shutil.which("cat")  # the PATH below holds only the stand-in
    assert cat is not None
    _fake_dot(tmp_path / "ok", f'test "$1" = -Tsvg || exit 9\necho "<svg>"; {cat}; echo "</svg>"\n')
    monkeypatch.setenv("PATH", str(tmp_path / "ok"))
    result = CliRunner().invoke(cli, ["draw", "nets.scraper_sim:net", "--format", "svg"])
    assert result.exit_code == 0, result.output
    assert result.output == "<svg>\n" + to_dot(load_net("nets.scraper_sim:net")) + "</svg>\n"
    _fake_dot(tmp_path / "bad", 'echo "Error: syntax error in line 3" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bad"))
    failed = CliRunner().invoke(
        cli, ["draw", "nets.scraper_sim:net", "-o", str(tmp_path / "x.svg")]
    )
    assert "failed with status 1: Error: syntax error in line 3" in str(failed.exception)


def test_svg_through_graphviz(tmp_path: Path) -> None:
    # Debian's Graphviz, installed here where it is missing (a fresh CI machine) rather
    # than skipped: the SVG path is what users run. The test above strips `dot` from
    # the PATH, so the "how to get it" message stays tested on this machine too.
    require_debian_packages(["graphviz"], ["dot"])
    out = tmp_path / "scraper.svg"
    result = CliRunner().invoke(cli, ["draw", "nets.scraper:net", "-o", str(out)])
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert "<svg" in svg
    assert "page_fetched" in svg
