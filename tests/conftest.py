"""Shared fixtures: the ``seed`` that replays a failure exactly.

A test that takes ``seed`` gets ``int(CPN_SEED)`` when that variable is set, else a fresh
random seed; when the test fails its report carries a ``seed`` section saying how to
rerun it with the same seed (docs/architecture.md, "Tests").
"""

import contextlib
import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hopping_cluster import HoppingCluster

# Hypothesis's pytest plugin imports its patch writer (libcst, which uses a deprecated
# mypy_extensions API) only once a test has failed; under `filterwarnings = ["error"]`
# that import turns every Hypothesis failure into an INTERNALERROR that ends the run.
# Importing it here, with that one warning silenced, keeps failures reportable.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

_SEED_KEY = "cpn_seed"


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test run: ``CPN_SEED`` if set, else random (shown on failure)."""
    raw = os.environ.get("CPN_SEED")
    value = int(raw) if raw is not None else random.SystemRandom().randrange(2**32)
    request.node.user_properties.append((_SEED_KEY, value))
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed:
        for name, value in item.user_properties:
            if name == _SEED_KEY:
                report.sections.append(("seed", f"rerun with CPN_SEED={value}"))
    return report


@pytest.fixture
def hopping_cluster(tmp_path: Path, seed: int) -> Iterator[HoppingCluster]:
    """A :class:`tests.hopping_cluster.HoppingCluster` in ``tmp_path``, closed afterwards."""
    made = HoppingCluster(tmp_path / "cluster", seed=seed)
    try:
        yield made
    finally:
        made.close()
