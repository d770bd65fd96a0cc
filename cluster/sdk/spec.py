"""What a worker is: a function over one work-queue token, and how it is run (PURE).

``@worker(place="resize_queue", key=lambda job: job.id)`` turns a function into a
:class:`WorkerSpec`: the function itself (still callable as before, so a unit test calls
it directly) plus what the runner (:mod:`cluster.sdk.runner`) needs to lease its work
from every shard, run it, and complete each token with what it returned.

* **The function** takes one leased token (a NamedTuple of the queue's colour set) and
  returns the tokens to produce: one token, a list of them, ``None`` for none, or
  :func:`to` records that name the place. Plain tokens go to the declared result place
  of their colour (the queue declares ``results=``, see docs/language.md). ``async def``
  functions run on the worker's event loop; plain ones on a thread pool.
* **It raises**: the runner completes the token with a *failure token* instead, which
  the net may retry with backoff (docs/language.md, "Failures and retries"): built by
  ``on_error(token, exc)``, or, by default, into the queue's declared ``failures``
  place, whose colour is the queue's fields followed by one ``str`` field (the error).
* **The idempotency key** of a token is the same across retries, restarts and lease
  expiry: ``key(token)``, by default a digest of the token's fields without its
  ``attempt`` field (a retry of the same job keeps its key). The function reads it
  from :func:`cluster.sdk.context.current`, to pass it to the service it calls.
* **Start times**: with ``start_field`` and ``late_field``, the runner waits until the
  token's start time (wall-clock ms, the shards' clock) and refuses to call the
  function when it is later than start + late: the token completes with
  ``on_late(token)`` instead, as the crawler refuses a late fetch.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final

from nets.codec import pack
from nets.errors import CpnError

ATTEMPT_FIELD: Final = "attempt"  # the field the default idempotency key leaves out
KEY_DIGEST_CHARS: Final = 32
LEASE_MS_DEFAULT: Final = 30_000
CONCURRENCY_DEFAULT: Final = 8
BATCH_MAX: Final = 1_000


@dataclass(frozen=True, slots=True)
class Output:
    """A token for a named place (``to("failed", Failed(...))``)."""

    place: str
    token: tuple[Any, ...]


def to(place: str, token: tuple[Any, ...]) -> Output:
    """Produce ``token`` into ``place`` (one of the queue's declared results): for a
    place whose colour another declared result shares, or to say so explicitly."""
    return Output(place, token)


@dataclass(frozen=True, slots=True)
class WorkerEnv:
    """What a worker's ``lifespan`` gets: the net's parameters and the shard count."""

    params: Mapping[str, Any]
    shards: int


Lifespan = Callable[[WorkerEnv], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class WorkerSpec:
    """A function and how to run it against a work queue (see the module docstring).

    Args:
        function: one token in, the tokens to produce out (or ``many``: a list in, a
            list of results out, one per token, in order).
        place: the work-queue place it leases from.
        key: the idempotency key of a token (default: its fields without ``attempt``).
        batch: tokens per lease; each is completed on its own as its call returns.
        many: call the function once per lease with all its tokens (a store that
            writes a batch with one fsync); the lease completes at once.
        concurrency: leases worked on at once per worker process (``--concurrency``).
        lease_ms: how long a lease lasts; heartbeats renew it while the function runs.
        polls_per_shard: long polls waiting at once on each shard.
        start_field, late_field: the token's start time and late allowance (ms).
        on_late: the results of a token refused as late (required with start_field).
        on_error: the results of a token whose call raised (default: a failure token).
        lifespan: an async context manager entered once per worker process around
            the whole run (open a client, warm a connection pool...).
        on_completed: called on the worker's loop with the results of a completion
            once the shard has taken it (committed), never for one refused or lost.
    """

    function: Callable[..., Any]
    place: str
    key: Callable[[Any], object] | None = None
    batch: int = 1
    many: bool = False
    concurrency: int = CONCURRENCY_DEFAULT
    lease_ms: int = LEASE_MS_DEFAULT
    polls_per_shard: int = 1
    start_field: str | None = None
    late_field: str | None = None
    on_late: Callable[[Any], Any] | None = None
    on_error: Callable[[Any, BaseException], Any] | None = None
    lifespan: Lifespan | None = None
    name: str = field(default="")
    on_completed: Callable[[tuple[tuple[str, tuple[Any, ...]], ...]], None] | None = None

    def __post_init__(self) -> None:
        where = f"worker {self.name or getattr(self.function, '__qualname__', '?')!r}"
        if not 1 <= self.batch <= BATCH_MAX:
            raise CpnError(f"{where}: batch must be in 1..{BATCH_MAX}, got {self.batch}")
        if self.concurrency < 1 or self.polls_per_shard < 1 or self.lease_ms < 1:
            raise CpnError(f"{where}: concurrency, polls_per_shard and lease_ms must be >= 1")
        if (self.start_field is None) != (self.late_field is None):
            raise CpnError(f"{where}: give start_field and late_field together")
        if self.start_field is not None and self.on_late is None:
            raise CpnError(f"{where}: a worker with start times needs on_late=")
        if self.many and self.start_field is not None:
            raise CpnError(f"{where}: many=True and start times do not mix")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (a unit test calls a worker like a function)."""
        return self.function(*args, **kwargs)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    @property
    def title(self) -> str:
        return self.name or f"{self.function.__module__}:{self.function.__qualname__}"

    def idempotency_key(self, token: tuple[Any, ...]) -> str:
        """The key that stays the same across retries, restarts and lease expiry."""
        if self.key is not None:
            return str(self.key(token))
        return default_key(self.place, token)


def default_key(place: str, token: tuple[Any, ...]) -> str:
    """A digest of ``place`` and the token's fields, its ``attempt`` field left out."""
    names: Sequence[str] = getattr(token, "_fields", ())
    kept = tuple(v for n, v in zip(names, token, strict=True) if n != ATTEMPT_FIELD)
    digest = hashlib.blake2b(pack((place, kept if names else tuple(token))), digest_size=16)
    return digest.hexdigest()[:KEY_DIGEST_CHARS]


def worker(
    place: str,
    *,
    key: Callable[[Any], object] | None = None,
    batch: int = 1,
    many: bool = False,
    concurrency: int = CONCURRENCY_DEFAULT,
    lease_ms: int = LEASE_MS_DEFAULT,
    polls_per_shard: int = 1,
    start_field: str | None = None,
    late_field: str | None = None,
    on_late: Callable[[Any], Any] | None = None,
    on_error: Callable[[Any, BaseException], Any] | None = None,
    lifespan: Lifespan | None = None,
    name: str = "",
) -> Callable[[Callable[..., Any]], WorkerSpec]:
    """Declare a worker of the work queue ``place`` (see :class:`WorkerSpec`).

    Raises:
        CpnError: the options contradict each other (named in the message).
    """

    def declare(function: Callable[..., Any]) -> WorkerSpec:
        return WorkerSpec(
            function, place, key, batch, many, concurrency, lease_ms, polls_per_shard,
            start_field, late_field, on_late, on_error, lifespan, name,
        )  # fmt: skip

    return declare


def as_outputs(returned: object) -> Iterable[Output | tuple[Any, ...]]:
    """A function's return value as a sequence of outputs (``None``: none)."""
    if returned is None:
        return ()
    if isinstance(returned, Output):
        return (returned,)
    if isinstance(returned, tuple) and hasattr(returned, "_fields"):
        return (returned,)  # one token (a NamedTuple)
    if isinstance(returned, list | tuple):
        return returned
    raise CpnError(
        f"a worker returns a token, a list of tokens, to(place, token) records or None; "
        f"got {type(returned).__name__}"
    )
