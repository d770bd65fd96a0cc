"""Partition keys to slots: a stable hash of the key's canonical encoding.

Theory of operation: a key value (a field of a token) is encoded with msgpack, the
canonical form shared by every process, and hashed with BLAKE2b; the first 8 bytes,
big-endian, modulo ``SLOT_COUNT`` give the slot. Python's ``hash()`` is salted per
process and must never be used here. Tokens of pool places have no slot of their own
(``POOL_SLOT``); a place with neither key nor pool lives in slot ``FIXED_SLOT``.
Slots are fixed forever: the partition table maps slots to shards, and a slot's
tokens are one contiguous LMDB key range (the slot number is the key's prefix).
"""

from __future__ import annotations

import hashlib
from typing import Final

from nets.codec import pack
from nets.model import Place, Token

SLOT_COUNT: Final = 1024
FIXED_SLOT: Final = 0
POOL_SLOT: Final = 0xFFFF  # outside 0..SLOT_COUNT-1: pool tokens move without a slot


def slot_of_key(key: object) -> int:
    """The slot of a partition key value."""
    digest = hashlib.blake2b(pack(key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SLOT_COUNT


def slot_of_token(place: Place, token: Token) -> int:
    """The slot a token of ``place`` lives in (see the module docstring)."""
    if place.pool:
        return POOL_SLOT
    if place.key is None:
        return FIXED_SLOT
    return slot_of_key(token[place.colour_set.field_index(place.key)])
