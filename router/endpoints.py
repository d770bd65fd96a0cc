"""Endpoints: checking where a process may bind (pure).

Every process of a cluster binds a ``tcp://HOST:PORT`` endpoint; port 0 means "any
free port" (the process then publishes the port it got). Anything but a loopback
address needs an explicit ``allow_remote``, so that nothing is served to other hosts
by accident.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from nets.errors import CpnError

_TCP_ENDPOINT: Final = re.compile(
    r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})"
)


def listen_address(endpoint: str, *, allow_remote: bool) -> str:
    """The ZeroMQ bind address for ``endpoint`` (port 0 becomes ``*``, any free port).

    Raises:
        CpnError: not ``tcp://HOST:PORT``, or not loopback without ``allow_remote``.
    """
    match = _TCP_ENDPOINT.fullmatch(endpoint)
    if match is None or int(match["port"]) > 65535:
        raise CpnError(f"endpoint {endpoint!r} must look like tcp://127.0.0.1:PORT")
    host = match["host"]
    if not allow_remote and not is_loopback(host.strip("[]")):
        raise CpnError(
            f"refusing to bind {endpoint}: it is not a loopback address; pass "
            "--allow-remote to serve other hosts"
        )
    port = int(match["port"])
    return f"tcp://{host}:{port if port else '*'}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
