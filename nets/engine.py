"""The firing engine: a pure, deterministic timed-CPN interpreter.

Theory of operation:

* ``now`` is a parameter (integer milliseconds); the engine never reads a clock.
  :meth:`Engine.fire` first releases every pending token whose time has come, then
  fires at most one binding and returns its :class:`Step`. :meth:`Engine.next_deadline`
  tells the earliest time at which a pending token becomes available, the only event
  that can enable something without a firing or a put. Only places that some arc reads
  (or that the caller asks to ``watch``) keep future tokens pending; a place no arc
  reads takes them into its index at once, since nothing can wait for them.
* Conflict resolution is a total order, so a marking always yields the same step:
  highest priority first, then the transition declared first, then the binding whose
  entries (in binding order: consume arcs, then read arcs) are least, comparing each
  entry by time and then by token value. With ``tie_break="random"`` the choice among
  enabled transitions of the same priority is drawn from a ``random.Random(seed)``.
* Enabling is incremental: every place notifies the components that read it when
  one of its available tokens is added or removed; only those components (for keyed
  ones, only that key) are searched again. A transition whose output place is full
  is skipped until that place loses a token.
* Firing is atomic: all outputs are computed before the marking changes, so an
  inscription that raises leaves the marking as it was.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from operator import itemgetter
from typing import Any

from nets.colour import check_token
from nets.enabling import KeyedComponentState, TransitionState, compile_chooser
from nets.errors import CpnError
from nets.firing import Locality, Step, compile_firing, compile_insert
from nets.marking import PlaceStore
from nets.model import Net, Token

StepHook = Callable[["Step"], None]
PlacedEntry = tuple[str, int, Token]  # (place name, time, token)


class TieBreak(Enum):
    """How the engine chooses among enabled transitions of equal priority."""

    ORDERED = "ordered"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """Counters of an engine since it was created."""

    now: int
    steps: int
    firings: Mapping[str, int]
    tokens: Mapping[str, int]
    pending: int


class _Changes:
    """A watcher of every place that can enable or block a transition: ``all_dirty``
    says whether one changed since the engine last found nothing enabled."""

    __slots__ = ("all_dirty",)

    def __init__(self) -> None:
        self.all_dirty = True


class Engine:
    """Fires a net under a time that the caller passes in.

    Args:
        net: a validated :class:`Net`.
        seed: seeds the random tie break (ignored when ordered).
        tie_break: ``"ordered"`` (default, a total order) or ``"random"``.
        initial_marking: load the places' initial tokens (at time 0). A store that
            recovers a marking passes ``False`` and adds the tokens itself.
        watch: places that no arc reads but whose future tokens must still come due
            on time (e.g. a work queue that workers lease from). Other unread places
            keep future tokens in their index directly: nothing waits for them.
        locality: for a shard that owns only some partitions: produced tokens it
            does not keep are exported (see :class:`nets.firing.Locality` and
            :meth:`take_exported`) instead of entering the marking.
    """

    def __init__(
        self,
        net: Net,
        *,
        seed: int = 0,
        tie_break: TieBreak | str = TieBreak.ORDERED,
        initial_marking: bool = True,
        watch: Iterable[str] = (),
        locality: Locality | None = None,
    ) -> None:
        self.net = net
        self._watched = frozenset(watch)
        for name in self._watched:
            net.place(name)  # raises KeyError naming the known places
        self.tie_break = TieBreak(tie_break)
        self._rng = random.Random(seed)
        self.now = 0
        self._stores = {p.name: PlaceStore(p) for p in net.places}
        # Entries from the future, by time: each time's ``(place, token)`` pairs in the
        # order they were produced, and a heap of the distinct times. Firings at one
        # moment with one delay produce many entries of one time, so most entries cost
        # an append, and the heap holds and compares plain ints (see _push_pending).
        self._pending: dict[int, list[tuple[str, Token]]] = {}
        self._pending_times: list[int] = []
        # Pending entries taken out before their time (withdraw): left in the heap, where
        # finding them would cost a scan, and skipped when they come due.
        self._withdrawn: dict[tuple[int, str, Token], int] = {}
        # Firings per transition, in declaration order: the compiled chooser counts
        # into this very list (one list slot, not a dictionary keyed by the step's name).
        self._counts = [0] * len(net.transitions)
        self.hooks: list[StepHook] = []
        # Produced tokens of partitions held elsewhere (with a locality), oldest first;
        # the shell takes them with take_exported() and hands them off.
        self._exported: list[PlacedEntry] = []
        self._transitions = [
            TransitionState(i, t, self._stores) for i, t in enumerate(net.transitions)
        ]
        priorities = sorted({t.priority for t in net.transitions}, reverse=True)
        self._groups = [
            [ts for ts in self._transitions if ts.transition.priority == p] for p in priorities
        ]
        # In conflict order, for the ordered tie break: every group is walked in order.
        self._ordered = [ts for group in self._groups for ts in group]
        self._changes = _Changes()
        self._wire_listeners()
        # Each place's release of a pending entry that comes due, specialised to it.
        self._inserts = {name: compile_insert(store) for name, store in self._stores.items()}
        for ts in self._transitions:
            ts.fire = compile_firing(
                ts.transition,
                [cs.component for cs in ts.components],
                self._stores,
                self._pending,
                self._pending_times,
                locality=locality,
                exported=self._exported,
            )
        self._fire_next = compile_chooser(self._ordered, self._counts)
        if initial_marking:
            # Components start dirty, so bulk loading needs no notifications.
            for place in net.places:
                self._stores[place.name].load([(0, token) for token in place.initial])

    # -- wiring -----------------------------------------------------------------------

    def _wire_listeners(self) -> None:
        for ts in self._transitions:
            for cs in ts.components:
                comp = cs.component
                for store in comp.stores:
                    # Every keyed arc of a transition binds the one key variable, inhibitor
                    # arcs included (nets/model.py), so a change to a keyed place can only
                    # matter to its own key: watch it per key. An inhibitor watched per
                    # place re-searched every key each time one key's token came or went
                    # (a net that meets 10,000 new customers: quadratic).
                    if isinstance(cs, KeyedComponentState) and store.place.key is not None:
                        store.key_watchers = (*store.key_watchers, cs)
                    else:
                        store.place_watchers = (*store.place_watchers, cs)
            for store, _delta, _cap in ts.capacity:
                store.capacity_watchers = (*store.capacity_watchers, ts)
        for store in self._stores.values():
            # A place that no arc reads needs no wake-up when its tokens come due: they
            # go straight into its index with their time (see PlaceStore.timed).
            store.timed = bool(store.key_watchers or store.place_watchers) or (
                store.place.name in self._watched
            )
        for store in self._stores.values():
            # Every change to a place that can enable or block a transition marks the
            # engine changed (see fire: a scan that found nothing is not repeated).
            if store.key_watchers or store.place_watchers or store.capacity_watchers:
                store.place_watchers = (*store.place_watchers, self._changes)

    # -- marking changes ---------------------------------------------------------------

    def _store(self, place: str) -> PlaceStore:
        store = self._stores.get(place)
        if store is None:
            raise CpnError(
                f"net {self.net.name!r} has no place {place!r} (places: {', '.join(self._stores)})"
            )
        return store

    def _add(self, place: str, time: int, token: Token) -> None:
        store = self._stores[place]
        store.count += 1
        if time <= self.now or not store.timed:
            store.add_available((time, token))
        else:
            self._push_pending(time, place, token)

    def _push_pending(self, time: int, place: str, token: Token) -> None:
        """Let ``(time, token)`` wait for its time (the compiled firings do the same)."""
        waiting = self._pending.get(time)
        if waiting is None:
            self._pending[time] = [(place, token)]
            heapq.heappush(self._pending_times, time)
        else:
            waiting.append((place, token))

    def add(self, place: str, token: Token, *, time: int | None = None) -> None:
        """Put ``token`` into ``place``, available from ``time`` (default: now).

        Raises:
            CpnError: the place does not exist.
            TokenError: the token is not of the place's colour set.
        """
        store = self._store(place)
        check_token(store.place.colour_set, token, where=f"place {place!r}")
        self._add(place, self.now if time is None else time, token)

    def add_checked(self, place: str, entries: list[tuple[int, Token]]) -> None:
        """Add entries ``(time, token)`` whose tokens were checked already.

        For tokens that :func:`nets.codec.token_from_fields` built (it checks them):
        nothing is checked again, and a place that nothing watches takes them in bulk.

        Raises:
            CpnError: the place does not exist.
        """
        store = self._store(place)
        quiet = not (store.key_watchers or store.place_watchers or store.capacity_watchers)
        if quiet and not store.timed:
            store.load(entries)
            return
        # In bulk (a handed-off run, a chunk of deferred tokens): the available entries
        # go into the indexes in one merge and wake their watchers once; entries from the
        # future wait in the pending heap, as one by one (see _add).
        now = self.now
        if store.timed and entries and max(map(itemgetter(0), entries)) > now:
            available = [entry for entry in entries if entry[0] <= now]
            for time, token in entries:
                if time > now:
                    self._push_pending(time, place, token)
        else:
            available = entries
        store.count += len(entries)
        store.add_available_many(available)

    def remove(self, place: str, token: Token, *, time: int) -> None:
        """Take one available entry ``(time, token)`` out of ``place``.

        Raises:
            CpnError: no such available entry, or it is not available before ``time``
                (the marking is unchanged).
        """
        store = self._store(place)
        entry = (time, token)
        if time > self.now:
            raise CpnError(
                f"place {place!r} has no available token {token!r} at time {time}: "
                f"it becomes available then, and now is {self.now}"
            )
        if not store.primary.contains(entry):
            raise CpnError(f"place {place!r} has no available token {token!r} at time {time}")
        store.remove_available(entry)

    def withdraw(self, place: str, token: Token, *, time: int) -> None:
        """Take the entry ``(time, token)`` out of ``place``, available or still pending.

        Unlike :meth:`extract`, this costs no scan of the pending entries: a pending
        one is only marked, and skipped when its time comes. So the caller must know
        that the pending entry is in the marking (a shard moving the timers of a lease
        it granted); an available one is checked as by :meth:`remove`.

        Raises:
            CpnError: the place does not exist, or an available entry is not there.
        """
        store = self._store(place)
        entry = (time, token)
        if store.primary.contains(entry):
            store.remove_available(entry)
            return
        if time <= self.now or not store.timed:
            raise CpnError(f"place {place!r} has no token {token!r} at time {time} to withdraw")
        key = (time, place, token)
        self._withdrawn[key] = self._withdrawn.get(key, 0) + 1
        store.count -= 1
        self._drop_withdrawn_heads()

    def _skip_withdrawn(self, key: tuple[int, str, Token]) -> bool:
        """Whether a pending entry coming off the heap was withdrawn (and forget it)."""
        withdrawn = self._withdrawn
        count = withdrawn.get(key, 0)
        if count == 0:
            return False
        if count == 1:
            del withdrawn[key]
        else:
            withdrawn[key] = count - 1
        return True

    def _drop_withdrawn_heads(self) -> None:
        # The earliest pending time is the next deadline: one whose entries were all
        # withdrawn would wake the caller for nothing.
        times, pending = self._pending_times, self._pending
        while times and self._withdrawn:
            time = times[0]
            kept = [
                (place, token)
                for place, token in pending[time]
                if not self._skip_withdrawn((time, place, token))
            ]
            if kept:
                pending[time] = kept
                return
            del pending[time]
            heapq.heappop(times)

    def extract(self, entries: Iterable[tuple[str, int, Token]]) -> None:
        """Take entries ``(place, time, token)`` out, available or not yet (a slot leaving).

        Unlike :meth:`remove`, a token whose time is still to come is taken too: a
        slot that moves to another shard takes every token it holds.

        Raises:
            CpnError: a place does not exist, or an entry is not in the marking (the
                available entries named before it are taken already: callers pass
                entries they read from this marking).
        """
        pending_wanted: dict[tuple[int, str, Token], int] = {}
        for place, time, token in entries:
            store = self._store(place)
            if store.primary.contains((time, token)):
                store.remove_available((time, token))
            else:
                key = (time, place, token)
                pending_wanted[key] = pending_wanted.get(key, 0) + 1
        if not pending_wanted:
            return
        for time in list(self._pending):
            kept = []
            for place, token in self._pending[time]:
                key = (time, place, token)
                if self._withdrawn and self._skip_withdrawn(key):
                    continue  # withdrawn before: it goes now, and is not what is wanted
                if pending_wanted.get(key, 0) > 0:
                    pending_wanted[key] -= 1
                    self._stores[place].count -= 1
                else:
                    kept.append((place, token))
            if kept:
                self._pending[time] = kept
            else:
                del self._pending[time]
        missing = [key for key, n in pending_wanted.items() if n > 0]
        # The compiled firings hold this very list: change it in place.
        self._pending_times[:] = self._pending
        heapq.heapify(self._pending_times)
        if missing:
            time, place, token = missing[0]
            raise CpnError(f"place {place!r} has no token {token!r} at time {time} to take out")

    def restore(self, marking: Mapping[str, Iterable[tuple[int, Token]]]) -> None:
        """Load a recovered marking into an engine created with ``initial_marking=False``.

        Entries are trusted (they were checked when they first entered the net);
        entries after the engine's ``now`` wait as usual. Call :meth:`advance` first to
        set the time.
        """
        assert not any(self._counts), "restore() is for a fresh engine"
        now = self.now
        for place, entries in marking.items():
            store = self._store(place)
            if not store.timed:  # no arc reads it: every entry goes to the index
                store.load(entries if isinstance(entries, list) else list(entries))
                continue
            available = []
            for time, token in entries:
                if time <= now:
                    available.append((time, token))
                else:
                    store.count += 1
                    self._push_pending(time, place, token)
            store.load(available)
        for ts in self._transitions:
            for cs in ts.components:
                cs.all_dirty = True
        self._changes.all_dirty = True

    def holds(self, place: str, token: Token, *, time: int) -> bool:
        """Whether ``place`` has the available entry ``(time, token)``."""
        return time <= self.now and self._store(place).primary.contains((time, token))

    def available(self, place: str, limit: int) -> list[tuple[int, Token]]:
        """The first ``limit`` available entries of ``place`` in marking order."""
        store = self._store(place)
        found: list[tuple[int, Token]] = []
        for entry in heapq.merge(*store.primary.buckets.values()):
            if entry[0] > self.now or len(found) >= limit:
                break
            found.append(entry)
        return found

    def has_available(self, place: str) -> bool:
        """Whether ``place`` has an available token (for a timed place, as work queues
        are, no entry is looked at: its index holds only due tokens)."""
        store = self._store(place)
        if store.timed:  # a timed place indexes only tokens that are due
            return bool(store.primary.buckets)
        return bool(self.available(place, 1))

    def advance(self, now: int) -> None:
        """Move the engine's time to ``now`` and release pending tokens that are due."""
        assert now >= self.now, f"time went backwards: {now} < {self.now}"
        self.now = now
        times, pending = self._pending_times, self._pending
        inserts = self._inserts
        withdrawn = self._withdrawn
        while times and times[0] <= now:
            time = heapq.heappop(times)
            for place, token in pending.pop(time):
                if withdrawn and self._skip_withdrawn((time, place, token)):
                    continue
                inserts[place]((time, token))

    # -- choosing and firing ------------------------------------------------------------

    def fire(self, now: int) -> Step | None:
        """Advance to ``now`` and fire the preferred enabled binding, if any.

        Returns:
            The :class:`Step` fired, or ``None`` when nothing is enabled at ``now``.

        Raises:
            InscriptionError: a guard or output function raised or returned a token of
                the wrong colour; the marking is unchanged.
        """
        self._move_to(now)
        changes = self._changes
        if not changes.all_dirty:
            # The last scan found nothing enabled and no place that matters changed
            # since (tokens coming due change their place): nothing is enabled now.
            # An idle shard asks every turn of its loop.
            return None
        if self.tie_break is TieBreak.ORDERED:
            step = self._fire_next(now)  # counts the firing itself
            if step is not None:
                for hook in self.hooks:
                    hook(step)
                return step
        else:
            for group in self._groups:
                if len(group) == 1:
                    found = group[0].preferred()
                    if found is not None:
                        return self._fire(group[0], found)
                    continue
                enabled = [(ts, m) for ts in group if (m := ts.preferred()) is not None]
                if enabled:
                    ts, found = enabled[self._rng.randrange(len(enabled))]
                    return self._fire(ts, found)
        changes.all_dirty = False
        return None

    def _move_to(self, now: int) -> None:
        """Set the clock to ``now``: :meth:`advance` when an entry comes due by then,
        else only the clock (the common case of a busy loop, without its call)."""
        times = self._pending_times
        if times and times[0] <= now:
            self.advance(now)
        else:
            assert now >= self.now, f"time went backwards: {now} < {self.now}"
            self.now = now

    def fire_batch(
        self,
        now: int,
        steps_max: int,
        *,
        record: Callable[[list[Step]], None],
        stop: Callable[[], bool],
        stop_every: int,
    ) -> bool:
        """Fire at ``now`` what :meth:`fire` would, until nothing is enabled,
        ``steps_max`` steps were fired, or ``stop()`` says so (asked after every
        ``stop_every``-th step of this call). A shard's batch comes through here: one
        call instead of a call of :meth:`fire` per step.

        The hooks see each step as it is fired; ``record`` gets them in runs of up to
        ``stop_every`` (before ``stop()`` is asked), in order, each step once, also
        when a firing or a hook raises (the steps applied before it). Steps are not
        kept longer: a batch's thousands of live steps made the garbage collector
        walk them again and again.

        Returns:
            Whether something may still be enabled at ``now`` (stopped by a bound);
            ``False`` when nothing is.
        """
        assert stop_every > 0, f"stop_every must be positive, not {stop_every}"
        self._move_to(now)
        # ``now`` holds for the whole call and a firing puts what it produces at ``now``
        # into the marking at once, so no token comes due on the way: fire() would
        # not advance again.
        ordered = self.tie_break is TieBreak.ORDERED
        fire_next = self._fire_next if ordered else self.fire
        if ordered and not self._changes.all_dirty:
            return False  # as in fire(): nothing changed since a scan found nothing
        hooks = self.hooks if ordered else []  # fire() calls them itself
        run: list[Step] = []
        fired = 0
        try:
            while fired < steps_max:
                count = min(stop_every, steps_max - fired)
                append = run.append
                for _ in range(count):
                    step = fire_next(now)  # counts the firing itself
                    if step is None:
                        self._changes.all_dirty = False
                        return False
                    append(step)
                    for hook in hooks:  # mutated in place, never replaced
                        hook(step)
                fired += count
                full, run = run, []  # taken before record(): never recorded twice
                record(full)
                if fired % stop_every == 0 and stop():
                    return True
            return True
        finally:
            if run:
                record(run)

    def enabled(self, now: int) -> list[tuple[str, dict[str, Any]]]:
        """Each enabled transition with its preferred binding, in conflict order."""
        self.advance(now)
        result = []
        for ts in self._ordered:
            found = ts.preferred()
            if found is not None:
                result.append((ts.transition.name, ts.values(found)))
        return result

    def _fire(self, ts: TransitionState, found: Any) -> Step:
        assert ts.fire is not None
        step = ts.fire(found, self.now)
        self._counts[ts.index] += 1
        for hook in self.hooks:
            hook(step)
        return step

    def run(self, *, until: int, max_steps: int | None = None) -> Iterator[Step]:
        """Fire in virtual time: everything enabled now, then jump to the next deadline.

        Stops when nothing is enabled before ``until`` (inclusive) or after
        ``max_steps`` firings. Yields each step.
        """
        if self.tie_break is not TieBreak.ORDERED:
            yield from self._run_calling_fire(until, max_steps)
            return
        # What fire() does, with its per-call work hoisted out of the loop: a simulation
        # fires millions of steps through here (bench/engine.py).
        fired = 0
        now = self.now
        times = self._pending_times
        changes = self._changes
        fire_next = self._fire_next
        hooks = self.hooks  # mutated in place, never replaced
        while max_steps is None or fired < max_steps:
            if times and times[0] <= now:
                self.advance(now)
            if changes.all_dirty:
                step = fire_next(now)
                if step is not None:
                    for hook in hooks:
                        hook(step)
                    fired += 1
                    yield step
                    continue
                changes.all_dirty = False
            deadline = self.next_deadline()
            if deadline is None or deadline > until:
                return
            now = deadline
            self.advance(now)

    def _run_calling_fire(self, until: int, max_steps: int | None) -> Iterator[Step]:
        fired = 0
        now = self.now
        fire = self.fire
        while max_steps is None or fired < max_steps:
            step = fire(now)
            if step is not None:
                fired += 1
                yield step
                continue
            deadline = self.next_deadline()
            if deadline is None or deadline > until:
                return
            now = deadline

    def next_deadline(self) -> int | None:
        """The earliest time a pending token becomes available, or ``None``.

        Pending tokens are those of places that an arc reads or that are watched, so
        this is the next time at which something can become enabled (or a watched
        place gains an available token) without a firing or a put.
        """
        self._drop_withdrawn_heads()
        return self._pending_times[0] if self._pending_times else None

    def take_exported(self) -> list[PlacedEntry]:
        """The produced entries this engine's locality did not keep, since the last call.

        They are in no place of this engine: the caller owns them from now on (a shard
        writes them to its outbox in the commit of the steps that produced them).
        """
        taken = self._exported[:]
        self._exported.clear()
        return taken

    # -- inspection ---------------------------------------------------------------------

    def tokens(self, place: str) -> list[tuple[int, Token]]:
        """All entries ``(time, token)`` of ``place``, pending ones included, sorted."""
        store = self._store(place)
        entries = list(store.entries())
        withdrawn = dict(self._withdrawn)
        for t, waiting in self._pending.items():
            for p, tok in waiting:
                if p != place:
                    continue
                if withdrawn.get((t, p, tok), 0) > 0:
                    withdrawn[t, p, tok] -= 1
                    continue
                entries.append((t, tok))
        entries.sort()
        return entries

    def marking(self) -> dict[str, list[tuple[int, Token]]]:
        """Every place's sorted entries (see :meth:`tokens`)."""
        return {name: self.tokens(name) for name in self._stores}

    def count(self, place: str) -> int:
        """How many tokens ``place`` holds, available or pending."""
        return self._store(place).count

    def firing_counts(self) -> list[int]:
        """Firings per transition, in declaration order (a copy: compare two to count
        what a stretch of firing did, by index, without looking at its steps)."""
        return self._counts[:]

    @property
    def steps(self) -> int:
        """How many steps the engine has fired (cheaper than :meth:`statistics`)."""
        return sum(self._counts)

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            now=self.now,
            steps=sum(self._counts),
            firings={t.name: n for t, n in zip(self.net.transitions, self._counts, strict=True)},
            tokens={name: store.count for name, store in self._stores.items()},
            pending=sum(map(len, self._pending.values())) - sum(self._withdrawn.values()),
        )


def unread_places(net: Net, watched: Iterable[str] = ()) -> frozenset[str]:
    """Places whose tokens only accumulate: no arc reads them, no capacity bounds them
    and nobody watches them (``watched`` as for :class:`Engine`).

    Nothing the engine decides depends on their tokens, so a shard may load them after
    it starts firing (shard/deferred.py); :meth:`Engine.add_checked` takes them in bulk.
    """
    read = {p.place.name for t in net.transitions for p in (*t.consume, *t.read, *t.inhibit)}
    watched_names = set(watched)
    return frozenset(
        p.name
        for p in net.places
        if p.name not in read and p.name not in watched_names and p.capacity is None
    )
