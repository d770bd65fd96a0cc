"""Per-peer request rate limits: a token bucket per peer (pure).

Theory of operation: each peer (a ZeroMQ routing id, or any bytes naming a sender)
has a bucket of up to ``burst`` requests that refills at ``per_s`` requests per
second of the caller's clock (``now_ms``, passed in). A request is allowed if its
peer's bucket holds one; otherwise it is refused (the shell answers ``rate_limited``
without decoding it), so one peer sending flat out costs the process a cheap refusal
per frame and cannot take the turns ZeroMQ's fair queueing gives the others. The
buckets are bounded (``peers_max``, least recently seen dropped first); a dropped
peer starts again with a full bucket, which only errs towards allowing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

PEERS_MAX: Final = 4_096
_MILLI: Final = 1_000  # bucket contents in thousandths of a request: integer arithmetic


class PeerRateLimits:
    """Token buckets per peer (see the module docstring)."""

    def __init__(self, *, per_s: int, burst: int, peers_max: int = PEERS_MAX) -> None:
        assert per_s > 0, per_s
        assert burst > 0, burst
        assert peers_max > 0, peers_max
        self.per_s = per_s
        self.burst = burst
        self.peers_max = peers_max
        self._buckets: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # (level, at_ms)
        self.refused = 0

    def allow(self, peer: bytes, now_ms: int) -> bool:
        """Take one request from ``peer``'s bucket at ``now_ms``; False if it is empty."""
        full = self.burst * _MILLI
        level, at_ms = self._buckets.pop(peer, (full, now_ms))
        level = min(full, level + max(0, now_ms - at_ms) * self.per_s)
        allowed = level >= _MILLI
        if allowed:
            level -= _MILLI
        else:
            self.refused += 1
        self._buckets[peer] = (level, now_ms)
        if len(self._buckets) > self.peers_max:
            self._buckets.popitem(last=False)
        return allowed
