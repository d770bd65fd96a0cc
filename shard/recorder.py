"""The batch recorder: what the current batch holds, and what committing it means.

A shard's core changes its engine and records every change in a :class:`~shard.batch.Batch`
that the shell commits in one LMDB write transaction. :class:`BatchRecorder` owns that
batch and the figures that only mean something once it is durable:

* the entries requests add and take (:meth:`BatchRecorder.add`, :meth:`~BatchRecorder.remove`),
  and the tokens produced for other shards (:meth:`~BatchRecorder.emit`), written to
  outbox runs of the same batch when it is taken;
* the steps :meth:`nets.engine.Engine.fire_batch` fires (:meth:`~BatchRecorder.record_steps`,
  its ``record`` callback), and the firings per transition (:meth:`~BatchRecorder.count_firings`);
* the batch handed to the shell (:meth:`~BatchRecorder.take_batch`) and the firing totals
  it adds once committed (:meth:`~BatchRecorder.committed`, docs/shard.md, "Firing totals").

Theory of operation:

* The batch's marking is a delta keyed by (place, time, token): an entry produced and
  consumed in one batch cancels and never reaches the store; a consumed stored entry
  ends at -1, a removal.
* A handed-in run is stored as it arrived (:class:`~shard.batch.ArrivedRun`), unless the
  batch consumed from it: then its entries go into the delta, where they cancel against
  the removals (:func:`consumed_runs_to_delta`).
* Firings count into the store's totals exactly when the marking change they made is
  durable: a batch's firings are set aside when it is taken and added to the totals only
  by :meth:`~BatchRecorder.committed`, so a batch that fails to commit never counts.

It is apart from the core because it is one concept with its own state (the batch, the
exports, the totals) and the hottest code in the shard: ``record_steps`` runs once per
run of up to 16 firings (about 220,000 firings in ``python -m bench.shard``). It keeps
the shape it had in the core: one bound method whose loops use locals, with no call,
attribute chain or allocation per firing or per entry. Its collaborators are passed in
explicitly, never the core: the engine and the exchange it records for, the core's
counter table, and the lease desk's ``expired`` (an expiry firing gives a lease's work
back).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from nets.engine import Engine
from nets.firing import Step
from nets.model import Net, Token
from shard.batch import ArrivedRun, Batch, MarkingDelta, Recovered
from shard.exchange import Exchange


def consumed_runs_to_delta(marking: MarkingDelta, arrived: list[ArrivedRun]) -> list[ArrivedRun]:
    """The runs to store as they arrived; the others' entries go into ``marking``.

    A run the batch consumed from (a token handed in and fired at once) would cost a
    record of its bytes plus a removal per consumed token, folded later; in the delta
    its entries cancel against those removals and never reach the store.
    """
    kept = []
    for run in arrived:
        if any(marking.get(entry, 0) < 0 for entry in run.entries):
            marking.update(run.entries)  # each entry +1
        else:
            kept.append(run)
    return kept


class BatchRecorder:
    """The current batch of one core and the committed firing totals (module docstring).

    Args:
        net, engine, exchange: the core's (its net's transitions are counted in order).
        recovered: the stored firing totals and since when they count.
        first_batch: the batch to begin with (the store's initialisation, when the core
            put the initial marking in it).
        counters: the core's counter table, counted into (``leased_tokens_expired``).
        lease_expired: the lease desk's hook for a lease whose held token expired.
    """

    def __init__(
        self,
        net: Net,
        engine: Engine,
        exchange: Exchange,
        recovered: Recovered,
        *,
        first_batch: Batch,
        counters: Counter[str],
        lease_expired: Callable[[str], None],
    ) -> None:
        self._net = net
        self._engine = engine
        self._exchange = exchange
        self._counters = counters
        self._lease_expired = lease_expired
        self.batch = first_batch
        self.exports: list[tuple[str, int, Token]] = []  # tokens for other shards
        # What recording a batch's steps looks up by transition index (record_steps).
        self._transition_names = tuple(t.name for t in net.transitions)
        self._lease_expiries = frozenset(
            name for name in self._transition_names if name.endswith("__lease_expired")
        )
        # Committed firings over every incarnation of the store (docs/shard.md, "Firing
        # totals"): the batch being committed adds its own in committed(), so a batch
        # that fails to commit never counts. The engine's figures are this process's.
        self.firings_total: Counter[str] = Counter(recovered.firings_total)
        self.firings_since_ms = recovered.firings_since_ms
        self.firings_since = recovered.firings_since
        # When (wall clock, ms) the last batch with firings in it became durable: a
        # benchmark times a workload to its last commit, not to its next look.
        self.firings_committed_ms = 0
        self._firings_committing: Counter[str] = Counter()

    # -- changes to the marking ---------------------------------------------------------

    def add(self, place: str, token: Token, time_ms: int) -> None:
        """Add an entry to the engine and to the batch (committed with it)."""
        self._engine.add(place, token, time=time_ms)
        self.batch.add(place, time_ms, token)

    def remove(self, place: str, token: Token, time_ms: int) -> None:
        """Take an available entry out of the engine and the batch."""
        self._engine.remove(place, token, time=time_ms)
        self.batch.remove(place, time_ms, token)

    def emit(self, place: str, token: Token, time_ms: int) -> None:
        """A token a request produces (a put, a completion's result): here, or for
        another shard (into an outbox run when the batch is taken)."""
        if self._exchange.owns(self._net.place(place), token):
            self.add(place, token, time_ms)
        else:
            self.exports.append((place, time_ms, token))

    def flush_exports(self) -> None:
        """Move this batch's tokens for other shards into outbox runs (same commit)."""
        exported = self._engine.take_exported()
        if self.exports:
            exported.extend(self.exports)
            self.exports.clear()
        if exported:
            self._exchange.export(exported, self.batch)

    # -- firings ------------------------------------------------------------------------

    def record_steps(self, steps: list[Step]) -> None:
        """Put a run of fired steps in the batch (Engine.fire_batch's ``record``).

        One pass over the entries, each a (place, time, token) tuple already: the
        batch's key. An entry produced and consumed in the batch leaves the delta at
        once; a consumed stored entry ends at -1, a removal. The firings per
        transition are counted apart (count_firings), from the engine's counters.
        Hashing an entry (a tuple holding a token tuple: about 0.1-0.15 us on this
        machine) is most of the cost, so each look-up counts.
        """
        marking = self.batch.marking
        get, pop = marking.get, marking.pop  # dict's own (Counter's __delitem__ is Python)
        for step in steps:
            for entry in step[3]:  # consumed (Step is a NamedTuple: indexing is cheaper)
                # Popped first: most consumed entries were produced once in this batch
                # and are gone again with this one look-up (get then pop took two).
                # Dropped rather than kept at 0, so that the entry dies now instead of
                # living to the commit (the garbage collector walks what lives).
                left = pop(entry, 0) - 1
                if left:
                    marking[entry] = left
            for entry in step[4]:  # produced
                marking[entry] = get(entry, 0) + 1
        if self._lease_expiries:  # a net with work queues
            for step in steps:
                if step[0] in self._lease_expiries:
                    self._counters["leased_tokens_expired"] += 1
                    for place, _time_ms, token in step.consumed:
                        if place.endswith("__held"):
                            self._lease_expired(token[0])  # the lease id; its work is back

    def count_firings(self, counts_before: list[int]) -> int:
        """Add the firings since the engine's ``counts_before`` to the batch's, by
        transition (one look at each transition's counter, none per step); their sum."""
        firings = self.batch.firings
        fired = 0
        for index, count in enumerate(self._engine.firing_counts()):
            grown = count - counts_before[index]
            if grown:
                firings[self._transition_names[index]] += grown
                fired += grown
        return fired

    # -- commits ------------------------------------------------------------------------

    def take_batch(self) -> Batch:
        """The batch to commit now (its exports moved into outbox runs), and a new one
        begun; its firings count once :meth:`committed` says it is durable."""
        self.flush_exports()
        batch, self.batch = self.batch, Batch()
        if batch.arrived:
            batch.arrived = consumed_runs_to_delta(batch.marking, batch.arrived)
        batch.clock_ms = self._engine.now
        self._firings_committing = batch.firings
        return batch

    def committed(self, now_ms: int) -> None:
        """The batch taken last is durable (at wall ``now_ms``): its firings count."""
        if self._firings_committing:
            self.firings_committed_ms = now_ms
        self.firings_total.update(self._firings_committing)
        self._firings_committing = Counter()

    def committed_firings(self) -> dict[str, int]:
        """Committed firings per transition over the store's life (a retiring shard's
        reports carry them to the router, which keeps them once it is gone). Sorted by
        transition: the report's bytes must not depend on the order a store returned
        them in (the simulator compares traces across store kinds)."""
        return dict(sorted(self.firings_total.items()))
