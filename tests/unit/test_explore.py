"""The explorer: known state-space sizes, bounds, partial results and closed work queues."""

from typing import NamedTuple

import pytest

from nets import Net, Place, Transition, variables
from nets.classic_nets import DOT, Dot, kanban, philosophers
from nets.effects import Outcome
from nets.errors import CpnError, NetDefinitionError
from nets.explore import OpenNetError, explore


@pytest.mark.parametrize(("n", "states", "edges"), [(1, 160, 616), (2, 4_600, 28_120)])
def test_kanban_has_its_published_size(n: int, states: int, edges: int) -> None:
    space = explore(kanban(n))
    assert (space.state_count, space.edge_count, space.partial) == (states, edges, False)
    assert space.technique.endswith("PACKED_PT")
    assert space.max_tokens_per_marking == 4 * n
    assert set(space.place_bounds.values()) == {n}
    assert space.dead_markings == 0


def test_philosophers_deadlock_when_all_hold_their_left_fork() -> None:
    space = explore(philosophers(3), keep_edges=True)
    assert space.dead_markings == 1
    dead = next(
        s
        for s in range(space.state_count)
        if all(space.graph.marking(s)[f"left{i}"] for i in range(3))
    )
    path = space.graph.path(dead)
    assert [label.transition for label in path] == ["take_left0", "take_left1", "take_left2"]


def test_max_states_and_should_stop_make_the_result_partial() -> None:
    limited = explore(kanban(2), max_states=100)
    assert limited.partial and limited.state_count == 100 and limited.stop_reason == "limit"
    stopped = explore(kanban(2), should_stop=lambda: True)
    assert stopped.partial and stopped.stop_reason == "stopped"
    general = explore(kanban(2), max_states=100, method="general")
    assert general.partial and general.state_count == 100


def test_counts_above_a_byte_fall_back_to_tuples() -> None:
    a = Place("a", Dot, initial=[DOT] * 200)
    b = Place("b", Dot)
    grow = Transition("grow", consume=[a()], produce=[b.produce(DOT), b.produce(DOT)])
    space = explore(Net("grow", places=[a, b], transitions=[grow]))
    assert space.state_count == 201
    assert space.place_bounds == {"a": 200, "b": 400}
    assert space.technique.endswith(" PT") and "PACKED" not in space.technique


class Job(NamedTuple):
    queue: str
    n: int


class Done(NamedTuple):
    queue: str
    n: int
    ok: bool


class _Worker:
    def outcomes(self, token: tuple[object, ...], attempt: int) -> tuple[Outcome, ...]:
        job = Job(*token)  # type: ignore[arg-type]
        return (
            Outcome("ok", (("done", Done(job.queue, job.n, True)),)),
            Outcome("fail", (("done", Done(job.queue, job.n, False)),)),
            Outcome("stall"),
        )


def _queue_net(*, effects: bool = True) -> Net:
    j, q = variables("j q")
    inbox = Place("inbox", Job, key="queue", initial=[Job("a", 1), Job("a", 2)])
    work = Place("work", Job, key="queue", work_queue=True, results=("done",))
    done = Place("done", Done, key="queue")
    dispatch = Transition("dispatch", consume=[inbox(j, queue=q)], produce=[work.produce(j)])
    return Net(
        "queue",
        places=[inbox, work, done],
        transitions=[dispatch],
        effects={"work": _Worker()} if effects else None,
    )


def test_an_open_work_queue_is_refused_by_name() -> None:
    with pytest.raises(OpenNetError, match="'work'"):
        explore(_queue_net(effects=False))


def test_effects_must_name_work_queue_places() -> None:
    inbox = Place("inbox", Job, key="queue")
    with pytest.raises(NetDefinitionError, match="not a work-queue place"):
        Net("bad", places=[inbox], transitions=[], effects={"inbox": _Worker()})
    with pytest.raises(NetDefinitionError, match="outcomes"):
        Net(
            "bad",
            places=[Place("w", Job, key="queue", work_queue=True, results=())],
            transitions=[],
            effects={"w": object()},  # type: ignore[dict-item]
        )


def test_a_closed_work_queue_leases_completes_and_expires() -> None:
    space = explore(_queue_net(), keep_edges=True)
    kinds = {label.transition for label in space.graph.labels}
    assert kinds == {"dispatch", "work__lease", "work__complete", "work__expire"}
    assert space.place_bounds["work__held"] == 2
    # Each of the two jobs ends ok or failed: 4 dead markings, both jobs in done.
    dead = [s for s in range(space.state_count) if len(space.graph.marking(s)["done"]) == 2]
    assert space.dead_markings == len(dead) == 4


def test_invariants_are_validated() -> None:
    with pytest.raises(NetDefinitionError, match="one argument"):
        Net("bad", places=[], transitions=[], invariants={"x": lambda: True})
    with pytest.raises(NetDefinitionError, match="not callable"):
        Net("bad", places=[], transitions=[], invariants={"x": 3})  # type: ignore[dict-item]


def test_a_bad_method_is_an_error() -> None:
    with pytest.raises(CpnError, match="not a P/T net"):
        explore(_queue_net(), method="pt")


def test_max_tokens_per_value_counts_copies_of_one_token() -> None:
    j, q = variables("j q")
    inbox = Place("inbox", Job, key="queue", initial=[Job("a", 1), Job("a", 1), Job("a", 2)])
    out = Place("out", Job, key="queue")
    move = Transition("move", consume=[inbox(j, queue=q)], produce=[out.produce(j)])
    space = explore(Net("copies", places=[inbox, out], transitions=[move]))
    assert space.place_bounds == {"inbox": 3, "out": 3}
    assert space.max_tokens_per_value == 2  # the MCC's MAX_TOKEN_IN_PLACE of the unfolded net
    assert explore(kanban(2)).max_tokens_per_value == 2
