"""bench/installed.py: the sweep's byte-compiled copies of a checkout (a compileall
process each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.installed import install_checkouts

pytestmark = pytest.mark.integration


def _checkout(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "mod.py").write_text("VALUE = 42\n")
    (root / "pkg" / "page.html").write_text("<p>data</p>\n")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"stale")
    (root / "scripts").mkdir()  # not a package: not installed
    (root / "scripts" / "tool.py").write_text("")
    return root


def test_a_copy_holds_the_packages_and_their_bytecode_and_imports_from_it(
    tmp_path: Path,
) -> None:
    checkout = _checkout(tmp_path / "checkout")
    installed = install_checkouts(tmp_path / "scratch", (checkout, checkout))
    assert len(installed.copies) == 1  # one copy per distinct checkout
    copy = installed.copy_of(checkout)
    assert sorted(p.name for p in copy.iterdir()) == ["pkg"]
    assert (copy / "pkg" / "page.html").read_text() == "<p>data</p>\n"
    tag = sys.implementation.cache_tag
    assert (copy / "pkg" / "sub" / "__pycache__" / f"mod.{tag}.pyc").is_file()
    assert not (copy / "pkg" / "__pycache__" / "stale.cpython-311.pyc").exists()
    # A crawler started as the sweep starts it reads the copy's bytecode, writing none.
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    # -v makes the import system say which file each module's code object came from.
    shown = subprocess.run(
        [sys.executable, "-v", "-c", "import pkg.sub.mod as m; print(m.VALUE)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert shown.stdout.split() == ["42"]
    pyc = copy / "pkg" / "sub" / "__pycache__" / f"mod.{tag}.pyc"
    assert f"code object from '{pyc}'" in shown.stderr


def test_copy_of_names_a_checkout_it_does_not_hold(tmp_path: Path) -> None:
    installed = install_checkouts(tmp_path / "scratch", (_checkout(tmp_path / "a"),))
    with pytest.raises(KeyError, match="not one of the installed checkouts"):
        installed.copy_of(tmp_path / "elsewhere")
