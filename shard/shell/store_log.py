"""The store's batch log (SHELL): one record per committed batch, and folding records.

A commit no longer writes one LMDB entry per token that its batch changed: it appends
one record to the ``log`` table (key: the record's seq, 8 bytes BE) holding the batch's
marking delta and the handoff runs it applied, as they arrived. The shard's loop later
folds the oldest records into the ``marking`` table in bounded slices
(:meth:`shard.shell.store.Store.catch_up`); a token produced by one batch and consumed
by a later one within the same slice cancels out and never reaches the marking table.
Recovery reads the marking table (the snapshot) and adds the whole log to it in memory.
See docs/shard.md, "The store".

Record value: ``entries (4 bytes BE) | msgpack((delta, arrived))``, where ``entries`` is
how many marking entries the record stands for (its delta's length plus the tokens of
its runs: the log's length is the sum, known without decoding), ``delta`` is
``[(place id, time, fields, n), ...]`` (``n`` > 0 added, < 0 removed) and ``arrived`` is
``[(skip, blob), ...]``: a handoff run's bytes as they arrived, of which the entries from
``skip`` on were applied (shard.batch.ArrivedRun).

Theory of operation: the marking table plus every log record, folded in seq order,
is the committed marking. Both change only in write transactions, so a crash at any
point (in a commit, in a catch-up slice) leaves a snapshot and a log that add up to
the last committed batch; a catch-up slice that dies costs only its own work, redone
by the next one or by recovery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import repeat
from operator import itemgetter
from typing import Any, Final

import msgpack

from nets.codec import CodecError
from nets.model import Place, Token

# A batch larger than this is written to the marking table directly (after the whole
# log, in the same transaction): a batch this large (a shard's initial marking, a slot's
# shipment) gains nothing from the log, and it would crowd out everything else.
LOG_BATCH_ENTRIES_MAX: Final = 65_536
LOG_BATCH_BYTES_MAX: Final = 16 * 1024 * 1024  # (entries with long tokens)
# Entries per record: a batch's delta is cut into records of at most this many, since
# each record is packed by one msgpack call and unpacked by one, which hold the GIL
# (about 1-2 ms each for 4,096 small entries on this machine; the metrics
# thread waits that long at most, docs/observability.md).
LOG_RECORD_ENTRIES_MAX: Final = 4_096
# The log's length (entries over all records) never exceeds this: a commit that would
# pass it first folds the oldest records in its own transaction. Recovery replays at
# most this many entries; docs/shard.md, "The store", says what that costs.
LOG_ENTRIES_MAX: Final = 131_072
# The shard's loop folds while busy only when the log is longer than this, so a burst
# of up to this many entries costs its batches a record each and nothing more; the
# hard bound above is met only when the loop falls behind.
LOG_ENTRIES_KEPT: Final = 98_304
# Entries one slice folds (at least one whole record): at most about 25 ms of decoding
# and LMDB writes on this machine (less where entries cancel), as long as a chunk of
# the deferred places takes. An idle loop folds while a whole slice is there, so each
# slice's transaction (an fsync) carries this many entries.
CATCH_UP_ENTRIES_MAX: Final = 4_096

HEADER_BYTES: Final = 4
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)

# place -> (time, token) -> +n / -n: per place, as recovery and the marking table use it.
Delta = dict[str, Counter[tuple[int, Token]]]


class LogRecordError(Exception):
    """A log record cannot be read back (a corrupt store); the store names its path."""


def encode_record(
    packer: msgpack.Packer,
    delta: list[tuple[int, int, Token, int]],
    arrived: list[tuple[int, bytes]],
    entries: int,
) -> bytes:
    """One record's value (see the module docstring).

    Raises:
        TypeError, ValueError, OverflowError: a token does not pack (the packer is reset).
    """
    try:
        body: bytes = packer.pack((delta, arrived))
    except (TypeError, ValueError, OverflowError):
        packer.reset()
        raise
    return entries.to_bytes(HEADER_BYTES, "big") + body


def record_entries(value: bytes | memoryview) -> int:
    """How many marking entries a record stands for (its header)."""
    return int.from_bytes(value[:HEADER_BYTES], "big")


def fold_record(
    value: bytes,
    delta: Delta,
    places_by_number: Mapping[int, Place],
    places: Mapping[str, Place],
) -> None:
    """Add one record's changes to ``delta``.

    Stored records are trusted as stored marking entries are (everything in them was
    checked when it entered the net, and packed by this store): tokens are rebuilt
    from their fields without the colour set's checks, as the marking reader does.

    Raises:
        LogRecordError: the record does not decode or names an unknown place.
    """
    new = tuple.__new__
    changes, arrived = decode_record(value)
    try:
        last_number = -1
        cls: Any = None
        counter: Counter[tuple[int, Token]] = Counter()
        counted = counter.get
        for number, time, fields, n in changes:
            if number != last_number:  # a batch's entries come place by place, mostly
                place = places_by_number.get(number)
                if place is None:
                    raise LogRecordError(f"a log record names place id {number}, which is unknown")
                cls, last_number = place.colour_set.cls, number
                counter = _changes_of(delta, place.name)
                counted = counter.get
            # The dict's own get: Counter's += calls its Python __missing__ for every
            # entry new to the fold, which most are.
            entry = (time, new(cls, fields))
            counter[entry] = counted(entry, 0) + n
        for skip, blob in arrived:
            fold_run(skip, blob, delta, places)
    except (CodecError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise LogRecordError(f"corrupt log record: {exc}") from exc


def decode_record(value: bytes) -> tuple[Any, Any]:
    """A record's (delta, arrived), as stored (see the module docstring).

    Raises:
        LogRecordError: the record does not decode.
    """
    try:
        changes, arrived = _unpack(bytes(value[HEADER_BYTES:]))
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise LogRecordError(f"corrupt log record: {exc}") from exc
    return changes, arrived


def fold_run(skip: int, blob: bytes, delta: Delta, places: Mapping[str, Place]) -> None:
    """Add a handoff run's entries from ``skip`` on (its bytes as they arrived) to
    ``delta``, each once. The receiver checked every entry before it applied the run.

    Raises:
        LogRecordError: the run does not decode or names an unknown place.
    """
    new = tuple.__new__
    try:
        items: tuple[tuple[str, int, Any], ...] = _unpack(blob)[skip:]
        if not items:
            return
        name = items[0][0]
        if set(map(_FIRST, items)) == {name} and set(map(len, items)) == {3}:
            # The common run (one place): its (time, token) pairs are counted by one
            # Counter.update, whose counting loop is in C, not a Python step per entry.
            place = places.get(name)
            if place is None:
                raise LogRecordError(f"a logged run names place {name!r}, which is unknown")
            tokens = map(new, repeat(place.colour_set.cls), map(_THIRD, items))
            delta.setdefault(name, Counter()).update(zip(map(_SECOND, items), tokens, strict=True))
            return
        last_name: object = None
        cls: Any = None
        counter: Counter[tuple[int, Token]] = Counter()
        for name, time, fields in items:
            if name != last_name:
                place = places.get(name)
                if place is None:
                    raise LogRecordError(f"a logged run names place {name!r}, which is unknown")
                cls, last_name = place.colour_set.cls, name
                counter = _changes_of(delta, name)
            counter[(time, new(cls, fields))] += 1
    except (CodecError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise LogRecordError(f"corrupt logged run: {exc}") from exc


def _unpack(data: bytes) -> Any:
    # Not nets.codec.unpack: its limits are a frame's (4 MiB, bounded arrays), and a
    # record of LOG_RECORD_ENTRIES_MAX long entries may be larger. The store wrote
    # these bytes itself (or checked them as a frame on arrival), so msgpack's own
    # limits (each bounded by the length of the data) are enough.
    return msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=False)


def delta_of(marking: Mapping[tuple[str, int, Token], int]) -> Delta:
    """A batch's marking delta ((place, time, token) -> n) per place."""
    delta: Delta = {}
    for (place, time, token), n in marking.items():
        if n:
            changes = _changes_of(delta, place)
            changes[(time, token)] = changes.get((time, token), 0) + n
    return delta


def _changes_of(delta: Delta, place: str) -> Counter[tuple[int, Token]]:
    # Not delta.setdefault(place, Counter()): that builds a Counter (a Python __init__)
    # for every call, and a batch's entries alternate between places firing by firing.
    changes = delta.get(place)
    if changes is None:
        changes = delta[place] = Counter()
    return changes


def apply_to_entries(
    entries: list[tuple[int, Token]], changes: Counter[tuple[int, Token]], *, where: str
) -> list[tuple[int, Token]]:
    """``entries`` (a place's recovered tokens) with ``changes`` applied: removals taken
    out (one pass, only when there are any), additions appended.

    Raises:
        LogRecordError: the log removes an entry the snapshot does not hold.
    """
    removals = Counter({e: -n for e, n in changes.items() if n < 0})
    if removals:
        kept = []
        for entry in entries:
            if removals.get(entry, 0) > 0:
                removals[entry] -= 1
            else:
                kept.append(entry)
        missing = +removals
        if missing:
            raise LogRecordError(
                f"the log removes {sum(missing.values())} entries of {where} that the "
                f"marking table does not hold, e.g. {next(iter(missing))!r:.100}"
            )
        entries = kept
    for entry, n in changes.items():
        if n > 0:
            entries.extend([entry] * n)
    return entries
