"""Lease requests that wait for work: long polls, parked until tokens come or time is up.

A worker that finds a work queue empty would otherwise ask again and again: each idle
ask costs a round trip on both sides, and work that arrives between two asks waits for
the next one. A ``Lease`` with ``wait_ms`` > 0 that finds nothing is parked here
instead; after every batch's firing the shard grants the parked leases whose queue has
tokens now, in the order they arrived, and answers the rest with an empty ``Leased``
once their wait is over. The grant is part of that batch, so it is committed before the
reply leaves, like every reply.

A client has at most one request outstanding (its sequence numbers only grow), so
parked leases are kept per client id, and any request from a client drops what it had
parked: a client that timed out and asked again, the same request or a newer one, is
answered for that one only. Granting an older request after a newer one would put the
client table back, and its reply would reach nobody.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from router.wire import Lease

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ParkedLease:
    """A lease request waiting for work: who asked (``peer``, ``message_id``) and until when."""

    peer: bytes
    message_id: int
    lease: Lease
    deadline_ms: int


class ParkedLeases:
    """The parked lease requests of one shard, in arrival order."""

    def __init__(self) -> None:
        self._by_client: dict[str, ParkedLease] = {}

    def __len__(self) -> int:
        return len(self._by_client)

    def park(self, parked: ParkedLease) -> None:
        """Park ``parked`` (its client's newest request: see :meth:`drop`)."""
        client_id = parked.lease.client_id
        self._by_client.pop(client_id, None)
        self._by_client[client_id] = parked  # popped first: it goes to the back

    def drop(self, client_id: str) -> ParkedLease | None:
        """Forget what ``client_id`` parked (it sent a newer request, or the same again)."""
        return self._by_client.pop(client_id, None)

    def answer(
        self,
        now_ms: int,
        has_work: Callable[[str], bool],
        grant: Callable[[ParkedLease], T],
    ) -> list[T]:
        """Answer, in arrival order, the parked leases whose place has work now and
        those whose wait is over: ``grant`` each (which takes the tokens, so
        ``has_work`` is asked again for the next one) and return the answers."""
        answers = []
        for parked in list(self._by_client.values()):
            if parked.deadline_ms <= now_ms or has_work(parked.lease.place):
                del self._by_client[parked.lease.client_id]
                answers.append(grant(parked))
        return answers

    def places(self) -> set[str]:
        """The work queues that parked leases wait on."""
        return {p.lease.place for p in self._by_client.values()}

    def next_deadline_ms(self) -> int | None:
        """When the first parked lease's wait ends (None: nothing is parked)."""
        return min((p.deadline_ms for p in self._by_client.values()), default=None)

    def take_all(self) -> list[ParkedLease]:
        """Every parked lease, in arrival order (to answer them all: the shard stops)."""
        taken = list(self._by_client.values())
        self._by_client.clear()
        return taken
