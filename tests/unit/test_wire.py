"""The wire format: every message round-trips; garbage raises WireFormatError only."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import wire
from router.slots import FIXED_SLOT, POOL_SLOT, SLOT_COUNT, slot_of_key
from router.wire import (
    FRAME_BYTES_MAX,
    PROTOCOL_VERSION,
    REPLIES,
    REQUESTS,
    Complete,
    Completed,
    Counts,
    Error,
    Lease,
    Leased,
    Ping,
    Put,
    QueryTokens,
    Release,
    Released,
    Renew,
    Renewed,
    Statistics,
    Tokens,
    WireFormatError,
    decode,
    encode,
)

EXAMPLES = [
    Put("client-1", 7, "targets", (("a.example", 1, "https://a.example/", 0),), 250),
    Put("c", 1, "pairs", ((("x", 2), (1, 2, 3)),), 0),  # tuple-typed fields stay tuples
    Lease("c", 2, "work", 10, 30_000),
    Complete("c", 3, "4.17", (("results", ("a", 1, True)),)),
    Complete("c", 4, "4.17", (), (0, 2)),
    Renew("c", 5, "4.17", 30_000, "page 3 of 9"),
    Renew("c", 6, "4.17", 1),
    Release("c", 7, "4.17"),
    Release("c", 8, "4.17", (1,)),
    QueryTokens("targets", 100, 50),
    Counts({"targets": 3, "done": 0}, 1_700_000_000_000, {"targets": 1}, 0),
    Tokens("targets", 0, 1, ((5, ("a", 1)),)),
    Leased(2, "4.17", 99, ((5, ("a", 1)),)),
    Completed(4, "4.17", True),
    Renewed(5, "4.17", 1_700_000_030_000),
    Released(7, "4.17", 2),
    Statistics({"firings": {"scrape": 3}, "commit_ms_p99": 1.5}),
    Error("unknown_place", "net 'x' has no place 'y'"),
    Ping(),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    frame = encode(message, message_id=42, incarnation=3)  # type: ignore[arg-type]
    envelope = decode(frame)
    assert envelope.message == message
    assert (envelope.message_id, envelope.incarnation) == (42, 3)


def test_the_lease_messages_have_round_trip_examples() -> None:
    assert {type(m) for m in EXAMPLES} >= {Complete, Renew, Renewed, Release, Released}


def test_every_message_type_has_a_unique_code() -> None:
    codes = [cls.TYPE for cls in REQUESTS + REPLIES]
    assert len(codes) == len(set(codes))
    for cls in REQUESTS + REPLIES:
        assert dataclasses.is_dataclass(cls)


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (b"", "malformed msgpack"),
        (b"\xc1", "malformed msgpack"),
        (msgpack.packb([1, 2, 3]), "a frame must be"),
        (msgpack.packb([PROTOCOL_VERSION + 1, 8, 1, 0, []]), "protocol version"),
        (msgpack.packb([PROTOCOL_VERSION, 999, 1, 0, []]), "unknown message type 999"),
        (msgpack.packb([PROTOCOL_VERSION, 8, -1, 0, []]), "message id"),
        (msgpack.packb([PROTOCOL_VERSION, 1, 1, 0, ["c", 1, "p"]]), "Put needs 5 fields"),
        (msgpack.packb([PROTOCOL_VERSION, 1, 1, 0, ["c", "1", "p", [], 0]]), "Put.request_seq"),
        (msgpack.packb([PROTOCOL_VERSION, 1, 1, 0, ["c", True, "p", [], 0]]), "Put.request_seq"),
        (msgpack.packb([PROTOCOL_VERSION, 1, 1, 0, ["c", 1, "p", [1], 0]]), "Put.tokens"),
        # Version 2's Complete had no indexes: every field is on the wire, defaults too.
        (msgpack.packb([PROTOCOL_VERSION, 5, 1, 0, ["c", 1, "l", []]]), "Complete needs 5"),
        (msgpack.packb([PROTOCOL_VERSION, 5, 1, 0, ["c", 1, "l", [], ["0"]]]), "Complete.indexes"),
        (msgpack.packb([PROTOCOL_VERSION, 17, 1, 0, ["c", 1, "l", 5]]), "Renew needs 5 fields"),
        (msgpack.packb([PROTOCOL_VERSION, 17, 1, 0, ["c", 1, "l", 5, 7]]), "Renew.progress"),
        (msgpack.packb([PROTOCOL_VERSION, 18, 1, 0, ["c", 1, "l", [True]]]), "Release.indexes"),
        (msgpack.packb({"version": 1}), "a frame must be"),
        (b"\x00" * (FRAME_BYTES_MAX + 1), "exceeds the limit"),
    ],
)
def test_malformed_frames_name_the_problem(frame: bytes, complaint: str) -> None:
    with pytest.raises(WireFormatError, match=complaint):
        decode(frame)


@settings(max_examples=500)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_raise_only_wire_format_error(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        decode(data)


scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=300), values)
def test_well_formed_envelopes_with_random_bodies_raise_only_wire_format_error(
    code: int, body: object
) -> None:
    frame = msgpack.packb([PROTOCOL_VERSION, code, 1, 0, body])
    with contextlib.suppress(WireFormatError):
        decode(frame)


def test_slots_are_stable_and_in_range() -> None:
    # Fixed values: a change here would move every stored token to another slot.
    assert slot_of_key("a.example") == slot_of_key("a.example")
    slots = {slot_of_key(f"d{i}.example") for i in range(5_000)}
    assert slots <= set(range(SLOT_COUNT))
    assert len(slots) > SLOT_COUNT * 0.9, "5,000 keys should cover most slots"
    assert POOL_SLOT >= SLOT_COUNT
    assert 0 <= FIXED_SLOT < SLOT_COUNT


# -- the compiled field checks agree with the reference rules -------------------------

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3) | st.binary(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=2) | st.integers(), inner, max_size=3)
        | st.lists(inner, max_size=2)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, cls=st.sampled_from(list(wire.REQUESTS + wire.REPLIES)))
def test_compiled_checks_agree_with_conforms(value: object, cls: type) -> None:
    for name, hint, check in wire._field_checks(cls):
        assert check(value) == wire._conforms(value, hint), (cls.__name__, name, value)
