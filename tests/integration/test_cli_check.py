"""`cpn check` as a user runs it, in-process: the report, `--json`, and exit codes 0/1/2.

The impure net is defined here so that the lint can read its guard's source; the CLI
loads it by import path like any other net.
"""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import pytest
from click.testing import CliRunner

from cluster.cli import cli, main
from nets.model import Net, Place, Transition, variables

pytestmark = pytest.mark.integration

IMPURE = "tests.integration.test_cli_check:impure"


class Job(NamedTuple):
    customer: str
    n: int


def late(j: Job) -> bool:
    return time.time() > j.n  # the line the report must point at


def impure() -> Net:
    j, c = variables("j c")
    queued = Place("queued", Job, key="customer", initial=[Job("a", 1)])
    done = Place("done", Job, key="customer")
    shared = Place("shared", Job)
    return Net(
        "impure",
        places=[queued, done, shared],
        transitions=[
            Transition(
                "expire",
                consume=[queued(j, customer=c)],
                guard=late,
                produce=[done.produce(j), shared.produce(j)],
            )
        ],
    )


def broken() -> Net:
    """A net that does not validate: its guard reads a variable no arc binds."""
    j, c = variables("j c")
    queued = Place("queued", Job, key="customer")
    expire = Transition("expire", consume=[queued(j, customer=c)], guard=lambda k: k)
    return Net("broken", places=[queued], transitions=[expire])


def test_a_pure_net_exits_0_and_lists_keys() -> None:
    result = CliRunner().invoke(cli, ["check", "nets.scraper_sim:net"])
    assert result.exit_code == 0, result.output
    assert "purity: no findings" in result.output
    assert "targets    key domain" in result.output
    assert "proxies    pool" in result.output


def test_an_impure_guard_exits_1_and_names_its_line() -> None:
    result = CliRunner().invoke(cli, ["check", IMPURE])
    assert result.exit_code == 1, result.output
    line = late.__code__.co_firstlineno + 1
    assert f"tests/integration/test_cli_check.py:{line}: error: clock: " in result.output
    assert "transition 'expire': guard uses time.time" in result.output
    # `shared` is a fixed place, so producing into it from a keyed firing may hand off.
    assert "expire -> shared: produces into a fixed place" in result.output
    assert "expire -> done" not in result.output


def test_json_report() -> None:
    result = CliRunner().invoke(cli, ["check", IMPURE, "--json", "--seed", "3"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["errors"] == 1
    assert [f["rule"] for f in report["findings"]] == ["clock"]
    assert report["partitions"] == {"queued": "key customer", "done": "key customer",
                                    "shared": "fixed"}  # fmt: skip
    assert [(h["transition"], h["place"]) for h in report["handoffs"]] == [("expire", "shared")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "tests.integration.nowhere:net"], "cannot import module"),
        (["check", "nets.scraper_sim:net", "--net-param", "x=1"], "has no parameter 'x'"),
        (["check", "tests.integration.test_cli_check:broken"], "variable 'k' is not bound"),
    ],
)
def test_a_net_that_does_not_load_exits_2_with_one_line(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.argv", ["cpn", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cpn: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
