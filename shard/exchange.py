"""A shard's part in the cluster: what it owns, and tokens in and out (core, around the handoff).

The protocol itself is :mod:`router.handoff` (pure); this module connects it to the
shard: it decides which tokens stay (it is the engine's :class:`~nets.firing.Locality`),
turns exported tokens into outbox runs in the current batch, judges incoming
:class:`~router.wire.Handoff` messages (validating every entry before the inbox
machine sees the message), applies acknowledgements, keeps the partition table copy
and the peers' endpoints, and decides when to ask peers for pool tokens.

Nothing here sends: it returns frames, and the shard sends them after its commit.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Final

import msgpack

from nets.codec import CodecError, pack, share_key, share_keys, token_from_fields, unpack
from nets.engine import Engine
from nets.errors import CpnError, TokenError
from nets.model import Net, Place, Token
from router.handoff import AcknowledgementError, Inbox, Outbox, Receipt, Run
from router.slots import FIXED_SLOT, slot_of_key
from router.table import POOL_LANE_BASE, PartitionTable, TableError, is_pool_lane, pool_lane
from router.wire import Handoff, HandoffAck, PoolWanted, Table, encode
from shard.batch import Batch, Recovered

PlacedEntry = tuple[str, int, Token]
RUN_TOKENS_MAX: Final = 5_000
RUN_BYTES_MAX: Final = 512 * 1024
KEYS_CACHED_MAX: Final = 200_000
POOL_ASK_MS: Final = 100  # between two requests for pool tokens from one shard
POOL_SCAN_MAX: Final = 10_000
_TIME_END: Final = 1 << 63  # entry times are in [0, 2**63): they are stored as 8 bytes
_TUPLE: Final = {tuple}
_THREE: Final = {3}
_INT: Final = {int}
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)

log = logging.getLogger("cpn.shard.exchange")


class HandoffRefused(CpnError):
    """A Handoff message whose content is not acceptable (nothing of it is applied)."""


@dataclass(frozen=True, slots=True)
class SealedSlot:
    """A slot this shard sealed for move ``move_id``: its shipment's count and digest."""

    move_id: int
    count: int
    digest: bytes

    def encode(self) -> bytes:
        return pack(("sealed", self.move_id, self.count, self.digest))


@dataclass(frozen=True, slots=True)
class StagedSlot:
    """A moving slot's shipment, kept apart until the move commits (not fired)."""

    move_id: int
    count: int
    digest: bytes
    entries: bytes  # msgpack of [(place, time, fields)], checked when it arrived
    hwms: tuple[tuple[int, int], ...]  # (sender, hwm) of the slot's lane

    def encode(self) -> bytes:
        return pack((self.move_id, self.count, self.digest, self.entries, self.hwms))


@dataclass(frozen=True, slots=True)
class DecodedRun:
    """A run the inbox accepted, decoded once and checked: what the core applies.

    ``first_seq`` is the seq of the first entry applied (``skip`` entries of the run as
    it arrived were applied before: a go-back's overlap); ``entries`` are the applied
    ones in seq order and ``by_place`` the same entries as ``(time, token)`` per place,
    ready for :meth:`nets.engine.Engine.add_checked`. ``payload`` is the run's
    ``entries`` bytes exactly as they arrived (all of them, ``skip`` included), for a
    store that keeps a received run as one record.
    """

    lane: int
    first_seq: int
    skip: int
    entries: list[PlacedEntry]
    by_place: dict[str, list[tuple[int, Token]]]
    payload: bytes


class Exchange:
    """Ownership, the outbox and inbox machines, the table copy and the peers' endpoints."""

    def __init__(
        self,
        net: Net,
        *,
        shard_id: int,
        shard_count: int,
        recovered: Recovered,
        reserved: frozenset[str],
        incarnation: int,
    ) -> None:
        self.net = net
        self.me = shard_id
        self.incarnation = incarnation
        self.places: dict[str, Place] = {p.name: p for p in net.places}
        self.reserved = reserved
        # ``shard_count`` is the count the cluster started with: every shard computes
        # the same first table from it. The stored copy (from the router) is newer,
        # whatever its shard count: the cluster may have grown or shrunk since.
        self.table = PartitionTable.initial(shard_count)
        if recovered.table is not None:
            self.table = PartitionTable.decode(recovered.table)
        self.endpoints: tuple[str, ...] = recovered.endpoints or ("",) * shard_count
        # Slot moves (docs/handoff.md, "Slot moves"): slots sealed here (not fired,
        # their runs deferred, their tokens still in the store) and shipments staged here.
        self.sealed: dict[int, SealedSlot] = {}
        for slot, record in recovered.phases.items():
            _phase, move_id, count, digest = unpack(record)
            self.sealed[slot] = SealedSlot(move_id, count, digest)
        self.staged: dict[int, StagedSlot] = {
            slot: StagedSlot(*unpack(record)) for slot, record in recovered.staged.items()
        }
        self.members = self.table.shard_count  # the count the cluster heads for (router)
        self.loopback: list[Handoff] = []  # runs for lanes this shard owns (see outgoing)
        self.local_keys: dict[Any, bool] = {}
        # Each place's key field index; -1 for fixed and pool places.
        self._key_positions = {
            p.name: -1 if p.key is None else p.colour_set.field_index(p.key) for p in net.places
        }
        self._slots: dict[Any, int] = {}
        self._fixed_local = self._owns_slot(FIXED_SLOT)
        self.outbox = Outbox()
        self.outbox.table_epoch = self.table.epoch
        by_lane: dict[int, list[Any]] = defaultdict(list)
        for lane, first_seq, count, entries in recovered.runs:
            by_lane[lane].append((first_seq, count, entries))
        for lane in sorted(set(by_lane) | set(recovered.next_seqs)):
            runs = [Run(lane, f, c, e) for f, c, e in by_lane.get(lane, [])]
            next_seq = recovered.next_seqs.get(lane, 1)
            self.outbox.restore(lane, next_seq=next_seq, runs=runs)
        self.inbox = Inbox(shard_id, dict(recovered.hwms))
        self.counters: Counter[str] = Counter()
        self._pool_asked_ms: dict[str, int] = {}
        self._pool_ask_next = (shard_id + 1) % shard_count
        self._packer = msgpack.Packer(use_bin_type=True)
        self._run_places: dict[tuple[int, int], tuple[str, ...]] = {}  # see in_flight

    @property
    def clustered(self) -> bool:
        return self.table.shard_count > 1

    @property
    def leaving(self) -> bool:
        """The cluster is shrinking past this shard: it gives away what it holds."""
        return self.me >= self.members

    def _owns_slot(self, slot: int) -> bool:
        return self.table.owners[slot] == self.me and slot not in self.sealed

    def seal(self, slot: int, record: SealedSlot) -> None:
        """Stop firing ``slot`` (its tokens are taken out of the engine by the caller)."""
        self.sealed[slot] = record
        self._ownership_changed()

    def unseal(self, slot: int) -> None:
        """Drop the seal (an abort gives the slot back; a forget lets it go)."""
        self.sealed.pop(slot, None)
        self._ownership_changed()

    def _ownership_changed(self) -> None:
        self.local_keys.clear()
        self._fixed_local = self._owns_slot(FIXED_SLOT)

    # -- ownership (the engine's Locality) ------------------------------------------------

    def slot_of_key(self, key: Any) -> int:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= KEYS_CACHED_MAX:
                self._slots.clear()
                self.local_keys.clear()
            slot = self._slots[key] = slot_of_key(key)
        return slot

    def is_local_key(self, key: Any) -> bool:
        slot = self.slot_of_key(key)
        local = self.local_keys[key] = self.table.owners[slot] == self.me and (
            slot not in self.sealed
        )
        return local

    def is_local_fixed(self) -> bool:
        return self._fixed_local

    def lane_of(self, place: Place, token: Token) -> int | None:
        """The lane (slot) a token of ``place`` belongs to; ``None`` for pool tokens."""
        position = self._key_positions[place.name]
        if position >= 0:
            return self.slot_of_key(token[position])
        return None if place.pool else FIXED_SLOT

    def owns(self, place: Place, token: Token) -> bool:
        lane = self.lane_of(place, token)
        return lane is None or self._owns_slot(lane)

    def owned_slots(self) -> int:
        return self.table.owners.count(self.me)

    # -- out ---------------------------------------------------------------------------

    def export(self, entries: Iterable[PlacedEntry], batch: Batch) -> int:
        """Put tokens of partitions held elsewhere into outbox runs of ``batch``."""
        by_lane: dict[int, list[PlacedEntry]] = defaultdict(list)
        for entry in entries:
            lane = self.lane_of(self.places[entry[0]], entry[2])
            assert lane is not None, f"pool token {entry!r} exported without a target shard"
            by_lane[lane].append(entry)
        for lane, items in by_lane.items():
            self._offer(lane, items, batch)
        return sum(len(items) for items in by_lane.values())

    def export_pool(self, entries: list[PlacedEntry], to_shard: int, batch: Batch) -> None:
        """Hand pool tokens (with their times: a proxy's next use) to ``to_shard``."""
        if entries:
            self._offer(pool_lane(to_shard), entries, batch)

    def _offer(self, lane: int, items: list[PlacedEntry], batch: Batch) -> None:
        # Runs are cut by count and by size so that a run always fits in a message;
        # the common case packs once.
        for start in range(0, len(items), RUN_TOKENS_MAX):
            self._offer_run(lane, items[start : start + RUN_TOKENS_MAX], batch)

    def _offer_run(self, lane: int, items: list[PlacedEntry], batch: Batch) -> None:
        blob = self._packer.pack(items)  # tokens pack as arrays of their fields
        if len(blob) > RUN_BYTES_MAX and len(items) > 1:
            half = len(items) // 2
            self._offer_run(lane, items[:half], batch)
            self._offer_run(lane, items[half:], batch)
            return
        run = self.outbox.offer(lane, blob, len(items))
        batch.runs_added.append((lane, run.first_seq, run.count, run.entries))
        batch.offered.append((lane, run.first_seq, tuple(items)))
        batch.next_seqs[lane] = run.last_seq + 1
        self.counters["handoff_tokens_offered"] += run.count

    def outgoing(self, now_ms: int) -> list[tuple[int, bytes]]:
        """The Handoff frames to send now, as ``(shard id, frame)``."""
        frames = []
        for message in self.outbox.due(now_ms, self.table):
            runs = tuple((r.lane, r.first_seq, r.count, r.entries) for r in message.runs)
            if message.shard == self.me:
                # Runs offered while another shard owned their slot, which moved here
                # since (or which is sealed here): the loopback, docs/handoff.md.
                self.loopback.append(Handoff(self.me, message.epoch, runs))
                continue
            frames.append(
                (
                    message.shard,
                    encode(
                        Handoff(self.me, message.epoch, runs),
                        message_id=0,
                        incarnation=self.incarnation,
                    ),
                )
            )
            self.counters["handoff_messages_sent"] += 1
        return frames

    def acknowledged(self, ack: HandoffAck, now_ms: int, batch: Batch) -> bool:
        """Apply a peer's answer; returns whether this shard should refresh its table."""
        try:
            done = self.outbox.acknowledged(
                acks=ack.acks, redirects=ack.redirects, deferred=ack.deferred, now_ms=now_ms
            )
        except AcknowledgementError as exc:
            self.counters["handoff_protocol_errors"] += 1
            log.error("handoff acknowledgement refused in part: %s", exc)
            done = exc.done
        for run in done:
            batch.runs_removed.append((run.lane, run.first_seq))
            self.counters["handoff_tokens_acknowledged"] += run.count
        self.counters["handoff_redirects_received"] += len(ack.redirects)
        self.counters["handoff_deferred_received"] += len(ack.deferred)
        return bool(ack.redirects or ack.deferred)

    # -- in ----------------------------------------------------------------------------

    def receive(self, message: Handoff, incarnation: int) -> tuple[list[DecodedRun], Receipt]:
        """Judge a Handoff: the runs to apply now, each decoded once, and the receipt
        (hwms, the reply).

        Nothing changes here: the inbox judges, every accepted run is decoded and
        checked, and the caller applies the entries and then :meth:`accept`s the
        receipt (validate, then act: docs/handoff.md, "The receiver").

        Raises:
            HandoffRefused: an entry is malformed, names an unknown or reserved place,
                has the wrong colour or does not belong to its run's lane; nothing of
                the message is applied and the inbox is unchanged.
            ProtocolError: the inbox machine refused the message (see router.handoff).
        """
        receipt = self.inbox.receive(
            sender=message.sender,
            incarnation=incarnation,
            epoch=message.epoch,
            runs=[(lane, first_seq, count) for lane, first_seq, count, _blob in message.runs],
            table=self.table,
            sealed=self.sealed,
        )
        # Only runs the inbox accepted are decoded: duplicates cost no more than a look.
        runs: list[DecodedRun] = []
        for accepted in receipt.accepted:
            lane, first_seq, count, blob = message.runs[accepted.index]
            items, by_place = self._decode_run(lane, blob)
            if len(items) != count:
                raise HandoffRefused(
                    f"run on lane {lane} announces {count} tokens and holds {len(items)}"
                )
            skip = accepted.skip
            if skip:  # a go-back's overlap (rare): the applied tail, grouped again
                items = items[skip:]
                by_place = _by_place(items)
            runs.append(DecodedRun(lane, first_seq + skip, skip, items, by_place, blob))
        return runs, receipt

    def accept(self, receipt: Receipt, received: int) -> None:
        """The entries :meth:`receive` judged are in the engine: move the inbox's hwms
        (committed with the same batch) and count them."""
        self.inbox.commit(receipt)
        self.counters["handoff_tokens_received"] += received
        self.counters["handoff_redirects_sent"] += len(receipt.redirects)
        self.counters["handoff_deferred"] += len(receipt.deferred)

    def decode_shipment(self, slot: int, blob: bytes) -> list[PlacedEntry]:
        """A moving slot's entries, each checked (place, colour, slot) like a run's.

        Raises:
            HandoffRefused: an entry is malformed or does not belong to ``slot``.
        """
        try:
            if unpack(blob) == ():
                return []
        except CodecError as exc:
            raise HandoffRefused(f"shipment of slot {slot}: {exc}") from exc
        return self._decode_run(slot, blob, shipment=True)[0]

    def take_loopback(self) -> list[Handoff]:
        taken, self.loopback = self.loopback, []
        return taken

    def owed(self) -> tuple[int, ...]:
        """Shards whose pool lanes this outbox still holds tokens for."""
        return tuple(
            sorted(
                lane - POOL_LANE_BASE
                for lane, out in self.outbox.lanes.items()
                if is_pool_lane(lane) and out.runs
            )
        )

    def _decode_run(
        self, lane: int, blob: bytes, *, shipment: bool = False
    ) -> tuple[list[PlacedEntry], dict[str, list[tuple[int, Token]]]]:
        """Decode and check every entry of a run (the hot path of a receiving shard):
        its entries in order, and the same as ``(time, token)`` per place."""
        try:
            items = unpack(blob)
        except CodecError as exc:
            raise HandoffRefused(f"run on lane {lane}: {exc}") from exc
        if type(items) is not tuple or not items:
            raise HandoffRefused(f"run on lane {lane} is not a non-empty array of entries")
        to_pool = is_pool_lane(lane)
        decoded = self._decode_columns(lane, items, to_pool, shipment=shipment)
        if decoded is not None:
            return decoded
        entries = self._decode_entries(lane, items, to_pool, shipment=shipment)
        return entries, _by_place(entries)

    def _decode_columns(
        self, lane: int, items: tuple[Any, ...], to_pool: bool, *, shipment: bool
    ) -> tuple[list[PlacedEntry], dict[str, list[tuple[int, Token]]]] | None:
        """The common run, checked column by column: one place, plain fields of exactly
        its colour's types, times in range, keys of this lane. Each check is a pass in C
        over one column (a set of types, a min and a max, the set of keys), not a
        Python step per entry. ``None`` when any check fails or the run is not of that
        shape: :meth:`_decode_entries` then decides, entry by entry, and names the
        culprit; both accept exactly the same tokens.
        """
        if set(map(type, items)) != _TUPLE or set(map(len, items)) != _THREE:
            return None
        # Columns are read with itemgetter maps, not zip(*items): a zip over thousands of
        # argument iterators costs several times more than three passes of a getter.
        name = items[0][0]
        if set(map(_FIRST, items)) != {name}:
            return None
        place = self._receivable(lane, name, to_pool, shipment=shipment)
        colour = place.colour_set
        exact = colour.exact_types
        times = list(map(_SECOND, items))
        if exact is None or set(map(type, times)) != _INT:
            return None
        if min(times) < 0 or max(times) >= _TIME_END:
            return None
        fields = list(map(_THIRD, items))
        if set(map(type, fields)) != _TUPLE or set(map(len, fields)) != {len(exact)}:
            return None
        for position, kind in enumerate(exact):
            if set(map(type, map(itemgetter(position), fields))) != {kind}:
                return None
        position = self._key_positions[place.name]
        if position >= 0:
            for key in set(map(itemgetter(position), fields)):
                if self.slot_of_key(key) != lane:
                    return None
            if exact[position] is str:
                # The run's key strings are interned, as every token a shard decodes
                # is: about 0.14 us a token here, and a string (about 64 bytes) less
                # for each token this shard then holds.
                fields = share_keys(fields, position)
        tokens = list(map(tuple.__new__, repeat(colour.cls), fields))
        entries = list(zip(repeat(place.name), times, tokens, strict=False))
        return entries, {place.name: list(zip(times, tokens, strict=True))}

    def _decode_entries(
        self, lane: int, items: tuple[Any, ...], to_pool: bool, *, shipment: bool
    ) -> list[PlacedEntry]:
        """Every entry checked on its own (mixed places, or a run to refuse)."""
        slots = self._slots
        new = tuple.__new__
        entries: list[PlacedEntry] = []
        append = entries.append
        last_name: object = None
        place: Place | None = None
        for item in items:
            if type(item) is not tuple or len(item) != 3:
                raise HandoffRefused(
                    f"run on lane {lane}: entry {item!r:.100} is not [place, time, fields]"
                )
            name, time, fields = item
            if name != last_name:  # runs hold one place, mostly: look it up once
                place = self._receivable(lane, name, to_pool, shipment=shipment)
                colour = place.colour_set
                exact, cls = colour.exact_types, colour.cls
                position = self._key_positions[place.name]
                last_name = name
            assert place is not None
            if type(time) is not int or not 0 <= time < _TIME_END:
                raise HandoffRefused(f"run on lane {lane}: time {time!r:.40} is not valid")
            if position >= 0 and type(fields) is tuple:
                fields = share_key(fields, position)
            if exact is not None and type(fields) is tuple and tuple(map(type, fields)) == exact:
                token = new(cls, fields)
            else:
                try:
                    token = token_from_fields(colour, fields, where=f"handoff to {name!r}")
                except TokenError as exc:
                    raise HandoffRefused(str(exc)) from exc
            if position >= 0:
                key = token[position]
                slot = slots.get(key)
                if slot is None:
                    slot = self.slot_of_key(key)
                if slot != lane:
                    raise HandoffRefused(
                        f"run on lane {lane} holds {token!r:.100} of place {name!r}, which "
                        f"belongs to lane {slot}"
                    )
            append((name, time, token))
        return entries

    def _receivable(self, lane: int, name: object, to_pool: bool, *, shipment: bool) -> Place:
        """The place entries of a run name, if a run on ``lane`` may carry its tokens.

        A slot's shipment (a move) carries the lease machinery's places too.
        """
        place = self.places.get(name) if type(name) is str else None
        if place is None or (place.name in self.reserved and not shipment):
            raise HandoffRefused(f"run on lane {lane}: no place {name!r:.100} to hand tokens to")
        if place.pool != to_pool or (place.key is None and not place.pool and lane != FIXED_SLOT):
            raise HandoffRefused(
                f"run on lane {lane} holds tokens of place {place.name!r}, which "
                f"{'is' if place.pool else 'is not'} a pool place"
                + ("" if place.pool or place.key else f" and lives in slot {FIXED_SLOT}")
            )
        return place

    # -- the table ---------------------------------------------------------------------

    def table_received(self, message: Table, batch: Batch) -> bool:
        """Take the router's table (if it is newer) and endpoints; returns whether it changed."""
        changed = False
        if message.endpoints != self.endpoints:
            self.endpoints = message.endpoints
            batch.endpoints = message.endpoints
            changed = True
        if message.epoch > self.table.epoch:
            try:
                table = PartitionTable.from_fields(
                    message.epoch, message.shard_count, message.owners, message.slot_epochs
                )
            except TableError as exc:
                log.error("ignoring a malformed table from the router: %s", exc)
                return changed
            self.table = table
            self._ownership_changed()
            self.outbox.table_changed(table)
            batch.table = table.encode()
            changed = True
        return changed

    # -- pool tokens -------------------------------------------------------------------

    def pool_requests(self, engine: Engine, now_ms: int) -> list[tuple[int, bytes]]:
        """Ask a peer for pool tokens where local work lacks only them."""
        if not self.clustered or self.leaving:
            return []  # a leaving shard gives its pool tokens away; it asks for none
        frames = []
        for place in self.net.places:
            if not place.pool or not self._wants(engine, place):
                continue
            if now_ms < self._pool_asked_ms.get(place.name, 0) + POOL_ASK_MS:
                continue
            self._pool_asked_ms[place.name] = now_ms
            target = self._pool_ask_next
            self._pool_ask_next = (target + 1) % self.table.shard_count
            if target == self.me:
                target = self._pool_ask_next
                self._pool_ask_next = (target + 1) % self.table.shard_count
            wanted = PoolWanted(self.me, place.name, 1)
            frames.append((target, encode(wanted, message_id=0, incarnation=self.incarnation)))
            self.counters["pool_requests_sent"] += 1
        return frames

    def _wants(self, engine: Engine, place: Place) -> bool:
        """No available token of the pool place, and work for one waits here.

        Work waits for a pool token when some transition consuming it finds tokens in
        every other place it consumes (a cheap sign; the transition's guard may still
        say no, and then the token goes back on request).
        """
        if engine.available(place.name, 1):
            return False
        return self.has_demand(engine, place)

    def has_demand(self, engine: Engine, place: Place) -> bool:
        for transition in self.net.transitions:
            inputs = [pattern.place for pattern in transition.consume]
            if place in inputs and all(
                engine.count(other.name) > 0 for other in inputs if other is not place
            ):
                return True
        return False

    def pool_to_give(self, engine: Engine, place: Place, wanted: int) -> int:
        """How many available pool tokens to give a peer that asks for ``wanted``.

        All it asks for if no work waits for them here, else at most half of them,
        so that two busy shards share rather than pass tokens back and forth.
        """
        available = len(engine.available(place.name, POOL_SCAN_MAX))
        if self.has_demand(engine, place):
            return min(wanted, available // 2)
        return min(wanted, available)

    def in_flight(self) -> dict[str, int]:
        """Tokens in the outbox not yet acknowledged, by place (for `cpn marking` and
        `cpn status`: they are in no shard's marking until a receiver commits them).

        Each run's places are decoded once and kept while the run is in the outbox.
        """
        counts: Counter[str] = Counter()
        live: set[tuple[int, int]] = set()
        for out in self.outbox.lanes.values():
            for run in out.runs:
                key = (run.lane, run.first_seq)
                live.add(key)
                places = self._run_places.get(key)
                if places is None:
                    places = self._run_places[key] = tuple(
                        str(entry[0]) for entry in unpack(run.entries)
                    )
                # A run acknowledged in part: only its tail is still in flight.
                counts.update(places[max(0, out.acked - run.first_seq + 1) :])
        for key in self._run_places.keys() - live:
            del self._run_places[key]
        return dict(counts)

    def statistics(self) -> dict[str, Any]:
        return {
            "shard_id": self.me,
            "shard_count": self.table.shard_count,
            "epoch": self.table.epoch,
            "owned_slots": self.owned_slots(),
            "owned": self.table.slots_of(self.me),
            "outbox_tokens": self.outbox.pending_tokens(),
            "outbox_lanes_failed": len(self.outbox.failed_lanes()),
            "inbox_lanes": len(self.inbox.hwms),
            "sealed": sorted(self.sealed),
            "staged": sorted(self.staged),
            "members": self.members,
            "endpoints": list(self.endpoints),
        }


def _by_place(entries: list[PlacedEntry]) -> dict[str, list[tuple[int, Token]]]:
    """Entries as ``(time, token)`` per place, in their order."""
    by_place: dict[str, list[tuple[int, Token]]] = {}
    for name, time, token in entries:
        by_place.setdefault(name, []).append((time, token))
    return by_place
