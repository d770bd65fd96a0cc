"""The receiving end of handoff in a shard: runs from peers into the engine and the batch.

:class:`HandoffIntake` takes a ``Handoff`` frame the exchange accepts and applies it: it
refuses a frame from an older incarnation of its sender than one already heard (its
successor resends what counts), lets the exchange judge and decode the runs
(:meth:`shard.exchange.Exchange.receive`), puts their tokens into the engine in bulk (one
merge per place, one wake of the transitions that read them), moves the inbox high-water
marks only then, and records each run in the batch as it arrived: one log record holding
its bytes (docs/shard.md, "The store"), which the store decodes only when it folds
its log or recovers. It also times each handed-in token from when its sender produced it
to the commit that made it durable here (the ``handoff_ms`` figures).

It is apart from the core because it has its own state with its own lifetimes: the
newest incarnation heard from each sender goes on across a rebuilt core (the core passes
the same dict on), the tokens handed in count per batch (the shell ends a batch that
took many), and the latencies per core. Its collaborators are the engine and the
exchange of the core it serves, and each turn's batch, passed to the call.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import islice
from operator import itemgetter
from typing import Final

from nets.engine import Engine
from router.handoff import ProtocolError
from router.wire import Handoff, HandoffAck
from shard.batch import ArrivedRun, Batch
from shard.exchange import Exchange, HandoffRefused
from shard.request_checks import RequestError

HANDOFF_LATENCIES_KEPT_MAX: Final = 20_000  # sorted for each Stats request
log = logging.getLogger("cpn.shard")


class HandoffIntake:
    """Handoffs received by one core (module docstring).

    Args:
        engine, exchange: the core's.
        sender_incarnations: the newest incarnation each peer spoke as, shared with the
            core rebuilt after a failed commit.
    """

    def __init__(
        self, engine: Engine, exchange: Exchange, sender_incarnations: dict[int, int]
    ) -> None:
        self._engine = engine
        self._exchange = exchange
        self.sender_incarnations = sender_incarnations
        self.handed_in = 0  # tokens received from peers in this batch
        self._handed_times: list[int] = []  # their times (when the sender produced them)
        self.latencies_ms: deque[int] = deque(maxlen=HANDOFF_LATENCIES_KEPT_MAX)
        self.handoffs_timed = 0  # handed-in tokens whose latency was taken (metrics)

    def receive(self, message: Handoff, incarnation: int, batch: Batch) -> HandoffAck:
        """Apply the runs of ``message`` from the sender's ``incarnation`` to the engine
        and ``batch``; the acknowledgement to send once the batch is committed.

        Raises:
            RequestError: ``stale_incarnation`` (an older incarnation's frame, late) or
                ``handoff_refused`` (the exchange refused it); nothing is applied.
        """
        newest = self.sender_incarnations.setdefault(message.sender, incarnation)
        if incarnation < newest:
            # An old incarnation's frame, late: its successor resends what counts.
            raise RequestError(
                "stale_incarnation",
                f"shard {message.sender}'s incarnation {incarnation} is older than {newest}",
            )
        self.sender_incarnations[message.sender] = incarnation
        exchange = self._exchange
        try:
            runs, receipt = exchange.receive(message, incarnation)
        except (HandoffRefused, ProtocolError) as exc:
            log.error("handoff from shard %d refused: %s", message.sender, exc)
            raise RequestError("handoff_refused", str(exc)) from exc
        # Each run was decoded once and is applied in bulk: its tokens enter the indexes
        # in one merge per place and wake the transitions that read them once.
        received = 0
        for run in runs:
            for place, timed_tokens in run.by_place.items():
                self._engine.add_checked(place, timed_tokens)
            received += len(run.entries)
        exchange.accept(receipt, received)  # the hwms move only now
        for run in runs:
            entries = tuple(run.entries)  # one tuple for the store's record and the journal
            # Stored as it arrived: one log record holding the run's bytes, which the
            # store decodes only when it folds its log or recovers (docs/shard.md).
            batch.arrived.append(
                ArrivedRun(
                    message.sender,
                    run.lane,
                    run.first_seq - run.skip,
                    run.skip,
                    run.payload,
                    {place: len(tokens) for place, tokens in run.by_place.items()},
                    entries,
                )
            )
            batch.received.append((message.sender, run.lane, run.first_seq, entries))
            self._handed_times.extend(map(itemgetter(1), run.entries))
        self.handed_in += received
        batch.hwms.update(receipt.hwms)
        return HandoffAck(receipt.acks, receipt.redirects, receipt.deferred)

    def batch_taken(self) -> None:
        """The batch went to be committed: the next one has received nothing yet."""
        self.handed_in = 0

    def committed(self, now_ms: int) -> None:
        """The batch taken last is durable: its handed-in tokens are timed from the
        firing that produced them (the sender's clock) to ``now_ms``."""
        if self._handed_times:
            # The deque keeps only its newest HANDOFF_LATENCIES_KEPT_MAX: older times of
            # a large batch would be computed only to be pushed out again.
            newest = self._handed_times[-HANDOFF_LATENCIES_KEPT_MAX:]
            self.latencies_ms.extend([now_ms - t for t in newest])
            self.handoffs_timed += len(self._handed_times)
            self._handed_times = []

    def newest_latencies(self, count: int) -> tuple[int, ...]:
        """The latencies of the ``count`` handoffs timed last (at most those kept)."""
        return tuple(islice(reversed(self.latencies_ms), count))
