"""CURVE key files: generating, reading, and turning a cluster file's [security] into keys (SHELL).

Key files are those of ``zmq.auth`` (``NAME.key`` holds the public key, ``NAME.key_secret``
both), so keys made with pyzmq's or libzmq's own tools work too. A cluster has one
*server* keypair (the router and the shards serve with it and present it to one
another) and any number of *client* keypairs, whose public keys the allow-list names.
See docs/operations.md, "Keys".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import zmq.auth

from cluster.config import ClusterFile, SecuritySpec
from nets.errors import CpnError
from router.shell.curve import KEY_CHARS, CurveKeys

PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"  # noqa: S105 (a file name suffix, not a password)
ALLOWED_KEYS_MAX: Final = 10_000


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``directory/NAME.key`` (public) and ``NAME.key_secret`` (mode 0600).

    Returns the two paths. Raises:
        CpnError: a key of that name exists already (keys are never overwritten).
    """
    if not name or "/" in name or name.startswith("."):
        raise CpnError(f"key name {name!r} must be a plain file name, e.g. 'server'")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise CpnError(f"{path} exists; keys are never overwritten (remove it or pick --name)")
    # The secret file must never be readable by others, not even for a moment.
    old_umask = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def read_keypair(path: Path) -> tuple[bytes, bytes]:
    """The (public, secret) keys of a ``.key_secret`` file.

    Raises:
        CpnError: the file is missing, unreadable, or holds no secret key.
    """
    public, secret = _load(path)
    if secret is None:
        raise CpnError(f"key file {path} holds no secret key; give the NAME{SECRET_SUFFIX} file")
    return public, secret


def read_public(path: Path) -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file."""
    return _load(path)[0]


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise CpnError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    except (ValueError, zmq.ZMQError) as exc:
        raise CpnError(f"{path} is not a CURVE key file ({exc})") from exc
    if (
        public is None
        or len(public) != KEY_CHARS
        or (secret is not None and len(secret) != KEY_CHARS)
    ):
        raise CpnError(f"{path} is not a CURVE key file (no {KEY_CHARS}-character z85 key)")
    return public, secret


def allowed_keys(paths: tuple[Path, ...]) -> frozenset[bytes]:
    """The public keys named by ``paths``: key files, or directories of ``*.key`` files."""
    keys: set[bytes] = set()
    for path in paths:
        if path.is_dir():
            files = sorted(path.glob(f"*{PUBLIC_SUFFIX}"))
            if not files:
                raise CpnError(f"allowed_clients: directory {path} holds no *{PUBLIC_SUFFIX} file")
        else:
            files = [path]
        keys.update(read_public(f) for f in files)
        if len(keys) > ALLOWED_KEYS_MAX:
            raise CpnError(f"allowed_clients names more than {ALLOWED_KEYS_MAX} keys")
    return frozenset(keys)


def server_public(spec: SecuritySpec) -> bytes:
    """The cluster's public key: from the server key file, else its ``.key`` sibling.

    A client host needs only the public half, so it may have just ``server.key``.
    """
    if spec.server_key.exists():
        return read_public(spec.server_key)
    return read_public(spec.server_key.with_suffix(PUBLIC_SUFFIX))


def server_keys(config: ClusterFile) -> CurveKeys | None:
    """The keys of a cluster process (router or shard); None if the file has no [security]."""
    spec = config.security
    if spec is None:
        return None
    public, secret = read_keypair(spec.server_key)
    return CurveKeys(public, secret, public, allowed_keys(spec.allowed))


def client_keys(config: ClusterFile) -> CurveKeys | None:
    """The keys this host's clients present: ``client_key``, else the server keypair."""
    spec = config.security
    if spec is None:
        return None
    if spec.client_key is None:
        return server_keys(config)
    public, secret = read_keypair(spec.client_key)
    return CurveKeys(public, secret, server_public(spec))
