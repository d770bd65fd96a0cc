"""Reading a stored marking back (SHELL): at startup, and the deferred places after it.

A shard's startup reads every place that the engine needs before it may fire. The
places whose tokens only accumulate (``nets.engine.unread_places``: ``done``,
``stored``, a failure log) usually hold most of the tokens, and nothing the engine
decides depends on them, so the startup read skips their key ranges and a
:class:`DeferredMarking` reads them afterwards, a chunk at a time, from the same
snapshot (one read transaction held open until it is done). See docs/shard.md,
"Deferred places".

Keys are ``slot (2) | place id (2) | time (8) | entry`` (shard/shell/store_schema.py), so each
(slot, place) pair is one contiguous range, and skipping a range is one seek.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any, Final, cast

import lmdb
import msgpack

from nets.model import Token
from router.slots import slot_of_token
from shard.batch import StoreReadError

ONE: Final = (1).to_bytes(4, "big")  # the value of an entry held once
RANGE_LAST: Final = (1 << 32) - 1  # the last (slot, place id) prefix
RANGES_END: Final = b"\xff" * 5  # above every key (times are below 2**63)

Entries = dict[str, list[tuple[int, Token]]]  # place -> (time, token) entries
Entry = tuple[int, Token]


class MarkingReadError(StoreReadError):
    """A stored entry cannot be read back (the store names its path)."""


def _next_range(prefix: bytes) -> bytes | None:
    """The first key after every key that starts with the 4-byte ``prefix``."""
    value = int.from_bytes(prefix, "big")
    return None if value >= RANGE_LAST else (value + 1).to_bytes(4, "big")


def _from_here(cursor: lmdb.Cursor) -> Iterator[tuple[bytes, bytes]]:
    """The cursor's entries from where it is (keys and values are bytes: the
    transactions here never ask for buffers)."""
    return cast(Iterator[tuple[bytes, bytes]], cursor.iternext())


def _unknown_place(name: str | bytes) -> str:
    return f"it holds tokens of place {name!r}, which the net does not have"


def decode_entries(
    name: str, encodings: list[bytes], place: Any, entries: list[tuple[int, Token]]
) -> None:
    """Append the entries encoded as ``msgpack((time, fields))`` to ``entries``.

    One streaming msgpack pass over the joined encodings costs a fraction of one unpack
    call per entry. Stored tokens are trusted (each was checked against its colour set
    when it entered the net), so tokens are built without the colour set's checks; a
    keyed place's key strings are interned, as :func:`nets.codec.share_key` does for
    tokens that arrive (inlined: a call per token would cost more than the interning).
    """
    new = tuple.__new__
    intern = sys.intern
    colour = place.colour_set
    cls = colour.cls
    k = place.key_index
    blob = b"".join(encodings)
    unpacker = msgpack.Unpacker(use_list=False, max_buffer_size=max(1, len(blob)))
    unpacker.feed(blob)
    try:
        if k is None or colour.types[k].scalar is not str:
            entries.extend([(time, new(cls, fields)) for time, fields in unpacker])
        else:
            entries.extend(
                [(time, new(cls, (*f[:k], intern(f[k]), *f[k + 1 :]))) for time, f in unpacker]
            )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MarkingReadError(f"corrupt marking entry in place {name!r}: {exc}") from exc


def _collect(value: bytes, key: bytes, encodings: list[bytes]) -> None:
    """The encodings an entry stands for: its multiplicity times (key or value tail)."""
    encoded = value[4:] if len(value) > 4 else key[12:]
    encodings.extend([encoded] * int.from_bytes(value[:4], "big"))


def read_marking(
    cursor: lmdb.Cursor,
    places_by_id: Mapping[bytes, str],
    places: Mapping[str, Any],
    deferred_ids: frozenset[bytes],
) -> Entries:
    """Every entry under ``cursor`` except those of the places in ``deferred_ids``.

    Raises:
        MarkingReadError: a key names a place the net does not have, or an entry
            does not decode.
    """
    encoded_by_place: dict[str, list[bytes]] = {}
    more = cursor.first()
    while more:
        skip_from: bytes | None = None
        last_id = b""
        encodings: list[bytes] = []
        for key, value in _from_here(cursor):  # the current entry first
            place_id = key[2:4]
            if place_id != last_id:
                if place_id in deferred_ids:
                    skip_from = key[:4]
                    break
                name = places_by_id.get(place_id, "")
                if name not in places:
                    raise MarkingReadError(_unknown_place(name or place_id))
                last_id, encodings = place_id, encoded_by_place.setdefault(name, [])
            if value == ONE:
                encodings.append(key[12:])
            else:
                _collect(value, key, encodings)
        if skip_from is None:
            break
        after = _next_range(skip_from)
        more = after is not None and cursor.set_range(after)
    marking: Entries = {name: [] for name in places}
    for name, found in encoded_by_place.items():
        decode_entries(name, found, places[name], marking[name])
    return marking


class DeferredMarking:
    """The entries of the deferred places as of one snapshot, read in chunks.

    It takes over the read transaction that recovery read everything else in (so both
    see one snapshot) and holds it until every entry is read or :meth:`detach` copies
    the rest into memory (the store does so before it grows the map, which LMDB allows
    only while no transaction is open). Entries committed after the snapshot are not
    read: the shard added those to its engine when it made them. Slots in
    ``skip_slots`` (sealed for a move: the shard does not hold their tokens) are not
    read either. ``logged`` is what the store's batch log (as of the same snapshot)
    changes in these places, per place: its removals are taken out of what is read, and
    its additions (shard/shell/store_log.py) come with their slot's stored entries, in
    the same chunk right after them (or, past the chunk's budget, first in the next);
    those of slots with no stored entry come after the last stored entry.
    """

    def __init__(
        self,
        txn: lmdb.Transaction,
        db: Any,
        places_by_id: Mapping[bytes, str],
        places: Mapping[str, Any],
        deferred_ids: frozenset[bytes],
        *,
        skip_slots: frozenset[int],
        where: Path,
        logged: Mapping[str, Counter[tuple[int, Token]]] | None = None,
    ) -> None:
        self._txn: lmdb.Transaction | None = txn
        self._places_by_id = places_by_id
        self._places = places
        self._deferred_ids = sorted(deferred_ids)
        self._skip_slots = frozenset(slot.to_bytes(2, "big") for slot in skip_slots)
        self._where = where
        self._cursor: lmdb.Cursor | None = txn.cursor(db=db)
        # The cursor is always at the next entry to look at (False: past the end).
        self._more = bool(deferred_ids) and self._cursor.set_range(
            b"\x00\x00" + self._deferred_ids[0]
        )
        self._rest: dict[str, list[bytes]] | None = None  # what detach() copied out
        # Split by the first read (or detach), not here: the shard serves sooner.
        self._logged: Mapping[str, Counter[Entry]] | None = logged or {}
        self._removed: dict[str, Counter[Entry]] = {}
        self._added_by_slot: dict[str, dict[bytes, list[Entry]]] = {}
        self._spilled: list[tuple[str, list[Entry]]] = []  # past a chunk's budget
        self._added: Entries = {}  # the slots with no stored entry (after the cursor)
        self._added_from: dict[str, int] = {}  # how many of each place's were taken
        self.done = not deferred_ids

    def _split_log(self) -> None:
        """The log's removals per place, and its additions per place and slot.

        The engine indexes a place's tokens by key, in (time, token) order, and merges
        a chunk's entries of one key in one sort. Added apart from their key's stored
        entries (a few per chunk), each addition would be inserted into the key's
        sorted list on its own whenever it is older than the last stored entry; with
        them, the sort merges them at a run's cost.
        """
        logged, self._logged = self._logged, None
        if logged is None:
            return
        removed = {
            name: Counter({e: -n for e, n in changes.items() if n < 0})
            for name, changes in logged.items()
        }
        self._removed = {name: r for name, r in removed.items() if r}
        self._added_by_slot = {
            name: by_slot
            for name, changes in logged.items()
            if (by_slot := _by_slot(self._places[name], changes))
        }

    def read(self, entries_max: int) -> Entries:
        """Up to ``entries_max`` more entries (none, and ``done``, at the end).

        Raises:
            MarkingReadError: an entry does not decode, or names an unknown place.
        """
        # As at startup: these tuples live long and form no cycles, so the collector is
        # paused while they are made (it would walk the growing heap over and over).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        found: Entries = {}
        try:
            self._split_log()
            left = self._take_spilled(found, entries_max)
            if left > 0 and (self._more or self._rest):
                added: Entries = {}
                encoded = (
                    self._from_rest(left) if self._rest is not None else self._take(left, added)
                )
                for name, encodings in encoded.items():
                    decode_entries(name, encodings, self._places[name], found.setdefault(name, []))
                    if name in self._removed:
                        found[name] = self._without_removed(name, found[name])
                for name, entries in added.items():
                    found.setdefault(name, []).extend(entries)
            if not self._more and not self._rest and not self._spilled:
                self._check_removed()
                for name, by_slot in self._added_by_slot.items():  # slots never met
                    self._added[name] = [e for entries in by_slot.values() for e in entries]
                self._added_by_slot = {}
                found = self._take_added(found, entries_max)
        except MarkingReadError as exc:
            self.close()
            raise MarkingReadError(f"{self._where}: {exc}") from exc
        finally:
            if gc_was_enabled:
                gc.enable()
        if not (self._more or self._rest or self._spilled or self._added):
            self.close()
        return found

    def _take_spilled(self, found: Entries, entries_max: int) -> int:
        """The additions spilled past earlier chunks' budgets, within this one's;
        returns the budget left."""
        left = entries_max
        while self._spilled and left > 0:
            name, entries = self._spilled[0]
            found.setdefault(name, []).extend(entries[:left])
            if len(entries) > left:
                self._spilled[0] = (name, entries[left:])
                return 0
            left -= len(entries)
            del self._spilled[0]
        return left

    def _slot_added(self, name: str, slot: bytes, added: Entries, left: int) -> int:
        """Put the log's additions to ``slot`` of place ``name`` (its stored entries all
        taken) into ``added``, within ``left`` entries (the rest spills); returns how
        many went into ``added``."""
        by_slot = self._added_by_slot.get(name)
        entries = None if by_slot is None else by_slot.pop(slot, None)
        if entries is None:
            return 0
        taken = entries[: max(left, 0)]
        if len(taken) < len(entries):
            self._spilled.append((name, entries[len(taken) :]))
        added.setdefault(name, []).extend(taken)
        return len(taken)

    def _without_removed(
        self, name: str, entries: list[tuple[int, Token]]
    ) -> list[tuple[int, Token]]:
        """``entries`` without those the log removed (each removal takes one token)."""
        removed = self._removed[name]
        kept = []
        for entry in entries:
            if removed.get(entry, 0) > 0:
                removed[entry] -= 1
            else:
                kept.append(entry)
        return kept

    def _check_removed(self) -> None:
        """Every stored entry is read: every removal the log holds must have met its
        entry."""
        missing = {name: +removed for name, removed in self._removed.items() if +removed}
        if missing:
            name, removed = next(iter(missing.items()))
            raise MarkingReadError(
                f"the log removes {sum(removed.values())} entries of place {name!r} "
                f"that the marking table does not hold, e.g. {next(iter(removed))!r:.100}"
            )
        self._removed = {}

    def _take_added(self, found: Entries, entries_max: int) -> Entries:
        """The log's additions, after the stored entries, within the chunk's budget."""
        left = entries_max - sum(len(entries) for entries in found.values())
        for name in list(self._added):
            if left <= 0:
                break
            added, start = self._added[name], self._added_from.get(name, 0)
            # An offset instead of slicing off what was taken: a long log's additions
            # would otherwise be copied once per chunk.
            taken = added[start : start + left]
            found.setdefault(name, []).extend(taken)
            left -= len(taken)
            self._added_from[name] = start + len(taken)
            if start + len(taken) >= len(added):
                del self._added[name]
        return found

    def _take(self, entries_max: int, added: Entries) -> dict[str, list[bytes]]:
        """The encodings of up to ``entries_max`` entries, from the cursor on; the cursor
        seeks past every range that is not a deferred place's or is a sealed slot's. The
        log's additions to each range read to its end go into ``added`` (within the
        same budget)."""
        cursor = self._cursor
        encoded: dict[str, list[bytes]] = {}
        taken = 0
        ids = self._deferred_ids
        while self._more and taken < entries_max:
            assert cursor is not None
            key = cast(bytes, cursor.key())
            slot, place_id = key[:2], key[2:4]
            if slot in self._skip_slots or place_id not in ids:
                self._more = self._seek_after(cursor, slot, place_id)
                continue
            name = self._places_by_id.get(place_id, "")
            if name not in self._places:
                raise MarkingReadError(_unknown_place(name or place_id))
            encodings = encoded.setdefault(name, [])
            # The loop below is the reader's hot path: the budget bounds the iterator and
            # the range's end is one bytes comparison, so the common entry (held once)
            # costs a comparison, a slice and an append. Past the last range, no key
            # reaches RANGES_END (a key's time field never starts with 0xff).
            end = _next_range(key[:4]) or RANGES_END
            budget = entries_max - taken
            before = len(encodings)
            extra = 0  # encodings beyond one per entry (multiplicities)
            ended = True  # the range was read to its end
            append = encodings.append
            for key, value in islice(_from_here(cursor), budget):  # the current entry first
                if key >= end:
                    break  # the cursor is at that entry, still to look at
                if value == ONE:
                    append(key[12:])
                else:
                    extra += int.from_bytes(value[:4], "big") - 1
                    _collect(value, key, encodings)
            else:
                # The budget ran out (the cursor is at the last entry taken) or the
                # table did (the cursor is past its end).
                self._more = bool(cursor.key()) and cursor.next()
                ended = not self._more or cast(bytes, cursor.key()) >= end
            taken += len(encodings) - before - extra
            if ended:
                taken += self._slot_added(name, slot, added, entries_max - taken)
        return encoded

    def _seek_after(self, cursor: lmdb.Cursor, slot: bytes, place_id: bytes) -> bool:
        """Move to the next range that may be a deferred place's; False past the end."""
        ids = self._deferred_ids
        later = [i for i in ids if i > place_id] if slot not in self._skip_slots else []
        if later:
            return bool(cursor.set_range(slot + later[0]))
        next_slot = int.from_bytes(slot, "big") + 1
        return next_slot < 1 << 16 and bool(cursor.set_range(next_slot.to_bytes(2, "big") + ids[0]))

    def _from_rest(self, entries_max: int) -> dict[str, list[bytes]]:
        rest = self._rest
        assert rest is not None
        taken: dict[str, list[bytes]] = {}
        left = entries_max
        for name in list(rest):
            if left <= 0:
                break
            encodings = rest[name]
            taken[name], rest[name] = encodings[:left], encodings[left:]
            left -= len(taken[name])
            if not rest[name]:
                del rest[name]
        return taken

    def detach(self) -> None:
        """Copy the encodings still to read into memory and end the read transaction."""
        if self._txn is None:
            return
        self._split_log()
        added: Entries = {}
        self._rest = self._take(1 << 62, added)
        self._spilled.extend(added.items())
        self._more = False
        self._end()

    def close(self) -> None:
        """Stop reading (the shard stops, or every entry is read)."""
        self._more = False
        self._rest = None
        self._spilled = []
        self._end()
        self.done = True

    def _end(self) -> None:
        self._cursor = None
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


def _by_slot(place: Any, changes: Counter[Entry]) -> dict[bytes, list[Entry]]:
    """The additions among ``changes`` (one per token), by slot (2 bytes BE, as in a
    marking key), each slot's in the order of ``changes``."""
    by_slot: dict[bytes, list[Entry]] = {}
    position = place.colour_set.field_index(place.key) if place.key is not None else -1
    slots: dict[Any, bytes] = {}  # key value -> slot: hashing a key costs more than the rest
    for entry, n in changes.items():
        if n <= 0:
            continue
        value = entry[1][position] if position >= 0 else None
        slot = slots.get(value)
        if slot is None:
            slot = slots[value] = slot_of_token(place, entry[1]).to_bytes(2, "big")
        entries = by_slot.get(slot)
        if entries is None:
            entries = by_slot[slot] = []
        entries.extend([entry] * n)
    return by_slot
