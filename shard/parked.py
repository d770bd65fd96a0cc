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

A grant whose reply cannot be sent (``ROUTER_MANDATORY`` refuses it: the worker's
socket is gone) is taken back: its tokens return to the queue at once, committed with
the next batch, unless the same lease went out in another reply of the batch (a repeat
of the request, from the client's new socket). This is best effort: a reply queued just
before the shard saw the disconnect is lost, and its lease expires as usual. A stopping
shard answers its parked leases with no tokens; a read-only one with its error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from router.wire import Error, Lease, Leased, Message

T = TypeVar("T")
PARKED_MAX: Final = 10_000  # beyond this many waiting, a lease is answered at once
Reply = tuple[bytes, Message, int]  # (peer, reply, message id)


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


class LongPolls:
    """One shard's long polls: parking, answering, and which grants to take back
    (module docstring). It holds the parked requests only; the shard's core grants
    and takes back leases through the callables it hands in."""

    def __init__(self) -> None:
        self.parked = ParkedLeases()
        self.counters: Counter[str] = Counter()

    def can_park(self) -> bool:
        return len(self.parked) < PARKED_MAX

    def park(self, peer: bytes, lease: Lease, message_id: int, now_ms: int) -> None:
        """Let ``lease`` wait for work (the shard found none) until its ``wait_ms``."""
        self.parked.park(ParkedLease(peer, message_id, lease, now_ms + lease.wait_ms))
        self.counters["leases_parked"] += 1

    def drop(self, client_id: str) -> None:
        """``client_id`` sent a request: what it had parked is answered no more."""
        if self.parked.drop(client_id) is not None:
            self.counters["leases_parked_dropped"] += 1

    def work_waits(self, has_available: Callable[[str], bool]) -> bool:
        """Whether a parked lease's queue has work (its batch should end soon)."""
        return bool(self.parked) and any(has_available(p) for p in sorted(self.parked.places()))

    def answer(
        self,
        now_ms: int,
        has_available: Callable[[str], bool],
        grant: Callable[[Lease], Message],
        *,
        refusal: str | None,
        stopping: bool,
    ) -> list[Reply]:
        """The replies to the parked leases that have work now or waited long enough
        (``grant`` takes their tokens in the current batch); all of them, with
        ``refusal`` as a ``store_unavailable`` error if the shard is read-only, or with
        no tokens if it is ``stopping``."""
        if not len(self.parked):
            return []
        if refusal is not None:
            error = Error("store_unavailable", refusal)
            return [(p.peer, error, p.message_id) for p in self.parked.take_all()]
        if stopping:  # the client asks the next incarnation
            return [
                (p.peer, Leased(p.lease.request_seq, "", now_ms, ()), p.message_id)
                for p in self.parked.take_all()
            ]
        return self.parked.answer(
            now_ms, has_available, lambda p: (p.peer, grant(p.lease), p.message_id)
        )

    @staticmethod
    def undelivered(replies: list[tuple[Reply, bool]]) -> list[str]:
        """The leases granted in ``replies`` (each with whether it was sent) none of
        whose replies reached their client: the shard takes them back."""
        delivered = {r.lease_id for (_p, r, _m), ok in replies if ok and isinstance(r, Leased)}
        lost = []
        for (_peer, reply, _mid), ok in replies:
            if ok or not isinstance(reply, Leased) or not reply.entries:
                continue
            if reply.lease_id not in delivered and reply.lease_id not in lost:
                lost.append(reply.lease_id)
        return lost

    def next_deadline_ms(self) -> int | None:
        return self.parked.next_deadline_ms()
