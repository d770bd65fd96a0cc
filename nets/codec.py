"""The token codec: tokens to msgpack bytes and back, with strict limits.

A token is encoded as the msgpack array of its field values; the colour set (known
from the place) turns it back into a token. Arrays are always decoded as tuples, so a
tuple-typed field survives the round trip unchanged, and every decoded token is checked
against its colour set. Later layers (the wire format, the LMDB store) build on
:func:`pack` and :func:`unpack`, which refuse hostile input by size, nesting and
length limits rather than by trusting the sender.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Final

import msgpack

from nets.colour import ColourSet, check_token
from nets.errors import CpnError, TokenError

FRAME_BYTES_MAX: Final = 16 * 1024 * 1024
STRING_BYTES_MAX: Final = 1024 * 1024
ARRAY_LEN_MAX: Final = 1_000_000
MAP_LEN_MAX: Final = 100_000


class CodecError(CpnError):
    """Bytes that do not decode into the expected value."""


def pack(value: object) -> bytes:
    """Encode ``value`` (scalars, tuples, lists, dicts with str/int keys) as msgpack."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode {type(value).__name__}: {exc}") from exc


def unpack(data: bytes, *, frame_bytes_max: int = FRAME_BYTES_MAX) -> Any:
    """Decode msgpack ``data`` with hostile-input limits; arrays come back as tuples.

    Raises:
        CodecError: the data is larger than ``frame_bytes_max``, truncated, has trailing
            bytes, exceeds a length limit or nests too deeply.
    """
    if len(data) > frame_bytes_max:
        raise CodecError(f"frame of {len(data)} bytes exceeds the limit of {frame_bytes_max}")
    # unpackb reads one complete buffer, whose size was checked above; the other limits
    # bound what a small hostile frame can make the decoder allocate.
    try:
        return msgpack.unpackb(
            data,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=STRING_BYTES_MAX,
            max_bin_len=STRING_BYTES_MAX,
            max_array_len=ARRAY_LEN_MAX,
            max_map_len=MAP_LEN_MAX,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise CodecError("trailing bytes after the msgpack value") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise CodecError(f"malformed msgpack: {exc}") from exc


def token_fields(token: tuple[Any, ...]) -> tuple[Any, ...]:
    """The wire form of a token: the plain tuple of its field values."""
    return tuple(token)


def share_key(fields: tuple[Any, ...], key_index: int | None) -> tuple[Any, ...]:
    """``fields`` with its partition-key string interned (``key_index``: the key's field).

    Every token a shard decodes gets fresh strings, so a million targets of 500 domains
    would hold a million copies of 500 domain names (about 64 bytes each). Interned,
    the tokens of one key share one string, as the index that groups them already
    assumes; it costs one ``sys.intern`` per decoded token.
    """
    if key_index is None or key_index >= len(fields):
        return fields
    value = fields[key_index]
    if type(value) is not str:
        return fields
    return (*fields[:key_index], sys.intern(value), *fields[key_index + 1 :])


def share_keys(rows: list[tuple[Any, ...]], key_index: int) -> list[tuple[Any, ...]]:
    """:func:`share_key` over ``rows`` whose field ``key_index`` is a ``str`` in every
    row (a run checked column by column): one comprehension, no call per row."""
    k, intern = key_index, sys.intern
    return [(*f[:k], intern(f[k]), *f[k + 1 :]) for f in rows]


def token_from_fields(
    colour: ColourSet, fields: object, *, where: str, key_index: int | None = None
) -> tuple[Any, ...]:
    """Rebuild and check a token of ``colour`` from its decoded field values.

    ``key_index`` names the place's partition-key field, whose string is interned
    (:func:`share_key`).

    Raises:
        TokenError: the values do not fit the colour set (named after ``where``).
    """
    if key_index is not None and type(fields) is tuple:
        fields = share_key(fields, key_index)
    exact = colour.exact_types
    if exact is not None and type(fields) is tuple and tuple(map(type, fields)) == exact:
        return tuple.__new__(colour.cls, fields)
    if type(fields) is not tuple or len(fields) != len(colour.fields):
        raise TokenError(
            f"{where}: a {colour.name} token needs {len(colour.fields)} fields "
            f"{colour.fields}, got {fields!r}"
        )
    token = colour.cls(*fields)
    check_token(colour, token, where=where)
    return token


def encode_tokens(tokens: Iterable[tuple[Any, ...]]) -> bytes:
    """Encode a sequence of tokens of one colour set as one msgpack array."""
    return pack([tuple(t) for t in tokens])


def decode_tokens(colour: ColourSet, data: bytes, *, where: str) -> list[tuple[Any, ...]]:
    """Decode what :func:`encode_tokens` wrote, checking every token against ``colour``."""
    items = unpack(data)
    if type(items) is not tuple:
        raise CodecError(f"{where}: expected an array of tokens, got {type(items).__name__}")
    return [token_from_fields(colour, fields, where=where) for fields in items]
