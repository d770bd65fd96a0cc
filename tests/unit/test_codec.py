"""The token codec: round trips, colour checks and hostile bytes (``nets.codec``).

The fuzz contract follows h11's: whatever bytes arrive, decoding either succeeds or
raises :class:`CodecError` (or :class:`TokenError` for well-formed msgpack that does
not fit the colour set), never anything else.
"""

import contextlib
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import TokenError
from nets.codec import (
    ARRAY_LEN_MAX,
    STRING_BYTES_MAX,
    CodecError,
    decode_tokens,
    encode_tokens,
    pack,
    unpack,
)
from nets.colour import describe


class Target(NamedTuple):
    domain: str
    attempt: int
    weight: float
    secure: bool
    body: bytes
    hops: tuple[int, ...]
    origin: tuple[str, int]


class Route(NamedTuple):
    path: tuple[tuple[str, int], ...]
    tags: tuple[str, ...]


class Small(NamedTuple):
    n: int


TARGET = describe(Target)
ROUTE = describe(Route)
SMALL = describe(Small)

_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_floats = st.floats(allow_nan=False)
_text = st.text(max_size=20)

targets = st.builds(
    Target,
    domain=_text,
    attempt=_ints,
    weight=_floats,
    secure=st.booleans(),
    body=st.binary(max_size=20),
    hops=st.lists(_ints, max_size=5).map(tuple),
    origin=st.tuples(_text, _ints),
)
routes = st.builds(
    Route,
    path=st.lists(st.tuples(_text, _ints), max_size=4).map(tuple),
    tags=st.lists(_text, max_size=4).map(tuple),
)


def _assert_identical(decoded: list[Any], tokens: list[Any]) -> None:
    assert decoded == tokens
    for got, want in zip(decoded, tokens, strict=True):
        assert type(got) is type(want)
        for got_field, want_field in zip(got, want, strict=True):
            assert type(got_field) is type(want_field), (got_field, want_field)


@settings(max_examples=200)
@given(st.lists(targets, max_size=5))
def test_tokens_round_trip_unchanged(tokens: list[Target]) -> None:
    decoded = decode_tokens(TARGET, encode_tokens(tokens), where="place 'targets'")
    _assert_identical(decoded, tokens)


@settings(max_examples=100)
@given(st.lists(routes, max_size=5))
def test_nested_tuple_fields_stay_tuples(tokens: list[Route]) -> None:
    decoded = decode_tokens(ROUTE, encode_tokens(tokens), where="place 'routes'")
    _assert_identical(decoded, tokens)
    for token in decoded:
        assert all(type(hop) is tuple for hop in token.path)


def test_tuple_fields_stay_tuples() -> None:
    token = Target("a.example", 2, 0.5, True, b"\x00", (1, 2, 3), ("b.example", 443))
    (decoded,) = decode_tokens(TARGET, encode_tokens([token]), where="place 'targets'")
    assert decoded == token
    assert type(decoded) is Target
    assert type(decoded.hops) is tuple
    assert type(decoded.origin) is tuple


def test_empty_token_list_round_trips() -> None:
    assert decode_tokens(SMALL, encode_tokens([]), where="place 'small'") == []


@pytest.mark.parametrize(
    ("value", "mentions"),
    [
        ([(1,)], "Target"),  # wrong number of fields
        ([("a", 1, 0.5, True, b"", (1,), ("b", 1), "extra")], "Target"),
        ([("a", "1", 0.5, True, b"", (1,), ("b", 1))], "Target.attempt"),
        ([("a", True, 0.5, True, b"", (1,), ("b", 1))], "Target.attempt"),
        ([("a", 1, 1, True, b"", (1,), ("b", 1))], "Target.weight"),
        ([("a", 1, 0.5, 1, b"", (1,), ("b", 1))], "Target.secure"),
        ([("a", 1, 0.5, True, "", (1,), ("b", 1))], "Target.body"),
        ([("a", 1, 0.5, True, b"", (1, "2"), ("b", 1))], "Target.hops"),
        ([("a", 1, 0.5, True, b"", (1,), ("b", 1, 2))], "Target.origin"),
        ([("a", 1, 0.5, True, b"", (1,), (1, "b"))], "Target.origin"),
        ([("a", 1, float("nan"), True, b"", (), ("b", 1))], "Target.weight"),
        ([{"domain": "a"}], "Target"),
        ([5], "Target"),
    ],
)
def test_decoding_a_value_of_the_wrong_colour_raises_token_error(
    value: list[object], mentions: str
) -> None:
    with pytest.raises(TokenError) as info:
        decode_tokens(TARGET, pack(value), where="place 'targets'")
    message = str(info.value)
    assert "place 'targets'" in message, message
    assert mentions in message, message


def test_decoding_tokens_of_another_colour_raises_token_error() -> None:
    data = encode_tokens([Small(1)])
    with pytest.raises(TokenError, match="place 'targets'"):
        decode_tokens(TARGET, data, where="place 'targets'")


@pytest.mark.parametrize("value", [5, "tokens", {"a": 1}, None, b"raw"])
def test_decoding_a_non_array_raises_codec_error(value: object) -> None:
    with pytest.raises(CodecError, match="expected an array of tokens"):
        decode_tokens(SMALL, pack(value), where="place 'small'")


def test_pack_of_an_unencodable_value_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        pack(object())
    with pytest.raises(CodecError):
        encode_tokens([Small(2**70)])


_GOOD = encode_tokens([Target("a", 1, 0.5, True, b"x", (1, 2), ("b", 3))])


@pytest.mark.parametrize("cut", range(len(_GOOD)))
def test_truncated_bytes_raise_codec_error(cut: int) -> None:
    data = _GOOD[:cut]
    with pytest.raises(CodecError):
        unpack(data)
    with pytest.raises(CodecError):
        decode_tokens(TARGET, data, where="place 'targets'")


def test_trailing_bytes_raise_codec_error() -> None:
    with pytest.raises(CodecError, match="trailing"):
        unpack(_GOOD + b"\x00")


def test_oversized_frame_raises_codec_error() -> None:
    with pytest.raises(CodecError, match="exceeds the limit"):
        unpack(pack([1] * 100), frame_bytes_max=50)
    assert unpack(pack([1] * 10), frame_bytes_max=50) == (1,) * 10


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\xdd" + (ARRAY_LEN_MAX + 1).to_bytes(4, "big") + b"\xc0" * 16,
        b"\xdb" + (STRING_BYTES_MAX + 1).to_bytes(4, "big") + b"a" * 16,
        b"\xc6" + (STRING_BYTES_MAX + 1).to_bytes(4, "big") + b"a" * 16,
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion pairs
        b"\xd4\x01\x00",  # fixext1: extension types are refused
        b"\xd6\xff\x00\x00\x00\x00",  # the timestamp extension too
        b"\xc1",  # never used
        b"\x81\x01\x02",  # map with an int key
        b"\x81\x91\x01\x02",  # map with an array key
        b"\x91" * 100_000 + b"\xc0",  # deep nesting
        b"\xa3\xff\xfe\xfd",  # invalid utf-8 in a str
        b"",
    ],
)
def test_hostile_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        unpack(data)


def test_non_bytes_input_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        unpack("not bytes")  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_raise_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        unpack(data)


def _decode_only_expected_errors(data: bytes) -> None:
    for colour in (TARGET, ROUTE, SMALL):
        with contextlib.suppress(CodecError, TokenError):
            decode_tokens(colour, data, where="place 'fuzz'")


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_raise_codec_or_token_error(data: bytes) -> None:
    _decode_only_expected_errors(data)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | _ints | st.floats() | _text | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.lists(_msgpack_values, max_size=4), st.data())
def test_arbitrary_msgpack_only_raises_codec_or_token_error(value: list[Any], data: Any) -> None:
    raw = msgpack.packb(value, use_bin_type=True)
    _decode_only_expected_errors(raw)
    # Damage the frame: truncate it, or flip one byte.
    cut = data.draw(st.integers(0, len(raw)))
    _decode_only_expected_errors(raw[:cut])
    if raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        flipped = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
        _decode_only_expected_errors(flipped)
