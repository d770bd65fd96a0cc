"""The purity lint (nets/purity.py): one impure inscription per rule, the ways a name can
be imported, the allow-list, helpers, lambdas, and no findings on the bundled nets.

The nets are defined here, in a module with a source file, so that the lint can read
their inscriptions (a net defined in a string or a REPL has none).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import math
import os
import random
import re
import subprocess
import time
import time as t
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime as DateTime  # noqa: N812 - the aliased form is the point
from os import environ
from time import time as now_s
from typing import Any, NamedTuple

import aiohttp
import pytest

import nets.classic_nets
import tests.nets_for_tests as test_nets
from nets.loader import load_net
from nets.model import Net, Place, Transition, variables
from nets.purity import NO_SOURCE, Finding, lint_net
from tests import verify_nets


class Item(NamedTuple):
    key: str
    n: int


x, y = variables("x y")
LOGGER = logging.getLogger("cpn.test_purity")
CACHE: dict[str, int] = {}
SEEN: list[str] = []
COUNT = 0


def _net(
    guard: Callable[..., Any] | None = None,
    output: Callable[..., Any] | None = None,
    delay: Callable[..., int] | int = 0,
) -> Net:
    """A one-transition net: move an item from `a` to `b` through `guard` and `output`."""
    a = Place("a", Item, key="key", initial=[Item("k", 1)])
    b = Place("b", Item, key="key")
    move = Transition(
        "move",
        consume=[a(x, key=y)],
        guard=guard,
        produce=[b.produce(output if output is not None else x, delay=delay)],
    )
    return Net("purity", places=[a, b], transitions=[move])


def _rules(net: Net) -> list[tuple[str, str]]:
    return [(f.rule, f.transition) for f in lint_net(net)]


# One impure guard per rule. Each returns a bool so the nets would run.
def clock_guard(x: Item) -> bool:
    return time.time() > x.n


def random_guard(x: Item) -> bool:
    return random.random() < 0.5


def io_guard(x: Item) -> bool:
    print(x)
    return True


def network_guard(x: Item) -> bool:
    return urllib.request.urlopen(x.key) is not None


def aiohttp_guard(x: Item) -> bool:
    return aiohttp.request("GET", x.key) is not None


def subprocess_guard(x: Item) -> bool:
    return subprocess.run(["true"], check=False).returncode == 0


def environment_guard(x: Item) -> bool:
    return os.environ.get("CPN_FLAG") == x.key


def mutating_guard(x: Item) -> bool:
    CACHE[x.key] = x.n
    return True


def append_guard(x: Item) -> bool:
    SEEN.append(x.key)
    return True


def global_guard(x: Item) -> bool:
    global COUNT  # noqa: PLW0603 - the impurity under test
    COUNT += 1
    return True


@pytest.mark.parametrize(
    ("guard", "rule"),
    [
        (clock_guard, "clock"),
        (random_guard, "random"),
        (io_guard, "io"),
        (network_guard, "network"),
        (aiohttp_guard, "network"),
        (subprocess_guard, "subprocess"),
        (environment_guard, "environment"),
        (mutating_guard, "global-mutation"),
        (append_guard, "global-mutation"),
        (global_guard, "global-mutation"),
    ],
)
def test_each_rule_fires_on_an_impure_guard(guard: Callable[..., bool], rule: str) -> None:
    (finding,) = lint_net(_net(guard=guard))
    assert (finding.rule, finding.transition, finding.severity) == (rule, "move", "error")
    assert finding.file == __file__
    assert finding.line == guard.__code__.co_firstlineno + 1  # the line of the call
    assert "guard" in finding.what


def test_aliases_and_from_imports_resolve_to_the_real_name() -> None:
    def aliased(x: Item) -> Item:
        return x._replace(n=int(t.time()))

    def imported(x: Item) -> Item:
        return x._replace(n=int(now_s()))

    def datetime_class(x: Item) -> Item:
        return x._replace(n=DateTime.now().second)

    def environ_name(x: Item) -> Item:
        return x._replace(key=environ["HOME"])

    def logger(x: Item) -> Item:
        LOGGER.info("fired")
        return x

    for output, rule, name in [
        (aliased, "clock", "time.time"),
        (imported, "clock", "time.time"),
        (datetime_class, "clock", "datetime.datetime.now"),
        (environ_name, "environment", "os."),
        (logger, "io", "logging.Logger.info"),
    ]:
        (finding,) = lint_net(_net(output=output))
        assert finding.rule == rule, (output, finding)
        assert name in finding.what and "output to 'b'" in finding.what


def test_uuid4_and_datetime_today_are_caught_but_uuid5_and_dates_are_not() -> None:
    def impure(x: Item) -> Item:
        return x._replace(key=str(uuid.uuid4()), n=datetime.date.today().day)

    def pure(x: Item) -> Item:
        return x._replace(key=str(uuid.uuid5(uuid.NAMESPACE_URL, x.key)))

    assert sorted(f.rule for f in lint_net(_net(output=impure))) == ["clock", "random"]
    assert lint_net(_net(output=pure)) == ()


def test_the_allow_list_never_fires() -> None:
    @functools.lru_cache(maxsize=16)
    def parsed(key: str) -> str:
        return urllib.parse.urlsplit(key).netloc

    def pure(x: Item) -> Item:
        digest = hashlib.sha256(x.key.encode()).hexdigest()
        return x._replace(n=math.floor(len(re.findall("k", digest + parsed(x.key)))))

    assert lint_net(_net(output=pure)) == ()


def _jitter() -> float:
    return random.uniform(0, 1)


def _uses_jitter(n: int) -> int:
    return n + round(_jitter())


def helper_guard(x: Item) -> bool:
    return _uses_jitter(x.n) > 0


def test_helpers_of_the_same_module_are_followed_once_each() -> None:
    a = Place("a", Item, key="key", initial=[Item("k", 1)])
    b = Place("b", Item, key="key")
    net = Net(
        "helpers",
        places=[a, b],
        transitions=[
            Transition("one", consume=[a(x, key=y)], guard=helper_guard, produce=[b.produce(x)]),
            Transition("two", consume=[b(x, key=y)], guard=helper_guard, produce=[a.produce(x)]),
        ],
    )
    (finding,) = lint_net(net)
    assert (finding.rule, finding.transition) == ("random", "one")
    assert finding.line == _jitter.__code__.co_firstlineno + 1
    assert "helper _jitter" in finding.what


def test_a_lambda_is_linted_from_its_own_node() -> None:
    pure, impure = (lambda x, y: x), (lambda x: x._replace(n=int(time.monotonic())))
    findings = lint_net(_net(output=impure))
    assert [f.rule for f in findings] == ["clock"]
    assert "monotonic" in findings[0].what
    assert "lambdas" not in findings[0].what  # the parameters told the two apart
    assert lint_net(_net(output=pure)) == ()


def test_lambdas_that_cannot_be_told_apart_are_all_linted_and_the_finding_says_so() -> None:
    impure, _pure = (lambda x: x._replace(n=int(time.time()))), (lambda x: x)
    (finding,) = lint_net(_net(output=impure))
    assert finding.rule == "clock"
    assert "2 lambdas" in finding.what


def test_a_callable_without_source_is_a_warning() -> None:
    # abs is a C function whose one parameter is called x, so the net accepts it.
    for delay in (abs, functools.partial(abs)):
        (finding,) = lint_net(_net(delay=delay))
        assert (finding.rule, finding.severity) == (NO_SOURCE, "warning")
        assert "delay of output to 'b'" in finding.what


def test_locals_shadowing_impure_names_are_not_findings() -> None:
    def shadowing(x: Item) -> Item:
        time = x.n  # a local, not the module
        return x._replace(n=time + 1)

    assert lint_net(_net(output=shadowing)) == ()


@pytest.mark.parametrize(
    "path",
    ["nets.scraper:net", "nets.scraper_sim:net", "nets.jobs:net", "nets.scraper:verified_net"],
)
def test_the_bundled_nets_have_no_findings(path: str) -> None:
    assert lint_net(load_net(path)) == ()


def test_the_classic_and_test_nets_have_no_findings() -> None:
    checked = [nets.classic_nets.kanban(2), nets.classic_nets.philosophers(3)]
    checked += [test_nets.jobs(), test_nets.hopping(), test_nets.staged()]
    checked += [verify_nets.broken_crawler(), verify_nets.ticking()]
    found: list[Finding] = [f for net in checked for f in lint_net(net)]
    assert found == []
