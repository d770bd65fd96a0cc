"""The store stage's output: a JSON Lines file of pages, written once each (SHELL).

One line per stored page, with the fields of :func:`page_record`. The file is shared by
every store worker of a crawl (and survives them): :class:`PageStore` makes each page's
record appear exactly once, even when

* several store workers (processes) append to the same file at once, and
* a worker is killed after writing a record but before completing its lease, so that
  the lease expires and another worker gets the same page again.

Theory of operation: a record's id is its canonical ``url`` (the net admits every URL
once). Each write takes an exclusive ``flock`` on the file, reads what other writers
appended since this store last looked (it remembers the offset it has read up to, so
each byte is read once per store), adds their ids to its set, appends only the records
whose id is not in the set, in one ``write`` call, flushes them to disk (``fsync``)
and only then releases the lock; a worker completes its lease after that. A record is
thus on disk before the net hears that it is stored, and a repeat finds it there.

A line without its newline at the end of the file can only be the remains of a writer
killed in the middle of its ``write`` (every writer holds the lock while it writes): it
is cut off before anything is appended, so the file stays valid JSON Lines.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nets.errors import CpnError

READ_CHUNK_BYTES: Final = 1 << 20
RECORD_ID: Final = "url"


class StoreFileError(CpnError):
    """The output file cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class WriteSummary:
    written: int  # records appended by this call
    present: int  # records whose id was already in the file (or twice in the batch)


def iso_ms(epoch_ms: int) -> str:
    """``epoch_ms`` as ISO-8601 in UTC with milliseconds (``2026-01-02T03:04:05.678+00:00``)."""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def page_record(parsed: Sequence[Any]) -> dict[str, Any]:
    """The JSON record of a ``Parsed`` token (fields in the net's colour-set order).

    ``Parsed(domain, url, depth, attempt, proxy, status, final_url, content_type,
    fetched_at_ms, title, links_count)``.
    """
    return {
        "url": parsed[1],
        "final_url": parsed[6],
        "status": parsed[5],
        "fetched_at": iso_ms(parsed[8]),
        "fetched_at_ms": parsed[8],
        "title": parsed[9],
        "links_count": parsed[10],
        "depth": parsed[2],
        "attempt": parsed[3],
        "proxy": parsed[4],
    }


class PageStore:
    """Appends page records to ``path`` exactly once each (see the module docstring).

    Not thread-safe; one per process (or per thread). ``durable=False`` skips the
    ``fsync`` (the data survives a killed process, not a crashed host).
    """

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise StoreFileError(f"cannot open the output file {path}: {exc}") from exc
        self._offset = 0  # bytes of the file read into self._ids
        self._ids: set[str] = set()
        self._partial = b""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PageStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def known(self) -> int:
        """Records seen in the file so far (as of the last write)."""
        return len(self._ids)

    def write(self, records: Iterable[Mapping[str, Any]]) -> WriteSummary:
        """Append the records whose id is not in the file yet; durable on return.

        Raises:
            StoreFileError: the file cannot be locked, read or written (nothing of
                this call was written then, or the records are on disk in full).
        """
        batch = list(records)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._catch_up()
                lines = []
                present = 0
                for record in batch:
                    record_id = str(record[RECORD_ID])
                    if record_id in self._ids:
                        present += 1
                        continue
                    self._ids.add(record_id)
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
                if lines:
                    data = "".join(lines).encode()
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view) :]
                    if self.durable:
                        os.fsync(self._fd)
                    self._offset += len(data)
                return WriteSummary(len(lines), present)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreFileError(f"cannot write to the output file {self.path}: {exc}") from exc

    def _catch_up(self) -> None:
        """Read what others appended since our offset (under the lock)."""
        size = os.fstat(self._fd).st_size
        if size < self._offset:  # the file was truncated behind our back: start over
            self._offset, self._ids, self._partial = 0, set(), b""
        while self._offset < size:
            chunk = os.pread(self._fd, min(READ_CHUNK_BYTES, size - self._offset), self._offset)
            if not chunk:
                break
            self._offset += len(chunk)
            data = self._partial + chunk
            complete, _, self._partial = data.rpartition(b"\n")
            if complete:
                for line in complete.split(b"\n"):
                    self._remember(line)
        if self._partial:
            # A torn last line (its writer was killed mid-write): cut it off.
            os.ftruncate(self._fd, self._offset - len(self._partial))
            self._offset -= len(self._partial)
            self._partial = b""

    def _remember(self, line: bytes) -> None:
        with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
            self._ids.add(str(json.loads(line)[RECORD_ID]))


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a page file, in file order (a torn or broken line is skipped)."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return
    with file:
        for line in file:
            if not line.endswith(b"\n"):
                return
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record
