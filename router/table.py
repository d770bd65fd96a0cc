"""The partition table: which shard owns each slot, at which epoch (pure).

Theory of operation: keys hash to ``SLOT_COUNT`` fixed slots (:mod:`router.slots`); the
table maps every slot to exactly one shard id. The table has an ``epoch`` that only
increases: every change of ownership produces a new table at ``epoch + 1``, and each
slot remembers the epoch at which its owner last changed (``slot_epochs``), so a
receiver can tell a sender whose view of *that slot* is out of date (a message stamped
with an epoch older than the slot's last change) from one that is merely behind on
other slots.

Handoff *lanes* (see :mod:`router.handoff`) are slots for keyed and fixed places, and
one lane per shard for pool tokens (``POOL_LANE_BASE + shard id``): a pool token has no
home slot, it is sent to a chosen shard, and that lane is owned by that shard forever.

The router holds the authoritative table and persists it; every shard keeps a copy
(also persisted) and trusts only its own copy when it judges a message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from nets.codec import pack, unpack
from nets.errors import CpnError
from router.slots import SLOT_COUNT

POOL_LANE_BASE: Final = 0x10000
SHARDS_MAX: Final = 256


class TableError(CpnError):
    """A partition table that is not well formed (wrong size, unknown shard...)."""


def pool_lane(shard_id: int) -> int:
    """The handoff lane that carries pool tokens to ``shard_id``."""
    return POOL_LANE_BASE + shard_id


def is_pool_lane(lane: int) -> bool:
    return lane >= POOL_LANE_BASE


@dataclass(frozen=True, slots=True)
class PartitionTable:
    """Slot -> shard id, with the table's epoch and each slot's last-change epoch.

    Frozen: a change makes a new table (:meth:`assign`), never edits this one.
    """

    epoch: int
    shard_count: int
    owners: tuple[int, ...]
    slot_epochs: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.owners) != SLOT_COUNT or len(self.slot_epochs) != SLOT_COUNT:
            raise TableError(
                f"a partition table maps {SLOT_COUNT} slots, got {len(self.owners)} owners "
                f"and {len(self.slot_epochs)} slot epochs"
            )
        if not 0 < self.shard_count <= SHARDS_MAX:
            raise TableError(f"shard count {self.shard_count} is not in 1..{SHARDS_MAX}")
        if self.epoch < 1:
            raise TableError(f"epoch {self.epoch} is not positive")
        owners, slot_epochs = self.owners, self.slot_epochs
        if (
            set(map(type, owners)) == {int}
            and set(map(type, slot_epochs)) == {int}
            and min(owners) >= 0
            and max(owners) < self.shard_count
            and min(slot_epochs) > 0
            and max(slot_epochs) <= self.epoch
        ):
            return  # the common case, in C: every table a message carries is checked
        for slot, (owner, slot_epoch) in enumerate(zip(owners, slot_epochs, strict=True)):
            if not 0 <= owner < self.shard_count:
                raise TableError(
                    f"slot {slot} is owned by shard {owner}, not one of 0..{self.shard_count - 1}"
                )
            if not 0 < slot_epoch <= self.epoch:
                raise TableError(
                    f"slot {slot} changed owner at epoch {slot_epoch}, after the table's "
                    f"epoch {self.epoch}"
                )

    @classmethod
    def initial(cls, shard_count: int) -> PartitionTable:
        """Epoch 1: slot ``s`` belongs to shard ``s % shard_count`` (an even spread)."""
        if not 0 < shard_count <= SHARDS_MAX:
            raise TableError(f"shard count {shard_count} is not in 1..{SHARDS_MAX}")
        return cls(
            epoch=1,
            shard_count=shard_count,
            owners=tuple(slot % shard_count for slot in range(SLOT_COUNT)),
            slot_epochs=(1,) * SLOT_COUNT,
        )

    def owner(self, lane: int) -> int:
        """The shard that owns a lane (a slot, or a pool lane)."""
        if lane >= POOL_LANE_BASE:
            return lane - POOL_LANE_BASE
        return self.owners[lane]

    def lane_epoch(self, lane: int) -> int:
        """The epoch at which the lane's owner last changed (pool lanes never change)."""
        if lane >= POOL_LANE_BASE:
            return 1
        return self.slot_epochs[lane]

    def slots_of(self, shard_id: int) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == shard_id]

    def slot_counts(self) -> dict[int, int]:
        """How many slots each shard owns (every shard of the table appears)."""
        counts = dict.fromkeys(range(self.shard_count), 0)
        for owner in self.owners:
            counts[owner] += 1
        return counts

    def assign(self, moves: Mapping[int, int], *, shard_count: int | None = None) -> PartitionTable:
        """A new table at ``epoch + 1`` where each slot in ``moves`` has its new owner."""
        owners = list(self.owners)
        slot_epochs = list(self.slot_epochs)
        epoch = self.epoch + 1
        for slot, owner in moves.items():
            if not 0 <= slot < SLOT_COUNT:
                raise TableError(f"slot {slot} is not in 0..{SLOT_COUNT - 1}")
            if owners[slot] != owner:
                owners[slot] = owner
                slot_epochs[slot] = epoch
        return PartitionTable(
            epoch,
            self.shard_count if shard_count is None else shard_count,
            tuple(owners),
            tuple(slot_epochs),
        )

    def refenced(self, shard_id: int) -> PartitionTable:
        """A new table at ``epoch + 1`` where ``shard_id``'s slots changed at that epoch.

        The owners stay; what changes is that a message stamped with an older epoch
        for those slots is refused with a redirect (docs/handoff.md): a restarted
        shard gets its slots back at a new epoch (fencing, see router/coordinator.py).
        """
        epoch = self.epoch + 1
        slot_epochs = tuple(
            epoch if owner == shard_id else slot_epoch
            for owner, slot_epoch in zip(self.owners, self.slot_epochs, strict=True)
        )
        return PartitionTable(epoch, self.shard_count, self.owners, slot_epochs)

    def resized(self, shard_count: int) -> PartitionTable:
        """A new table at ``epoch + 1`` for ``shard_count`` shards (the owners stay).

        Raises:
            TableError: a slot is still owned by a shard beyond the new count.
        """
        return PartitionTable(self.epoch + 1, shard_count, self.owners, self.slot_epochs)

    def encode(self) -> bytes:
        return pack((self.epoch, self.shard_count, self.owners, self.slot_epochs))

    @classmethod
    def decode(cls, data: bytes) -> PartitionTable:
        """Raises :class:`TableError` for anything but an encoded table."""
        try:
            epoch, shard_count, owners, slot_epochs = unpack(data)
            return cls(epoch, shard_count, tuple(owners), tuple(slot_epochs))
        except (ValueError, TypeError, CpnError) as exc:
            raise TableError(f"not a partition table: {exc}") from exc

    @classmethod
    def from_fields(
        cls, epoch: int, shard_count: int, owners: Sequence[int], slot_epochs: Sequence[int]
    ) -> PartitionTable:
        return cls(epoch, shard_count, tuple(owners), tuple(slot_epochs))
