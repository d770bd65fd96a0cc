"""A shard's part in slot moves, scale-in and fencing (core, driven by the shard's core).

The router decides (router/coordinator.py); this module carries out its orders on the
shard's engine (through :class:`MoveHost`), its exchange and the batch, and collects
the answers. Every order is answered
from the slot's durable phase (:data:`router.moves.SLOT_TRANSITIONS`), so a repeated
order gets the first answer again and a restarted shard picks up where the killed one
was (docs/handoff.md, "Slot moves"):

* ``seal`` (source): in the batch that starts the turn (the engine then holds exactly
  what the store holds), take the slot's tokens out of the engine (they stay in the
  store), compute the shipment's count and digest over those tokens and the inbox hwms
  of the slot's lane, and record the seal. From then on the shard fires nothing of the
  slot, defers handoff runs for it (so its hwms stay final) and sends puts for it to
  its outbox (they reach the slot's owner after the move, or come back by loopback).
* ``stage`` (target): fetch the shipment from the source (:class:`FetchSlot`, sent
  again until it comes), check every entry and the count and digest, and store it apart.
* ``activate`` (target): once its table names it the owner, the shard moves the staged
  tokens into its marking and the hwms into its inbox, in the same batch as the table
  (:meth:`Mover.table_adopted`), so no run of the slot is judged in between.
* ``forget`` (source, after the commit): delete the sealed tokens and the lane's hwms
  from the store; the table already sends the slot's runs elsewhere.
* ``unseal`` / ``discard`` (an abort before the commit point): give the slot back to
  the engine / drop the staged shipment.

Nothing leaves before the batch that made it true is committed: answers go out in the
next :class:`~router.wire.MoveReport`, after the commit, and shipment requests with the
other sends. A shard the router fenced (a new incarnation) fires only once its table
reaches the fence epoch.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Final, Protocol

from nets.codec import pack
from nets.firing import PlacedEntry
from nets.model import Token
from router.moves import shipment_digest
from router.wire import (
    FRAME_BYTES_MAX,
    FetchSlot,
    MoveOrders,
    MoveReport,
    SlotShipment,
    encode,
)
from shard.batch import Batch
from shard.exchange import Exchange, HandoffRefused, SealedSlot, StagedSlot

REPORT_MS: Final = 250  # as often as the heartbeat, when no move concerns the shard
REPORT_MS_BUSY: Final = 40  # while orders wait: a move takes a few rounds of these
FETCH_RETRY_MS: Final = 300  # a shipment that did not come is asked for again
POOL_GIVE_MS: Final = 100  # a leaving shard hands its pool tokens on this often
SHIPMENT_BYTES_MAX: Final = FRAME_BYTES_MAX - 64 * 1024

log = logging.getLogger("cpn.shard.mover")

Order = tuple[int, str, int, int, int, int, bytes, int]
Answer = tuple[int, str, int, bytes]


class MoveHost(Protocol):
    """What the mover needs of the shard's engine and store, and nothing more."""

    def sealed_entries(self, slot: int) -> list[PlacedEntry]:
        """A slot's committed entries, every deferred one loaded first."""
        ...

    def stored_entries(self, slot: int) -> list[PlacedEntry]:
        """A slot's committed entries as the store holds them."""
        ...

    def extract(self, entries: list[PlacedEntry]) -> None:
        """Take entries out of the engine (they stay in the store)."""
        ...

    def add_entries(self, entries: list[PlacedEntry]) -> None:
        """Put entries into the engine, each checked."""
        ...

    def pool_entries(self) -> list[PlacedEntry]:
        """Every pool token the engine holds."""
        ...

    def pool_token_count(self) -> int: ...

    def committed_firings(self) -> dict[str, int]:
        """Committed firings per transition over the store's life."""
        ...


class SlotReader(Protocol):
    """A sealed slot's committed entries (the store)."""

    def slot_entries(self, slot: int) -> list[PlacedEntry]: ...


class Mover:
    """Move orders in, answers out, for one shard (see the module docstring).

    It keeps only its own state (orders in progress, answers to report, fencing); the
    exchange, the batch and the engine (a :class:`MoveHost`) are handed to each call,
    so a core rebuilt after a failed commit carries the mover on unchanged.
    """

    def __init__(self, *, incarnation: int, routed: bool, fault: Callable[[str], None]) -> None:
        self.incarnation = incarnation
        self.routed = routed  # a router fences this shard: no router, no fence
        self._fault = fault
        self.answers: dict[tuple[int, str], Answer] = {}
        self.fence_epoch = 0  # 0: the router has not answered this incarnation yet
        self.busy = False  # the last orders asked for something
        self.table_wanted = False
        self.next_report_ms = 0
        self.next_pool_give_ms = 0
        self.fetch_asked_ms: dict[int, int] = {}  # move id -> when its shipment was asked
        self.stage_orders: dict[int, Order] = {}  # move id -> a stage order waiting
        self.fetches: list[tuple[int, bytes]] = []  # FetchSlot frames to send (source, frame)
        # The times given when this incarnation's recovery steps happened (0: not yet):
        # the router's first answer (its fence epoch), the first batch allowed to fire,
        # the first firing.
        self.fence_known_ms = 0
        self.fenced_ms = 0
        self.first_fired_ms = 0
        self.counters: Counter[str] = Counter()

    # -- fencing ------------------------------------------------------------------------

    def fenced(self, exchange: Exchange) -> bool:
        """May the shard fire? Always without a router; else once its table is at the
        epoch at which the router fenced this incarnation."""
        if not self.routed:
            return True
        return 0 < self.fence_epoch <= exchange.table.epoch

    def may_fire(self, exchange: Exchange, now_ms: int) -> bool:
        """:meth:`fenced`, noting when it first holds (a recovery step)."""
        if not self.fenced(exchange):
            return False
        if not self.fenced_ms:
            self.fenced_ms = now_ms
        return True

    def fired(self, count: int, now_ms: int) -> None:
        if count and not self.first_fired_ms:
            self.first_fired_ms = now_ms

    # -- orders -------------------------------------------------------------------------

    def orders(
        self, message: MoveOrders, now_ms: int, exchange: Exchange, batch: Batch, host: MoveHost
    ) -> bool:
        """Carry out the router's orders in the current batch; whether a table is wanted."""
        if message.members != exchange.members:
            exchange.members = message.members
        self.fence_epoch = message.fence_epoch
        if message.fence_epoch and not self.fence_known_ms:
            self.fence_known_ms = now_ms
        self.table_wanted = message.epoch > exchange.table.epoch
        self.busy = bool(message.orders)
        for order in message.orders:
            try:
                self._order(order, now_ms, exchange, batch, host)
            except HandoffRefused as exc:
                self.counters["move_orders_failed"] += 1
                log.error("move order %r failed: %s", order[:5], exc)
        self._give_pool_away(now_ms, exchange, batch, host)
        return self.table_wanted

    def _answer(self, move_id: int, event: str, count: int = -1, digest: bytes = b"") -> None:
        self.answers[(move_id, event)] = (move_id, event, count, digest)

    def _order(
        self, order: Order, now_ms: int, exchange: Exchange, batch: Batch, host: MoveHost
    ) -> None:
        move_id, kind, slot, _source, _target, _count, _digest, epoch = order
        table = exchange.table
        me = exchange.me
        if epoch > table.epoch:
            self.table_wanted = True  # judged only against a table as new as the order
            return
        if kind == "seal":
            sealed = exchange.sealed.get(slot)
            if sealed is None:
                if table.owner(slot) != me:
                    self.counters["move_orders_refused"] += 1
                    log.error("seal of slot %d (move %d): not owned here", slot, move_id)
                    return
                sealed = self._seal(slot, move_id, exchange, batch, host)
            elif sealed.move_id != move_id:  # an earlier move of the slot ended in error
                sealed = SealedSlot(move_id, sealed.count, sealed.digest)
                exchange.sealed[slot] = sealed
                batch.phases[slot] = sealed.encode()
            self._answer(move_id, "sealed", sealed.count, sealed.digest)
        elif kind == "unseal":
            sealed = exchange.sealed.get(slot)
            if sealed is not None and sealed.move_id == move_id:
                self._unseal(slot, move_id, exchange, batch, host)
            self._answer(move_id, "unsealed")
        elif kind == "forget":
            sealed = exchange.sealed.get(slot)
            if sealed is not None and sealed.move_id == move_id:
                self._forget(slot, move_id, exchange, batch, host)
            self._answer(move_id, "forgotten")
        elif kind == "stage":
            staged = exchange.staged.get(slot)
            if staged is not None and staged.move_id == move_id:
                self._answer(move_id, "staged", staged.count, staged.digest)
                return
            if table.owner(slot) == me:
                # A stage order comes while the source owns the slot; once this shard's
                # table gives it the slot, the move committed and was activated here
                # (its table cannot be older: it forgot the slot's last move away only
                # at that move's commit epoch). A late copy of the order must not fetch
                # and activate the shipment a second time.
                self.counters["move_orders_stale"] += 1
                return
            self.stage_orders[move_id] = order
            self._fetch(order, now_ms, exchange)
        elif kind == "activate":
            if slot in exchange.staged and table.owner(slot) == me:
                self._activate(slot, exchange, batch, host)
            if slot not in exchange.staged and table.owner(slot) == me:
                self._answer(move_id, "activated")
        elif kind == "discard":
            staged = exchange.staged.get(slot)
            if staged is not None and staged.move_id == move_id:
                del exchange.staged[slot]
                batch.staged[slot] = None
            self.stage_orders.pop(move_id, None)
            self._answer(move_id, "discarded")

    # -- the source ---------------------------------------------------------------------

    def _seal(
        self, slot: int, move_id: int, exchange: Exchange, batch: Batch, host: MoveHost
    ) -> SealedSlot:
        # The slot's tokens leave the engine: those still to load must be in it.
        entries = host.sealed_entries(slot)
        host.extract(entries)
        batch.moved.append(("sealed", move_id, tuple(entries)))
        hwms = {s: h for (s, lane), h in exchange.inbox.hwms.items() if lane == slot}
        count, digest = shipment_digest(entries, hwms)
        sealed = SealedSlot(move_id, count, digest)
        exchange.seal(slot, sealed)
        batch.phases[slot] = sealed.encode()
        self.counters["slots_sealed"] += 1
        return sealed

    def _unseal(
        self, slot: int, move_id: int, exchange: Exchange, batch: Batch, host: MoveHost
    ) -> None:
        entries = host.stored_entries(slot)
        host.add_entries(entries)
        batch.moved.append(("unsealed", move_id, tuple(entries)))
        exchange.unseal(slot)
        batch.phases[slot] = None
        self.counters["slots_unsealed"] += 1

    def _forget(
        self, slot: int, move_id: int, exchange: Exchange, batch: Batch, host: MoveHost
    ) -> None:
        entries = host.stored_entries(slot)
        for place, time_ms, token in entries:
            batch.remove(place, time_ms, token)
        batch.moved.append(("forgotten", move_id, tuple(entries)))
        hwms = exchange.inbox.hwms
        for key in [key for key in hwms if key[1] == slot]:
            del hwms[key]
            batch.hwms_removed.append(key)
        exchange.unseal(slot)
        batch.phases[slot] = None
        self.counters["slots_forgotten"] += 1

    def shipment_for(
        self, request: FetchSlot, exchange: Exchange, slots: SlotReader
    ) -> SlotShipment | None:
        """The shipment of a slot sealed here for ``request.move_id`` (None: it is not)."""
        sealed = exchange.sealed.get(request.slot)
        if sealed is None or sealed.move_id != request.move_id:
            return None
        entries = slots.slot_entries(request.slot)
        blob = pack([(place, time_ms, tuple(token)) for place, time_ms, token in entries])
        if len(blob) > SHIPMENT_BYTES_MAX:
            # TODO(#5): ship a large slot in pages; until then its move is aborted.
            self.counters["shipments_too_large"] += 1
            blob = b""
        hwms = tuple(
            sorted((s, h) for (s, lane), h in exchange.inbox.hwms.items() if lane == request.slot)
        )
        self.counters["shipments_sent"] += 1
        self._fault("shard-ship")
        return SlotShipment(request.move_id, request.slot, sealed.count, sealed.digest, blob, hwms)

    # -- the target ---------------------------------------------------------------------

    def _fetch(self, order: Order, now_ms: int, exchange: Exchange) -> None:
        move_id, _kind, slot, source = order[:4]
        if now_ms < self.fetch_asked_ms.get(move_id, -FETCH_RETRY_MS) + FETCH_RETRY_MS:
            return
        self.fetch_asked_ms[move_id] = now_ms
        frame = encode(
            FetchSlot(exchange.me, move_id, slot), message_id=0, incarnation=self.incarnation
        )
        self.fetches.append((source, frame))

    def take_fetches(self) -> list[tuple[int, bytes]]:
        """The shipment requests to send now, as ``(source shard, frame)``."""
        taken, self.fetches = self.fetches, []
        return taken

    def shipment(self, message: SlotShipment, exchange: Exchange, batch: Batch) -> None:
        """Stage a shipment the source sent (in the current batch), if a stage order waits."""
        order = self.stage_orders.get(message.move_id)
        if order is None or order[2] != message.slot:
            self.counters["shipments_unexpected"] += 1
            return
        move_id, _kind, slot, _source, _target, count, digest, _epoch = order
        del self.stage_orders[move_id]
        self.fetch_asked_ms.pop(move_id, None)
        try:
            if not message.entries:
                raise HandoffRefused(f"the shipment of slot {slot} is too large for one message")
            entries = exchange.decode_shipment(slot, message.entries)
        except HandoffRefused as exc:
            log.error("move %d: shipment of slot %d refused: %s", move_id, slot, exc)
            self._answer(move_id, "stage_failed")
            return
        found = shipment_digest(entries, dict(message.hwms))
        if found != (count, digest) or found != (message.count, message.digest):
            log.error(
                "move %d: shipment of slot %d has %d tokens (digest %s); %d were sealed (%s)",
                move_id,
                slot,
                found[0],
                found[1].hex(),
                count,
                digest.hex(),
            )
            self._answer(move_id, "stage_failed", *found)
            return
        staged = StagedSlot(move_id, count, digest, message.entries, message.hwms)
        exchange.staged[slot] = staged
        batch.staged[slot] = staged.encode()
        self._answer(move_id, "staged", count, digest)
        self.counters["slots_staged"] += 1

    def table_adopted(self, exchange: Exchange, batch: Batch, host: MoveHost) -> None:
        """Activate every staged slot the new table gives this shard (same batch)."""
        for slot in sorted(exchange.staged):
            if exchange.table.owner(slot) == exchange.me:
                self._activate(slot, exchange, batch, host)

    def _activate(self, slot: int, exchange: Exchange, batch: Batch, host: MoveHost) -> None:
        staged = exchange.staged.pop(slot)
        entries = exchange.decode_shipment(slot, staged.entries)
        for place, time_ms, token in entries:
            batch.add(place, time_ms, token)
        host.add_entries(entries)
        batch.moved.append(("activated", staged.move_id, tuple(entries)))
        hwms = exchange.inbox.hwms
        shipped = dict(staged.hwms)
        for key in [key for key in hwms if key[1] == slot and key[0] not in shipped]:
            del hwms[key]  # left from an earlier time the slot was here
            batch.hwms_removed.append(key)
        for sender, hwm in shipped.items():
            hwms[(sender, slot)] = batch.hwms[(sender, slot)] = hwm
        batch.staged[slot] = None
        exchange.local_keys.clear()
        self.counters["slots_activated"] += 1

    # -- scale-in -------------------------------------------------------------------------

    def _give_pool_away(
        self, now_ms: int, exchange: Exchange, batch: Batch, host: MoveHost
    ) -> None:
        """A leaving shard hands every pool token it holds to the shards that stay."""
        if not exchange.leaving or now_ms < self.next_pool_give_ms or exchange.members < 1:
            return
        self.next_pool_give_ms = now_ms + POOL_GIVE_MS
        by_place: dict[str, list[PlacedEntry]] = defaultdict(list)
        for entry in host.pool_entries():
            by_place[entry[0]].append(entry)
        for entries in by_place.values():
            host.extract(entries)
            by_target: dict[int, list[tuple[str, int, Token]]] = defaultdict(list)
            for index, entry in enumerate(entries):
                batch.remove(*entry)
                by_target[index % exchange.members].append(entry)
            for target, given in by_target.items():
                exchange.export_pool(given, target, batch)
            self.counters["pool_tokens_handed_on"] += len(entries)

    # -- reports --------------------------------------------------------------------------

    def report(self, now_ms: int, exchange: Exchange, host: MoveHost) -> bytes | None:
        """The MoveReport to send now (after the commit), if one is due."""
        if not self.answers and now_ms < self.next_report_ms:
            return None
        busy = self.busy or not self.fenced(exchange) or exchange.leaving
        self.next_report_ms = now_ms + (REPORT_MS_BUSY if busy else REPORT_MS)
        for _move_id, event, _count, _digest in self.answers.values():
            self._fault(f"shard-{event}")
        report = MoveReport(
            exchange.me,
            exchange.table.epoch,
            tuple(self.answers.values()),
            exchange.outbox.pending_tokens(),
            host.pool_token_count(),
            exchange.owed(),
            host.committed_firings(),
        )
        self.answers.clear()
        return encode(report, message_id=0, incarnation=self.incarnation)

    def next_deadline(self) -> int:
        return self.next_report_ms

    def statistics(self, exchange: Exchange) -> dict[str, object]:
        return {
            "fence_epoch": self.fence_epoch,
            "fenced": self.fenced(exchange),
            "fence_known_ms": self.fence_known_ms,
            "fenced_ms": self.fenced_ms,
            "first_fired_ms": self.first_fired_ms,
            "moves": dict(self.counters),
        }
