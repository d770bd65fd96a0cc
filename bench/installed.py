"""Byte-compiled copies of checkouts, for the crawlers a benchmark launches (SHELL).

Why: with ``PYTHONDONTWRITEBYTECODE`` set and the project installed editable (its
modules read from the checkout, which then has no ``__pycache__``), every process of
``cpn crawl`` compiles every project module it imports at every launch: about 0.15 s of
CPU and 0.3 s of start-up a crawl. Scrapy's modules were byte-compiled when pip
installed them, as ``pip install .`` byte-compiles ours for a user. A benchmark that
left it so would charge our crawler, inside its timed run, for work a real install
does once at install time.

How: :func:`install_checkouts` copies each checkout's top-level packages (the
directories with an ``__init__.py``, their data files included, any ``__pycache__``
left out) into a directory of its own and byte-compiles them there with
:mod:`compileall`, before any timed run; a crawler then runs with that directory as
its working directory and ``PYTHONPATH`` (the modules and the bytecode a wheel install
would give it). The standard library's and site-packages' bytecode is read where pip
and the interpreter's install wrote it, for every crawler alike.

Not ``PYTHONPYCACHEPREFIX``: with a prefix set Python reads bytecode only from the
prefix, so every installed module's bytecode would have to be mirrored there first
(about 14,000 files in this project's environment, 4 to 12 s of system time on the
benchmark machine), or Scrapy would compile its own at every launch.

Nothing is hidden: a module outside the copy is compiled (or not) exactly as before.
The copy holds every package of the checkout, so none of them is looked up elsewhere;
with an editable install of the project in the environment, a module missing from the
copy would be found by the install's finder in the installed checkout, uncompiled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

COMPILE_TIMEOUT_S: Final = 300.0


@dataclass(frozen=True)
class InstalledCopies:
    """Each checkout and its byte-compiled copy."""

    copies: tuple[tuple[Path, Path], ...]

    def copy_of(self, checkout: Path) -> Path:
        """The copy of ``checkout`` (which must be one of those installed)."""
        wanted = checkout.resolve()
        for original, copy in self.copies:
            if original == wanted:
                return copy
        raise KeyError(f"{checkout}: not one of the installed checkouts")


def top_level_packages(checkout: Path) -> list[Path]:
    """The directories of ``checkout`` that are packages (hold an ``__init__.py``)."""
    return sorted(p for p in checkout.iterdir() if (p / "__init__.py").is_file())


def install_copy(checkout: Path, into: Path) -> Path:
    """Copy ``checkout``'s packages into ``into`` (a new directory) and byte-compile
    them there; returns ``into``.

    Raises:
        RuntimeError: compileall failed (its last line of output says why).
    """
    into.mkdir(parents=True)
    packages = top_level_packages(checkout)
    for package in packages:
        shutil.copytree(package, into / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    if not packages:
        return into
    done = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(p.name for p in packages)],
        cwd=into,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"},
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"compileall in {into} failed: {tail[0]}")
    return into


def install_checkouts(scratch: Path, checkouts: Sequence[Path]) -> InstalledCopies:
    """A byte-compiled copy of each distinct checkout, under ``scratch``."""
    distinct = list(dict.fromkeys(c.resolve() for c in checkouts))
    return InstalledCopies(
        tuple(
            (checkout, install_copy(checkout, scratch / f"installed-{index}"))
            for index, checkout in enumerate(distinct)
        )
    )
