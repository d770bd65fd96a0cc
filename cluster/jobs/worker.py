"""The job runner's worker: one API call per leased job (SHELL).

``cpn worker run cluster.jobs.worker:run_job --data DIR`` leases ``Run`` tokens from
the job runner's work queue ``run_queue`` (:mod:`nets.jobs`) on every shard and, per
token, POSTs the job to the API at ``$CPN_JOBS_API_URL/run``::

    {"customer": "c1", "job_id": "j7", "attempt": 0, "key": "c1/j7"}

A 2xx answer completes the token into ``ran``, a replayed one (``"replayed": true``)
included: a replay is the API's answer to a call whose result was lost (an earlier
attempt's worker died after the API executed it, or gave up waiting), so the job did
run, once. Any other answer, a transport error or the request timeout raises, and the
SDK completes the token into the queue's failure place ``failed`` with the error, which
the net retries with backoff (docs/jobs.md).

**What the net needs from this worker** (docs/jobs.md, "Why the window holds at the
API" and "The cap"), and how it gets it:

* *Never send after ``start_at_ms + late_ms``.* The SDK waits for the start time and
  checks the late rule right before it calls :func:`run_job`; a late token completes
  into ``late`` (:func:`refuse_late`) with no call made. Between that check and the
  request's first byte the call waits on this process's event loop (every lock
  httpcore takes lets other tasks run): on a busy worker that wait was 45 ms at the
  median and up to 1.4 s, and calls so delayed broke the limit at the API. So the
  worker checks the rule again in an httpcore trace hook
  (:func:`refuse_when_late`), right before the request's head is written, and aborts
  the request, unsent, if it is late. What remains of the gap is the write itself,
  loopback and the server's accept and parse (1 ms at the median on a busy host, 15 ms
  at the 99th percentile): the transit lag of docs/jobs.md, whose differences between
  two calls the net's ``margin_ms`` covers. A worker far from the API, or an API on a
  busy host, needs a larger ``margin_ms``.
* *Send at most once per lease.* One POST per call of the function: httpx's transport
  makes no retries of its own (``retries=0``), so a retry is always the net's, with a
  new attempt and a new permit.
* *Answer (or time out) before the lease ends*, so that a token is never leased again
  while its first call could still be in progress: a call's deadline is
  ``REQUEST_TIMEOUT_S`` (10 s), cut so that it comes ``LEASE_END_MARGIN_MS`` before the
  lease ends (the default lease, ``LEASE_MS``, is 15 s; a shorter ``--lease`` gives
  shorter deadlines), and a token left less than ``DEADLINE_S_MIN`` is refused as late
  rather than called. The deadline is far longer than an answer takes: a worker that
  gives up on a call the API is still working on frees its slot early, and the job's
  retry is a further call in flight (the cap); the API answers that retry as a replay
  if the first call executed, so it is no second execution.

**The API's URL** is the environment variable ``CPN_JOBS_API_URL`` (e.g.
``http://127.0.0.1:8080``; the worker posts to its ``/run``), read once per worker
process, in the lifespan. It is not a net parameter: the net's parameters are its
policy (``JobsPolicy``, every field checked, unknown ones refused), while the URL is
where this worker host reaches the API, which may differ from host to host.

The job's idempotency key (:func:`job_key`) is ``customer/job_id``, the same for every
attempt: the API recognises a call whose answer was lost (the worker died before
completing) and was made again, and answers it with the first answer instead of
running the job again. A key that included the attempt would defeat that: the retry
would be a new key, and the job would run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from cluster.sdk.context import current
from cluster.sdk.spec import Output, WorkerEnv, to, worker
from nets.errors import CpnError
from nets.jobs import JobsPolicy, Run

API_URL_ENV: Final = "CPN_JOBS_API_URL"
RUN_PATH: Final = "/run"
REQUEST_TIMEOUT_S: Final = 10.0
LEASE_MS: Final = 15_000
# A call's deadline comes at least this long before its lease ends, leaving time to
# complete the lease with its result.
LEASE_END_MARGIN_MS: Final = 1_000
DEADLINE_S_MIN: Final = 1.0  # less left of the lease: refuse rather than call
CONCURRENCY: Final = 64  # leases in progress per worker process (`--concurrency`)
POLLS_PER_SHARD: Final = 4  # a burst of starts decided in one batch is leased at once
BATCH: Final = 4
# httpcore's trace event just before an HTTP/1.1 request's head is written.
SEND_STARTED: Final = "http11.send_request_headers.started"
KEEPALIVE_S: Final = 5.0  # below the mock API's idle timeout (10 s): we close first


class ApiCallFailed(CpnError):
    """The API answered a job's call with something other than 2xx."""


class LateAtSend(CpnError):
    """The late limit passed before the request's first byte was written: not sent."""


@dataclass(frozen=True, slots=True)
class ApiClient:
    """What every call of one worker process shares: the URL and the connection pool."""

    run_url: str
    http: httpx.AsyncClient


_clients: list[ApiClient] = []  # the lifespan's client while the worker runs (one)


def api_url_from(environ: Mapping[str, str]) -> str:
    """The URL calls are posted to, from ``CPN_JOBS_API_URL`` (the API's base URL).

    Raises:
        CpnError: the variable is missing, or not an http(s) URL with a host.
    """
    raw = environ.get(API_URL_ENV, "").strip()
    if not raw:
        raise CpnError(
            f"the job worker needs the API's URL: set {API_URL_ENV} (e.g. "
            f"{API_URL_ENV}=http://127.0.0.1:8080; calls go to its {RUN_PATH})"
        )
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CpnError(
            f"{API_URL_ENV}={raw!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8080)"
        )
    return raw.rstrip("/") + RUN_PATH


@contextlib.asynccontextmanager
async def api_client(env: WorkerEnv) -> AsyncIterator[None]:
    """The worker process's HTTP client, for as long as it runs.

    The pool holds as many connections as the net's ``concurrency``: no worker has more
    calls in progress than the whole cluster may, so a call never waits for one.
    """
    run_url = api_url_from(os.environ)
    # httpx logs every request at INFO: a line per call, and CPU, for nothing the API's
    # own log and the failure tokens do not say.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cap = int(env.params.get("concurrency", JobsPolicy().concurrency))
    limits = httpx.Limits(
        max_connections=cap, max_keepalive_connections=cap, keepalive_expiry=KEEPALIVE_S
    )
    transport = httpx.AsyncHTTPTransport(retries=0, limits=limits)  # one POST per call
    async with httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(REQUEST_TIMEOUT_S)
    ) as http:
        _clients.append(ApiClient(run_url, http))
        try:
            yield
        finally:
            _clients.clear()


def job_key(run: Run) -> str:
    """The job's idempotency key: its customer and id, never its attempt."""
    return f"{run.customer}/{run.job_id}"


def refuse_late(run: Run) -> Output:
    """A token past its late limit (or too close to its lease's end): no call made."""
    return to("late", run)


def refuse_when_late(
    late_at_ms: int,
) -> Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]]:
    """An httpcore trace hook that checks the late rule again right before the request's
    first byte is written, and aborts the request if it is late.

    The SDK checked it before calling :func:`run_job`, but the request can wait on this
    process's event loop after that (every lock httpcore takes is a point where other
    tasks run), and on a busy worker that wait reached hundreds of milliseconds. From
    the hook on, the request is written without yielding to the loop.
    """

    async def trace(event: str, info: dict[str, Any]) -> None:
        del info
        if event == SEND_STARTED and _wall_ms() > late_at_ms:
            raise LateAtSend(f"late at {late_at_ms} ms before the first byte was sent")

    return trace


def call_deadline_s(now_ms: int, lease_expires_at_ms: int) -> float:
    """How long a call starting at ``now_ms`` may take: ``REQUEST_TIMEOUT_S``, cut to
    end ``LEASE_END_MARGIN_MS`` before the lease does (negative: the lease is over)."""
    left_ms = lease_expires_at_ms - LEASE_END_MARGIN_MS - now_ms
    return min(REQUEST_TIMEOUT_S, left_ms / 1000)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@worker(
    place="run_queue",
    key=job_key,
    batch=BATCH,
    concurrency=CONCURRENCY,
    lease_ms=LEASE_MS,
    polls_per_shard=POLLS_PER_SHARD,
    start_field="start_at_ms",
    late_field="late_ms",
    on_late=refuse_late,
    lifespan=api_client,
    name="run_job",
)
async def run_job(run: Run) -> Output:
    """Call the API once for ``run``; ``ran`` on 2xx, a replay of an executed key too.

    Raises:
        ApiCallFailed: the API answered with another status, the call failed in
            transport, or no answer came before its deadline.
    """
    assert _clients, "run_job outside its lifespan"
    client = _clients[0]
    lease = current()
    deadline_s = call_deadline_s(_wall_ms(), lease.expires_at_ms)
    if deadline_s < DEADLINE_S_MIN:
        return refuse_late(run)
    body = {
        "customer": run.customer,
        "job_id": run.job_id,
        "attempt": run.attempt,
        "key": lease.idempotency_key,
    }
    guard = {"trace": refuse_when_late(run.start_at_ms + run.late_ms)}
    try:
        async with asyncio.timeout(deadline_s):  # httpx's own timeouts are per phase
            response = await client.http.post(client.run_url, json=body, extensions=guard)
    except LateAtSend:
        return refuse_late(run)  # not a byte of it left
    except TimeoutError:
        raise ApiCallFailed(f"no answer within {deadline_s:.1f} s") from None
    except httpx.HTTPError as exc:  # the failure token's text names what went wrong
        raise ApiCallFailed(f"{type(exc).__name__} {exc}".strip()) from exc
    if not response.is_success:
        raise ApiCallFailed(f"http {response.status_code}")
    return to("ran", run)
