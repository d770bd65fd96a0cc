"""Structural rules from STYLE.md, checked on the source itself.

* Imports point downward only: cluster -> shard -> router -> nets.
* The functional core (nets/, and router/ except its daemon) does no I/O: it never
  imports sockets, LMDB, clocks, threads, processes, click or the module-level random.
"""

from __future__ import annotations

import ast
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
# Shell modules may do I/O; everything else in these packages is core.
SHELL_MODULES = {"router/process.py", "router/datadir.py", "router/curve.py"}
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
        if rel in SHELL_MODULES:
            continue
        for module, line in _imports(path):
            top = module.split(".")[0]
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
