"""The mock job API's call log, read from the server's point of view (pure).

:class:`CallRecord` is one call as :class:`cluster.jobs.mockapi.MockApi` logged it.
:func:`measure_calls` answers the questions the job runner is judged by, from the log
alone, so that a test and a report apply the same rule:

* **limit violations**: a call is a violation when it is the ``rate + 1``-th call of its
  customer to arrive within ``window_ms``: sorted by arrival, call ``i`` and call ``i -
  rate`` of one customer arrived less than ``window_ms`` apart. Every call that names a
  customer counts, whatever its answer, replays included: the API received it. Two
  calls exactly ``window_ms`` apart are not in one window (a window is half-open,
  ``[t, t + window)``).
* **calls in flight**: the most calls between arrival and answer at once, over all
  customers; a call occupies ``[start_ns, end_ns)``, so one that arrives exactly when
  another is answered does not overlap it.
* **executions and replays**: the API honours idempotency keys. A call it answered 2xx
  as a fresh execution is an *execution*; a later call with a key it had executed is
  not executed again but answered with the first answer (``replayed``): a *replay*. A
  rejected call (503) executes nothing, so a retry after it executes normally.
* **duplicates**: executions of a job beyond its first, counted per job ``(customer,
  job_id)`` whatever the keys of its calls. With a key stable across attempts the API's
  dedupe makes this 0; a worker whose key changed between attempts (one that included
  the attempt, say) has a retried job executed twice, and this counts it.

Nothing depends on the order records are given in.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Final

from cluster.mock_web.log import max_concurrency_by
from nets.errors import CpnError

STATUS_MALFORMED: Final = 400  # a call the API could not read: it names no customer


class MockApiError(CpnError):
    """The mock job API was configured or used wrongly, or its log cannot be read."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call to the mock job API.

    ``start_ns`` (the call arrived: its head was parsed) and ``end_ns`` (its answer was
    written) are the server's monotonic clock. ``customer``, ``job_id``, ``attempt`` and
    ``key`` are what the call said ("" and -1 when it could not be read); ``call`` is
    the 1-based count of calls with this key, 0 for a call without one. ``replayed``:
    the key had been executed before, so the call was answered with the first answer
    and executed nothing (logs written before replays existed lack the field: False).
    """

    start_ns: int
    end_ns: int
    customer: str
    job_id: str
    attempt: int
    key: str
    status: int
    call: int
    replayed: bool = False

    @property
    def accepted(self) -> bool:
        """Answered 2xx: executed, or replayed."""
        return 200 <= self.status < 300

    @property
    def executed(self) -> bool:
        """Answered 2xx as a fresh execution (not a replay)."""
        return self.accepted and not self.replayed

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FIELD_TYPES: Final[Mapping[str, type]] = {
    "start_ns": int,
    "end_ns": int,
    "customer": str,
    "job_id": str,
    "attempt": int,
    "key": str,
    "status": int,
    "call": int,
    "replayed": bool,
}
# Fields a record may lack (logs written before they existed), and their value then.
_FIELD_DEFAULTS: Final[Mapping[str, object]] = {"replayed": False}


def parse_log(lines: Iterable[str], *, where: str = "call log") -> list[CallRecord]:
    """The records of a JSON Lines call log, as the server wrote it (blank lines skipped).

    Raises:
        MockApiError: a line is not JSON, or not a record: naming the line and the field.
    """
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MockApiError(f"{where}, line {number}: not JSON ({exc})") from None
        if isinstance(obj, dict):
            obj = {**_FIELD_DEFAULTS, **obj}
        if not isinstance(obj, dict) or set(obj) != set(_FIELD_TYPES):
            raise MockApiError(
                f"{where}, line {number}: expected an object with fields "
                f"{', '.join(_FIELD_TYPES)}, got {line.strip()[:200]!r}"
            )
        for name, kind in _FIELD_TYPES.items():
            value = obj[name]
            if type(value) is not kind:
                raise MockApiError(
                    f"{where}, line {number}: field {name!r} must be {kind.__name__}, got {value!r}"
                )
        records.append(CallRecord(**obj))
    return records


@dataclass(frozen=True, slots=True)
class Violation:
    """A customer's call that made ``rate + 1`` calls arrive within one window."""

    customer: str
    first: CallRecord  # the call ``rate`` calls before it
    call: CallRecord
    span_ns: int  # from the first's arrival to this one's, less than the window


JobName = tuple[str, str]  # (customer, job_id)


@dataclass(frozen=True, slots=True)
class CallFigures:
    """What the API measured: see the module docstring for each rule."""

    calls: int
    accepted: int  # answered 2xx: executions + replays
    executions: int
    replays: int
    by_status: Mapping[int, int]
    customers: int
    rate: int
    window_ms: int
    violations: tuple[Violation, ...]
    in_flight_max: int
    duplicates: int  # executions beyond each job's first
    duplicated_jobs: tuple[JobName, ...]  # each job executed more than once, sorted


def measure_calls(records: Iterable[CallRecord], *, rate: int, window_ms: int) -> CallFigures:
    """The API's figures for ``records`` under a limit of ``rate`` calls per customer in
    any sliding ``window_ms`` (see the module docstring for the rules).

    Raises:
        MockApiError: ``rate`` < 1 or ``window_ms`` < 1.
    """
    if rate < 1 or window_ms < 1:
        raise MockApiError(f"measure_calls: rate={rate}, window_ms={window_ms}: expected >= 1")
    ordered = sorted(records, key=lambda r: (r.start_ns, r.end_ns, r.key, r.call))
    by_customer: dict[str, list[CallRecord]] = {}
    for record in ordered:
        if record.customer:
            by_customer.setdefault(record.customer, []).append(record)
    window_ns = window_ms * 1_000_000
    violations = []
    for customer, calls in sorted(by_customer.items()):
        for first, call in zip(calls, calls[rate:], strict=False):
            if call.start_ns - first.start_ns < window_ns:
                violations.append(Violation(customer, first, call, call.start_ns - first.start_ns))
    # Per job, not per key: a job executed under two keys is a duplicate all the same.
    executed = Counter((r.customer, r.job_id) for r in ordered if r.executed and r.customer)
    in_flight = max_concurrency_by(ordered, lambda _: 0).get(0, 0)  # one group: all calls
    return CallFigures(
        calls=len(ordered),
        accepted=sum(r.accepted for r in ordered),
        executions=sum(r.executed for r in ordered),
        replays=sum(r.accepted and r.replayed for r in ordered),
        by_status=dict(sorted(Counter(r.status for r in ordered).items())),
        customers=len(by_customer),
        rate=rate,
        window_ms=window_ms,
        violations=tuple(violations),
        in_flight_max=in_flight,
        duplicates=sum(n - 1 for n in executed.values()),
        duplicated_jobs=tuple(sorted(job for job, n in executed.items() if n > 1)),
    )
