"""The draw of a work-queue outcome: by weight, a function of (seed, place, token, attempt).

``nets/effects.py`` (the real ``Outcome`` and ``EffectModel``) is written on another
branch; these tests use a frozen dataclass of the same shape.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.sim.effects_run import OUTCOMES_MAX, EffectModelError, choose_outcome, draw_outcome
from nets.model import Token

pytestmark = pytest.mark.simulation


@dataclass(frozen=True)
class Outcome:
    kind: str
    results: tuple[tuple[str, Token], ...] = ()
    weight: float = 1.0
    latency_ms: int = 0


FETCH = (
    Outcome("ok", (("fetched", ("a.example", 200)),), weight=7.0, latency_ms=120),
    Outcome("fail", (("fetched", ("a.example", 503)),), weight=2.0, latency_ms=80),
    Outcome("stall", weight=1.0),
    Outcome("fail", weight=0.0),  # never chosen
)


class Fetch:
    def outcomes(self, token: Token, attempt: int) -> tuple[Outcome, ...]:
        return FETCH


def _draw(seed: int, token: Token, attempt: int = 1, place: str = "targets") -> Outcome:
    return draw_outcome(Fetch(), seed=seed, place=place, token=token, attempt=attempt)


@given(
    seed=st.integers(0, 2**64 - 1),
    url=st.text(max_size=30),
    attempt=st.integers(1, 10),
)
def test_the_draw_is_a_function_of_seed_place_token_and_attempt(
    seed: int, url: str, attempt: int
) -> None:
    assert _draw(seed, (url,), attempt) is _draw(seed, (url,), attempt)


def test_outcomes_come_by_weight_and_a_zero_weight_never() -> None:
    counts = Counter(FETCH.index(_draw(4, (f"https://a.example/{i}",))) for i in range(4_000))
    assert counts[3] == 0
    assert 0.65 < counts[0] / 4_000 < 0.75
    assert 0.16 < counts[1] / 4_000 < 0.24
    assert 0.07 < counts[2] / 4_000 < 0.13


def test_attempt_seed_and_place_each_change_the_draw() -> None:
    tokens = [(f"u{i}",) for i in range(200)]
    base = [_draw(1, t) for t in tokens]
    assert base != [_draw(1, t, attempt=2) for t in tokens]
    assert base != [_draw(2, t) for t in tokens]
    assert base != [_draw(1, t, place="retries") for t in tokens]


def test_the_draw_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "from cluster.sim.rng import derive_seed\n"
        "from nets.codec import pack\n"
        "print([derive_seed(9, 'effect', 'p', pack((f'u{i}', i)), 1) for i in range(20)])\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=True, text=True
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ((), "no outcome; list at least one"),
        ((Outcome("maybe"),), "outcome 0 has kind 'maybe', expected one of"),
        ((Outcome("ok", weight=-1.0),), "outcome 0 has weight -1.0"),
        ((Outcome("ok", weight=float("nan")),), "outcome 0 has weight nan"),
        ((Outcome("ok", weight=0.0),), "every outcome has weight 0"),
        ((Outcome("ok", latency_ms=-5),), "outcome 0 has latency -5 ms, below 0"),
        (tuple(Outcome("ok") for _ in range(OUTCOMES_MAX + 1)), f"at most {OUTCOMES_MAX}"),
    ],
)
def test_a_bad_model_is_named_with_place_token_and_attempt(
    outcomes: tuple[Any, ...], expected: str
) -> None:
    with pytest.raises(EffectModelError) as caught:
        choose_outcome(outcomes, seed=1, place="targets", token=("a.example",), attempt=3)
    message = str(caught.value)
    assert message.startswith("effect model of place 'targets', token ('a.example',), attempt 3: ")
    assert expected in message
