"""The wheel holds every package of the repository, and each imports from it.

pyproject.toml lists its packages explicitly (the top-level names are generic), so a
package added to the tree but not to the list would be missing from a user's install
while every test, run from the clone, still passes. This builds the real wheel and
imports each package from it, in an interpreter that cannot see the clone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("nets", "router", "shard", "cluster")


def _packages_in_tree() -> set[str]:
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL
        for init in (ROOT / top).rglob("__init__.py")
    }


def _source_copy(into: Path) -> Path:
    """The project's files copied to ``into``: building in place would leave build/ and
    egg-info behind in the clone, and two parallel runs would race on them."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, into / name)
    for top in TOP_LEVEL:
        shutil.copytree(ROOT / top, into / top, ignore=shutil.ignore_patterns("__pycache__"))
    return into


def test_the_wheel_holds_every_package_and_each_imports_from_it(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    source = _source_copy(tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("cpn_cluster-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        in_wheel = {
            name.removesuffix("/__init__.py").replace("/", ".")
            for name in names
            if name.endswith("/__init__.py")
        }
    packages = _packages_in_tree()
    assert packages - in_wheel == set(), "add these to pyproject's packages list"
    # Package data: the dashboard's page must ship, or `cpn dashboard` serves nothing.
    static = {
        f"cluster/dashboard/static/{n}" for n in ("index.html", "dashboard.js", "dashboard.css")
    }
    assert static - names == set(), "add them to pyproject's package-data"
    # -S, then site-packages appended by hand: the dependencies import, but no .pth file
    # runs, so the editable install's finder (which maps the packages to the clone) is
    # not there, and the cwd is not the clone: each package must come from the wheel.
    site_packages = [path for path in sys.path if path.endswith("site-packages")]
    probe = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(wheel)!r}]\n"
        f"sys.path += {site_packages!r}\n"
        f"for name in {sorted(packages)!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(wheel)!r}), (name, module.__file__)\n"
        "print('ok')\n"
    )
    imported = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert imported.stdout.strip() == "ok", imported.stderr
