"""The lease desk: a shard's grants, completions, renewals and hand-backs of work.

The net holds a lease's truth (:mod:`shard.leases`: held tokens and their timers in the
companion places); :class:`LeaseDesk` keeps the index the requests need, what each
granted lease still holds and when it expires, and changes the marking for them. It is
its own object because the lease state has its own life: it is rebuilt from the marking
when a core is built (:func:`shard.leases.live_leases`), its sequence of lease ids and
its counters go on across a failed commit, and none of it is touched per firing, except
that an expiry (an ordinary firing of ``<q>__lease_expired``) makes the batch recorder
(:mod:`shard.recorder`) call :meth:`LeaseDesk.expired`.

Its collaborators are narrow and explicit: the engine it changes (built with the core,
for the core's life), the batch of the turn (passed to each call: the core begins a new
one at every commit), the client table stays with the client writes
(:mod:`shard.client_writes`: a grant's reply is remembered there), and a completion's
results are handed to the ``emit`` the client writes pass (the recorder's: they stay
here or are handed off). The core's counter table is passed in and counted
into, so that the lease counters go on across a rebuilt core with the others.

Theory of operation (docs/shard.md, "Leases"):

* A grant moves up to ``max_tokens`` available tokens from the queue into ``<q>__held``,
  each with a timer in ``<q>__timer`` due at the expiry, numbered by its lease index.
* A lease is *live* while every token it still holds is held (none expired); a
  completion or hand-back names some of its tokens by index (or all: ``()``), and the
  lease is gone once it holds none.
* A renewal moves the timers of the tokens it still holds: each is taken out at the old
  expiry and added at the new one, in the batch, so the expiry cannot fire before the new
  time, not even after a restart.
* A completion may produce only into the places its queue declares.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final

from nets.engine import Engine
from nets.firing import PlacedEntry
from nets.model import Net, Token
from router.wire import Complete, Completed, Lease, Leased, Release, Released, Renew, Renewed
from shard.batch import Batch
from shard.leases import LiveLease, WorkQueue, live_leases
from shard.request_checks import (
    DURATION_MS_MAX,
    RequestError,
    declared_result,
    tokens_of,
    work_queue_of,
)

LEASE_TOKENS_MAX: Final = 10_000
LEASE_WAIT_MS_MAX: Final = 60_000  # a long poll waits at most this long for work
LEASE_PROGRESS_CHARS_MAX: Final = 200  # a renewal's progress note, kept in memory per lease
LEASE_PROGRESS_SHOWN_MAX: Final = 20  # the statistics show the most recently renewed leases

Emit = Callable[[str, Token, int], None]  # a completion's result: (place, token, time)


class LeaseDesk:
    """The live leases of one core and the changes leases make (module docstring).

    Args:
        net: the shard's net, with the lease machinery added.
        queues: its work queues by place name.
        companions: the lease machinery's places (no client writes into them).
        engine: the marking the leases are taken from; the index is rebuilt from its
            held and timer tokens here.
        shard_id, incarnation, lease_seq: lease ids are ``shard.incarnation.seq``, and
            ``lease_seq`` is the last one handed out (a rebuilt core goes on from it).
        counters: the core's counter table, counted into.
    """

    def __init__(
        self,
        net: Net,
        queues: Mapping[str, WorkQueue],
        companions: frozenset[str],
        engine: Engine,
        *,
        shard_id: int,
        incarnation: int,
        lease_seq: int,
        counters: Counter[str],
    ) -> None:
        self._net = net
        self._queues = queues
        self._companions = companions
        self._queue_of_held = {queue.held.name: queue for queue in queues.values()}
        self._engine = engine
        self._id_prefix = f"{shard_id}.{incarnation}."
        self.lease_seq = lease_seq
        self._counters = counters
        self.leases: dict[str, LiveLease] = {}  # what each lease still holds, oldest first
        # The latest progress note of each live lease, most recently renewed last. Kept in
        # memory only: a restarted shard shows a lease's progress from its next renewal.
        self.progress: dict[str, str] = {}
        for queue in queues.values():
            self.leases.update(
                live_leases(queue, engine.tokens(queue.held.name), engine.tokens(queue.timer.name))
            )

    # -- requests ---------------------------------------------------------------------

    def check(self, lease: Lease) -> None:
        """Refuse a lease request that names no work queue or is out of bounds.

        Raises:
            RequestError: ``unknown_place``, ``not_a_work_queue`` or ``bad_request``.
        """
        work_queue_of(self._net, self._queues, lease.place)
        if (
            not 0 < lease.max_tokens <= LEASE_TOKENS_MAX
            or not 0 < lease.lease_ms <= DURATION_MS_MAX
            or not 0 <= lease.wait_ms <= LEASE_WAIT_MS_MAX
        ):
            raise RequestError(
                "bad_request",
                f"a lease needs 0 < max_tokens <= {LEASE_TOKENS_MAX}, "
                f"0 < lease_ms <= {DURATION_MS_MAX} and 0 <= wait_ms <= {LEASE_WAIT_MS_MAX}",
            )

    def grant(self, lease: Lease, batch: Batch) -> Leased:
        """Lease up to ``max_tokens`` available tokens (maybe none) in ``batch``."""
        queue = self._queues[lease.place]
        engine = self._engine
        now = engine.now
        self.lease_seq += 1
        lease_id = f"{self._id_prefix}{self.lease_seq}"
        expires = now + lease.lease_ms
        taken = engine.available(lease.place, lease.max_tokens)
        held_entries = []
        for index, (time_ms, token) in enumerate(taken):
            self._remove(batch, lease.place, token, time_ms)
            held = queue.held_token(lease_id, index, token)
            self._add(batch, queue.held.name, held, now)
            self._add(batch, queue.timer.name, queue.timer_token(lease_id, index, token), expires)
            held_entries.append((queue.held.name, now, held))
        if held_entries:
            self.leases[lease_id] = LiveLease(lease.place, expires, tuple(held_entries))
            self._counters["leases_granted"] += 1
        return Leased(
            lease.request_seq, lease_id, expires, tuple((t, tuple(tok)) for t, tok in taken)
        )

    def complete(self, complete: Complete, batch: Batch, emit: Emit) -> Completed:
        """Swap the lease's held tokens named by ``complete.indexes`` (all still held
        when empty) for the results, in one step; the others stay leased.

        Raises:
            RequestError: the lease is not live, an index is wrong, or a result is not
                the queue's (see :mod:`shard.request_checks`); nothing is applied.
        """
        lease = self._live_lease(complete.lease_id)
        chosen = self._chosen(complete.lease_id, lease, complete.indexes)
        queue = self._queues[lease.queue]
        results: list[tuple[str, Token]] = []
        for place, fields in complete.results:
            declared_result(self._net, self._companions, complete.lease_id, queue, place)
            tokens = tokens_of(self._net, self._companions, place, (fields,))
            results += [(place, token) for token in tokens]
        for place, time_ms, token in chosen:
            self._remove(batch, place, token, time_ms)
        now = self._engine.now
        for place, token in results:
            emit(place, token, now)
        if self._held_no_more(complete.lease_id, lease, chosen):
            self._counters["leases_completed"] += 1
        self._counters["leased_tokens_completed"] += len(chosen)
        return Completed(complete.request_seq, complete.lease_id, False)

    def renew(self, renew: Renew, batch: Batch) -> Renewed:
        """Move the expiry of every token the lease still holds to ``lease_ms`` from now.

        Each timer is taken out at the old expiry and added at the new one, in the
        batch, so the expiry cannot fire before the new time (not even after a
        restart). Completed and handed-back tokens' timers stay and are spent.

        Raises:
            RequestError: ``bad_request`` (bounds) or ``lease_expired``.
        """
        if not 0 < renew.lease_ms <= DURATION_MS_MAX or (
            len(renew.progress) > LEASE_PROGRESS_CHARS_MAX
        ):
            raise RequestError(
                "bad_request",
                f"a renewal needs 0 < lease_ms <= {DURATION_MS_MAX} and a progress of at "
                f"most {LEASE_PROGRESS_CHARS_MAX} characters, got lease_ms={renew.lease_ms} "
                f"and {len(renew.progress)} characters",
            )
        lease = self._live_lease(renew.lease_id)
        queue = self._queues[lease.queue]
        expires = self._engine.now + renew.lease_ms
        if expires != lease.expires_at_ms:
            for _place, _time_ms, held in lease.held:
                timer = queue.timer_token(renew.lease_id, held[1], queue.original(held))
                self._engine.withdraw(queue.timer.name, timer, time=lease.expires_at_ms)
                batch.remove(queue.timer.name, lease.expires_at_ms, timer)
                self._add(batch, queue.timer.name, timer, expires)
            self.leases[renew.lease_id] = dataclasses.replace(lease, expires_at_ms=expires)
        self.progress.pop(renew.lease_id, None)  # re-inserted: most recent last
        if renew.progress:
            self.progress[renew.lease_id] = renew.progress
        self._counters["leases_renewed"] += 1
        return Renewed(renew.request_seq, renew.lease_id, expires)

    def release(self, release: Release, batch: Batch) -> Released:
        """Put the lease's held tokens named by ``release.indexes`` (all still held when
        empty) back in their queue now; the others stay leased.

        Raises:
            RequestError: ``lease_expired``, ``bad_request`` or ``unknown_index``.
        """
        lease = self._live_lease(release.lease_id)
        chosen = self._chosen(release.lease_id, lease, release.indexes)
        self._back_to_queue(chosen, batch)
        if self._held_no_more(release.lease_id, lease, chosen):
            self._counters["leases_released"] += 1
        self._counters["leased_tokens_released"] += len(chosen)
        return Released(release.request_seq, release.lease_id, len(chosen))

    def take_back(self, lease_id: str, batch: Batch) -> bool:
        """Put a lease's tokens back in their queue (its grant's reply reached nobody);
        whether there was a live lease to take back."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return False
        self._forget(lease_id)
        # Those that expired meanwhile are back already, by their expiry. A repeat of
        # the request is answered with no entries (the lease is not live).
        engine = self._engine
        self._back_to_queue(
            tuple(e for e in lease.held if engine.holds(e[0], e[2], time=e[1])), batch
        )
        self._counters["leases_taken_back"] += 1
        return True

    def expired(self, lease_id: str) -> None:
        """The lease's held token expired (its work went back by the expiry's firing)."""
        # Popped here rather than through _forget: the recorder calls this while it
        # records a batch's firings, one call per expiry.
        self.leases.pop(lease_id, None)
        self.progress.pop(lease_id, None)

    def untouched(self, leased: Leased) -> bool:
        """Whether a granted lease still holds every token it was granted."""
        lease = self.leases.get(leased.lease_id)
        return lease is not None and len(lease.held) == len(leased.entries) and self._live(lease)

    # -- the read side --------------------------------------------------------------

    def oldest_granted_ms(self) -> int | None:
        """When the oldest live lease was granted (None: no lease is live). Leases are
        granted in order, so the first is the oldest; its held entries carry the time."""
        oldest = next(iter(self.leases.values()), None)
        return oldest.held[0][1] if oldest else None

    def progress_shown(self) -> list[tuple[str, str]]:
        """What the most recently renewed leases' workers say they are doing."""
        return [(lease_id, progress) for lease_id, progress in reversed(self.progress.items())][
            :LEASE_PROGRESS_SHOWN_MAX
        ]

    # -- the index ------------------------------------------------------------------

    def _live(self, lease: LiveLease) -> bool:
        """Whether every token the lease still holds is held (none expired)."""
        return all(self._engine.holds(p, tok, time=t) for p, t, tok in lease.held)

    def _live_lease(self, lease_id: str) -> LiveLease:
        """The lease ``lease_id`` if it is live.

        Raises:
            RequestError: ``lease_expired``: unknown, expired, or completed or handed
                back in full (nothing of the request is applied).
        """
        lease = self.leases.get(lease_id)
        if lease is None or not self._live(lease):
            self._forget(lease_id)
            raise RequestError(
                "lease_expired",
                f"lease {lease_id!r} is unknown or expired (its tokens went back to their "
                "queue), or it was completed or handed back",
            )
        return lease

    def _forget(self, lease_id: str) -> None:
        self.leases.pop(lease_id, None)
        self.progress.pop(lease_id, None)

    def _chosen(
        self, lease_id: str, lease: LiveLease, indexes: tuple[int, ...]
    ) -> tuple[PlacedEntry, ...]:
        """The held entries a completion or hand-back names (``()``: all still held).

        Raises:
            RequestError: ``bad_request`` for an index given twice; ``unknown_index``
                for one the lease does not hold (completed or handed back before, or
                never in it).
        """
        if not indexes:
            return lease.held
        by_index = {lease.index_of(entry): entry for entry in lease.held}
        seen: set[int] = set()
        for index in indexes:
            if index in seen:
                raise RequestError(
                    "bad_request", f"lease {lease_id!r}: index {index} is given twice"
                )
            seen.add(index)
            if index not in by_index:
                raise RequestError(
                    "unknown_index",
                    f"lease {lease_id!r} holds no token with index {index}: completed or "
                    f"handed back before, or never in the lease (it holds "
                    f"{', '.join(map(str, sorted(by_index)))})",
                )
        return tuple(by_index[index] for index in indexes)

    def _held_no_more(self, lease_id: str, lease: LiveLease, gone: tuple[PlacedEntry, ...]) -> bool:
        """Record that ``gone`` left the lease; whether it holds nothing any more."""
        rest = lease.without(gone)
        if rest is None:
            self._forget(lease_id)
            return True
        self.leases[lease_id] = rest
        return False

    # -- the marking ----------------------------------------------------------------

    def _back_to_queue(self, entries: tuple[PlacedEntry, ...], batch: Batch) -> None:
        """Held entries back into their queue, available now (their timers are spent
        when due: the held tokens are gone)."""
        now = self._engine.now
        for place, time_ms, token in entries:
            self._remove(batch, place, token, time_ms)
            queue = self._queue_of_held[place]
            self._add(batch, queue.queue.name, queue.original(token), now)

    def _add(self, batch: Batch, place: str, token: Token, time_ms: int) -> None:
        self._engine.add(place, token, time=time_ms)
        batch.add(place, time_ms, token)

    def _remove(self, batch: Batch, place: str, token: Token, time_ms: int) -> None:
        self._engine.remove(place, token, time=time_ms)
        batch.remove(place, time_ms, token)
