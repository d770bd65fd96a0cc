"""The batch recorder on its own (shard/recorder.py): an engine and an exchange, no core.

What it is handed is all it needs: the engine records into it through one bound method,
and firings count into the totals only when the batch holding them is committed.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from nets import Net, Place, Transition, variables
from nets.engine import Engine
from shard.batch import Batch, Recovered
from shard.exchange import Exchange
from shard.recorder import BatchRecorder

T0_MS = 1_000_000


class Job(NamedTuple):
    n: int


j = variables("j")[0]


def _recorder(jobs: int) -> tuple[Engine, BatchRecorder, list[str]]:
    source = Place("jobs", Job)
    done = Place("done", Job)
    hop = Transition("hop", consume=[source(j)], produce=[done.produce(j)])
    net = Net("hop", places=[source, done], transitions=[hop])
    recovered = Recovered(
        marking={}, clock_ms=0, clients={}, initialised=True, firings_total={"hop": 5}
    )
    exchange = Exchange(
        net, shard_id=0, shard_count=1, recovered=recovered, reserved=frozenset(), incarnation=1
    )
    engine = Engine(net, initial_marking=False)
    engine.advance(T0_MS)
    expired: list[str] = []
    recorder = BatchRecorder(
        net,
        engine,
        exchange,
        recovered,
        first_batch=Batch(),
        counters=Counter(),
        lease_expired=expired.append,
    )
    for n in range(jobs):
        recorder.add("jobs", Job(n), T0_MS)
    return engine, recorder, expired


def _fire(engine: Engine, recorder: BatchRecorder) -> int:
    before = engine.firing_counts()
    engine.fire_batch(T0_MS, 1_000, record=recorder.record_steps, stop=lambda: False, stop_every=16)
    return recorder.count_firings(before)


def test_a_put_and_fired_entry_passes_through_and_firings_count_once_committed() -> None:
    engine, recorder, expired = _recorder(3)
    assert _fire(engine, recorder) == 3
    batch = recorder.take_batch()
    # The jobs were added and consumed in this batch: only the done tokens remain.
    assert dict(batch.marking) == {("done", T0_MS, Job(n)): 1 for n in range(3)}
    assert dict(batch.firings) == {"hop": 3} and batch.clock_ms == T0_MS
    assert recorder.committed_firings() == {"hop": 5}  # taken, not yet durable
    recorder.committed(T0_MS + 7)
    assert recorder.committed_firings() == {"hop": 8}
    assert recorder.firings_committed_ms == T0_MS + 7
    assert recorder.batch.is_empty() and expired == []


def test_committed_counts_the_batch_taken_last_only() -> None:
    engine, recorder, _expired = _recorder(2)
    _fire(engine, recorder)
    recorder.take_batch()  # never said durable: its firings must not count later
    recorder.take_batch()
    recorder.committed(T0_MS)
    assert recorder.committed_firings() == {"hop": 5}
    assert recorder.firings_committed_ms == 0  # no batch with firings became durable
