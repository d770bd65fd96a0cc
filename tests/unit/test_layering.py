"""Structural rules of docs/architecture.md, checked on the source itself.

* Imports point downward only: cluster -> shard -> router -> nets.
* A package's shell is its ``shell`` subpackage; there is no list of exceptions. The
  functional core (nets/, and router/ outside router/shell/) does no I/O: it never
  imports sockets, LMDB, clocks, threads, processes, click or the module-level random,
  nor the shell of its own package.
"""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize("package", ["nets", "router"])
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
