"""A shard interns the partition key of every token it decodes (nets/codec.py's
``share_key``): tokens of one key share one string, from a put, a recovery and a
stored entry alike, so a shard's memory per token does not pay for a copy of its key.
"""

from __future__ import annotations

import msgpack

from nets.codec import pack, share_key, share_keys, token_from_fields, unpack
from nets.model import Place
from router.wire import Put, decode, encode
from shard.batch import Recovered
from shard.core import ShardCore
from shard.shard_setup import ShardSetup
from shard.shell.marking_reader import decode_entries
from tests.nets_for_tests import Job, jobs

T0_MS = 1_000_000


class NoSlots:
    def slot_entries(self, slot: int) -> list[object]:
        raise AssertionError(f"slot {slot} read from a store that does not exist")


def _decoded(value: object) -> object:
    """``value`` after a msgpack round trip: a fresh object, as a socket delivers it."""
    return unpack(pack(value))


def test_share_key_interns_the_key_field_only() -> None:
    a = _decoded(("queue-" + "x", "job-1", 1))
    b = _decoded(("queue-" + "x", "job-1", 1))
    assert a[0] is not b[0] and a[1] is not b[1]  # type: ignore[index]
    shared_a, shared_b = share_key(a, 0), share_key(b, 0)  # type: ignore[arg-type]
    assert shared_a == a and shared_a[0] is shared_b[0]
    assert shared_a[1] is not shared_b[1]  # only the key is interned
    assert share_key(a, None) is a  # type: ignore[arg-type]
    assert share_key((7, "x"), 0) == (7, "x")  # an int key is left alone
    rows = [_decoded(("queue-" + "y", f"job-{i}", i)) for i in range(3)]
    shared = share_keys(rows, 0)  # type: ignore[arg-type]
    assert shared == rows and shared[0][0] is shared[1][0] is shared[2][0]


def test_token_from_fields_shares_the_key_and_still_checks_the_colour() -> None:
    colour = Place("inbox", Job, key="queue").colour_set
    tokens = [
        token_from_fields(colour, _decoded(("q-1", f"job-{i}", i)), where="t", key_index=0)
        for i in range(3)
    ]
    assert all(type(t) is Job for t in tokens)
    assert tokens[0].queue is tokens[1].queue is tokens[2].queue


def test_a_put_shares_the_key_of_its_tokens_in_the_engine() -> None:
    core = ShardCore(
        ShardSetup.of(jobs(), shard_id=0, shard_count=1),
        Recovered(marking={}, clock_ms=0, clients={}, initialised=False),
        incarnation=1,
        now_ms=T0_MS,
        slots=NoSlots(),  # type: ignore[arg-type]
    )
    for i in range(2):
        put = Put("client", i + 1, "inbox", (("q-" + "shared", f"job-{i}", i),), 0)
        core.handle(T0_MS, decode(encode(put, message_id=i + 1, incarnation=0)))
    keys = [token.queue for _, token in core.engine.tokens("inbox")]
    keys += [token.queue for _, token in core.engine.tokens("work")]
    assert len(keys) == 2 and keys[0] is keys[1]


def test_recovered_entries_share_their_keys() -> None:
    place = Place("inbox", Job, key="queue")
    encodings = [msgpack.packb((5, ("q-" + "r", f"job-{i}", i))) for i in range(3)]
    entries: list[tuple[int, tuple[object, ...]]] = []
    decode_entries("inbox", encodings, place, entries)
    assert [token for _, token in entries] == [Job("q-r", f"job-{i}", i) for i in range(3)]
    first = entries[0][1][0]
    assert all(token[0] is first for _, token in entries)
