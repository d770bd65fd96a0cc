"""Seeded random streams, derived from a run's seed by one documented rule.

Theory of operation: a simulated run has one seed. Each part of the world that draws
random numbers (the network, the fault schedule, an effect model's outcome) gets its
*own* :class:`random.Random`, seeded with :func:`derive_seed` of the run's seed and a
label that names the part. Independent streams keep a change in one part (one more
draw in the network) from shifting every other part's choices, so a seed found for a
bug keeps finding it after unrelated edits.

The rule: ``derive_seed(seed, *labels)`` is the first 8 bytes, big-endian, of the
BLAKE2b digest of the msgpack encoding of ``[seed, *labels]``. Labels are strings,
integers or bytes; nothing here calls Python's ``hash()``, which is salted per process
(``PYTHONHASHSEED``), so a derived seed is the same in every interpreter.
"""

from __future__ import annotations

import hashlib
import random
from typing import Final

from nets.codec import pack

Label = str | int | bytes


SEED_MAX: Final = 2**64 - 1


def derive_seed(seed: int, *labels: Label) -> int:
    """The seed of the stream named ``labels`` in the run of ``seed`` (64 bits).

    ``seed`` is a run's seed, ``0 .. SEED_MAX`` (what msgpack encodes as an integer).
    """
    assert 0 <= seed <= SEED_MAX, f"seed {seed} is outside 0..2**64-1"
    digest = hashlib.blake2b(pack([seed, *labels]), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def derived_random(seed: int, *labels: Label) -> random.Random:
    """A fresh generator for the stream named ``labels`` in the run of ``seed``."""
    return random.Random(derive_seed(seed, *labels))
