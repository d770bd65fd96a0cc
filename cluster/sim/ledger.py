"""The token ledger: the simulator's oracle that no token is lost, doubled or made up.

Tokens are values, and equal tokens have no identity, so the ledger does not follow a
token; it balances **multiplicities per (place, value)**. The cores report what their
*committed* batches did as a small closed set of history events (below); a crash loses
only what was never committed, so it needs no event of its own beyond marking the node
down. :func:`check` reads the history once, in order (linear time and memory in the
number of distinct (node, place, value) and (sender, lane, seq)), and then once more,
only when something failed, to print the history of each failing value.

Where a token can be, and the events that move it:

* in a node's **marking**: :class:`Produced` (a firing's output, a put, a lease's
  result, the initial marking) and :class:`Applied`, :class:`Unsealed`,
  :class:`Activated` bring it in; :class:`Consumed` (a firing's input), and
  :class:`Exported` and :class:`Sealed` take it out;
* in a sender's **outbox**, as entry ``seq`` of a lane: from :class:`Exported` until
  some node :class:`Applied` that ``(sender, lane, seq)``; the sender deletes entries
  when they are acknowledged (:class:`Acked`, cumulative up to a seq);
* in a slot move's **shipment**: from :class:`Sealed` (the source takes it out of its
  engine) until :class:`Activated` (it enters the target's marking) or
  :class:`Unsealed` (the move was aborted, it goes back to the source's engine).

Work-queue leases need no event of their own: leasing consumes the token from the
queue and produces its held form in ``<q>__held``, completing consumes the held token
and produces the results, an expiry is a firing (shard/leases.py).

The rules (a broken rule is a :class:`Violation` named by its ``rule``):

* ``balance``, at the end, for every (place, value): created = consumed + present,
  where created counts :class:`Produced`, consumed counts :class:`Consumed`, and
  present counts the final markings (:class:`Present`; a node still down at the end
  counts its last committed marking, a node up that reports no :class:`Present` holds
  nothing) plus what is still in an outbox or a shipment;
* ``misplaced``: the balance holds, but a node's :class:`Present` count differs from
  what its history left it;
* ``spent_absent``: a node consumed, exported or sealed a (place, value) it did not
  hold at that point (a token fired twice, a sealed token fired at its source);
* ``seq_reused``: a sender exported two entries as the same ``(lane, seq)``;
* ``applied_unexported`` / ``applied_other_value``: an entry applied that no outbox
  held, or whose value is not the one exported;
* ``applied_twice``: an outbox entry ``(sender, lane, seq)`` applied more than once,
  by one node or by two (its dedup state did not move with its slot);
* ``left_unapplied``: a token left an outbox (the sender saw it acknowledged) although
  no inbox applied it; ``acked_unexported``: an acknowledgement for entries never
  exported;
* ``shipment_overdrawn``: more tokens left a move's shipment (activated, unsealed) than
  were sealed into it (a move both activated and aborted);
* ``acted_while_down``: an event of a node between its :class:`Crashed` and its
  :class:`Recovered`; ``recovered_otherwise``: a node recovered a marking other than
  the one its committed history left it;
* with ``drained=True`` (after the heal phase): ``stuck_in_outbox``, an exported entry
  never acknowledged; ``stuck_in_shipment``, a shipment neither activated nor unsealed.

Ordering, which the cores must keep: a node's events come in the order its batches
committed, and within one batch the arrivals (:class:`Produced`, :class:`Applied`,
:class:`Unsealed`, :class:`Activated`) before the departures, so that a token produced
and consumed in one batch is never seen spent before it exists. An :class:`Applied`
comes after its :class:`Exported` (a receiver applies only what was sent after the
sender's commit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, TypeAlias

from nets.errors import CpnError
from nets.model import Token

VIOLATIONS_MAX: Final = 20
HISTORY_HEAD: Final = 12
HISTORY_TAIL: Final = 12
VALUE_REPR_CHARS_MAX: Final = 160


class LedgerError(CpnError):
    """The ledger found violations (the message is the report)."""


# -- the history events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Produced:
    """A token entered ``node``'s marking by ``via`` (a transition, ``put``, ``initial``)."""

    node: str
    place: str
    value: Token
    via: str


@dataclass(frozen=True, slots=True)
class Consumed:
    """A token left ``node``'s marking and the world, by ``via`` (a transition)."""

    node: str
    place: str
    value: Token
    via: str


@dataclass(frozen=True, slots=True)
class Exported:
    """A token left ``node``'s marking into its outbox as entry ``seq`` of ``lane``."""

    node: str
    lane: int
    seq: int
    place: str
    value: Token


@dataclass(frozen=True, slots=True)
class Applied:
    """``node`` applied entry ``(sender, lane, seq)`` of an outbox into its marking."""

    node: str
    sender: str
    lane: int
    seq: int
    place: str
    value: Token


@dataclass(frozen=True, slots=True)
class Acked:
    """``node`` deleted its outbox entries of ``lane`` up to ``seq`` (acknowledged)."""

    node: str
    lane: int
    seq: int


@dataclass(frozen=True, slots=True)
class Sealed:
    """A token left source ``node``'s marking into move ``move_id``'s shipment."""

    node: str
    move_id: int
    place: str
    value: Token


@dataclass(frozen=True, slots=True)
class Unsealed:
    """Move ``move_id`` was aborted: the token went back into source ``node``'s marking."""

    node: str
    move_id: int
    place: str
    value: Token


@dataclass(frozen=True, slots=True)
class Activated:
    """Move ``move_id`` reached target ``node``: the token entered its marking."""

    node: str
    move_id: int
    place: str
    value: Token


@dataclass(frozen=True, slots=True)
class Crashed:
    """``node`` died; what it had not committed is gone (and was never reported)."""

    node: str


@dataclass(frozen=True, slots=True)
class Recovered:
    """``node`` restarted with this marking: ``(place, value, count)`` from its store."""

    node: str
    marking: tuple[tuple[str, Token, int], ...]


@dataclass(frozen=True, slots=True)
class Present:
    """At the end, ``node``'s marking holds ``count`` tokens ``value`` in ``place``."""

    node: str
    place: str
    value: Token
    count: int


LedgerEvent: TypeAlias = (
    Produced
    | Consumed
    | Exported
    | Applied
    | Acked
    | Sealed
    | Unsealed
    | Activated
    | Crashed
    | Recovered
    | Present
)
_ValueEvent = Produced | Consumed | Exported | Applied | Sealed | Unsealed | Activated | Present


# -- from a committed batch ------------------------------------------------------------------

_Entry = tuple[str, Token]  # (place, value)


def batch_events(
    node: str,
    *,
    marking: Iterable[tuple[_Entry, int]],
    exported: Sequence[tuple[int, int, str, Token]] = (),
    applied: Sequence[tuple[str, int, int, str, Token]] = (),
    acked: Sequence[tuple[int, int]] = (),
    sealed: Sequence[tuple[int, str, Token]] = (),
    unsealed: Sequence[tuple[int, str, Token]] = (),
    activated: Sequence[tuple[int, str, Token]] = (),
    via: str = "batch",
) -> list[LedgerEvent]:
    """The ledger events of one committed batch of ``node``, in the order the ledger needs.

    A core's batch holds its marking change *netted* (a token produced and consumed in
    one batch does not appear), and apart from it what left or entered by other ways.
    What firings, puts and completions did is what the netted change leaves once the
    other ways are taken out: per (place, value), ``produced - consumed = marking change
    - applied - activated - unsealed + exported + sealed``, reported as that many
    :class:`Produced` (or :class:`Consumed`) with ``via``. Netting loses nothing the
    ledger's rules need: they are sums.

    Args:
        marking: ``((place, value), change)`` pairs of the marking the node fires
            from, times already folded away; a (place, value) may appear more than once
            (its changes add up). Sealed tokens leave it when sealed, whatever the
            store keeps for the shipment; the store's deletion when the move forgets
            the slot is no change here.
        exported: ``(lane, seq, place, value)`` entries added to the outbox.
        applied: ``(sender, lane, seq, place, value)`` entries applied from inboxes.
        acked: ``(lane, seq)``: outbox entries deleted up to ``seq`` as acknowledged.
        sealed, unsealed, activated: ``(move_id, place, value)`` of slot moves.

    Returns:
        Arrivals (produced, applied, unsealed, activated), then departures (consumed,
        exported, sealed), then acknowledgements: the order the ledger requires.
    """
    net: Counter[_Entry] = Counter()
    for entry, change in marking:
        net[entry] += change
    for _sender, _lane, _seq, place, value in applied:
        net[(place, value)] -= 1
    for _move, place, value in (*activated, *unsealed):
        net[(place, value)] -= 1
    for _lane, _seq, place, value in exported:
        net[(place, value)] += 1
    for _move, place, value in sealed:
        net[(place, value)] += 1
    ordered = sorted((entry for entry in net if net[entry]), key=_sort_key)
    events: list[LedgerEvent] = []
    for place, value in ordered:
        events += [Produced(node, place, value, via)] * max(0, net[(place, value)])
    events += [Applied(node, *entry) for entry in applied]
    events += [Unsealed(node, *entry) for entry in unsealed]
    events += [Activated(node, *entry) for entry in activated]
    for place, value in ordered:
        events += [Consumed(node, place, value, via)] * max(0, -net[(place, value)])
    events += [Exported(node, *entry) for entry in exported]
    events += [Sealed(node, *entry) for entry in sealed]
    events += [Acked(node, lane, seq) for lane, seq in acked]
    return events


# -- the report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule, about one (place, value), found at history event ``index``."""

    rule: str
    place: str
    value: Token
    index: int
    detail: str
    history: tuple[str, ...] = ()

    def __str__(self) -> str:
        what = f"{self.place} {_value_repr(self.value)}: " if self.place else ""
        head = f"{self.rule}: {what}{self.detail}"
        return "\n".join([head, *(f"    {line}" for line in self.history)])


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """What :func:`check` found: ``violations`` (at most :data:`VIOLATIONS_MAX`)."""

    events: int
    violations: tuple[Violation, ...]
    more: int  # violations found beyond those listed

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        if self.ok:
            return f"ledger balanced over {self.events} events"
        found = len(self.violations) + self.more
        plural = "" if found == 1 else "s"
        lines = [f"ledger: {found} violation{plural} in {self.events} events"]
        lines += [str(v) for v in self.violations]
        if self.more:
            lines.append(f"... and {self.more} more")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raises: LedgerError: with this report as its message, if any rule broke."""
        if not self.ok:
            raise LedgerError(str(self))


# -- the check -----------------------------------------------------------------------------

_Key = tuple[str, Token]  # (place, value)


class _Pass:
    """The state of the one linear pass over a history."""

    def __init__(self) -> None:
        self.held: dict[str, Counter[_Key]] = {}  # node -> its committed marking
        self.created: Counter[_Key] = Counter()
        self.consumed: Counter[_Key] = Counter()
        self.exported: dict[tuple[str, int, int], tuple[int, _Key]] = {}  # -> (index, key)
        self.applied: dict[tuple[str, int, int], int] = {}  # (sender, lane, seq) -> index
        self.acked_upto: dict[tuple[str, int], int] = {}
        self.shipments: Counter[tuple[int, str, Token]] = Counter()  # (move, place, value)
        self.down: set[str] = set()
        self.present: Counter[tuple[str, str, Token]] = Counter()
        self.found: list[Violation] = []
        self.more = 0

    def fail(self, rule: str, key: _Key, index: int, detail: str) -> None:
        if len(self.found) < VIOLATIONS_MAX:
            self.found.append(Violation(rule, key[0], key[1], index, detail))
        else:
            self.more += 1

    def arrive(self, node: str, key: _Key) -> None:
        self.held.setdefault(node, Counter())[key] += 1

    def depart(self, node: str, key: _Key, index: int, what: str) -> None:
        held = self.held.setdefault(node, Counter())
        if held[key] <= 0:
            self.fail("spent_absent", key, index, f"{node} {what} a token it did not hold")
            return
        held[key] -= 1


def check(history: Sequence[LedgerEvent], *, drained: bool = False) -> LedgerReport:
    """Check ``history`` against the ledger's rules (see the module docstring).

    Args:
        history: the run's events in the order they committed.
        drained: the run ended with a heal phase that must leave no outbox entry
            unacknowledged and no shipment unresolved.

    Returns:
        The report; each violation carries the shortened history of its value.
    """
    state = _Pass()
    for index, event in enumerate(history):
        _step(state, index, event)
    _finish(state, len(history), drained=drained)
    violations = tuple(_with_history(history, state.found))
    return LedgerReport(len(history), violations, state.more)


def _step(s: _Pass, index: int, event: LedgerEvent) -> None:
    node = event.node
    if node in s.down and not isinstance(event, Recovered):
        key = (event.place, event.value) if isinstance(event, _ValueEvent) else ("", ())
        s.fail("acted_while_down", key, index, f"{type(event).__name__} of {node}, which is down")
    if isinstance(event, Produced):
        s.created[(event.place, event.value)] += 1
        s.arrive(node, (event.place, event.value))
    elif isinstance(event, Consumed):
        s.consumed[(event.place, event.value)] += 1
        s.depart(node, (event.place, event.value), index, f"consumed (by {event.via})")
    elif isinstance(event, Exported):
        key = (event.place, event.value)
        entry = (node, event.lane, event.seq)
        s.depart(node, key, index, f"exported (lane {event.lane} seq {event.seq})")
        if entry in s.exported:
            first = s.exported[entry][0]
            s.fail(
                "seq_reused",
                key,
                index,
                f"{node} lane {event.lane} seq {event.seq} was exported before, at #{first}",
            )
            return
        s.exported[entry] = (index, key)
    elif isinstance(event, Applied):
        _applied(s, index, event)
    elif isinstance(event, Acked):
        _acked(s, index, event)
    elif isinstance(event, Sealed):
        s.depart(node, (event.place, event.value), index, f"sealed (move {event.move_id})")
        s.shipments[(event.move_id, event.place, event.value)] += 1
    elif isinstance(event, Unsealed | Activated):
        shipped = (event.move_id, event.place, event.value)
        if s.shipments[shipped] <= 0:
            what = "unsealed" if isinstance(event, Unsealed) else "activated"
            s.fail(
                "shipment_overdrawn",
                (event.place, event.value),
                index,
                f"{node} {what} it, but move {event.move_id}'s shipment holds no such "
                "token (sealed fewer, or both activated and unsealed)",
            )
            return
        s.shipments[shipped] -= 1
        s.arrive(node, (event.place, event.value))
    elif isinstance(event, Crashed):
        s.down.add(node)
    elif isinstance(event, Recovered):
        s.down.discard(node)
        _recovered(s, index, event)
    else:
        assert isinstance(event, Present), f"not a ledger event: {event!r}"
        s.present[(node, event.place, event.value)] += event.count


def _applied(s: _Pass, index: int, event: Applied) -> None:
    key = (event.place, event.value)
    entry = (event.sender, event.lane, event.seq)
    where = f"{event.sender} lane {event.lane} seq {event.seq}"
    exported = s.exported.get(entry)
    # Whatever is wrong with the entry, the node did apply it: it enters the marking,
    # so that the end's balance and placement agree with what the node reports.
    s.arrive(event.node, key)
    if exported is None:
        s.fail("applied_unexported", key, index, f"{event.node} applied {where}, never exported")
        return
    if exported[1] != key:
        s.fail(
            "applied_other_value",
            key,
            index,
            f"{event.node} applied {where}, exported at #{exported[0]} as "
            f"{exported[1][0]} {_value_repr(exported[1][1])}",
        )
        return
    if entry in s.applied:
        s.fail(
            "applied_twice",
            key,
            index,
            f"{event.node} applied {where}, applied before at #{s.applied[entry]}",
        )
        return
    s.applied[entry] = index


def _acked(s: _Pass, index: int, event: Acked) -> None:
    lane = (event.node, event.lane)
    upto = s.acked_upto.get(lane, 0)
    if event.seq <= upto:
        return  # repeated or stale: nothing left the outbox
    for seq in range(upto + 1, event.seq + 1):
        entry = (event.node, event.lane, seq)
        exported = s.exported.get(entry)
        if exported is None:
            s.fail(
                "acked_unexported",
                ("", ()),
                index,
                f"{event.node} dropped lane {event.lane} seq {seq} from its outbox as "
                "acknowledged, but never exported it",
            )
        elif entry not in s.applied:
            s.fail(
                "left_unapplied",
                exported[1],
                index,
                f"{event.node} dropped lane {event.lane} seq {seq} (exported at "
                f"#{exported[0]}) from its outbox, but no inbox applied it",
            )
    s.acked_upto[lane] = event.seq


def _recovered(s: _Pass, index: int, event: Recovered) -> None:
    node = event.node
    recovered: Counter[_Key] = Counter()
    for place, value, count in event.marking:
        recovered[(place, value)] += count
    committed = s.held.get(node, Counter())
    for key in sorted(recovered.keys() | committed.keys(), key=_sort_key):
        if recovered[key] != committed[key]:
            s.fail(
                "recovered_otherwise",
                key,
                index,
                f"{node} recovered {recovered[key]}, its committed history left {committed[key]}",
            )


def _finish(s: _Pass, end: int, *, drained: bool) -> None:
    in_outbox: Counter[_Key] = Counter()
    for entry, (_, key) in s.exported.items():
        if entry not in s.applied:
            in_outbox[key] += 1
    in_shipment: Counter[_Key] = Counter()
    for (_, place, value), count in s.shipments.items():
        in_shipment[(place, value)] += count
    # A node down at the end reports no Present: its committed marking is what its
    # store holds. A node up that reported no Present holds nothing.
    present = Counter(s.present)
    for node, held in s.held.items():
        if node in s.down:
            for (place, value), count in held.items():
                present[(node, place, value)] += count
    present_total: Counter[_Key] = Counter()
    for (_, place, value), count in present.items():
        present_total[(place, value)] += count
    keys = s.created.keys() | s.consumed.keys() | present_total.keys() | in_outbox.keys()
    unbalanced = set()
    for key in sorted(keys | in_shipment.keys(), key=_sort_key):
        created, consumed = s.created[key], s.consumed[key]
        here = present_total[key] + in_outbox[key] + in_shipment[key]
        if created != consumed + here:
            unbalanced.add(key)
            lost_or_doubled = "lost" if created > consumed + here else "made up or doubled"
            s.fail(
                "balance",
                key,
                end,
                f"{lost_or_doubled}: created {created} != consumed {consumed} + present "
                f"{present_total[key]} + in outboxes {in_outbox[key]} + in shipments "
                f"{in_shipment[key]}",
            )
    held_slots = {(node, *key) for node, held in s.held.items() for key in held}
    for slot in sorted(present.keys() | held_slots, key=_sort_key):
        node, place, value = slot
        if (place, value) in unbalanced or node in s.down:
            continue
        left = s.held.get(node, Counter())[(place, value)]
        if present[slot] != left:
            s.fail(
                "misplaced",
                (place, value),
                end,
                f"{node} holds {present[slot]}, its history left it {left}",
            )
    if not drained:
        return
    for entry in sorted(s.exported):
        node, lane, seq = entry
        if seq > s.acked_upto.get((node, lane), 0):
            s.fail(
                "stuck_in_outbox",
                s.exported[entry][1],
                end,
                f"{node} lane {lane} seq {seq} was never acknowledged",
            )
    for (move_id, place, value), count in sorted(s.shipments.items(), key=_sort_key):
        if count:
            s.fail(
                "stuck_in_shipment",
                (place, value),
                end,
                f"{count} left in move {move_id}'s shipment, never activated nor unsealed",
            )


# -- the second pass: each failing value's history ------------------------------------------


def _with_history(history: Sequence[LedgerEvent], found: list[Violation]) -> Iterable[Violation]:
    if not found:
        return ()
    wanted = {(v.place, v.value) for v in found if v.place}
    lines: dict[_Key, list[str]] = {key: [] for key in wanted}
    nodes: dict[_Key, set[str]] = {key: set() for key in wanted}
    for index, event in enumerate(history):
        if isinstance(event, _ValueEvent):
            key = (event.place, event.value)
            if key in wanted:
                lines[key].append(render(index, event))
                nodes[key].add(event.node)
        elif isinstance(event, Crashed | Recovered):
            for key in wanted:  # a crash of a node the value visited matters to it
                if event.node in nodes[key]:
                    lines[key].append(render(index, event))
    return [
        Violation(
            v.rule, v.place, v.value, v.index, v.detail, _shorten(lines.get((v.place, v.value), []))
        )
        for v in found
    ]


def _shorten(lines: list[str]) -> tuple[str, ...]:
    if len(lines) <= HISTORY_HEAD + HISTORY_TAIL:
        return tuple(lines)
    skipped = len(lines) - HISTORY_HEAD - HISTORY_TAIL
    return (*lines[:HISTORY_HEAD], f"... {skipped} events ...", *lines[-HISTORY_TAIL:])


def render(index: int, event: LedgerEvent) -> str:
    """``#index Kind(field=value, ...)``, one line, values shortened."""
    parts = []
    for f in fields(event):
        value: Any = getattr(event, f.name)
        if f.name == "marking":
            value = f"<{sum(n for _, _, n in value)} tokens>"
        elif f.name == "value":
            value = _value_repr(value)
        else:
            value = repr(value) if isinstance(value, str) else str(value)
        parts.append(f"{f.name}={value}")
    return f"#{index} {type(event).__name__}({', '.join(parts)})"


def _value_repr(value: Token) -> str:
    text = repr(tuple(value))
    if len(text) > VALUE_REPR_CHARS_MAX:
        return text[: VALUE_REPR_CHARS_MAX - 3] + "..."
    return text


def _sort_key(item: Any) -> str:
    # Sorting by repr orders mixed tuples of tokens deterministically (tokens of
    # different colour sets cannot be compared with <).
    return repr(item)
