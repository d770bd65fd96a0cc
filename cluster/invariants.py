"""The cluster's end-of-run invariants: nothing lost, nothing doubled, one owner per slot.

Pure, although it lives in ``cluster/``: no I/O, no sockets, no clocks. Integration,
chaos and simulation runs drain the cluster, collect a :class:`ShardSnapshot` per shard
and the router's table, and call :func:`check`; its :class:`InvariantReport` is empty
when the run was correct, and its ``str()`` is a bounded summary for assertion messages.

Theory of operation (docs/handoff.md; docs/architecture.md, "Tests"):

* Tokens are compared as multisets of their field tuples, summed over all shards;
  times are ignored. For each checked place, a token the expectation holds more
  often than the cluster is *lost*; extra copies of an expected token are
  *duplicated*; a token the expectation never holds is *unexpected*. A checked place
  missing from the expectation must be empty.
* A *conserved* place (a pool of proxies) must hold exactly its count cluster-wide.
* Given ``slot_of``, every token must sit on the shard the router's table names as
  the owner of its slot (pool tokens, for which ``slot_of`` is None, may sit anywhere).
* Only shards at the router's epoch have a say about ownership: each slot must be
  claimed by exactly one of them, the one the router's table names. A shard at any
  other epoch is reported apart (``shards_off_epoch``) and its claims are ignored.
* Observed epochs never decrease; a drained run leaves every outbox empty, no lane failed.
* No slot move is left half-done: the router has no move in flight (or stuck in error)
  and no shard holds a slot sealed or a shipment staged (docs/handoff.md, "Slot moves").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import pairwise
from typing import Any, Final, NamedTuple, TypeAlias

from nets.model import Net, Token
from router.slots import POOL_SLOT, SLOT_COUNT, slot_of_token
from router.table import PartitionTable

EXAMPLES_MAX: Final = 10
TOKEN_REPR_CHARS_MAX: Final = 120

SlotOf: TypeAlias = Callable[[str, Token], int | None]


@dataclass(frozen=True, slots=True)
class ShardSnapshot:
    """One shard's state after the run; ``marking``: place -> ``(time_ms, fields)`` pairs."""

    shard_id: int
    incarnation: int
    epoch: int
    owned_slots: frozenset[int]
    marking: Mapping[str, Sequence[tuple[int, Token]]]
    outbox_tokens: int
    failed_lanes: int = 0
    sealed_slots: frozenset[int] = frozenset()  # sealed here for a move in flight
    staged_slots: frozenset[int] = frozenset()  # a moving slot's shipment staged here

    @classmethod
    def from_statistics(
        cls,
        stats: Mapping[str, Any],
        marking: Mapping[str, Sequence[tuple[int, Token]]] | None = None,
    ) -> ShardSnapshot:
        """A snapshot from a shard's ``Stats`` reply (and its marking, if fetched)."""
        return cls(
            shard_id=int(stats["shard_id"]),
            incarnation=int(stats["incarnation"]),
            epoch=int(stats["epoch"]),
            owned_slots=frozenset(stats["owned"]),
            marking=marking or {},
            outbox_tokens=int(stats["outbox_tokens"]),
            failed_lanes=int(stats["outbox_lanes_failed"]),
            sealed_slots=frozenset(stats.get("sealed", ())),
            staged_slots=frozenset(stats.get("staged", ())),
        )


class Misplaced(NamedTuple):
    """A token held by ``shard`` although the router's table gives its slot to ``owner``."""

    shard: int
    place: str
    token: Token
    slot: int
    owner: int

    def __str__(self) -> str:
        return (
            f"shard {self.shard} holds {self.place!r} {_short(self.token)} of slot "
            f"{self.slot}, owned by shard {self.owner}"
        )


class SlotOwnerProblem(NamedTuple):
    """A slot not claimed by exactly its table owner among shards at the router's epoch.

    ``owner`` is None when ``slot`` is not a slot at all (a claim outside the table).
    """

    slot: int
    claimants: tuple[int, ...]
    owner: int | None

    def __str__(self) -> str:
        claimed = ", ".join(map(str, self.claimants)) or "no shard"
        if self.owner is None:
            return f"slot {self.slot} is not a slot (0..{SLOT_COUNT - 1}), claimed by {claimed}"
        return f"slot {self.slot}: claimed by {claimed}, the router's table says {self.owner}"


@dataclass(frozen=True)
class InvariantReport:
    """Every violation :func:`check` found; empty collections mean the invariant holds."""

    lost: Mapping[str, Counter[Token]]
    duplicated: Mapping[str, Counter[Token]]
    unexpected: Mapping[str, Counter[Token]]
    not_conserved: Mapping[str, tuple[int, int]]  # place -> (expected, actual)
    misplaced: Sequence[Misplaced]
    slot_owner_problems: Sequence[SlotOwnerProblem]
    shards_off_epoch: Mapping[int, tuple[int, int]]  # shard -> (its epoch, router's)
    epochs_backwards: Mapping[str, Sequence[tuple[int, int]]]  # party -> (before, after)
    outboxes_not_drained: Mapping[int, int]  # shard -> unacknowledged tokens
    failed_lanes: Mapping[int, int]  # shard -> failed handoff lanes
    moves_unfinished: Mapping[int, str] = field(default_factory=dict)  # move id -> state
    slots_mid_move: Mapping[int, str] = field(default_factory=dict)  # shard -> what it holds

    @property
    def ok(self) -> bool:
        return not any(getattr(self, field.name) for field in fields(self))

    def __str__(self) -> str:
        if self.ok:
            return "cluster invariants hold"
        sections = [
            ("lost tokens", _counter_lines(self.lost)),
            ("extra copies of expected tokens", _counter_lines(self.duplicated)),
            ("unexpected tokens", _counter_lines(self.unexpected)),
            ("not conserved", _lines("{0!r}: expected {1} tokens, found {2}", self.not_conserved)),
            ("misplaced tokens", [str(m) for m in self.misplaced]),
            ("slot owners", [str(problem) for problem in self.slot_owner_problems]),
            ("shard epochs", _lines("shard {0} at {1}, router at {2}", self.shards_off_epoch)),
            (
                "epochs went backwards",
                [f"{p}: {b} -> {a}" for p, ps in self.epochs_backwards.items() for b, a in ps],
            ),
            ("outboxes not drained", _lines("shard {0}: {1} tokens", self.outboxes_not_drained)),
            ("failed handoff lanes", _lines("shard {0}: {1} lanes", self.failed_lanes)),
            ("slot moves not finished", _lines("move {0}: {1}", self.moves_unfinished)),
            ("slots held mid-move", _lines("shard {0}: {1}", self.slots_mid_move)),
        ]
        lines = ["cluster invariants violated:"]
        for title, items in sections:
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items[:EXAMPLES_MAX]]
                if len(items) > EXAMPLES_MAX:
                    lines.append(f"    ... and {len(items) - EXAMPLES_MAX} more")
        return "\n".join(lines)


def check(
    shards: Iterable[ShardSnapshot],
    table: PartitionTable,
    *,
    expected: Mapping[str, Counter[Token]] | None = None,
    checked_places: Iterable[str] | None = None,
    conserved: Mapping[str, int] | None = None,
    epochs_seen: Mapping[str, Sequence[int]] | None = None,
    slot_of: SlotOf | None = None,
    moves_active: Iterable[Mapping[str, Any]] = (),
) -> InvariantReport:
    """Check a drained cluster's snapshots against the expectation (see the module doc).

    Args:
        shards: one snapshot per shard.
        table: the router's partition table, the authority on ownership.
        expected: place -> the multiset of field tuples the run must end with.
        checked_places: the places compared with ``expected`` (default: its places).
        conserved: place -> the exact token count it must hold cluster-wide.
        epochs_seen: party -> the epochs it observed, in order.
        slot_of: (place, fields) -> the token's slot, or None for a pool token; called
            for every token of every place.
        moves_active: the router's moves in flight (its ``Stats`` ``moves_active``:
            dicts with ``move_id``, ``slot``, ``state``); a drained run has none.

    Raises:
        ValueError: two snapshots of one shard, or ``slot_of`` returned a non-slot.
        TypeError: a token that is not a tuple (a msgpack list?), naming shard and place.
    """
    by_id: dict[int, ShardSnapshot] = {}
    for shard in shards:
        if (seen := by_id.setdefault(shard.shard_id, shard)) is not shard:
            raise ValueError(
                f"two snapshots of shard {shard.shard_id} (incarnations {seen.incarnation} "
                f"and {shard.incarnation}); pass one snapshot per shard"
            )
    snapshots = [by_id[shard_id] for shard_id in sorted(by_id)]
    totals: dict[str, Counter[Token]] = {}
    misplaced: list[Misplaced] = []
    for shard, place, token in _tokens(snapshots):
        totals.setdefault(place, Counter())[token] += 1
        slot = slot_of(place, token) if slot_of else None
        if slot is None:
            continue
        if not 0 <= slot < SLOT_COUNT:
            raise ValueError(f"slot_of({place!r}, {_short(token)}) returned {slot}: not a slot")
        if table.owners[slot] != shard.shard_id:
            misplaced.append(Misplaced(shard.shard_id, place, token, slot, table.owners[slot]))

    expected = expected or {}
    diffs = {}  # place -> (tokens missing, extra copies of expected ones, never expected)
    for place in sorted(set(expected if checked_places is None else checked_places)):
        want = +expected.get(place, Counter())
        have = totals.get(place, Counter())
        extra = have - want
        more = Counter({token: n for token, n in extra.items() if token in want})
        diffs[place] = (want - have, more, extra - more)

    return InvariantReport(
        lost={place: d[0] for place, d in diffs.items() if d[0]},
        duplicated={place: d[1] for place, d in diffs.items() if d[1]},
        unexpected={place: d[2] for place, d in diffs.items() if d[2]},
        not_conserved={
            place: (count, total)
            for place, count in sorted((conserved or {}).items())
            if (total := totals.get(place, Counter()).total()) != count
        },
        misplaced=misplaced,
        slot_owner_problems=_slot_owner_problems(snapshots, table),
        shards_off_epoch={
            s.shard_id: (s.epoch, table.epoch) for s in snapshots if s.epoch != table.epoch
        },
        epochs_backwards={
            party: pairs
            for party, epochs in sorted((epochs_seen or {}).items())
            if (pairs := [(b, a) for b, a in pairwise(epochs) if a < b])
        },
        outboxes_not_drained={s.shard_id: s.outbox_tokens for s in snapshots if s.outbox_tokens},
        failed_lanes={s.shard_id: s.failed_lanes for s in snapshots if s.failed_lanes},
        moves_unfinished={
            int(m["move_id"]): f"slot {m['slot']} {m['state']}" for m in moves_active
        },
        slots_mid_move={
            s.shard_id: f"sealed {sorted(s.sealed_slots)}, staged {sorted(s.staged_slots)}"
            for s in snapshots
            if s.sealed_slots or s.staged_slots
        },
    )


def expected_from(
    injections: Iterable[tuple[str, Token]],
    transform: Callable[[str, Token], Iterable[tuple[str, Token]]] | None = None,
) -> dict[str, Counter[Token]]:
    """The expected final multisets, built from the tokens a run injected.

    Args:
        injections: ``(place, fields)`` for every token put into the cluster.
        transform: what each injected token must end as, as ``(place, fields)`` pairs
            (e.g. a target becomes one result); default: it stays where it was put.
            A place whose tokens all end as nothing is absent from the result; list it
            in ``checked_places`` to require it to be empty.
    """
    expected: dict[str, Counter[Token]] = {}
    for place, token in injections:
        for final_place, final_token in transform(place, token) if transform else [(place, token)]:
            expected.setdefault(final_place, Counter())[final_token] += 1
    return expected


def slot_of_net(net: Net) -> SlotOf:
    """A ``slot_of`` for :func:`check` from ``net``'s partition keys (KeyError: no such place)."""

    def slot_of(place: str, token: Token) -> int | None:
        slot = slot_of_token(net.place(place), token)
        return None if slot == POOL_SLOT else slot

    return slot_of


def _tokens(snapshots: Iterable[ShardSnapshot]) -> Iterator[tuple[ShardSnapshot, str, Token]]:
    for shard in snapshots:
        for place, tokens in sorted(shard.marking.items()):
            for _time_ms, token in tokens:
                if not isinstance(token, tuple):
                    raise TypeError(
                        f"shard {shard.shard_id} place {place!r}: token {_short(token)} is a "
                        f"{type(token).__name__}, not a tuple (decode msgpack arrays as tuples)"
                    )
                yield shard, place, token


def _slot_owner_problems(
    snapshots: Iterable[ShardSnapshot], table: PartitionTable
) -> list[SlotOwnerProblem]:
    claims: dict[int, list[int]] = {}
    for shard in snapshots:
        if shard.epoch == table.epoch:
            for slot in shard.owned_slots:
                claims.setdefault(slot, []).append(shard.shard_id)
    problems = []
    for slot in sorted(claims.keys() | set(range(SLOT_COUNT))):
        claimants = tuple(sorted(claims.get(slot, ())))
        owner = table.owners[slot] if 0 <= slot < SLOT_COUNT else None
        if claimants != (owner,):
            problems.append(SlotOwnerProblem(slot, claimants, owner))
    return problems


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= TOKEN_REPR_CHARS_MAX else text[: TOKEN_REPR_CHARS_MAX - 3] + "..."


def _lines(template: str, per_key: Mapping[Any, Any]) -> list[str]:
    """``template`` filled with each key and its value (a tuple fills several fields)."""
    return [
        template.format(key, *(value if isinstance(value, tuple) else (value,)))
        for key, value in per_key.items()
    ]


def _counter_lines(per_place: Mapping[str, Counter[Token]]) -> list[str]:
    return [
        f"{place!r} {_short(token)} x{count}"
        for place, tokens in per_place.items()
        for token, count in sorted(tokens.items(), key=lambda item: repr(item[0]))
    ]
