"""The marking: per-place multisets of timed tokens, with the indexes joins need.

Theory of operation:

* A marking entry is ``(time, token)``: the token is available from ``time`` (integer
  milliseconds) on. The same entry may occur several times (a multiset).
* Only *available* entries (``time <= now``) live in the indexes of a place that some
  arc reads; entries from the future wait in the engine's pending heap and are released
  into the indexes when time reaches them. So an index lookup never has to skip
  invisible tokens, and the engine's next deadline is simply the top of that heap. A
  place that no arc reads (``timed`` is false) takes future entries into its index at
  once, since nothing waits for them; whoever takes tokens from it checks their time.
* Every place has a *primary* index: by partition key for a keyed place, one bucket
  for a pool or fixed place. Arcs that match on other fields get a *secondary* index
  on exactly the fields bound when the arc is searched. A bucket is kept sorted, so
  its first entry is the one conflict resolution prefers (earliest time, then smallest
  token). Small buckets are plain lists (``bisect`` in C is the fastest structure at
  that size); a bucket that grows past ``BUCKET_LIST_MAX`` becomes a ``SortedList``
  so that removal at the head stays O(log n) for a million tokens.
* A store tells the engine which component searches to redo when an available entry
  is added or removed: per-key watchers get the token's key, whole-place watchers are
  simply marked (incremental enabling).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

from sortedcontainers import SortedList

from nets.model import Place, Token

Entry = tuple[int, Token]
# A bucket is a sorted ``list[Entry]`` or, once large, a ``SortedList`` of entries; both
# iterate in order, index and test truthiness alike (SortedList is untyped).
Bucket = Any

BUCKET_LIST_MAX: Final = 2048


class KeyWatcher(Protocol):
    """A per-key component (nets/enabling.py): its keys to search again, its cached
    binding per key, and its plan (nets/binding.py, Component)."""

    dirty_keys: set[Any]
    current: dict[Any, Any]
    component: Any


class PlaceWatcher(Protocol):
    all_dirty: bool


class Index:
    """Buckets of entries grouped by the values of some fields (all entries if none).

    ``buckets`` is never replaced, only mutated, so compiled searches may hold it.
    """

    __slots__ = ("buckets", "positions", "project")

    def __init__(self, positions: tuple[int, ...]) -> None:
        self.positions = positions
        self.buckets: dict[Any, Bucket] = {}
        self.project: Callable[[Token], Any] = _projector(positions)

    def add(self, entry: Entry) -> None:
        value = self.project(entry[1])
        bucket = self.buckets.get(value)
        if bucket is None:
            self.buckets[value] = [entry]
        elif type(bucket) is list:
            insort(bucket, entry)
            if len(bucket) > BUCKET_LIST_MAX:
                self.buckets[value] = SortedList(bucket)
        else:
            bucket.add(entry)

    def add_many(self, entries: list[Entry]) -> None:
        """Add many entries at once: group by key, then merge each group in one go."""
        groups: dict[Any, list[Entry]] = {}
        if len(self.positions) == 1:  # the common case, inlined: one key field
            (position,) = self.positions
            for entry in entries:
                value = entry[1][position]
                group = groups.get(value)
                if group is None:
                    groups[value] = [entry]
                else:
                    group.append(entry)
        else:
            project = self.project
            for entry in entries:
                groups.setdefault(project(entry[1]), []).append(entry)
        buckets = self.buckets
        for value, group in groups.items():
            bucket = buckets.get(value)
            group.sort()
            if bucket is None:
                buckets[value] = SortedList(group) if len(group) > BUCKET_LIST_MAX else group
            elif type(bucket) is list:
                if bucket[-1] <= group[0]:  # the usual case: later entries come later
                    bucket.extend(group)
                elif len(group) < 8:
                    for entry in group:
                        insort(bucket, entry)
                else:
                    bucket.extend(group)
                    bucket.sort()
                if len(bucket) > BUCKET_LIST_MAX:
                    buckets[value] = SortedList(bucket)
            else:
                bucket.update(group)  # a SortedList merges a batch faster than one by one

    def remove(self, entry: Entry) -> None:
        value = self.project(entry[1])
        bucket = self.buckets[value]
        if type(bucket) is list:
            i = bisect_left(bucket, entry)
            assert bucket[i] == entry, f"entry {entry!r} is not in the index"
            del bucket[i]
        else:
            bucket.remove(entry)
        if not bucket:
            del self.buckets[value]

    def bucket(self, value: Any) -> Bucket:
        return self.buckets.get(value, ())

    def contains(self, entry: Entry) -> bool:
        bucket = self.buckets.get(self.project(entry[1]))
        if bucket is None:
            return False
        if type(bucket) is list:
            i = bisect_left(bucket, entry)
            return i < len(bucket) and bucket[i] == entry
        return entry in bucket


def _projector(positions: tuple[int, ...]) -> Callable[[Token], Any]:
    """A function mapping a token to its index value (one field: the bare value)."""
    if not positions:
        return lambda _token: None
    if len(positions) == 1:
        (p,) = positions
        return lambda token: token[p]
    return lambda token: tuple(token[p] for p in positions)


class PlaceStore:
    """The available tokens of one place, its indexes and its total token count.

    ``count`` includes pending (future) tokens, because a capacity bounds everything a
    place holds, available or not.
    """

    __slots__ = (
        "capacity_watchers",
        "count",
        "indexes",
        "key_position",
        "key_watchers",
        "place",
        "place_watchers",
        "primary",
        "secondary",
        "timed",
    )

    def __init__(self, place: Place) -> None:
        self.place = place
        self.key_position = place.colour_set.field_index(place.key) if place.key is not None else -1
        key_positions = (self.key_position,) if place.key is not None else ()
        self.primary = Index(key_positions)
        self.indexes: dict[tuple[int, ...], Index] = {key_positions: self.primary}
        self.secondary: tuple[Index, ...] = ()
        self.count = 0
        self.key_watchers: tuple[KeyWatcher, ...] = ()
        self.place_watchers: tuple[PlaceWatcher, ...] = ()
        self.capacity_watchers: tuple[Any, ...] = ()
        # False for a place that no arc reads: its future entries are indexed at once
        # (nothing waits for them), so they never pass through the pending heap.
        self.timed = True

    def index(self, positions: tuple[int, ...]) -> Index:
        """The index on ``positions``, created (and filled) on first request."""
        found = self.indexes.get(positions)
        if found is None:
            found = self.indexes[positions] = Index(positions)
            for entry in self.entries():
                found.add(entry)
            self.secondary = (*self.secondary, found)
        return found

    def add_available(self, entry: Entry) -> None:
        # The primary index is updated inline: this is the engine's hottest path.
        token = entry[1]
        primary = self.primary
        value = token[self.key_position] if self.key_position >= 0 else None
        bucket = primary.buckets.get(value)
        if bucket is None:
            primary.buckets[value] = [entry]
        elif type(bucket) is list:
            if not bucket or bucket[-1] <= entry:
                bucket.append(entry)
            else:
                insort(bucket, entry)
            if len(bucket) > BUCKET_LIST_MAX:
                primary.buckets[value] = SortedList(bucket)
        else:
            bucket.add(entry)
        for index in self.secondary:
            index.add(entry)
        if self.key_watchers:
            for watcher in self.key_watchers:
                watcher.dirty_keys.add(value)
        for place_watcher in self.place_watchers:
            place_watcher.all_dirty = True

    def remove_available(self, entry: Entry) -> None:
        token = entry[1]
        primary = self.primary
        value = token[self.key_position] if self.key_position >= 0 else None
        bucket = primary.buckets[value]
        if type(bucket) is list:
            if bucket[0] == entry:
                del bucket[0]
            else:
                i = bisect_left(bucket, entry)
                assert bucket[i] == entry, f"entry {entry!r} is not in place {self.place.name!r}"
                del bucket[i]
        else:
            bucket.remove(entry)
        if not bucket:
            del primary.buckets[value]
        for index in self.secondary:
            index.remove(entry)
        self.count -= 1
        if self.key_watchers:
            for watcher in self.key_watchers:
                watcher.dirty_keys.add(value)
        for place_watcher in self.place_watchers:
            place_watcher.all_dirty = True
        for capacity_watcher in self.capacity_watchers:
            capacity_watcher.blocked = None

    def add_available_many(self, entries: list[Entry]) -> None:
        """:meth:`add_available` for many entries at once (a handed-off run): each index
        merges them in bulk, and each watcher is told once, with every key that changed.

        The indexes and watchers end as :meth:`add_available` of each entry leaves them
        (buckets are sorted, dirty keys a set); ``count`` is the caller's, as there.
        """
        if not entries:
            return
        self.primary.add_many(entries)
        for index in self.secondary:
            index.add_many(entries)
        if self.key_watchers:
            position = self.key_position
            keys = {entry[1][position] for entry in entries} if position >= 0 else {None}
            for watcher in self.key_watchers:
                watcher.dirty_keys.update(keys)
        for place_watcher in self.place_watchers:
            place_watcher.all_dirty = True

    def load(self, entries: list[Entry]) -> None:
        """Bulk-add available entries without notifying anyone (initial loading)."""
        self.primary.add_many(entries)
        for index in self.secondary:
            index.add_many(entries)
        self.count += len(entries)

    def entries(self) -> Iterator[Entry]:
        """Available entries, bucket by bucket (buckets in no particular order)."""
        for bucket in self.primary.buckets.values():
            yield from bucket
