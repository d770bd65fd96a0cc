"""The mock job API: the external service the job runner's workers call (SHELL).

The job runner's demo and tests run jobs against this instead of a real API. A worker
calls it once per job attempt::

    POST /run   {"customer": "c1", "job_id": "j7", "attempt": 0, "key": "c1/j7"}
    -> 200 {"key": "c1/j7", "call": 1, "ok": true}
    -> 503 {"key": "c1/j7", "call": 1, "error": "unavailable"}
    -> 200 {"key": "c1/j7", "call": 1, "ok": true, "replayed": true}

``key`` is the job's idempotency key: the same for every attempt of one job.

Theory of operation
-------------------
* **Answers** come ``latency_ms`` after the call arrived (waited on the stop event, so
  stopping is never delayed). Whether a call fails is a pure function of the seed, the
  key and how many calls with that key came before (:func:`planned_status`): a
  ``flaky_rate`` share of jobs fail their first ``flaky_failures`` calls with 503, a
  ``broken_rate`` share fail every call. The count is the server's own, not the call's
  ``attempt``: the API trusts nothing the client says about the past.
* **Idempotency keys are honoured**, as a real API with them (Stripe's, say) does: a
  key is executed at most once. A call answered 2xx as a fresh execution makes its key
  *executed*, and the API remembers that answer's payload; a later call with an
  executed key executes nothing and is answered 200 with that payload plus
  ``"replayed": true`` (logged with ``replayed``). Whether a call executes, replays or
  fails is decided once, under the lock, as the call arrives (:meth:`MockApi._decide`),
  and a key is executed at that moment: of two calls of one key in flight at once, the
  second is a replay, answered without waiting for the first. A 503 executes nothing,
  so the key's next call is planned as before (a retry after a 503 executes normally).
* **The log.** Every call, readable or not, is recorded once answered
  (:class:`~cluster.jobs.mockapi_log.CallRecord`, monotonic ns at arrival and answer)
  and appended, flushed, to ``log_path`` as one JSON line. :meth:`MockApi.figures` and
  :func:`read_log` plus :func:`~cluster.jobs.mockapi_log.measure_calls` compute the
  same figures (limit violations, calls in flight, executions, replays, duplicates)
  from it.
* **Bounded and loopback only.** It listens on 127.0.0.1 (port 0: the OS picks one), with
  at most ``connections_max`` connections, bodies of ``body_bytes_max`` bytes, a
  latency of at most ``LATENCY_MS_MAX`` and ``keys_max`` distinct keys (a call with a
  new key beyond that is answered 507, logged, and counted in no key's calls). The
  accept loop, the handler threads and stopping are the mock web's
  (:mod:`cluster.mock_web.server`).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self
from urllib.parse import urlsplit

from cluster.jobs.mockapi_log import (
    STATUS_MALFORMED,
    CallFigures,
    CallRecord,
    MockApiError,
    measure_calls,
    parse_log,
)
from cluster.mock_web.server import LoopbackHandler, LoopbackServers, limits_problem
from cluster.mock_web.site import MockWebError

RUN_PATH: Final = "/run"
ADDRESS: Final = "127.0.0.1"
LATENCY_MS_MAX: Final = 60_000
CONNECTIONS_MAX: Final = 256
LOG_RECORDS_MAX: Final = 1_000_000
KEYS_MAX: Final = 1_000_000
BODY_BYTES_MAX: Final = 4_096
FIELD_CHARS_MAX: Final = 256
IDLE_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0
BACKLOG: Final = 256
STATUS_TOO_MANY_KEYS: Final = 507


@dataclass(frozen=True, slots=True)
class MockApiConfig:
    """How the mock API answers, and the limit it measures calls against.

    Args:
        seed: the failure rule's seed.
        latency_ms: the wait between a call's arrival and its answer.
        flaky_rate: the share of jobs (keys) that fail their first ``flaky_failures``
            calls with 503.
        flaky_failures: see ``flaky_rate``.
        broken_rate: the share of jobs that fail every call with 503.
        rate, window_ms: the limit of :meth:`MockApi.figures` (calls per customer in
            any sliding window); the API measures it and never enforces it.
        body_bytes_max: longer requests are answered 413.
        keys_max: distinct idempotency keys remembered (each with its count of calls
            and, once executed, its first answer).

    Raises:
        MockApiError: a value out of range, naming it.
    """

    seed: int = 0
    latency_ms: int = 10
    flaky_rate: float = 0.1
    flaky_failures: int = 2
    broken_rate: float = 0.0
    rate: int = 5
    window_ms: int = 1_000
    body_bytes_max: int = BODY_BYTES_MAX
    keys_max: int = KEYS_MAX

    def __post_init__(self) -> None:
        ranges: dict[str, tuple[float, float]] = {
            "latency_ms": (0, LATENCY_MS_MAX),
            "flaky_rate": (0, 1),
            "flaky_failures": (0, 1_000),
            "broken_rate": (0, 1),
            "rate": (1, 1_000_000),
            "window_ms": (1, 86_400_000),
            "body_bytes_max": (64, 1_048_576),
            "keys_max": (1, 100_000_000),
        }
        if type(self.seed) is not int:
            raise MockApiError(f"mock API seed={self.seed!r}: expected an integer")
        for name, (least, most) in ranges.items():
            value = getattr(self, name)
            kinds = (int, float) if name.endswith("_rate") else (int,)
            if type(value) not in kinds or not least <= value <= most:
                raise MockApiError(f"mock API {name}={value!r}: expected {least} .. {most}")
        if self.flaky_rate + self.broken_rate > 1:
            raise MockApiError(
                f"mock API flaky_rate={self.flaky_rate} + broken_rate={self.broken_rate}: "
                "the two shares of jobs may not exceed 1"
            )


def job_draw(seed: int, key: str) -> float:
    """A job's fixed draw in [0, 1): a hash of the seed and the key, nothing else."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def planned_status(config: MockApiConfig, key: str, call: int) -> int:
    """The status of the ``call``-th call (1-based) with idempotency key ``key``, while
    the key is not executed (a call with an executed key is a replay: 200)."""
    assert call >= 1, call
    draw = job_draw(config.seed, key)
    if draw < config.broken_rate:
        return 503
    if draw < config.broken_rate + config.flaky_rate and call <= config.flaky_failures:
        return 503
    return 200


@dataclass(frozen=True, slots=True)
class RunCall:
    """A readable ``POST /run`` body."""

    customer: str
    job_id: str
    attempt: int
    key: str


def parse_call(body: bytes) -> RunCall:
    """The call a ``POST /run`` body asks for.

    Raises:
        MockApiError: the body is not a JSON object with a non-empty string
            ``customer``, ``job_id`` and ``key`` and an integer ``attempt`` >= 0 (and
            nothing else), naming the field at fault.
    """
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MockApiError(f"body is not JSON: {exc}") from None
    fields = ("customer", "job_id", "attempt", "key")
    if not isinstance(obj, dict) or set(obj) != set(fields):
        raise MockApiError(f"body must be an object with exactly {', '.join(fields)}")
    for name in ("customer", "job_id", "key"):
        value = obj[name]
        if not isinstance(value, str) or not 0 < len(value) <= FIELD_CHARS_MAX:
            raise MockApiError(f"{name} must be a string of 1 .. {FIELD_CHARS_MAX} characters")
    if type(obj["attempt"]) is not int or obj["attempt"] < 0:
        raise MockApiError(f"attempt must be an integer >= 0, got {obj['attempt']!r}")
    return RunCall(obj["customer"], obj["job_id"], obj["attempt"], obj["key"])


def read_log(path: Path) -> list[CallRecord]:
    """The records of the call log at ``path``.

    Raises:
        MockApiError: the file cannot be read or a line is not a record.
    """
    try:
        with path.open(encoding="utf-8") as log:
            return parse_log(log, where=str(path))
    except OSError as exc:
        raise MockApiError(f"cannot read the call log {path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CallFate:
    """How the API answers one call, decided as it arrives (:meth:`MockApi._decide`)."""

    call: int  # the 1-based number of this call with its key; 0 past keys_max keys
    status: int
    payload: Mapping[str, object]
    replayed: bool


@dataclass(frozen=True, slots=True)
class MockApiStatistics:
    calls: int  # recorded since start, dropped ones included
    calls_dropped: int  # recorded but no longer in memory (log_records_max)
    by_status: dict[int, int]
    keys: int  # distinct idempotency keys seen
    keys_executed: int  # of them, keys answered 2xx once (later calls are replays)
    connections_open: int
    connections_total: int
    handler_errors: int


class MockApi(LoopbackServers[CallRecord]):
    """The mock job API, served from background threads of this process.

    Use as a context manager (``with MockApi(config) as api: ... api.run_url ...``) or
    call :meth:`start` and :meth:`stop`; :attr:`port` and the URLs work once started.

    Args:
        config: how it answers (:class:`MockApiConfig`).
        port: the port to listen on (0: the OS picks a free one).
        log_path: a file to append every call to as JSON Lines.
        connections_max: open connections at most.
        log_records_max: records kept in memory for :meth:`requests` and :meth:`figures`.
        idle_timeout_s: a connection idle (or not reading) this long is closed.

    Raises:
        MockApiError: an option out of range.
    """

    _kind = "mock API"
    _kinds = "mock API"
    _thread_prefix = "mockapi"
    _stop_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        config: MockApiConfig | None = None,
        *,
        port: int = 0,
        log_path: Path | None = None,
        connections_max: int = CONNECTIONS_MAX,
        log_records_max: int = LOG_RECORDS_MAX,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        problem = limits_problem(
            "mock API", port=port, connections_max=connections_max,
            log_records_max=log_records_max, idle_timeout_s=idle_timeout_s,
        )  # fmt: skip
        if problem is not None:
            raise MockApiError(problem)
        super().__init__(
            log_path=log_path,
            log_records_max=log_records_max,
            connections_max=connections_max,
            idle_timeout_s=idle_timeout_s,
        )
        self.config: Final = config if config is not None else MockApiConfig()
        self._port_wanted = port
        self._port = 0
        # Guarded by self._lock (the base class's), as its connection state is: per
        # key, its calls so far, and the first answer of each key executed.
        self._calls: dict[str, int] = {}
        self._executed: dict[str, Mapping[str, object]] = {}

    def start(self) -> Self:
        """Bind 127.0.0.1, open the log and serve; returns self.

        Raises:
            MockApiError: the port cannot be bound or the log cannot be opened.
        """
        try:
            return super().start()
        except MockWebError as exc:
            raise MockApiError(str(exc)) from exc

    @property
    def port(self) -> int:
        """The port it listens on (0 before :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        assert self._port, "MockApi.url before start()"
        return f"http://{ADDRESS}:{self._port}"

    @property
    def run_url(self) -> str:
        """The URL workers post calls to."""
        return self.url + RUN_PATH

    def statistics(self) -> MockApiStatistics:
        with self._lock:
            return MockApiStatistics(
                calls=self._records_total,
                calls_dropped=self._records_total - len(self._records),
                by_status=dict(sorted(self._by_status.items())),
                keys=len(self._calls),
                keys_executed=len(self._executed),
                connections_open=len(self._open),
                connections_total=self._connections_total,
                handler_errors=self._handler_errors,
            )

    def figures(self) -> CallFigures:
        """The figures of the calls in memory, against the configured limit."""
        return measure_calls(
            self.requests(), rate=self.config.rate, window_ms=self.config.window_ms
        )

    # -- internals ----------------------------------------------------------------------

    def _bind(self) -> None:
        listener = socket.create_server((ADDRESS, self._port_wanted), backlog=BACKLOG)
        listener.setblocking(False)
        self._listeners.append(listener)
        self._port = listener.getsockname()[1]

    def _serve(self, connection: socket.socket, client: tuple[str, int], index: int) -> None:
        del index  # one listener
        # An answer leaves in two writes (head, then body). Without TCP_NODELAY, Nagle
        # holds the body back until the head is acknowledged, and a kept-alive client
        # delays that acknowledgement (40 ms on Linux): every call after a connection's
        # first would take 40 ms more than latency_ms.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _Handler(connection, client, self)  # type: ignore[arg-type]

    def _listener_name(self, index: int) -> str:
        del index  # one listener
        return f"{ADDRESS}:{self._port}"

    def _decide(self, key: str) -> CallFate:
        """Count a call with ``key`` and decide its answer, atomically.

        A key already executed is replayed: answered 200 with its first answer's
        payload, nothing executed. Otherwise the call is answered as
        :func:`planned_status` says, and a 2xx executes the key here, before the answer
        is written, so that a second call of the key arriving in the meantime is a
        replay too. A call with a new key past ``keys_max`` keys is answered 507.
        """
        with self._lock:
            call = self._calls.get(key, 0) + 1
            if call == 1 and len(self._calls) >= self.config.keys_max:
                refused = {"key": key, "call": 0, "error": "unavailable"}
                return CallFate(0, STATUS_TOO_MANY_KEYS, refused, False)
            self._calls[key] = call
            first = self._executed.get(key)
            if first is not None:
                return CallFate(call, 200, {**first, "replayed": True}, True)
            status = planned_status(self.config, key, call)
            payload: dict[str, object] = {"key": key, "call": call}
            payload |= {"ok": True} if 200 <= status < 300 else {"error": "unavailable"}
            if 200 <= status < 300:
                self._executed[key] = payload
            return CallFate(call, status, payload, False)

    def _wait_latency(self) -> None:
        if self.config.latency_ms:
            self._stopping.wait(self.config.latency_ms / 1000)


class _Handler(LoopbackHandler):
    """Reads ``POST /run`` calls on one connection and answers them."""

    server_version = "cpn-mockapi/1"
    server: MockApi  # type: ignore[assignment]

    def do_POST(self) -> None:  # noqa: N802 (the name BaseHTTPRequestHandler dispatches to)
        start_ns = time.monotonic_ns()
        if urlsplit(self.path).path != RUN_PATH:
            self._answer(start_ns, 404, {"error": f"no such path: {self.path[:100]}"}, close=True)
            return
        body, status, problem = self._body()
        if problem:
            self._answer(start_ns, status, {"error": problem}, close=True)
            return
        try:
            call = parse_call(body)
        except MockApiError as exc:
            self._answer(start_ns, STATUS_MALFORMED, {"error": str(exc)})
            return
        api = self.server
        fate = api._decide(call.key)
        api._wait_latency()
        self._answer(start_ns, fate.status, fate.payload, call, fate.call, replayed=fate.replayed)

    def _refuse(self) -> None:
        error = {"error": f"method {self.command} not allowed"}
        self._answer(time.monotonic_ns(), 405, error, close=True)

    def _body(self) -> tuple[bytes, int, str]:
        """The request body, or a status and a problem (the body is then left unread)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b"", 411, "Content-Length required"
        if not raw.isdigit():
            return b"", STATUS_MALFORMED, f"bad Content-Length {raw[:20]!r}"
        if int(raw) > self.server.config.body_bytes_max:
            return b"", 413, f"body over {self.server.config.body_bytes_max} bytes"
        return self.rfile.read(int(raw)), 0, ""

    def _answer(
        self,
        start_ns: int,
        status: int,
        payload: Mapping[str, object],
        call: RunCall | None = None,
        number: int = 0,
        *,
        replayed: bool = False,
        close: bool = False,
    ) -> None:
        """Answer, then log the call. ``close``: the body was not read, and must not be
        parsed as the next request, so the connection closes."""
        if close:
            self.close_connection = True
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        finally:
            self.server._record(
                CallRecord(
                    start_ns=start_ns,
                    end_ns=time.monotonic_ns(),
                    customer=call.customer if call else "",
                    job_id=call.job_id if call else "",
                    attempt=call.attempt if call else -1,
                    key=call.key if call else "",
                    status=status,
                    call=number,
                    replayed=replayed,
                )
            )
