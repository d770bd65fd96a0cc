"""Validation of the net language: every rule of ``nets.model`` and ``nets.colour``.

Each test builds the smallest net breaking one rule and checks that the
:class:`NetDefinitionError` names what is at fault (net, transition, arc, variable),
so that a user can find and fix it from the message alone.
"""

import dataclasses
import re
from typing import Any, NamedTuple, Optional, Union

import pytest

from nets import Net, NetDefinitionError, Place, Transition, variables


class Job(NamedTuple):
    queue: str
    n: int


class Proxy(NamedTuple):
    host: str
    port: int


class Pair(NamedTuple):
    left: str
    right: str


d, j, k, n, p, x = variables("d j k n p x")


def _places() -> tuple[Place, Place, Place]:
    jobs = Place("jobs", Job, key="queue")
    done = Place("done", Job, key="queue")
    proxies = Place("proxies", Proxy, pool=True)
    return jobs, done, proxies


def _raises(match: str) -> pytest.RaisesExc:
    return pytest.raises(NetDefinitionError, match=re.escape(match))


def test_valid_net_builds() -> None:
    jobs, done, proxies = _places()
    work = Transition(
        "work",
        consume=[jobs(j, queue=d)],
        read=[proxies(p)],
        produce=[done.produce(j, delay=5)],
    )
    net = Net("example", places=[jobs, done, proxies], transitions=[work])
    assert net.place("jobs") is jobs
    assert net.transition("work") is work


def test_output_using_an_unbound_variable_names_net_transition_arc_and_variable() -> None:
    jobs, done, _ = _places()
    work = Transition(
        "work", consume=[jobs(queue=d)], produce=[done.produce(lambda x: Job("a", x))]
    )
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'example'", "'work'", "produce arc 0", "'done'", "'x'", "bound: d"):
        assert part in message, message


def test_output_var_unbound_is_rejected() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(queue=d)], produce=[done.produce(j)])
    with _raises("uses variable 'j' that no consume or read arc binds"):
        Net("example", places=[jobs, done], transitions=[work])


def test_delay_function_using_an_unbound_variable_is_rejected() -> None:
    jobs, done, _ = _places()
    work = Transition(
        "work", consume=[jobs(j, queue=d)], produce=[done.produce(j, delay=lambda x: x)]
    )
    with _raises("uses variable 'x'"):
        Net("example", places=[jobs, done], transitions=[work])


def test_guard_naming_an_unbound_variable_is_rejected() -> None:
    jobs, done, _ = _places()
    work = Transition(
        "work", consume=[jobs(j, queue=d)], produce=[done.produce(j)], guard=lambda x: x > 0
    )
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'example'", "'work'", "guard", "'x'", "bound: d, j"):
        assert part in message, message


def test_pattern_field_missing_from_the_colour_set_is_rejected() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d, size=n)], produce=[done.produce(j)])
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'example'", "'work'", "consume arc 0", "'size'", "Job", "queue, n"):
        assert part in message, message


@pytest.mark.parametrize(
    ("constant", "shown"),
    [("3", "'3'"), (True, "True"), (2.0, "2.0")],
)
def test_constant_of_the_wrong_type_in_a_pattern_is_rejected(constant: object, shown: str) -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d, n=constant)], produce=[done.produce(j)])
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'work'", "consume arc 0", f"constant {shown}", "'n'", "int"):
        assert part in message, message


def test_constant_of_the_right_type_in_a_pattern_is_accepted() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d, n=3)], produce=[done.produce(j)])
    Net("example", places=[jobs, done], transitions=[work])


def test_initial_token_of_the_wrong_colour_is_rejected() -> None:
    with pytest.raises(NetDefinitionError) as info:
        Place("jobs", Job, key="queue", initial=[Proxy("h", 1)])
    message = str(info.value)
    for part in ("initial marking", "'jobs'", "Job", "Proxy"):
        assert part in message, message


def test_initial_token_with_a_field_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(NetDefinitionError) as info:
        Place("jobs", Job, key="queue", initial=[Job("q", "1")])
    message = str(info.value)
    for part in ("'jobs'", "Job.n", "int", "'1'"):
        assert part in message, message


def test_plain_tuple_is_not_a_token() -> None:
    with _raises("expected a Job token"):
        Place("jobs", Job, initial=[("q", 1)])


def test_duplicate_place_names_are_rejected() -> None:
    a = Place("jobs", Job)
    b = Place("jobs", Job)
    work = Transition("work", consume=[a(j)], produce=[b.produce(j)])
    with _raises("net 'example': duplicate place name 'jobs'"):
        Net("example", places=[a, b], transitions=[work])


def test_duplicate_transition_names_are_rejected() -> None:
    jobs, done, _ = _places()
    one = Transition("work", consume=[jobs(j, queue=d)], produce=[done.produce(j)])
    two = Transition("work", consume=[done(j, queue=d)], produce=[jobs.produce(j)])
    with _raises("net 'example': duplicate transition name 'work'"):
        Net("example", places=[jobs, done], transitions=[one, two])


def test_arc_on_a_place_outside_the_net_is_rejected() -> None:
    jobs, done, _ = _places()
    stray = Place("stray", Job)
    work = Transition("work", consume=[jobs(j, queue=d)], read=[stray()])
    with _raises("place 'stray' is not part of the net"):
        Net("example", places=[jobs, done], transitions=[work])


def test_partition_rule_two_keyed_arcs_with_different_key_variables() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d), done(queue=k)], produce=[done.produce(j)])
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'example'", "'work'", "consume arc 1", "'k'", "consume arc 0", "'d'"):
        assert part in message, message
    assert "partition" in message


def test_partition_rule_keyed_arc_not_binding_its_key() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j)], produce=[done.produce(j)])
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'example'", "'work'", "consume arc 0", "'jobs'", "'queue'", "partition rule"):
        assert part in message, message


def test_partition_rule_keyed_arc_binding_its_key_to_a_constant() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue="a")], produce=[done.produce(j)])
    with _raises("must bind queue= to a variable"):
        Net("example", places=[jobs, done], transitions=[work])


def test_partition_rule_applies_to_read_and_inhibitor_arcs() -> None:
    jobs, done, _ = _places()
    reads = Transition("reads", consume=[jobs(j, queue=d)], read=[done(queue=k)])
    with _raises("read arc 0"):
        Net("example", places=[jobs, done], transitions=[reads])
    inhibits = Transition("inhibits", consume=[jobs(j, queue=d)], inhibit=[done(n=1)])
    with _raises("inhibit arc 0"):
        Net("example", places=[jobs, done], transitions=[inhibits])


def test_partition_rule_exempts_pool_and_fixed_places() -> None:
    jobs, done, proxies = _places()
    fixed = Place("fixed", Pair)
    work = Transition(
        "work",
        consume=[jobs(j, queue=d), proxies(p, host=k), fixed(left=x)],
        read=[done(queue=d)],
        inhibit=[proxies(host="banned"), fixed(right="z")],
        produce=[done.produce(j), proxies.produce(p)],
    )
    Net("example", places=[jobs, done, proxies, fixed], transitions=[work])


def test_key_and_pool_together_are_rejected() -> None:
    with _raises("place 'jobs' has both key='queue' and pool=True"):
        Place("jobs", Job, key="queue", pool=True)


def test_key_must_be_a_field() -> None:
    with _raises("key 'domain' is not a field of Job"):
        Place("jobs", Job, key="domain")


def test_capacity_smaller_than_the_initial_marking_is_rejected() -> None:
    with pytest.raises(NetDefinitionError) as info:
        Place("jobs", Job, capacity=1, initial=[Job("a", 1), Job("b", 2)])
    message = str(info.value)
    for part in ("'jobs'", "2 tokens", "capacity is 1"):
        assert part in message, message


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
def test_capacity_must_be_a_positive_int(capacity: object) -> None:
    with _raises("capacity must be a positive int"):
        Place("jobs", Job, capacity=capacity)  # type: ignore[arg-type]


def test_produce_all_into_a_capacity_place_is_rejected() -> None:
    jobs = Place("jobs", Job, key="queue")
    bounded = Place("bounded", Job, capacity=4)
    split = Transition(
        "split", consume=[jobs(j, queue=d)], produce=[bounded.produce_all(lambda j: [j, j])]
    )
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, bounded], transitions=[split])
    message = str(info.value)
    for part in ("'example'", "'split'", "produce arc 0", "'bounded'", "capacity"):
        assert part in message, message


@pytest.mark.parametrize(
    "annotation",
    [int | None, Optional[int], Union[int, str]],  # noqa: UP007, UP045 - the old spellings too
)
def test_union_typed_colour_field_is_rejected(annotation: Any) -> None:
    class Maybe(NamedTuple):
        value: annotation  # type: ignore[valid-type]

    with pytest.raises(NetDefinitionError) as info:
        Place("maybe", Maybe)
    message = str(info.value)
    assert "Maybe.value" in message, message
    assert "union" in message, message


def test_field_of_an_unsupported_type_is_rejected() -> None:
    class Listy(NamedTuple):
        items: list[int]

    with _raises("field Listy.items has type"):
        Place("listy", Listy)


def test_tuple_typed_fields_are_accepted() -> None:
    class Path(NamedTuple):
        hops: tuple[int, ...]
        ends: tuple[str, int]

    Place("paths", Path, initial=[Path((1, 2), ("a", 3))])


@dataclasses.dataclass(frozen=True)
class NotANamedTuple:
    queue: str


class PlainTuple(tuple):  # type: ignore[type-arg]
    __slots__ = ()


@pytest.mark.parametrize("colour", [dict, NotANamedTuple, PlainTuple, tuple, Job("a", 1)])
def test_colour_set_must_be_a_named_tuple(colour: object) -> None:
    with pytest.raises(NetDefinitionError) as info:
        Place("odd", colour)  # type: ignore[arg-type]
    assert "is not a typing.NamedTuple class" in str(info.value)


def test_inhibitor_cannot_bind_a_whole_token() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d)], inhibit=[done(x, queue=d)])
    with _raises("inhibitor arc cannot bind the whole token (variable 'x')"):
        Net("example", places=[jobs, done], transitions=[work])


def test_inhibitor_variable_must_be_bound_by_a_consume_or_read_arc() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d)], inhibit=[done(queue=d, n=n)])
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'work'", "inhibit arc 0", "'n'", "not bound"):
        assert part in message, message


def test_many_arc_must_match_on_variables_bound_before_it() -> None:
    _, _, proxies = _places()
    hosts = Place("hosts", Proxy, pool=True)
    grab = Transition("grab", consume=[proxies.many(2, host=k), hosts(host=k)])
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[proxies, hosts], transitions=[grab])
    message = str(info.value)
    for part in ("'grab'", "consume arc 0", "many", "'k'"):
        assert part in message, message


def test_transition_without_a_consume_arc_is_rejected() -> None:
    jobs, done, _ = _places()
    spring = Transition("spring", consume=[], produce=[done.produce(Job("a", 1))])
    with _raises("transition 'spring': has no consume arc"):
        Net("example", places=[jobs, done], transitions=[spring])


def test_constant_output_of_the_wrong_colour_is_rejected() -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d)], produce=[done.produce(Proxy("h", 1))])
    with pytest.raises(NetDefinitionError) as info:
        Net("example", places=[jobs, done], transitions=[work])
    message = str(info.value)
    for part in ("'work'", "produce arc 0", "Job", "Proxy"):
        assert part in message, message


@pytest.mark.parametrize("delay", [-1, 1.5, "5"])
def test_delay_must_be_a_non_negative_int(delay: object) -> None:
    jobs, done, _ = _places()
    work = Transition("work", consume=[jobs(j, queue=d)], produce=[done.produce(j, delay=delay)])
    with _raises("delay must be a non-negative int"):
        Net("example", places=[jobs, done], transitions=[work])


def test_variadic_inscription_is_rejected() -> None:
    jobs, done, _ = _places()
    work = Transition(
        "work", consume=[jobs(j, queue=d)], produce=[done.produce(lambda *args: args[0])]
    )
    with _raises("parameter 'args'"):
        Net("example", places=[jobs, done], transitions=[work])


@pytest.mark.parametrize("name", ["1x", "has space", "a-b", ""])
def test_names_must_be_identifiers(name: str) -> None:
    with _raises("is not"):
        Place(name, Job)
    with _raises("is not"):
        Transition(name, consume=[])
    with _raises("is not a Python identifier"):
        variables(f"ok {name}-")


def test_outputs_receive_the_firing_time_as_now() -> None:
    from nets.engine import Engine

    jobs = Place("jobs", Job, key="queue", initial=[Job("a", 1)])
    due = Place("due", Job, key="queue")
    stamp = Transition(
        "stamp",
        consume=[jobs(j, queue=d)],
        # The token records when it fired; the delay aims at an absolute time.
        produce=[due.produce(lambda j, now: Job(j.queue, now), delay=lambda now: 100 - now)],
    )
    engine = Engine(Net("stamped", places=[jobs, due], transitions=[stamp]), initial_marking=True)
    step = engine.fire(30)
    assert step is not None
    assert engine.tokens("due") == [(100, Job("a", 30))]


def test_now_is_reserved_and_not_for_guards() -> None:
    with pytest.raises(NetDefinitionError, match="'now' is reserved"):
        variables("now")
    jobs = Place("jobs", Job, key="queue")
    with pytest.raises(NetDefinitionError, match="only available to outputs"):
        Net(
            "timed_guard",
            places=[jobs],
            transitions=[Transition("t", consume=[jobs(j, queue=d)], guard=lambda now: now > 5)],
        )
