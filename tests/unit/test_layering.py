"""Structural rules of docs/architecture.md, checked on the source itself.

* Imports point downward only: cluster -> shard -> router -> nets.
* A package's shell is its ``shell`` subpackage; there is no list of exceptions. The
  functional core (nets/, and router/ and shard/ outside their shell/) does no I/O: it
  never imports sockets, LMDB, clocks, threads, processes, click or the module-level
  random, nor the shell of its own package.
* No clock is read outside the shells: no ``time.*`` call in nets/, router/ or shard/
  outside a shell/ subpackage (cluster/ is the outermost shell).
* The CLI imports the simulator and the verifier only for their own commands; the pytest
  plugin imports nothing of the runtime until a fixture runs.
* The runtime in cluster/ does not import the applications that run on it (the crawler,
  the job runner, the mock web): only the CLI's commands, the simulator (which models
  the crawler's workers) and the applications themselves do.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["nets", "router", "shard", "cluster"]
FORBIDDEN_IN_CORE = {
    "zmq",
    "lmdb",
    "socket",
    "time",
    "threading",
    "multiprocessing",
    "click",
    "random",
    "asyncio",
    "subprocess",
    "os",
    "select",
    "signal",
}
# Modules in a package's `shell` subpackage may do I/O; everything else is core.
SHELL = "shell"
CLOCK_CALLS = frozenset(
    {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "sleep"}
)
# `random` is allowed as `random.Random(seed)`, a seeded instance; only the engine uses it.
RANDOM_INSTANCE_ALLOWED = {"nets/engine.py"}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def _is_shell(path: Path) -> bool:
    return SHELL in path.relative_to(ROOT).parts[1:-1]


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


APPLICATIONS = ("cluster.crawler", "cluster.jobs", "cluster.mock_web")
# Who may import an application: the commands that run it, the simulator, and the
# applications themselves (the crawler's demo serves the mock web).
APPLICATION_USERS = ("cluster/commands/", "cluster/sim/", "cluster/crawler/", "cluster/jobs/",
                     "cluster/mock_web/")  # fmt: skip


def test_the_runtime_does_not_import_its_applications() -> None:
    for path in _sources("cluster"):
        where = path.relative_to(ROOT).as_posix()
        if where.startswith(APPLICATION_USERS):
            continue
        for module, line in _imports(path):
            assert not module.startswith(APPLICATIONS), (
                f"{where}:{line} imports {module}: the runtime must not depend on an "
                "application (move the code, or import it in a command)"
            )


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_downward(package: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    for path in _sources(package):
        for module, line in _imports(path):
            top = module.split(".")[0]
            if top in LAYERS:
                assert top in allowed, (
                    f"{path.relative_to(ROOT)}:{line} imports {module}; {package} may only "
                    f"import {sorted(allowed)}"
                )


CORE_PACKAGES = ["nets", "router", "shard"]


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_does_no_io(package: str) -> None:
    for path in _sources(package):
        rel = str(path.relative_to(ROOT))
        if _is_shell(path):
            continue
        for module, line in _imports(path):
            top = module.split(".")[0]
            assert module.split(".")[:2] != [package, SHELL], (
                f"{rel}:{line} imports {module}: the core must not reach into its shell"
            )
            if top == "random" and rel in RANDOM_INSTANCE_ALLOWED:
                continue
            assert top not in FORBIDDEN_IN_CORE, (
                f"{rel}:{line} imports {module}: the core must not do I/O or read clocks"
            )


def test_engine_uses_random_only_as_seeded_instance() -> None:
    source = (ROOT / "nets/engine.py").read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
        ):
            assert node.attr == "Random", f"nets/engine.py uses random.{node.attr}"


def test_every_shell_subpackage_is_installed() -> None:
    # setuptools installs only the packages pyproject lists by name.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(config["tool"]["setuptools"]["packages"])
    for layer in LAYERS:
        for init in sorted((ROOT / layer).rglob("__init__.py")):
            name = ".".join(init.parent.relative_to(ROOT).parts)
            assert name in packages, f"pyproject's packages list lacks {name}"


def _clock_reads(tree: ast.AST) -> list[tuple[str, int]]:
    """``time.<clock>`` attribute uses, e.g. ``time.monotonic_ns``, with their lines."""
    return [
        (node.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in CLOCK_CALLS
        and isinstance(node.value, ast.Name | ast.Attribute)
        and (node.value.id if isinstance(node.value, ast.Name) else node.value.attr) == "time"
    ]


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_no_clock_is_read_outside_the_shells(package: str) -> None:
    # Imports are checked above; this also catches a clock reached through another
    # module (`something.time.monotonic()`).
    for path in _sources(package):
        if _is_shell(path):
            continue
        for call, line in _clock_reads(ast.parse(path.read_text(), filename=str(path))):
            raise AssertionError(
                f"{path.relative_to(ROOT)}:{line} reads the clock (time.{call}); take "
                "now_ms as an argument and let the shell read the clock"
            )


def test_the_clock_rule_bites() -> None:
    source = "import time\n\n\ndef now() -> int:\n    return other.time.monotonic_ns()\n"
    assert _clock_reads(ast.parse(source)) == [("monotonic_ns", 5)]
    shell = ROOT / "shard" / "shell" / "runtime.py"
    assert _is_shell(shell) and _clock_reads(ast.parse(shell.read_text()))


def test_a_process_that_does_not_simulate_or_verify_does_not_import_them() -> None:
    # `cpn shard` and `cpn router` import the CLI on every (re)start: the simulator and
    # the verifier cost 0.1 s there, so their commands are loaded when they run.
    probe = (
        "import sys, cluster.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('cluster.sim', "
        "'cluster.commands.sim', 'cluster.commands.verify', 'nets.explore', 'nets.pnml'))))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert shown.stdout.strip() == "[]", shown.stdout


def test_the_pytest_plugin_imports_nothing_of_the_runtime_when_loaded() -> None:
    # pytest loads the plugin (the `pytest11` entry point) in every run of an environment
    # with cpn-cluster installed, including runs that never use its fixtures.
    probe = (
        "import sys, cluster.pytest_plugin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('zmq', 'lmdb', 'msgpack', 'click', 'nets', 'router', 'shard') "
        "or (m.startswith('cluster.') and m != 'cluster.pytest_plugin')))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert shown.stdout.strip() == "[]", shown.stdout


def test_the_pytest_plugin_is_registered_under_its_name() -> None:
    # `-p no:cpn` (docs/testing.md) names the entry point.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["entry-points"]["pytest11"] == {"cpn": "cluster.pytest_plugin"}
