"""cluster/testing.py: the virtual-time harness and the assertions, in this process.

The same helpers, as fixtures in a user's project, are tested through pytest itself in
tests/plugin/test_pytest_plugin.py; here each behaviour is pinned directly.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import NamedTuple

import pytest

from cluster.testbed import child_env, module_root
from cluster.testing import (
    VirtualNet,
    assert_eventually,
    assert_invariants,
    assert_marking,
    virtual_net,
)
from nets import Engine, Net, Place, Transition, variables
from nets.errors import CpnError, TokenError
from tests.nets_for_tests import Ball, Job

ROOT = Path(__file__).resolve().parents[2]


class Request(NamedTuple):
    client: str
    n: int


class Permit(NamedTuple):
    client: str
    slot: int


def limiter(per_window: int = 2, *, window_ms: int = 1_000) -> Net:
    """At most ``per_window`` requests of client "a" served per window."""
    requests = Place("requests", Request, key="client")
    permits = Place(
        "permits", Permit, key="client", initial=[Permit("a", i) for i in range(per_window)]
    )
    done = Place("done", Request, key="client", work_queue=True, results=())
    r, p, c = variables("r p c")
    serve = Transition(
        "serve",
        consume=[requests(r, client=c), permits(p, client=c)],
        produce=[done.produce(r), permits.produce(p, delay=window_ms)],
    )
    return Net(
        "limiter",
        places=[requests, permits, done],
        transitions=[serve],
        invariants={"permits_kept": lambda m: len(m["permits"]) == per_window},
    )


def five_requests(net: Net | None = None) -> VirtualNet:
    made = virtual_net(net or limiter())
    made.put("requests", *[Request("a", i) for i in range(5)])
    return made


# -- VirtualNet ----------------------------------------------------------------------------


def test_run_until_quiescent_fires_on_virtual_time() -> None:
    made = five_requests()
    steps = made.run()
    assert [s.time for s in steps] == [0, 0, 1_000, 1_000, 2_000]
    assert made.trace == tuple(steps)
    assert made.quiescent() and made.now_ms == 3_000  # the last permit came due then
    assert made.counts() == {"requests": 0, "permits": 2, "done": 5}
    assert made.tokens("done") == [Request("a", i) for i in range(5)]


def test_run_until_a_time_leaves_the_clock_there() -> None:
    made = five_requests()
    assert len(made.run(until_ms=1_500)) == 4
    assert made.now_ms == 1_500 and not made.quiescent()
    made.put("requests", Request("a", 9))  # put at t=1500, served with the 5th at t=2000
    assert [s.binding["r"].n for s in made.run(for_ms=500)] == [4, 9]
    assert made.now_ms == 2_000


def test_advance_moves_the_clock_without_firing() -> None:
    made = five_requests()
    made.advance(700)
    assert made.trace == () and made.now_ms == 700
    step = made.fire()
    assert step is not None and step.time == 700


def test_a_net_that_never_stops_is_reported_not_run_forever() -> None:
    balls = Place("balls", Ball, key="name", initial=[Ball("b", 0)])
    b, n = variables("b n")
    roll = Transition("roll", consume=[balls(b, name=n)], produce=[balls.produce(b, delay=10)])
    made = virtual_net(Net("roller", places=[balls], transitions=[roll]))
    with pytest.raises(CpnError, match=r"fired more than 50 steps .* pass until_ms="):
        made.run(steps_max=50)
    assert len(made.run(for_ms=1_000, steps_max=200)) == 100


def test_time_does_not_go_back() -> None:
    made = five_requests()
    made.run(until_ms=100)
    with pytest.raises(CpnError, match="it is at t=100 ms already"):
        made.run(until_ms=50)
    with pytest.raises(CpnError, match="back to t=50 ms"):
        made.advance(50)
    with pytest.raises(CpnError, match="not both"):
        made.run(until_ms=200, for_ms=100)


def test_take_is_what_a_lease_gets_and_takes_nothing_when_short() -> None:
    made = five_requests()
    made.run(until_ms=0)
    assert made.take("done") == [Request("a", 0)]
    with pytest.raises(CpnError, match=r"cannot take 3 tokens from place 'done' at t=0 ms: 1"):
        made.take("done", 3)
    assert made.count("done") == 1


def test_put_takes_tuples_and_mappings_and_names_a_bad_token() -> None:
    made = virtual_net(limiter())
    made.put("requests", ("a", 1), {"client": "a", "n": 2}, delay_ms=50)
    assert made.entries("requests") == [(50, Request("a", 1)), (50, Request("a", 2))]
    with pytest.raises(TokenError, match=r"place 'requests': .* its fields are client, n"):
        made.put("requests", ("a",))
    with pytest.raises(TokenError, match="place 'requests'"):
        made.put("requests", ("a", "not an int"))
    with pytest.raises(CpnError, match=r"no place 'request' \(places: requests, permits, done\)"):
        made.put("request", ("a", 1))
    assert made.count("requests") == 2


def test_check_invariants_fails_at_the_step_that_breaks_one() -> None:
    net = limiter()
    broken = Net(
        "limiter",
        places=net.places,
        transitions=net.transitions,
        invariants={"at_most_two_done": lambda m: len(m["done"]) <= 2},
    )
    made = virtual_net(broken, check_invariants=True)
    made.put("requests", *[Request("a", i) for i in range(5)])
    broke = r"(?s)step 3 \('serve' at t=1000 ms.*invariant 'at_most_two_done' is violated"
    with pytest.raises(AssertionError, match=broke):
        made.run()


def test_a_net_by_path_takes_seed_and_params() -> None:
    made = virtual_net("tests.nets_for_tests:jobs_counting_builds", params={"builds_file": ""})
    assert made.net.name == "test_jobs"
    with pytest.raises(CpnError, match="params apply to an import path"):
        virtual_net(limiter(), params={"per_window": 3})


# -- assertions ----------------------------------------------------------------------------


def test_assert_marking_shows_a_table_of_what_differs() -> None:
    made = five_requests()
    made.run()
    assert_marking(made, {"done": 5})
    assert_marking(made.engine, {"done": 5, "requests": 0})
    with pytest.raises(AssertionError) as failed:
        assert_marking(made, {"done": 4, "permits": 2, "nowhere": 0})
    assert str(failed.value) == (
        "marking differs in 2 of 3 places checked:\n"
        "     place    expected    actual\n"
        "  != done            4         5  1 extra\n"
        "     permits         2         2\n"
        "  != nowhere         0         -  no such place\n"
        "  not checked: requests=0"
    )


def test_assert_marking_takes_plain_counts() -> None:
    with pytest.raises(AssertionError, match="1 missing"):
        assert_marking({"work": 2, "work__held": 0}, {"work": 3})


def test_assert_invariants_names_each_one_that_fails() -> None:
    made = five_requests()
    made.run(until_ms=500)
    assert_invariants(made)
    with pytest.raises(AssertionError) as failed:
        assert_invariants(made.engine, extra={"all_done": lambda m: not m["requests"]})
    message = str(failed.value)
    assert message.startswith("net 'limiter' at t=500 ms after 2 steps: 1 of 2 invariants fail")
    assert "invariant 'all_done' is violated" in message
    assert "  requests (3): Request(client='a', n=2)" in message


def test_assert_invariants_reports_a_predicate_that_raises() -> None:
    with pytest.raises(AssertionError, match="invariant 'typo' raised KeyError: 'permit'"):
        assert_invariants(five_requests(), extra={"typo": lambda m: bool(m["permit"])})


def test_assert_invariants_needs_something_to_check() -> None:
    bare = Engine(Net("bare", places=[Place("jobs", Job, key="queue")], transitions=[]))
    with pytest.raises(CpnError, match="declares no invariants"):
        assert_invariants(bare)


def test_assert_eventually_returns_the_value_or_shows_the_last_one() -> None:
    polls = itertools.count()
    assert assert_eventually(lambda: next(polls), lambda n: n >= 3, interval_s=0) == 3
    with pytest.raises(AssertionError, match=r"three results did not hold within 0.01 s; .*: 0"):
        assert_eventually(lambda: 0, bool, timeout_s=0.01, what="three results")


# -- finding a module for a child process --------------------------------------------------------


def test_a_child_gets_the_directory_a_module_was_found_in() -> None:
    assert module_root("tests.nets_for_tests") == ROOT
    assert module_root("nets") == ROOT  # a package: its __init__.py is one level deeper
    assert child_env("tests.nets_for_tests")["PYTHONPATH"].split(":")[0] == str(ROOT)
    with pytest.raises(CpnError, match="cannot find module 'no_such_module_here'"):
        module_root("no_such_module_here")
