"""The ledger against generated histories: every valid one balances, every corrupted one fails.

A reference model moves tokens between three nodes with few distinct values (so equal
tokens collide and only multiplicities can tell them apart): produce, consume, export
and apply over lanes, cumulative acknowledgements, slot-move shipments sealed then
activated or unsealed, crashes and recoveries; then it drains (every node back, every
export applied and acknowledged, every shipment resolved) and reports the final
markings. The ledger must accept that history, and must reject it once any single
token event is deleted or repeated.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.sim.ledger import (
    Acked,
    Activated,
    Applied,
    Consumed,
    Crashed,
    Exported,
    LedgerEvent,
    Present,
    Produced,
    Recovered,
    Sealed,
    Unsealed,
    check,
)

pytestmark = pytest.mark.simulation

NODES = ("shard-0", "shard-1", "shard-2")
KEYS = tuple((place, (f"v{i}",)) for place in ("p", "q") for i in range(3))
LANES = (3, 0x10001)


class Model:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.history: list[LedgerEvent] = []
        self.held = {node: Counter[tuple[str, tuple[str]]]() for node in NODES}
        self.down: set[str] = set()
        self.next_seq: Counter[tuple[str, int]] = Counter()
        self.pending: list[tuple[str, int, int, tuple[str, tuple[str]]]] = []
        self.applied: set[tuple[str, int, int]] = set()
        self.acked: Counter[tuple[str, int]] = Counter()
        self.shipments: list[tuple[int, str, tuple[str, tuple[str]]]] = []
        self.moves = 0

    def up(self) -> list[str]:
        return [n for n in NODES if n not in self.down]

    def holding(self) -> list[tuple[str, tuple[str, tuple[str]]]]:
        return [(n, k) for n in self.up() for k in sorted(self.held[n]) if self.held[n][k] > 0]

    def step(self) -> None:
        rng, up = self.rng, self.up()
        op = rng.choice(
            ["produce", "produce", "consume", "export", "apply", "ack", "seal", "resolve",
             "crash", "recover"]
        )  # fmt: skip
        held = self.holding()
        if op == "produce" and up:
            node, key = rng.choice(up), rng.choice(KEYS)
            self.held[node][key] += 1
            self.history.append(Produced(node, key[0], key[1], "t"))
        elif op == "consume" and held:
            node, key = rng.choice(held)
            self.held[node][key] -= 1
            self.history.append(Consumed(node, key[0], key[1], "t"))
        elif op == "export" and held:
            node, key = rng.choice(held)
            lane = rng.choice(LANES)
            self.next_seq[(node, lane)] += 1
            seq = self.next_seq[(node, lane)]
            self.held[node][key] -= 1
            self.pending.append((node, lane, seq, key))
            self.history.append(Exported(node, lane, seq, key[0], key[1]))
        elif op == "apply" and self.pending and up:
            self.apply(self.pending.pop(rng.randrange(len(self.pending))), rng.choice(up))
        elif op == "ack":
            for sender, lane in sorted(self.next_seq):
                if sender in up:
                    self.ack(sender, lane)
        elif op == "seal" and held:
            node, key = rng.choice(held)
            self.moves += 1
            self.held[node][key] -= 1
            self.shipments.append((self.moves, node, key))
            self.history.append(Sealed(node, self.moves, key[0], key[1]))
        elif op == "resolve" and self.shipments and up:
            self.resolve(self.shipments.pop(rng.randrange(len(self.shipments))))
        elif op == "crash" and up:
            node = rng.choice(up)
            self.down.add(node)
            self.history.append(Crashed(node))
        elif op == "recover" and self.down:
            self.recover(rng.choice(sorted(self.down)))

    def apply(self, entry: tuple[str, int, int, tuple[str, tuple[str]]], node: str) -> None:
        sender, lane, seq, key = entry
        self.held[node][key] += 1
        self.applied.add((sender, lane, seq))
        self.history.append(Applied(node, sender, lane, seq, key[0], key[1]))

    def ack(self, sender: str, lane: int) -> None:
        upto = self.acked[(sender, lane)]
        while (sender, lane, upto + 1) in self.applied:
            upto += 1
        if upto > self.acked[(sender, lane)]:
            self.acked[(sender, lane)] = upto
            self.history.append(Acked(sender, lane, upto))

    def resolve(self, shipment: tuple[int, str, tuple[str, tuple[str]]]) -> None:
        move_id, source, key = shipment
        if source in self.up() and self.rng.random() < 0.3:
            self.held[source][key] += 1
            self.history.append(Unsealed(source, move_id, key[0], key[1]))
        else:
            target = self.rng.choice(self.up())
            self.held[target][key] += 1
            self.history.append(Activated(target, move_id, key[0], key[1]))

    def recover(self, node: str) -> None:
        self.down.discard(node)
        marking = tuple((k[0], k[1], n) for k, n in sorted(self.held[node].items()) if n)
        self.history.append(Recovered(node, marking))

    def drain(self) -> list[LedgerEvent]:
        for node in sorted(self.down):
            self.recover(node)
        while self.pending:
            self.apply(self.pending.pop(0), self.rng.choice(NODES))
        for sender, lane in sorted(self.next_seq):
            self.ack(sender, lane)
        while self.shipments:
            self.resolve(self.shipments.pop(0))
        for node in NODES:
            for key, count in sorted(self.held[node].items()):
                if count:
                    self.history.append(Present(node, key[0], key[1], count))
        return self.history


def _history(seed: int, steps: int) -> list[LedgerEvent]:
    model = Model(random.Random(seed))
    for _ in range(steps):
        model.step()
    return model.drain()


TOKEN_EVENTS = (Produced, Consumed, Exported, Applied, Sealed, Unsealed, Activated, Present)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(0, 120))
def test_a_valid_history_balances(seed: int, steps: int) -> None:
    report = check(_history(seed, steps), drained=True)
    assert report.ok, str(report)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    steps=st.integers(1, 120),
    pick=st.integers(0, 2**16),
    repeat=st.booleans(),
)
def test_deleting_or_repeating_any_token_event_is_caught(
    seed: int, steps: int, pick: int, repeat: bool
) -> None:
    history = _history(seed, steps)
    candidates = [i for i, e in enumerate(history) if isinstance(e, TOKEN_EVENTS)]
    if not candidates:
        return
    index = candidates[pick % len(candidates)]
    event = history[index]
    corrupted = [*history[: index + 1], event, *history[index + 1 :]] if repeat else (
        history[:index] + history[index + 1 :]
    )  # fmt: skip
    report = check(corrupted, drained=True)
    what = "repeated" if repeat else "deleted"
    assert not report.ok, f"{what} #{index} {event} went unnoticed"
