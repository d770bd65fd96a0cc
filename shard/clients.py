"""The client table: each client's newest write and its reply, so none is applied twice.

A client's write (``Put``, ``Lease``, ``Complete``, ``Renew``, ``Release``) carries its
client id and a sequence number that only grows; the shard keeps, per client, the newest
sequence number it applied and the encoded reply it gave (docs/shard.md, "Requests").
:class:`ClientTable` answers a repeat from there, never applying it again:

* the newest request again: the same reply, marked as a repeat (``duplicate=True``),
  except that a lease whose tokens are no longer all its own by now (taken back, expired,
  completed or handed back, even in part) is repeated with no entries;
* an older request: refused (``stale_request``), since a newer one came after it.

A reply is remembered in the table and in the batch that applies its write, so the
table is committed with the change it reports and recovered with the store. The table
is apart from the core's dispatch because it is the one rule every client write goes
through first; the client writes (:mod:`shard.client_writes`) pass it the batch of the
turn and, for a repeated lease, the lease desk's word on whether the lease is untouched.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping

from router.wire import Completed, Leased, Message, PutAck, decode, encode
from shard.batch import Batch
from shard.request_checks import RequestError


class ClientTable:
    """The newest write of each client and its encoded reply (module docstring).

    Args:
        recovered: the table as the store holds it (client id: (sequence, frame)).
        incarnation: the core's, on the frames it encodes.
        counters: the core's counter table, counted into (``requests_duplicate``).
    """

    def __init__(
        self,
        recovered: Mapping[str, tuple[int, bytes]],
        *,
        incarnation: int,
        counters: Counter[str],
    ) -> None:
        self.clients: dict[str, tuple[int, bytes]] = dict(recovered)
        self._incarnation = incarnation
        self._counters = counters

    def repeat(
        self, client_id: str, seq: int, untouched: Callable[[Leased], bool]
    ) -> Message | None:
        """The answer to a repeated write (None: it is new, apply it).

        Args:
            untouched: whether a granted lease still holds every token it was granted.

        Raises:
            RequestError: ``stale_request``: a newer request of the client came after it.
        """
        known = self.clients.get(client_id)
        if known is None or seq > known[0]:
            return None
        self._counters["requests_duplicate"] += 1
        if seq == known[0]:
            # The very reply the client may have missed, marked as a repeat.
            reply = decode(known[1]).message
            if isinstance(reply, PutAck | Completed):
                reply = dataclasses.replace(reply, duplicate=True)
            elif isinstance(reply, Leased) and reply.entries and not untouched(reply):
                # Taken back (its reply could not be delivered), expired, completed or
                # handed back, even in part: its tokens may be another lease's by now,
                # so the repeat gets none.
                reply = dataclasses.replace(reply, entries=())
            return reply
        raise RequestError(
            "stale_request",
            f"client {client_id!r} sent request {seq}, but request {known[0]} came after it",
        )

    def remember(self, client_id: str, seq: int, reply: Message, batch: Batch) -> Message:
        """Keep ``reply`` as the answer to the client's request ``seq``, in the table
        and in ``batch`` (committed with the write it answers); returns ``reply``."""
        frame = encode(reply, message_id=0, incarnation=self._incarnation)
        self.clients[client_id] = (seq, frame)
        batch.clients[client_id] = (seq, frame)
        return reply
