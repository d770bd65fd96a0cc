"""The pytest plugin (cluster/pytest_plugin.py) as a user's project meets it.

Each test writes a small project with pytest's ``pytester`` and runs pytest on it in a
subprocess: a fresh interpreter loads the plugin from its ``pytest11`` entry point, as
a user's run does (this process has the runtime imported already, which no user's run
starts with). The project is strict: ``--strict-markers --strict-config``, a ``-p no:``
flag in its addopts and ``filterwarnings = ["error"]``, so a warning the plugin raised
would fail it. The guide's example project (docs/testing.md) is run as written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli
from cluster.pids import pid_running

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "testing.md"
RUN_TIMEOUT_S = 180.0  # one inner pytest run, clusters included
# `-p no:` flags in addopts, as a project has them; Hypothesis's plugin is off because
# loading it is most of an inner run's start-up (about a second) and no part of the test.
STRICT_PROJECT = """
[tool.pytest.ini_options]
addopts = "--strict-markers --strict-config -p no:cacheprovider -p no:hypothesispytest"
filterwarnings = ["error"]
"""
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\s*```python\n(.*?)\n```", re.S)

RATE_LIMITER_TEST = """
from typing import NamedTuple

from cluster.testing import assert_invariants, assert_marking
from nets import Net, Place, Transition, variables


class Request(NamedTuple):
    client: str
    n: int


class Permit(NamedTuple):
    client: str
    slot: int


requests = Place("requests", Request, key="client")
permits = Place("permits", Permit, key="client", initial=[Permit("a", 0), Permit("a", 1)])
done = Place("done", Request, key="client")
r, p, c = variables("r p c")
serve = Transition(
    "serve",
    consume=[requests(r, client=c), permits(p, client=c)],
    produce=[done.produce(r), permits.produce(p, delay=1_000)],
)
net = Net(
    "rate_limiter",
    places=[requests, permits, done],
    transitions=[serve],
    invariants={"two_permits": lambda m: len(m["permits"]) == 2},
)


def test_two_requests_per_second(cpn_engine):
    limiter = cpn_engine(net, check_invariants=True)
    limiter.put("requests", *[Request("a", i) for i in range(5)])
    limiter.run()
    assert [step.time for step in limiter.trace] == [0, 0, 1_000, 1_000, 2_000]
    assert limiter.quiescent()
    assert_marking(limiter, {"requests": 0, "done": 5})
    assert_invariants(limiter)


def test_a_wrong_count_shows_the_table(cpn_engine):
    limiter = cpn_engine(net)
    limiter.put("requests", *[Request("a", i) for i in range(5)])
    limiter.run()
    assert_marking(limiter, {"done": 4, "permits": 2, "requests": 1})
"""

CLUSTER_TEARDOWN_TEST = """
from pathlib import Path

from cluster.testing import assert_marking
from ratelimit import Job


def _record(cluster, name):
    Path(name).write_text(" ".join(map(str, cluster.pids)))


def test_put_and_counts_on_two_shards(cpn_cluster):
    cluster = cpn_cluster("ratelimit:build", shards=2, params={"per_window": 3})
    _record(cluster, "pids-passed.txt")
    assert len(cluster.pids) == 3 and len(cluster.running()) == 3
    summary = cluster.put("jobs", *[Job(client, i) for client in "ab" for i in range(3)])
    assert summary.accepted == 6
    cluster.wait_until(lambda: cluster.counts()["work"] == 6, timeout_s=30)
    assert_marking(cluster, {"jobs": 0, "permits": 6, "work": 6, "results": 0})


def test_a_failing_test_still_stops_its_cluster(cpn_cluster):
    cluster = cpn_cluster("ratelimit:build", shards=2)
    _record(cluster, "pids-failed.txt")
    cluster.put("jobs", Job("a", 1))
    raise AssertionError("failing on purpose, with the cluster running")
"""


def guide_files() -> dict[str, str]:
    """The example project's files, as docs/testing.md shows them."""
    files = dict(FILE_BLOCK.findall(GUIDE.read_text()))
    assert set(files) == {"ratelimit.py", "ratelimit_workers.py", "test_ratelimit.py"}, files
    return files


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """An empty user project with strict pytest settings."""
    pytester.makepyprojecttoml(STRICT_PROJECT)
    return pytester


@pytest.fixture
def guide_project(project: pytest.Pytester) -> pytest.Pytester:
    """The guide's example project."""
    for name, code in guide_files().items():
        (project.path / name).write_text(code + "\n")
    return project


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT_S)


def worker_command_available() -> bool:
    """Whether this tree has ``cpn worker run`` (the worker SDK's command).

    The exit code alone does not say: the crawler's ``cpn worker`` is a command, not a
    group, and answers ``worker run --help`` with its own help. Only ``worker run``'s
    own help has it in its usage line.
    """
    shown = CliRunner().invoke(cli, ["worker", "run", "--help"])
    return (
        shown.exit_code == 0
        and re.search(r"^Usage: .* worker run\b", shown.output, re.M) is not None
    )


def test_a_users_engine_test_passes_and_a_wrong_marking_shows_the_table(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_limiter=RATE_LIMITER_TEST)
    result = run(project)
    result.assert_outcomes(passed=1, failed=1, warnings=0)
    result.stdout.fnmatch_lines(
        [
            ">*assert_marking(limiter, *",
            "E *AssertionError: marking differs in 2 of 3 places checked:",
            "E *place     expected    actual",
            "E *!= done             4         5  1 extra",
            "E *   permits          2         2",
            "E *!= requests         1         0  1 missing",
        ]
    )


def test_the_guides_engine_tests_pass(guide_project: pytest.Pytester) -> None:
    result = run(guide_project, "-k", "engine")
    result.assert_outcomes(passed=2, deselected=2, warnings=0)


def test_without_the_plugin_the_fixtures_are_not_there(project: pytest.Pytester) -> None:
    project.makepyfile(test_off="def test_engine(cpn_engine):\n    pass\n")
    result = run(project, "-p", "no:cpn")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'cpn_engine' not found*"])


@pytest.mark.integration
def test_the_guides_cluster_test_passes(guide_project: pytest.Pytester) -> None:
    result = run(guide_project, "-k", "cluster_releases")
    result.assert_outcomes(passed=1, deselected=3, warnings=0)


@pytest.mark.integration
def test_a_cluster_is_stopped_after_its_test_passes_or_fails(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(ratelimit=guide_files()["ratelimit.py"])
    project.makepyfile(test_cluster=CLUSTER_TEARDOWN_TEST)
    result = run(project)
    result.assert_outcomes(passed=1, failed=1, warnings=0)
    result.stdout.fnmatch_lines(["*failing on purpose, with the cluster running*"])
    for name in ("pids-passed.txt", "pids-failed.txt"):
        pids = [int(pid) for pid in (project.path / name).read_text().split()]
        assert len(pids) == 3, (name, pids)
        still = [pid for pid in pids if pid_running(pid)]
        assert not still, f"{name}: processes {still} of a finished test still run"


@pytest.mark.integration
def test_the_guides_worker_test_passes(guide_project: pytest.Pytester) -> None:
    if not worker_command_available():
        pytest.skip(
            "`cpn worker run --help` does not show that command's help: the worker SDK's "
            "`cpn worker run` is not in this tree yet; this test runs the guide's worker "
            "example once it is"
        )
    result = run(guide_project, "-k", "workers")
    result.assert_outcomes(passed=1, deselected=3, warnings=0)
