"""The PNML corpus (tests/data/pnml) against its published answers.

Each model's published StateSpace, UpperBounds and ReachabilityDeadlock answers are in
``tests/data/pnml/answers.json`` (sources in the README beside it). Two explorers are
checked against them:

* ``tests/pnml_reference.py``, a naive breadth-first counter over the net semantics,
  on the models marked ``"reference": true`` (it is slow, so the larger ones are left
  to the real explorer);
* ``nets.explore.explore`` on every model, once it exists (skipped until then).

A coloured model's MAX_TOKEN_IN_PLACE is the MCC's: the bound of one place of the
unfolded net, that is of one token value in one place; the reference counter computes
it as such. The real explorer reports bounds per place, which equal the MCC's only for
P/T nets, so its answer is compared for those.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest

from nets.model import Net
from nets.pnml import dumps, is_place_transition, load, parse
from nets.pnml_terms import python_name
from tests.pnml_generate import GENERATED, generated_bytes
from tests.pnml_reference import explore_reference

DATA = Path(__file__).resolve().parents[1] / "data" / "pnml"
MODELS: dict[str, dict[str, Any]] = json.loads((DATA / "answers.json").read_text())["models"]
REFERENCE = sorted(name for name, entry in MODELS.items() if entry["reference"])
# Round trips are explored twice, so only models small enough to keep the test quick.
MEDIUM = sorted(name for name, entry in MODELS.items() if entry["state_space"]["states"] <= 25_000)
SMALL = sorted(name for name in REFERENCE if MODELS[name]["state_space"].get("states", 0) <= 2_000)


def _net(name: str) -> Net:
    return load(DATA / MODELS[name]["file"])


def _queries(entry: dict[str, Any]) -> list[list[str]]:
    return [[python_name(p) for p in q["places"]] for q in entry.get("upper_bounds", [])]


def test_corpus_files_exist_and_generated_ones_are_current() -> None:
    for name, entry in MODELS.items():
        assert (DATA / entry["file"]).is_file(), name
    for name in GENERATED:
        path = DATA / "generated" / f"{name}.pnml"
        assert path.read_bytes() == generated_bytes(name), (
            f"{path} is stale: run `python tests/pnml_generate.py`"
        )


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_counter_agrees_with_published_answers(name: str) -> None:
    entry = MODELS[name]
    net = _net(name)
    space = explore_reference(net, bounds=_queries(entry))
    assert not space.partial
    published = entry["state_space"]
    found = {
        "states": space.state_count,
        "transitions": space.edge_count,
        "max_tokens_in_place": space.max_tokens_per_colour,
        "max_tokens_per_marking": space.max_tokens_per_marking,
    }
    assert {k: found[k] for k in published} == published, name
    if "deadlock" in entry:
        assert (space.dead_markings > 0) == entry["deadlock"], name
    assert space.upper_bounds == [q["bound"] for q in entry.get("upper_bounds", [])], name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_explorer_agrees_with_published_answers(name: str) -> None:
    explore_module = pytest.importorskip("nets.explore")
    entry = MODELS[name]
    net = _net(name)
    space = explore_module.explore(net, max_states=2_000_000)
    assert not space.partial
    published = entry["state_space"]
    found = {
        "states": space.state_count,
        "transitions": space.edge_count,
        "max_tokens_per_marking": space.max_tokens_per_marking,
    }
    if is_place_transition(net):
        found["max_tokens_in_place"] = max(space.place_bounds.values())
    assert {k: found[k] for k in published if k in found} == {
        k: v for k, v in published.items() if k in found
    }, name
    if "deadlock" in entry:
        assert (space.dead_markings > 0) == entry["deadlock"], name
    for query, answer in zip(_queries(entry), entry.get("upper_bounds", []), strict=True):
        bounds = [space.place_bounds[p] for p in query]
        # The explorer bounds each place; a query over several places is bounded by the
        # largest of them from below and by their sum from above.
        if len(bounds) == 1:
            assert bounds[0] == answer["bound"], (name, query)
        else:
            assert max(bounds) <= answer["bound"] <= sum(bounds), (name, query)


def _shape(net: Net) -> dict[str, Any]:
    """Places, initial markings and arcs of a net, as plain comparable data."""
    return {
        "places": [
            (p.name, p.colour.__name__, p.colour_set.fields, sorted(map(tuple, p.initial)))
            for p in net.places
        ],
        "transitions": [
            (
                t.name,
                sorted((a.place.name, a.count, repr(a.fields)) for a in t.consume),
                sorted((o.place.name, repr(getattr(o.expr, "term", o.expr))) for o in t.produce),
                repr(getattr(t.guard, "term", t.guard)),
            )
            for t in net.transitions
        ],
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_corpus_model_round_trips(name: str) -> None:
    net = _net(name)
    text = dumps(net)
    again = parse(text, source=f"{name} (exported)")
    assert _shape(again) == _shape(net)
    assert dumps(again) == text


@pytest.mark.parametrize("name", MEDIUM)
def test_round_trip_keeps_the_explored_state_space(name: str) -> None:
    explore_module = pytest.importorskip("nets.explore")
    net = _net(name)
    again = parse(dumps(net), source=f"{name} (exported)")
    first = explore_module.explore(net, max_states=2_000_000)
    second = explore_module.explore(again, max_states=2_000_000)
    assert (first.state_count, first.edge_count, first.dead_markings) == (
        second.state_count,
        second.edge_count,
        second.dead_markings,
    )
    assert dict(first.place_bounds) == dict(second.place_bounds)


@pytest.mark.parametrize("name", SMALL)
def test_round_trip_keeps_the_state_space(name: str) -> None:
    net = _net(name)
    again = parse(dumps(net), source=f"{name} (exported)")
    first, second = explore_reference(net), explore_reference(again)
    assert typing.cast(Any, first) == typing.cast(Any, second)
