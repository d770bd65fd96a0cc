"""The event trace of a simulated run: canonical lines, a digest, and determinism checks.

Theory of operation:

* **One line per event.** :meth:`Trace.record` writes ``TIME NODE KIND FIELD...``:
  the virtual time in ms, the node the event happened at, what happened, and its fields
  in a canonical text form (:func:`canonical`): integers in decimal, strings quoted as
  JSON, bytes as hex (a long payload as its length and a BLAKE2b digest, so lines stay
  short but still change with every byte), sequences in brackets, mappings and sets
  sorted by their canonical form, frozen records by field. Nothing in a line depends on
  object identity, on ``id()`` or on ``PYTHONHASHSEED``; a value with no canonical form
  is a programmer error.
* **A running digest.** Every line (with its newline) goes into one BLAKE2b; the
  digest printed at the end of a run names its whole trace: the same seed must give
  the same digest, in any interpreter.
* **Bounded.** The first :data:`LINES_KEPT_MAX` lines are kept (to find where two runs
  diverge and to print the steps that matter); beyond, only the digest and the count
  go on.
* **The steps that matter.** :meth:`Trace.touching` keeps the lines that mention any of
  some needles (a node, a slot, a value in its canonical form), and :func:`shorten`
  cuts a long selection to its head and tail.
* **Determinism.** A *runner* is a module function ``run(seed: int) -> Trace`` named by
  its import path ``package.module:function``. :func:`rerun` runs it in a fresh
  interpreter (``python -m cluster.sim.trace RUNNER SEED``) with another
  ``PYTHONHASHSEED``; the child writes its kept trace lines to its standard output,
  then ``#end COUNT DIGEST``, and nothing else (what the runner prints goes to
  standard error). :func:`compare` finds
  the first event at which two traces differ, and :func:`check_determinism` does both
  for one seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from cluster.sim.rng import derive_seed
from nets.errors import CpnError
from router.wire import REPLIES, REQUESTS, WireFormatError, decode

LINES_KEPT_MAX: Final = 2_000_000
BYTES_INLINE_MAX: Final = 32  # longer bytes appear as their length and digest
SHORT_HEAD: Final = 20
SHORT_TAIL: Final = 20
RERUN_TIMEOUT_S: Final = 600.0
DIGEST_BYTES: Final = 16
END: Final = "#end"


class TraceError(CpnError):
    """A runner that cannot be loaded or run, or a child whose trace cannot be read."""


def canonical(value: object) -> str:
    """The canonical text of ``value`` in a trace line (see the theory of operation).

    Raises:
        AssertionError: ``value`` has no canonical form (a programmer error).
    """
    if value is None:
        return "~"
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) <= BYTES_INLINE_MAX:
            return "x" + data.hex()
        return f"x{len(data)}:{hashlib.blake2b(data, digest_size=8).hexdigest()}"
    if isinstance(value, Enum):
        return f"{type(value).__name__}.{value.name}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = ",".join(
            f"{f.name}={canonical(getattr(value, f.name))}" for f in dataclasses.fields(value)
        )
        return f"{type(value).__name__}({inner})"
    if isinstance(value, tuple | list):
        return "[" + ",".join(canonical(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = sorted(f"{canonical(k)}:{canonical(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, set | frozenset):
        return "{" + ",".join(sorted(canonical(item) for item in value)) + "}"
    raise AssertionError(f"no canonical trace form for {type(value).__name__}: {value!r}")


def wire_view(payload: bytes) -> object:
    """How a frame encoded by ``router/wire.py`` appears in a trace line.

    Its decoded :class:`~router.wire.Envelope` (the message with its fields, the
    message id and the sender's incarnation), or ``["undecodable", why]`` for a frame
    that does not decode: the world's ``describe`` for the whole-cluster runner.
    """
    try:
        return decode(payload)
    except WireFormatError as exc:
        return ("undecodable", str(exc))


_MESSAGE_NAMES: Final = {cls.TYPE: cls.__name__ for cls in (*REQUESTS, *REPLIES)}
_FRAME_HEADER: Final = 0x95  # a frame is a msgpack array of five: version, type, ...


def wire_summary(payload: bytes) -> str:
    """A frame in a trace line, cheaply: its message type and a digest of its bytes.

    The digest pins every field, so the trace's digest still tells two runs apart
    wherever a frame differs; :func:`wire_view` shows the fields when a failing seed is
    replayed. Decoding every frame for the trace cost a fifth of a simulated run.
    """
    code = payload[2] if len(payload) > 2 and payload[0] == _FRAME_HEADER else -1
    name = _MESSAGE_NAMES.get(code, "frame")
    return f"{name}#{hashlib.blake2b(payload, digest_size=6).hexdigest()}"


class Trace:
    """The trace of one run: its lines (the first :data:`LINES_KEPT_MAX`) and digest."""

    def __init__(self, *, lines_kept_max: int = LINES_KEPT_MAX) -> None:
        self._hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        self._lines: list[str] = []
        self._count = 0
        self._lines_kept_max = lines_kept_max
        self._digest_told: str | None = None  # a child's digest, when it kept fewer lines

    @classmethod
    def from_lines(
        cls, lines: Iterable[str], *, count: int | None = None, digest: str | None = None
    ) -> Trace:
        """A trace of lines already rendered (a child's output).

        ``count`` and ``digest`` are the child's, for a trace longer than the lines it
        kept; they are taken as told.
        """
        trace = cls()
        for line in lines:
            trace._add(line)
        if count is not None and count != trace._count:
            assert count > trace._count
            trace._count = count
            trace._digest_told = digest
        return trace

    def record(self, time_ms: int, node: str, kind: str, *fields: object) -> None:
        """Add the event ``kind`` at ``node`` at ``time_ms`` with ``fields``."""
        assert " " not in node, f"node {node!r} has a space"
        assert " " not in kind, f"kind {kind!r} has a space"
        parts = [str(time_ms), node, kind, *(canonical(f) for f in fields)]
        self._add(" ".join(parts))

    def _add(self, line: str) -> None:
        assert "\n" not in line, f"a trace line has a newline: {line!r}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self._count += 1
        if len(self._lines) < self._lines_kept_max:
            self._lines.append(line)

    def __len__(self) -> int:
        return self._count

    def digest(self) -> str:
        """The hex BLAKE2b digest of every line so far (each with its newline)."""
        return self._digest_told or self._hash.hexdigest()

    @property
    def complete(self) -> bool:
        """Every line is kept (none was left out past :data:`LINES_KEPT_MAX`)."""
        return len(self._lines) == self._count

    def end_line(self) -> str:
        """``#end COUNT DIGEST``: how a child ends its output (the whole trace's facts)."""
        return f"{END} {self._count} {self.digest()}"

    def lines(self) -> tuple[str, ...]:
        return tuple(self._lines)

    def to_bytes(self) -> bytes:
        """The kept lines, each ending in a newline (the whole trace when complete)."""
        return "".join(line + "\n" for line in self._lines).encode()

    def touching(self, *needles: str) -> list[tuple[int, str]]:
        """``(index, line)`` of every kept line that contains any of ``needles``.

        Pass a node's name, ``canonical(value)`` for a token, or a slot's number as it
        is written in the lines, to see only the steps that touched it.
        """
        return [(i, line) for i, line in enumerate(self._lines) if any(n in line for n in needles)]


def shorten(
    indexed: Sequence[tuple[int, str]], *, head: int = SHORT_HEAD, tail: int = SHORT_TAIL
) -> list[str]:
    """``#index line`` for the first ``head`` and last ``tail`` entries, and a gap line."""
    rendered = [f"#{i} {line}" for i, line in indexed]
    if len(rendered) <= head + tail:
        return rendered
    return [*rendered[:head], f"... {len(rendered) - head - tail} lines ...", *rendered[-tail:]]


# -- determinism -----------------------------------------------------------------------------

Runner = Callable[[int], Trace]


@dataclass(frozen=True, slots=True)
class Divergence:
    """Two traces of one seed part at event ``index`` (None: that trace had ended)."""

    index: int
    ours: str | None
    theirs: str | None

    def __str__(self) -> str:
        return (
            f"first divergence at event #{self.index}:\n"
            f"  ours:   {self.ours}\n"
            f"  theirs: {self.theirs}"
        )


@dataclass(frozen=True, slots=True)
class DeterminismReport:
    """One seed run here and again in fresh interpreters, one per ``PYTHONHASHSEED``."""

    runner: str
    seed: int
    digest: str
    events: int
    reruns: tuple[tuple[int, str, Divergence | None], ...]  # (hash seed, digest, where)

    @property
    def ok(self) -> bool:
        return all(
            divergence is None and digest == self.digest for _, digest, divergence in self.reruns
        )

    def __str__(self) -> str:
        lines = [f"seed {self.seed}: {self.events} events, digest {self.digest}"]
        for hash_seed, digest, divergence in self.reruns:
            verdict = "same" if divergence is None and digest == self.digest else "DIFFERENT"
            lines.append(f"  PYTHONHASHSEED={hash_seed}: digest {digest} ({verdict})")
            if divergence is not None:
                lines.append("  " + str(divergence).replace("\n", "\n  "))
        return "\n".join(lines)


def load_runner(path: str) -> Runner:
    """The function named by ``package.module:function``.

    Raises:
        TraceError: the path is malformed, the module does not import, or the
            attribute is missing or not callable.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise TraceError(f"runner {path!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TraceError(f"runner {path!r}: cannot import {module_name!r}: {exc}") from exc
    runner = getattr(module, attr, None)
    if not callable(runner):
        raise TraceError(f"runner {path!r}: {module_name} has no function {attr!r}")
    return runner  # type: ignore[no-any-return]


def compare(ours: Trace, theirs: Trace) -> Divergence | None:
    """The first event at which the traces differ; None when they are the same.

    When the traces differ only past the lines both kept, the divergence is placed at
    the first line not kept, with both lines unknown.
    """
    if ours.digest() == theirs.digest() and len(ours) == len(theirs):
        return None
    a, b = ours.lines(), theirs.lines()
    for index, (line_a, line_b) in enumerate(zip(a, b, strict=False)):
        if line_a != line_b:
            return Divergence(index, line_a, line_b)
    index = min(len(a), len(b))
    if ours.complete and theirs.complete:
        return Divergence(
            index, a[index] if index < len(a) else None, b[index] if index < len(b) else None
        )
    return Divergence(index, None, None)


def other_hash_seed(seed: int, attempt: int = 0) -> int:
    """A ``PYTHONHASHSEED`` for rerun ``attempt`` of ``seed``, never this process's own."""
    own = os.environ.get("PYTHONHASHSEED", "")
    value = 1 + derive_seed(seed, "pythonhashseed", attempt) % (2**32 - 2)
    return value + 1 if str(value) == own else value


def rerun(path: str, seed: int, *, hash_seed: int, timeout_s: float = RERUN_TIMEOUT_S) -> Trace:
    """Run ``path`` for ``seed`` in a fresh interpreter with ``PYTHONHASHSEED=hash_seed``.

    Raises:
        TraceError: the child failed (its standard error's last lines are quoted) or
            did not finish within ``timeout_s``.
    """
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = str(hash_seed)
    # The child imports what this process imports: the same search path, first.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cluster.sim.trace", path, str(seed)],
            env=env,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TraceError(f"rerun of {path} seed {seed} took longer than {timeout_s:g} s") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.decode(errors="replace").strip().splitlines()[-3:])
        raise TraceError(f"rerun of {path} seed {seed} exited {done.returncode}: {tail}")
    lines = done.stdout.decode().splitlines()
    end = lines.pop().split(" ") if lines else []
    if len(end) != 3 or end[0] != END or not end[1].isdigit():
        raise TraceError(f"rerun of {path} seed {seed}: its output does not end in {END!r}")
    return Trace.from_lines(lines, count=int(end[1]), digest=end[2])


def check_determinism(
    path: str, seed: int, *, reruns: int = 1, local: Trace | None = None
) -> DeterminismReport:
    """Run ``seed`` here (unless ``local`` is its trace) and in ``reruns`` fresh interpreters.

    Raises:
        TraceError: the runner cannot be loaded, or a rerun failed.
    """
    if local is None:
        local = load_runner(path)(seed)
    results = []
    for attempt in range(reruns):
        hash_seed = other_hash_seed(seed, attempt)
        theirs = rerun(path, seed, hash_seed=hash_seed)
        results.append((hash_seed, theirs.digest(), compare(local, theirs)))
    return DeterminismReport(path, seed, local.digest(), len(local), tuple(results))


def main(argv: Sequence[str]) -> int:
    """The child of :func:`rerun`: ``python -m cluster.sim.trace RUNNER SEED``."""
    if len(argv) != 2:
        print("usage: python -m cluster.sim.trace package.module:function SEED", file=sys.stderr)
        return 2
    runner = load_runner(argv[0])
    with contextlib.redirect_stdout(sys.stderr):  # the runner's prints must not mix in
        trace = runner(int(argv[1]))
    sys.stdout.buffer.write(trace.to_bytes())
    sys.stdout.buffer.write(trace.end_line().encode() + b"\n")
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
