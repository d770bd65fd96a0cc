"""`cpn run`, `cpn sim`, `cpn verify` and `cpn up` run `cpn check`'s purity lint first:
an impure net (tests/impure_nets.py, a guard that reads the clock) is refused in one
line naming the finding and `--allow-impure`; with the flag, a warning and the command
runs. (`cpn up --allow-impure` on a real cluster: tests/integration/test_log_json.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli
from nets.errors import CpnError

pytestmark = pytest.mark.integration

IMPURE = "tests.impure_nets:clocked"
FINDING = "impure_nets.py:23: clock: transition 'move': guard uses time.time"

COMMANDS = {
    "run": ["run", IMPURE, "--until", "1s"],
    "sim": ["sim", IMPURE, "--seeds", "1", "--until", "1s", "--quiet"],
    "verify": ["verify", IMPURE],
}
# What each prints once it ran: the net's one firing, the seed's digest, the verdict.
RAN = {"run": "1 firings", "sim": "digest", "verify": "Verdict:"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_impure_net_is_refused_in_one_line(command: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, COMMANDS[command])
    assert isinstance(result.exception, CpnError), (result.exception, result.output)
    message = str(result.exception)
    assert "\n" not in message
    assert message.startswith("net 'impure' is impure: ")
    assert FINDING in message
    assert message.endswith("; pass --allow-impure to run it anyway")
    assert RAN[command] not in result.output


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_allow_impure_warns_and_runs(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # cpn verify writes a counterexample trace here
    result = CliRunner().invoke(cli, [*COMMANDS[command], "--allow-impure"])
    assert not isinstance(result.exception, CpnError), result.exception
    warning = [line for line in result.stderr.splitlines() if line.startswith("cpn: warning:")]
    assert len(warning) == 1, result.stderr
    assert FINDING in warning[0]
    assert warning[0].endswith("running it anyway (--allow-impure)")
    assert RAN[command] in result.stdout


def test_up_refuses_before_it_starts_anything(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    result = CliRunner().invoke(cli, ["up", "--net", IMPURE, "--shards", "1", "--data", str(data)])
    assert isinstance(result.exception, CpnError), (result.exception, result.output)
    assert FINDING in str(result.exception)
    assert not (data / "cluster.json").exists(), "nothing recorded for a refused net"


@pytest.mark.parametrize(
    "path",
    ["nets.scraper:net", "nets.scraper_sim:net", "nets.jobs:net", "nets.scraper:verified_net"],
)
def test_the_bundled_nets_pass_without_the_flag(path: str) -> None:
    result = CliRunner().invoke(cli, ["run", path, "--until", "1ms"])
    assert result.exit_code == 0, result.output
    assert "cpn: warning" not in result.stderr
