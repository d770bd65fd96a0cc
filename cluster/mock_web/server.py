"""Threaded loopback servers: the scaffolding the mock web and mock proxies share (SHELL).

:class:`~cluster.mock_web.web.MockWeb` and :class:`~cluster.mock_web.proxy.MockProxies` serve
HTTP the same way and differ only in what a connection is handed to; this module holds the
part they share, once, so a fix to the accept loop or to stopping reaches both.

Theory of operation
-------------------
* **One acceptor.** One thread selects over every listening socket and a wake-up socket
  pair; a listener's index in :attr:`LoopbackServers._listeners` is what the subclass's
  :meth:`~LoopbackServers._serve` hook gets, so it can tell the host or proxy apart.
* **Bounded connections.** Each accepted connection gets a daemon handler thread. At most
  ``connections_max`` are open at once: when that many are, the acceptor waits on the lock
  before accepting more, and the kernel's backlog holds the rest.
* **Stopping.** :meth:`LoopbackServers.stop` sets the stop event (which handlers' waits
  watch), wakes the acceptor, shuts every connection the subclass names down, joins every
  thread within one shared deadline, then closes the listeners, the wake-up pair and the
  log file, and raises naming any thread still running.
* **The log.** Handlers hand each answered request to ``_record``: the newest
  ``log_records_max`` stay in memory and each is appended, flushed, to ``log_path``.

One condition variable guards this class's state *and* the subclass's (its own counters,
the proxies' upstream sockets), so a subclass takes ``self._lock`` for its fields too, and
:meth:`LoopbackServers.wait_requests` wakes on any change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Generic, Protocol, Self, TypeVar

from cluster.mock_web.log import Span
from cluster.mock_web.site import MockWebError


class LoggedRecord(Span, Protocol):
    """A request record as the servers' log holds it (RequestRecord, ProxyRecord)."""

    @property
    def status(self) -> int: ...

    def to_json(self) -> dict[str, object]: ...


RecordT = TypeVar("RecordT", bound=LoggedRecord)


def limits_problem(
    kind: str, *, port: int, connections_max: int, log_records_max: int, idle_timeout_s: float
) -> str | None:
    """What is wrong with a server's user options (None: nothing), for the subclass to
    raise as its own error; ``kind`` names the server ("mock web")."""
    if not 0 <= port <= 65535:
        return f"{kind} port={port}: expected 0 .. 65535"
    if connections_max < 1 or log_records_max < 1 or idle_timeout_s <= 0:
        return (
            f"{kind} connections_max={connections_max}, log_records_max="
            f"{log_records_max}, idle_timeout_s={idle_timeout_s}: expected positive values"
        )
    return None


class LoopbackServers(Generic[RecordT]):
    """Listeners on loopback served by one acceptor and a bounded set of handler threads.

    A subclass names itself in the class attributes below, binds its listeners in
    :meth:`_bind`, answers a connection in :meth:`_serve` and names a listener for logs in
    :meth:`_listener_name`; it may add connections for :meth:`stop` to cut
    (:meth:`_connections_to_cut`) and sockets to close (:meth:`_close_listeners`). Its
    handlers log each request with :meth:`_record`.

    Args:
        log_path: a file to append every request to as JSON Lines.
        log_records_max: records kept in memory for :meth:`requests`.
        connections_max: open connections at most, over all listeners.
        idle_timeout_s: a connection idle (or not reading) this long is closed.
    """

    # Fixed per subclass, so class attributes rather than arguments.
    _kind: ClassVar[str]  # the servers in messages, singular: "mock web", "mock proxy"
    _kinds: ClassVar[str]  # the same in "cannot start" messages: "mock proxies"
    _thread_prefix: ClassVar[str]  # threads are PREFIX-accept and PREFIX-conn-N
    _stop_timeout_s: ClassVar[float]  # how long stop() waits for all threads together

    def __init__(
        self,
        *,
        log_path: Path | None,
        log_records_max: int,
        connections_max: int,
        idle_timeout_s: float,
    ) -> None:
        assert log_records_max >= 1, log_records_max  # subclasses validate user options
        assert connections_max >= 1, connections_max
        assert idle_timeout_s > 0, idle_timeout_s
        self._log_path = log_path
        self._connections_max = connections_max
        self._idle_timeout_s = idle_timeout_s
        self._stopping = threading.Event()
        self._lock = threading.Condition()  # guards the fields below and the subclass's
        self._records: deque[RecordT] = deque(maxlen=log_records_max)
        self._records_total = 0
        self._by_status: Counter[int] = Counter()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._connections_total = 0
        self._handler_errors = 0
        self._listeners: list[socket.socket] = []
        self._log_file: IO[str] | None = None
        self._acceptor: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # -- hooks --------------------------------------------------------------------------

    def _bind(self) -> None:
        """Bind and append every listener to ``self._listeners`` (OSError: start fails)."""
        raise NotImplementedError

    def _serve(self, connection: socket.socket, client: tuple[str, int], index: int) -> None:
        """Answer requests on ``connection``, accepted by listener ``index``, until it ends."""
        raise NotImplementedError

    def _listener_name(self, index: int) -> str:
        """Listener ``index`` as a handler failure's log line names it."""
        raise NotImplementedError

    def _announce(self) -> None:
        """Called once every listener is bound, just before the acceptor starts."""

    def _count(self, record: RecordT) -> None:
        """Count ``record`` in the subclass's own statistics (called under the lock)."""

    def _connections_to_cut(self) -> set[socket.socket]:
        """The connections stop() shuts down (called under the lock)."""
        return self._open

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Bind every listener, open the log file and start serving; returns self.

        Raises:
            MockWebError: a listener cannot be bound or the log file cannot be opened;
                nothing is left running.
        """
        assert self._acceptor is None, f"{type(self).__name__}.start() called twice"
        try:
            self._bind()
            if self._log_path is not None:
                self._log_file = self._log_path.open("a", encoding="utf-8")
        except OSError as error:
            self._close_listeners()
            raise MockWebError(f"{self._kinds} cannot start: {error}") from error
        self._announce()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"{self._thread_prefix}-accept"
        )
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join every thread (idempotent).

        Raises:
            MockWebError: naming the threads still running after the stop timeout.
        """
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        with self._lock:
            self._lock.notify_all()
            for connection in self._connections_to_cut():
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        if self._acceptor is not None:
            threads.append(self._acceptor)
        # One deadline for all: stop() returns within the timeout however many threads hang.
        deadline = time.monotonic() + self._stop_timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Closed only once every thread is joined: none of them may still be using these.
        self._close_listeners()
        for end in (self._wake_r, self._wake_w):
            end.close()
        if self._log_file is not None:
            self._log_file.close()
        alive = [thread.name for thread in threads if thread.is_alive()]
        if alive:
            raise MockWebError(
                f"{self._kind} threads still running {self._stop_timeout_s}s after stop: {alive}"
            )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the log ------------------------------------------------------------------------

    def requests(self) -> tuple[RecordT, ...]:
        """The recorded requests by start time (the ``log_records_max`` last recorded).

        A request is recorded when its answer is written, so the log file holds them in
        order of completion; here they are sorted by (start_ns, end_ns).
        """
        with self._lock:
            records = list(self._records)
        return tuple(sorted(records, key=lambda r: (r.start_ns, r.end_ns)))

    def wait_requests(self, count: int, *, timeout_s: float) -> bool:
        """Wait until ``count`` requests were recorded since start; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._records_total >= count, timeout_s)

    def _record(self, record: RecordT) -> None:
        with self._lock:
            self._records.append(record)
            self._records_total += 1
            self._by_status[record.status] += 1
            self._count(record)
            if self._log_file is not None:
                # Flushed per record: a reader of the file sees each request once answered.
                self._log_file.write(json.dumps(record.to_json()) + "\n")
                self._log_file.flush()
            self._lock.notify_all()  # wakes wait_requests()

    # -- internals ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            # The wake-up end carries no data (None): stop() writes to it to end the select.
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for index, listener in enumerate(self._listeners):
                selector.register(listener, selectors.EVENT_READ, index)
            while not self._stopping.is_set():
                with self._lock:
                    self._lock.wait_for(
                        lambda: len(self._open) < self._connections_max or self._stopping.is_set()
                    )
                for key, _ in selector.select():
                    if key.data is not None and not self._stopping.is_set():
                        self._accept(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self, listener: socket.socket, index: int) -> None:
        try:
            connection, client = listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another wake-up took it; select again
        connection.setblocking(True)
        # http.server writes an answer's head and body in separate sends; with Nagle's
        # algorithm the body waits for the client's delayed ACK of the head (~40 ms).
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(connection, client, index),
            name=f"{self._thread_prefix}-conn-{self._connections_total}",
            daemon=True,  # joined by stop(); daemon only so a bug cannot hang the interpreter
        )
        with self._lock:
            self._open.add(connection)
            self._threads.add(thread)
            self._connections_total += 1
        thread.start()

    def _serve_connection(
        self, connection: socket.socket, client: tuple[str, int], index: int
    ) -> None:
        try:
            # Here, not in the handler, so that every connection gets it before any read.
            connection.settimeout(self._idle_timeout_s)
            self._serve(connection, client, index)
        except OSError:
            pass  # the client went away, or stop() shut the connection down
        except Exception:
            # Logged under the subclass's module, where the handler that failed lives.
            logging.getLogger(type(self).__module__).exception(
                "%s handler failed on %s for %s", self._kind, self._listener_name(index), client
            )
            with self._lock:
                self._handler_errors += 1
        finally:
            with contextlib.suppress(OSError):
                connection.close()
            with self._lock:
                self._open.discard(connection)
                self._threads.discard(threading.current_thread())
                self._lock.notify_all()


class LoopbackHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 on one connection a :class:`LoopbackServers` accepted.

    A subclass defines ``do_GET``, ``do_HEAD`` and :meth:`_refuse`, which answers every
    other method (with a logged 405).
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Silenced: the servers keep their own request log."""

    def __getattr__(self, name: str) -> Callable[[], None]:
        # The base class dispatches method M to `do_M` and answers 501, unlogged, when
        # there is none; every method but GET and HEAD gets a logged 405 instead.
        if name.startswith("do_"):
            return self._refuse
        raise AttributeError(name)

    def _refuse(self) -> None:
        raise NotImplementedError
