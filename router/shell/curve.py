"""CURVE authentication and encryption of a process's ZeroMQ sockets (SHELL).

Every cluster socket can run ZeroMQ's CURVE mechanism (RFC 26): the serving sockets
(the router's, each shard's) hold the cluster's server keypair, and every connecting
socket (a shard's DEALERs to its peers and the router, a client's) presents its own
keypair and knows the server's public key. A ZAP handler (:class:`Gatekeeper`, one
thread per process, ZeroMQ RFC 27) admits a connecting key only if it is on the
allow-list, and logs each refusal with the peer's address; a refused peer's
handshake fails, so none of its frames reaches the process's loop, let alone the
engine.

Keys are z85 text (40 characters) as ``zmq.auth`` writes them; :mod:`cluster.security`
reads them from files into a :class:`CurveKeys`. Binding anything but loopback needs
keys (:func:`check_exposure`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from nets.errors import CpnError
from router.endpoints import is_loopback

ZAP_DOMAIN: Final = "cpn"
KEY_CHARS: Final = 40  # a z85-encoded Curve25519 key
WATCH_STOP_S: Final = 2.0
# Handshakes that fail before ZAP is asked (a peer without CURVE, a wrong server key).
_HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

log = logging.getLogger("cpn.security")


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """One process's CURVE identity.

    ``public``/``secret``: the keypair it presents (serving sockets use it as the
    server key). ``server_public``: the key of the servers it connects to (the
    cluster's). ``allowed``: public keys admitted by its serving sockets.
    """

    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes
    allowed: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        for name in ("public", "secret", "server_public"):
            value = getattr(self, name)
            assert isinstance(value, bytes), name
            assert len(value) == KEY_CHARS, name


def check_exposure(endpoint: str, host: str, keys: CurveKeys | None) -> None:
    """Refuse to serve ``endpoint`` (whose host is ``host``) off loopback without keys.

    Raises:
        CpnError: the host is not loopback and ``keys`` is None.
    """
    if keys is None and not is_loopback(host.strip("[]")):
        raise CpnError(
            f"refusing to bind {endpoint} without CURVE keys: anything but loopback needs "
            "authentication; configure [security] in the cluster file (`cpn keys generate`)"
        )


def serve_securely(socket: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make ``socket`` (before it binds) a CURVE server whose peers the ZAP handler checks."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True
    socket.zap_domain = ZAP_DOMAIN.encode()


def connect_securely(socket: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make ``socket`` (before it connects) a CURVE client of the cluster's servers."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public


class Gatekeeper(ThreadAuthenticator):
    """The process's ZAP handler: admits allowed CURVE keys, logs and counts the others.

    Start it (:meth:`open`) on the process's context before binding; :meth:`stop` it
    before the context is terminated.
    """

    def __init__(self, context: zmq.Context[Any], keys: CurveKeys) -> None:
        super().__init__(context, log=logging.getLogger("cpn.security.zap"))
        # A cluster process presents the cluster's own key to its peers.
        self.allowed = keys.allowed | {keys.public}
        self.refused = 0
        self.admitted = 0
        self.handshakes_failed = 0
        self._peer = ("?", b"")
        self._watchers: list[threading.Thread] = []

    @classmethod
    def open(cls, context: zmq.Context[Any], keys: CurveKeys) -> Gatekeeper:
        gatekeeper = cls(context, keys)
        gatekeeper.start()
        gatekeeper.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=gatekeeper)
        return gatekeeper

    def callback(self, _domain: str, key: bytes) -> bool:
        """zmq.auth's credentials-provider hook: is this (z85) client key allowed?"""
        return key in self.allowed

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # Remember whom this request is about, for the refusal's log line.
        address = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
        key = msg[6] if len(msg) > 6 and len(msg[6]) == 32 else b""
        self._peer = (address, key)
        await super().handle_zap_message(msg)

    def _send_zap_reply(
        self,
        request_id: bytes,
        status_code: bytes,
        status_text: bytes,
        user_id: str = "anonymous",
    ) -> None:
        if status_code == b"200":
            self.admitted += 1
        else:
            self.refused += 1
            address, key = self._peer
            log.warning(
                "refused a connection from %s (client key %s): %s",
                address,
                zmq.utils.z85.encode(key).decode() if key else "none",
                status_text.decode(errors="replace"),
            )
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def watch(self, socket: zmq.Socket[Any]) -> None:
        """Log handshakes on ``socket`` that fail before ZAP sees them (e.g. no CURVE).

        A thread reads the socket's monitor until the socket is closed.
        """
        monitor = socket.get_monitor_socket(_HANDSHAKE_FAILURES)
        name = socket.getsockopt_string(zmq.LAST_ENDPOINT) or "a socket"

        def run() -> None:
            try:
                while True:
                    event = recv_monitor_message(monitor)
                    if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                        return
                    self.handshakes_failed += 1
                    log.warning(
                        "refused a connection to %s: the handshake failed (%s): a peer "
                        "without CURVE, or with another cluster's server key",
                        name,
                        "protocol error" if event["value"] else "no detail",
                    )
            except zmq.ZMQError:
                return  # the context is going away
            finally:
                monitor.close(linger=0)

        watcher = threading.Thread(target=run, name="cpn-handshake-watch", daemon=True)
        watcher.start()
        self._watchers.append(watcher)

    def stop(self) -> None:
        """Stop the ZAP thread and wait for the watchers (close watched sockets first)."""
        for watcher in self._watchers:
            watcher.join(WATCH_STOP_S)
        super().stop()

    def statistics(self) -> dict[str, int]:
        return {
            "connections_admitted": self.admitted,
            "connections_refused": self.refused,
            "handshakes_failed": self.handshakes_failed,
        }
