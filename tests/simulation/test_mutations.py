"""The simulator bites: each named mutation's recorded seed fails with the bug put back
and passes without it. These are replays; the search from scratch is the benchmark's
(``python -m bench.sim``), and docs/simulation.md's table is checked against the code."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from router.control import ControlPlane
from router.handoff import Inbox, Outbox
from shard.link import Link
from shard.mover import Mover
from shard.parked import LongPolls
from tests.simulation.mutations import MUTATIONS, UNREACHED, failure_of

pytestmark = pytest.mark.simulation

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "simulation.md"


def _patched() -> tuple[object, ...]:
    return (
        Mover._order,
        Outbox._redirect,
        Outbox.acknowledged,
        Inbox.receive,
        Link.waiting_on_peers,
        ControlPlane._outcome,
        LongPolls.undelivered,
    )


def test_the_registry_holds_at_least_six_bugs_each_with_its_fixing_commit() -> None:
    assert len(MUTATIONS) >= 6
    for name, mutation in MUTATIONS.items():
        assert mutation.name == name
        assert mutation.description, name
        assert mutation.recorded_seed >= 0, name
        assert re.fullmatch(r"[0-9a-f]{7}", mutation.fixed_in), name


def test_each_fixing_commit_is_in_the_history() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    shallow = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
        capture_output=True,
        text=True,
        check=False,
    )
    if shallow.stdout.strip() != "false":
        pytest.skip("a shallow clone does not hold the history")
    for mutation in MUTATIONS.values():
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-t", mutation.fixed_in],
            capture_output=True,
            text=True,
            check=False,
        )
        assert shown.stdout.strip() == "commit", (mutation.name, shown.stderr)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_recorded_seed_fails_with_the_mutation_and_passes_without(name: str) -> None:
    mutation = MUTATIONS[name]
    with mutation.apply():
        failure = failure_of(mutation.recorded_seed, mutation.config)
    assert failure, f"{name}: seed {mutation.recorded_seed} passed with the bug put back"
    assert not failure_of(mutation.recorded_seed, mutation.config), (
        f"{name}: seed {mutation.recorded_seed} fails without the mutation too"
    )


def test_apply_restores_the_production_code_even_on_an_error() -> None:
    before = _patched()
    for mutation in MUTATIONS.values():
        with pytest.raises(RuntimeError, match="inside"):
            _raise_inside(mutation.apply, before)
    assert _patched() == before


def _raise_inside(apply: Callable[[], AbstractContextManager[None]], before: object) -> None:
    with apply():
        assert _patched() != before
        raise RuntimeError("inside")


def test_the_unreached_bugs_patch_production_code_and_restore_it() -> None:
    before = _patched()
    for patches in UNREACHED.values():
        for patch in patches():
            with patch:
                assert _patched() != before
    assert _patched() == before


def _docs_rows() -> dict[str, list[str]]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Named mutations", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(\w+)`", cells[0]) if line.startswith("|") else None
        if match:
            rows[match.group(1)] = cells
    return rows


def test_the_docs_table_names_each_mutation_with_its_commit_faults_and_seed() -> None:
    rows = _docs_rows()
    assert set(rows) == set(MUTATIONS)
    for name, cells in rows.items():
        mutation = MUTATIONS[name]
        _name, _bug, fixed_in, faults, site, shards, seed, _caught_by = cells
        assert fixed_in == mutation.fixed_in, name
        plan = mutation.config.faults
        assert faults == (f"`{plan}`" if plan else "drawn"), name
        params = mutation.config.params
        assert site == f"{params['site_domains']} x {params['site_pages']}", name
        assert shards == str(mutation.config.shards), name
        assert seed == str(mutation.recorded_seed), name
