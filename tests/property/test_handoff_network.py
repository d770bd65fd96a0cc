"""Shards hand tokens to each other over a lossy network; every token arrives exactly once.

A Hypothesis state machine runs two or three endpoints (shard ids 0..2) in one process,
each an :class:`Outbox` and an :class:`Inbox` with its own copy of the partition table.
Handoffs and their acknowledgements travel through an in-memory network that loses,
duplicates, reorders and delays them; time is a virtual clock in integer milliseconds,
advanced by a rule, so that resends fire. The machine plays the shard's part (the
shell): an offer's run goes to a durable outbox (a dict) at once, the runs an
acknowledgement hands back are deleted from it, and a receipt's tokens are applied
together with the inbox's new hwm. A restart rebuilds an endpoint from what is durable,
as a new incarnation.

A slot changes owner as docs/handoff.md ("Slot moves") describes: the old owner adopts
the new table first (from then on it redirects the slot's runs) and hands the slot's
dedup state (its hwms) over; the new owner installs them when it adopts the table; the
other endpoints adopt it whenever a rule says so, so stale epochs meet redirects and
deferrals, and a new owner may receive its own old runs through the loopback.

Invariants after every step: no token is applied twice; for every (sender, lane) the
dedup state lives in one place (an inbox, or in transit with a moving slot), it is one
int, the tokens applied are exactly seq 1..hwm, and the sender believes no more
acknowledged than that; at most one endpoint believes it owns a slot; each outbox holds
exactly its durable runs; nothing is refused.

At the end, whatever the rules did, one more slot moves while tokens are in flight (a
round whose acknowledgements are all lost, then the move, stale senders redirected and
a new owner that defers until it has the table), then a drain phase (every endpoint
adopts the latest table, the network stops losing messages, time advances) must apply
every offered token exactly once and empty every outbox.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import Final

from hypothesis import event, settings, stateful
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nets.codec import pack, unpack
from router.handoff import Inbox, LaneState, Outbox, Run
from router.table import PartitionTable, pool_lane

RESEND_MS: Final = 100
SLOTS: Final = (0, 1)  # the slot lanes tokens are offered on
MOVES_MAX: Final = 4
DRAIN_ROUNDS_MAX: Final = 20
PICK: Final = st.integers(0, 2**16)  # an index, taken modulo what there is to pick from


@dataclass(frozen=True, slots=True)
class HandoffPacket:
    sender: int
    incarnation: int
    receiver: int
    epoch: int
    runs: tuple[Run, ...]


@dataclass(frozen=True, slots=True)
class AckPacket:
    receiver: int  # the shard that sent the handoff
    acks: tuple[tuple[int, int], ...]
    redirects: tuple[tuple[int, int, int], ...]
    deferred: tuple[int, ...]


Packet = HandoffPacket | AckPacket


class Endpoint:
    """One shard: the two machines, its table copy, and its durable outbox."""

    def __init__(self, shard: int, table: PartitionTable) -> None:
        self.shard = shard
        self.table = table
        self.incarnation = 1
        self.durable_runs: dict[tuple[int, int], Run] = {}  # (lane, first seq) -> run
        self.next_seqs: dict[int, int] = {}  # lane -> next seq, kept when runs go
        self.outbox = Outbox(resend_ms=RESEND_MS)
        self.outbox.table_changed(table)
        self.inbox = Inbox(shard)

    def offer(self, lane: int, tokens: tuple[int, ...]) -> Run:
        run = self.outbox.offer(lane, pack(tokens), len(tokens))
        self.durable_runs[(lane, run.first_seq)] = run  # in the firing's transaction
        self.next_seqs[lane] = run.last_seq + 1
        return run

    def send(self, now_ms: int) -> list[HandoffPacket]:
        return [
            HandoffPacket(self.shard, self.incarnation, o.shard, o.epoch, o.runs)
            for o in self.outbox.due(now_ms, self.table)
        ]

    def acknowledged(self, packet: AckPacket, now_ms: int) -> None:
        done = self.outbox.acknowledged(
            acks=packet.acks, redirects=packet.redirects, deferred=packet.deferred, now_ms=now_ms
        )
        for run in done:
            del self.durable_runs[(run.lane, run.first_seq)]

    def adopt(self, table: PartitionTable) -> None:
        self.table = table
        self.outbox.table_changed(table)

    def restart(self) -> None:
        """What a SIGKILL and a recovery leave: the durable state, a new incarnation."""
        self.incarnation += 1
        self.outbox = Outbox(resend_ms=RESEND_MS)
        for lane, next_seq in self.next_seqs.items():
            runs = [run for (run_lane, _), run in self.durable_runs.items() if run_lane == lane]
            self.outbox.restore(lane, next_seq=next_seq, runs=runs)
        self.outbox.table_changed(self.table)
        self.inbox = Inbox(self.shard, self.inbox.hwms)


class HandoffNetwork(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.endpoints: list[Endpoint] = []
        self.network: list[Packet] = []
        self.now_ms = 0
        self.latest = PartitionTable.initial(1)
        self.moves = 0
        self.moving: tuple[int, int, int] | None = None  # (slot, old owner, new owner)
        self.in_transit: dict[tuple[int, int], int] = {}  # the moving slot's hwms
        self.origin: dict[int, tuple[int, int, int]] = {}  # token -> (sender, lane, seq)
        self.applied: Counter[int] = Counter()

    def _pick(self, index: int) -> Endpoint:
        return self.endpoints[index % len(self.endpoints)]

    # -- the shell's part ---------------------------------------------------------------

    def _deliver(self, packet: Packet) -> None:
        if isinstance(packet, AckPacket):
            self.endpoints[packet.receiver].acknowledged(packet, self.now_ms)
            return
        receiver = self.endpoints[packet.receiver]
        receipt = receiver.inbox.receive(
            sender=packet.sender,
            incarnation=packet.incarnation,
            epoch=packet.epoch,
            runs=[(run.lane, run.first_seq, run.count) for run in packet.runs],
            table=receiver.table,
        )
        for verdict in set(receipt.verdicts):
            event(f"verdict {verdict.value}")
        if packet.sender == packet.receiver:
            event("loopback: a slot moved to a shard that held runs for it")
        for accepted in receipt.accepted:
            run = packet.runs[accepted.index]
            assert receiver.table.owner(run.lane) == receiver.shard
            for token in unpack(run.entries)[accepted.skip :]:
                self.applied[token] += 1
                assert self.applied[token] == 1, f"token {token} applied twice"
        receiver.inbox.commit(receipt)  # the shell's one transaction: tokens and hwms
        self.network.append(
            AckPacket(packet.sender, receipt.acks, receipt.redirects, receipt.deferred)
        )

    def _start_move(self, slot: int, step: int) -> None:
        """Slot ``slot`` goes ``step`` shards on; its old owner lets go first (it freezes it)."""
        old = self.latest.owner(slot)
        new = (old + step) % len(self.endpoints)
        self.latest = self.latest.assign({slot: new})
        self.moving = (slot, old, new)
        self._adopt(self.endpoints[old])

    def _deliver_everything(self) -> None:
        while self.network:  # acknowledgements make no more messages: this ends
            self._deliver(self.network.pop(0))

    def _adopt(self, endpoint: Endpoint) -> None:
        """The endpoint takes the latest table; a moving slot's hwms go with it."""
        endpoint.adopt(self.latest)
        if self.moving is None:
            return
        slot, old, new = self.moving
        if endpoint.shard == old:
            hwms = endpoint.inbox.hwms
            for key in [key for key in hwms if key[1] == slot]:
                self.in_transit[key] = hwms.pop(key)
        if endpoint.shard == new:
            assert not self.in_transit.keys() & endpoint.inbox.hwms.keys()
            if self.in_transit:
                event("a slot moved with its dedup state")
            endpoint.inbox.hwms.update(self.in_transit)
            self.in_transit.clear()
        if all(e.table.epoch == self.latest.epoch for e in self.endpoints):
            self.moving = None

    def _adopt_all(self) -> None:
        for endpoint in self.endpoints:
            if endpoint.table.epoch < self.latest.epoch:
                self._adopt(endpoint)

    def _send_all(self) -> None:
        for endpoint in self.endpoints:
            self.network.extend(endpoint.send(self.now_ms))

    # -- rules ----------------------------------------------------------------------------

    @initialize(shard_count=st.integers(2, 3))
    def start(self, shard_count: int) -> None:
        self.latest = PartitionTable.initial(shard_count)
        self.endpoints = [Endpoint(shard, self.latest) for shard in range(shard_count)]

    @rule(which=PICK, lane_index=PICK, count=st.integers(1, 3))
    def offer(self, which: int, lane_index: int, count: int) -> None:
        endpoint = self._pick(which)
        pools = [pool_lane(s) for s in range(len(self.endpoints))]
        # A token for a lane the endpoint owns (by its table) stays local: no handoff.
        lanes = [lane for lane in (*SLOTS, *pools) if endpoint.table.owner(lane) != endpoint.shard]
        lane = lanes[lane_index % len(lanes)]
        first_token = len(self.origin)
        tokens = tuple(range(first_token, first_token + count))
        run = endpoint.offer(lane, tokens)
        for offset, token in enumerate(tokens):
            self.origin[token] = (endpoint.shard, lane, run.first_seq + offset)

    @rule(which=PICK)
    def send(self, which: int) -> None:
        self.network.extend(self._pick(which).send(self.now_ms))

    @precondition(lambda self: self.network)
    @rule(index=PICK)
    def deliver(self, index: int) -> None:
        self._deliver(self.network.pop(index % len(self.network)))

    @precondition(lambda self: self.network)
    @rule()
    def deliver_everything(self) -> None:
        """A calm moment: every message in flight arrives, in order."""
        self._deliver_everything()

    @precondition(lambda self: self.network)
    @rule(index=PICK)
    def lose(self, index: int) -> None:
        self.network.pop(index % len(self.network))

    @precondition(lambda self: self.network)
    @rule(index=PICK)
    def duplicate(self, index: int) -> None:
        self.network.append(self.network[index % len(self.network)])

    @rule(elapsed_ms=st.integers(1, 2 * RESEND_MS))
    def advance(self, elapsed_ms: int) -> None:
        self.now_ms += elapsed_ms

    @precondition(lambda self: self.moving is None and self.moves < MOVES_MAX)
    @rule(slot=st.sampled_from(SLOTS), which=PICK)
    def move_slot(self, slot: int, which: int) -> None:
        self.moves += 1
        self._start_move(slot, 1 + which % (len(self.endpoints) - 1))

    @precondition(lambda self: self.moving is not None)
    @rule(which=PICK)
    def adopt(self, which: int) -> None:
        behind = [e for e in self.endpoints if e.table.epoch < self.latest.epoch]
        self._adopt(behind[which % len(behind)])

    @rule(which=PICK)
    def restart(self, which: int) -> None:
        self._pick(which).restart()

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def dedup_state_is_one_int_per_sender_and_lane_and_tells_what_was_applied(self) -> None:
        holders = dict(self.in_transit)
        shard_count = len(self.endpoints)
        for endpoint in self.endpoints:
            assert len(endpoint.inbox.hwms) <= shard_count * (len(SLOTS) + shard_count)
            for key, hwm in endpoint.inbox.hwms.items():
                assert key not in holders, f"{key} has two hwms"
                holders[key] = hwm
        for token, (sender, lane, seq) in self.origin.items():
            assert self.applied[token] == (seq <= holders.get((sender, lane), 0)), token
        for endpoint in self.endpoints:
            for lane, out in endpoint.outbox.lanes.items():
                assert out.acked <= holders.get((endpoint.shard, lane), 0)

    @invariant()
    def at_most_one_endpoint_believes_it_owns_a_slot(self) -> None:
        for slot in SLOTS:
            believers = [e.shard for e in self.endpoints if e.table.owner(slot) == e.shard]
            assert len(believers) <= 1, f"slot {slot}: {believers}"

    @invariant()
    def outboxes_hold_their_durable_runs_and_nothing_is_refused(self) -> None:
        for endpoint in self.endpoints:
            lanes = endpoint.outbox.lanes.values()
            held = sorted((run.lane, run.first_seq) for out in lanes for run in out.runs)
            assert held == sorted(endpoint.durable_runs)
            durable_tokens = sum(run.count for run in endpoint.durable_runs.values())
            assert endpoint.outbox.pending_tokens() <= durable_tokens
            assert (endpoint.outbox.pending_tokens() == 0) == (durable_tokens == 0)
            assert endpoint.outbox.failed_lanes() == {}
            assert endpoint.inbox.failed == {}

    # -- the end --------------------------------------------------------------------------

    def teardown(self) -> None:
        if sys.exc_info()[0] is not None:
            return  # a failed step reports its own error; draining would bury it
        self._adopt_all()
        self._last_move_with_tokens_in_flight()
        self._adopt_all()
        for _ in range(DRAIN_ROUNDS_MAX):
            if not self.network and not any(e.outbox.pending_tokens() for e in self.endpoints):
                break
            self.now_ms += RESEND_MS
            self._send_all()
            self._deliver_everything()
        self.dedup_state_is_one_int_per_sender_and_lane_and_tells_what_was_applied()
        self.outboxes_hold_their_durable_runs_and_nothing_is_refused()
        assert [t for t in self.origin if self.applied[t] != 1] == []
        for endpoint in self.endpoints:
            assert endpoint.outbox.pending_tokens() == 0
            assert endpoint.durable_runs == {}
            states = {out.state for out in endpoint.outbox.lanes.values()}
            assert states <= {LaneState.IDLE}, f"shard {endpoint.shard}: {states}"

    def _last_move_with_tokens_in_flight(self) -> None:
        """Every path of a move, whatever the rules did: redirects, deferrals, loopback.

        A round of handoffs whose acknowledgements are all lost; the busiest slot moves
        (with its dedup state); everyone resends at their epoch; all but the new owner
        adopt the table before the old owner's redirects reach them; everyone resends
        again, and the new owner, still behind, defers.
        """
        self._send_all()
        in_flight, self.network = self.network, []
        for packet in in_flight:
            self._deliver(packet)
        self.network.clear()
        busy = Counter(lane for e in self.endpoints for _sender, lane in e.inbox.hwms)
        self._start_move(max(SLOTS, key=lambda slot: busy[slot]), 1)
        assert self.moving is not None
        for _ in range(2):
            self.now_ms += RESEND_MS
            self._send_all()
            for endpoint in self.endpoints:
                if endpoint.shard != self.moving[2]:
                    self._adopt(endpoint)
            self._deliver_everything()


def test_every_token_is_applied_exactly_once_over_a_lossy_network() -> None:
    stateful.run_state_machine_as_test(
        HandoffNetwork,
        settings=settings(max_examples=150, stateful_step_count=50, deadline=None),
    )
