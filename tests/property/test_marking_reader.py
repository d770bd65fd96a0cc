"""The store's range seeking against a model, on random keys in a real LMDB file.

``read_marking`` must give every entry outside the deferred places, and a
``DeferredMarking`` every entry of the deferred places outside the skipped slots, each
with its multiplicity, whatever the slots and place ids (0 and 0xFFFF included), entry
forms (in the key, or under a digest with the encoding in the value), chunk sizes and
moments at which the reader is detached from its transaction; with a batch log's
changes (``logged``) too, whose removals must be taken out and additions given once.
"""

import hashlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from router.slots import slot_of_token
from shard.shell.marking_reader import DeferredMarking, read_marking
from shard.shell.store import ENTRY_IN_KEY_BYTES_MAX


class Tok(NamedTuple):
    n: int
    text: str


class _ColourSet(NamedTuple):
    cls: type

    def field_index(self, name: str) -> int:
        return self.cls._fields.index(name)  # type: ignore[attr-defined, no-any-return]


class _Place(NamedTuple):
    colour_set: _ColourSet
    key: str | None = None
    pool: bool = False
    key_index: int | None = None


PLACE_IDS = (1, 2, 3, 0x00FF, 0x0100, 0xFFFE, 0xFFFF)
SLOTS = (0, 1, 2, 255, 256, 1023, 0xFFFE, 0xFFFF)
NAMES = {pid.to_bytes(2, "big"): f"p{pid}" for pid in PLACE_IDS}
PLACES = {name: _Place(_ColourSet(Tok)) for name in NAMES.values()}

_entries = st.lists(
    st.tuples(
        st.sampled_from(SLOTS),
        st.sampled_from(PLACE_IDS),
        st.sampled_from([0, 1, 5, 2**40]),
        st.builds(Tok, st.integers(0, 3), st.sampled_from(["", "x", "y" * 400])),
        st.integers(1, 3),
    ),
    max_size=40,
)


def _write(env: Any, db: Any, entries: list[tuple[int, int, int, Tok, int]]) -> Counter[Any]:
    """Store the entries as shard/shell/store.py lays them out; the model of what is stored."""
    stored: Counter[Any] = Counter()
    with env.begin(write=True, db=db) as txn:
        for slot, pid, time, tok, n in entries:
            entry = msgpack.packb((time, tuple(tok)), use_bin_type=True)
            head = slot.to_bytes(2, "big") + pid.to_bytes(2, "big") + time.to_bytes(8, "big")
            if len(entry) <= ENTRY_IN_KEY_BYTES_MAX:
                key, tail = head + entry, b""
            else:
                key, tail = head + b"\xc1" + hashlib.blake2b(entry, digest_size=16).digest(), entry
            old = txn.get(key)
            count = n + (0 if old is None else int.from_bytes(old[:4], "big"))
            txn.put(key, count.to_bytes(4, "big") + tail)
            stored[(slot, NAMES[pid.to_bytes(2, "big")], time, tok)] += n
    return stored


@settings(max_examples=150, deadline=None)
@given(
    entries=_entries,
    deferred=st.frozensets(st.sampled_from(PLACE_IDS)),
    skipped=st.frozensets(st.sampled_from(SLOTS)),
    reads=st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=30),
)
def test_both_reads_give_exactly_the_stored_entries(
    entries: list[tuple[int, int, int, Tok, int]],
    deferred: frozenset[int],
    skipped: frozenset[int],
    reads: list[tuple[int, bool]],
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="cpn-reader-"))
    env = lmdb.open(str(directory), map_size=16 << 20, max_dbs=2)
    try:
        db = env.open_db(b"marking")
        stored = _write(env, db, entries)
        deferred_ids = frozenset(pid.to_bytes(2, "big") for pid in deferred)
        deferred_names = {NAMES[i] for i in deferred_ids}
        with env.begin(db=db) as txn:
            marking = read_marking(txn.cursor(), NAMES, PLACES, deferred_ids)
        got = Counter((name, t, tok) for name, es in marking.items() for t, tok in es)
        want: Counter[Any] = Counter()
        for (_slot, name, t, tok), n in stored.items():
            if name not in deferred_names:
                want[(name, t, tok)] += n
        assert got == want

        reader = DeferredMarking(
            env.begin(db=db),
            db,
            NAMES,
            PLACES,
            deferred_ids,
            skip_slots=skipped,
            where=directory,
        )
        got = Counter()
        turn = 0
        while not reader.done:
            chunk, detach = reads[turn % len(reads)]
            turn += 1
            if detach:
                reader.detach()
            found = reader.read(chunk)
            # A chunk counts keys; each key stands for its multiplicity.
            assert sum(len(es) for es in found.values()) <= chunk * max(stored.values(), default=0)
            got.update((name, t, tok) for name, es in found.items() for t, tok in es)
        want = Counter()
        for (slot, name, t, tok), n in stored.items():
            if name in deferred_names and slot not in skipped:
                want[(name, t, tok)] += n
        assert got == want
    finally:
        env.close()
        shutil.rmtree(directory, ignore_errors=True)


# Keyed places put their tokens in hashed slots (mostly none of SLOTS: additions to
# slots without stored entries); unkeyed ones in slot 0 (with the stored entries).
KEYED = {name: _Place(_ColourSet(Tok), key="n") for name in ("p1", "p255", "p65535")}
LOGGED_PLACES = {**PLACES, **KEYED}


def _slot(name: str, tok: Tok) -> int:
    return slot_of_token(LOGGED_PLACES[name], tok)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    entries=_entries,
    added=st.lists(
        st.tuples(
            st.sampled_from(sorted(NAMES.values())),
            st.sampled_from([0, 1, 5, 2**40]),
            st.builds(Tok, st.integers(0, 5), st.sampled_from(["", "x", "y" * 400])),
            st.integers(1, 3),
        ),
        max_size=30,
    ),
    removed=st.lists(st.integers(0, 1000), max_size=10),
    skipped=st.frozensets(st.sampled_from(SLOTS)),
    reads=st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=30),
)
def test_the_deferred_read_applies_the_log(
    entries: list[tuple[int, int, int, Tok, int]],
    added: list[tuple[str, int, Tok, int]],
    removed: list[int],
    skipped: frozenset[int],
    reads: list[tuple[int, bool]],
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="cpn-reader-log-"))
    env = lmdb.open(str(directory), map_size=16 << 20, max_dbs=2)
    try:
        db = env.open_db(b"marking")
        # Every place deferred; stored entries in the slots their places would use.
        entries = [
            (slot if name not in KEYED else _slot(name, tok), pid, t, tok, n)
            for slot, pid, t, tok, n in entries
            for name in [NAMES[pid.to_bytes(2, "big")]]
        ]
        stored = _write(env, db, entries)
        # As recovery hands them over: net changes per place, none in a skipped slot.
        logged: dict[str, Counter[Any]] = {}
        for name, t, tok, n in added:
            if _slot(name, tok) not in skipped:
                logged.setdefault(name, Counter())[(t, tok)] += n
        held = sorted((key, n) for key, n in stored.items() if key[0] not in skipped)
        for i in removed:
            if held:
                (_held_slot, name, t, tok), n = held.pop(i % len(held))
                change = logged.setdefault(name, Counter())
                if change[(t, tok)] <= 0:  # an entry the log adds is only counted up
                    change[(t, tok)] -= n
        reader = DeferredMarking(
            env.begin(db=db),
            db,
            NAMES,
            LOGGED_PLACES,
            frozenset(NAMES),
            skip_slots=skipped,
            where=directory,
            logged=logged,
        )
        got: Counter[Any] = Counter()
        turn = 0
        most = max([*stored.values(), 1])
        while not reader.done:
            chunk, detach = reads[turn % len(reads)]
            turn += 1
            if detach:
                reader.detach()
            found = reader.read(chunk)
            assert sum(len(es) for es in found.values()) <= chunk * most
            got.update((name, t, tok) for name, es in found.items() for t, tok in es)
        want: Counter[Any] = Counter()
        for (slot, name, t, tok), n in stored.items():
            if slot not in skipped:
                want[(name, t, tok)] += n
        for name, changes in logged.items():
            for (t, tok), n in changes.items():
                want[(name, t, tok)] += n
        assert got == +want
    finally:
        env.close()
        shutil.rmtree(directory, ignore_errors=True)
