"""Testing a net: the engine under virtual time, and assertions that fail readably.

:class:`VirtualNet` is the pure engine (:class:`nets.engine.Engine`) with what a test
needs around it: put tokens, take them as a worker would, fire one step, run until the
net is quiescent or until a virtual time, read the marking, and the trace of every step
fired. :func:`virtual_net` builds one from a :class:`~nets.model.Net` or an import path.

The assertions raise :class:`AssertionError` with a message that shows what differs:
:func:`assert_marking` (token counts per place, as a table), :func:`assert_invariants`
(the net's declared invariants on the current marking) and :func:`assert_eventually`
(a condition polled until it holds or a timeout passes).

The pytest plugin (:mod:`cluster.pytest_plugin`, docs/testing.md) hands these out as
fixtures; any test or script may import them directly. This module imports no ``zmq``
and no ``lmdb``: an engine test stays in one process. The real cluster for tests is in
:mod:`cluster.testbed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeVar

from nets.colour import check_token
from nets.engine import Engine, TieBreak
from nets.errors import CpnError, TokenError
from nets.firing import Step
from nets.loader import load_net
from nets.model import Invariant, MarkingView, Net, Place, Token

STEPS_MAX_DEFAULT: Final = 100_000
WAIT_TIMEOUT_S_DEFAULT: Final = 30.0
POLL_INTERVAL_S: Final = 0.05
TOKENS_SHOWN_MAX: Final = 5  # per place, in a failure message
TOKEN_REPR_CHARS_MAX: Final = 120
VALUE_REPR_CHARS_MAX: Final = 2_000  # a probed value in a failure message

T = TypeVar("T")


class HasCounts(Protocol):
    """Anything that reports tokens per place (a :class:`VirtualNet`, a test cluster)."""

    def counts(self) -> Mapping[str, int]: ...


def as_token(place: Place, value: object) -> Token:
    """``value`` as a token of ``place``: a token of its colour set as is; a tuple or
    list as the field values in order; a mapping as the fields by name.

    Raises:
        TokenError: the value does not fit the place's colour set (the message names
            the place and the fields it has).
    """
    colour = place.colour_set
    where = f"place {place.name!r}"
    try:
        if type(value) is colour.cls:
            token: Token = value
        elif isinstance(value, Mapping):
            token = colour.cls(**value)
        elif isinstance(value, tuple | list):
            token = colour.cls(*value)
        else:
            raise TypeError(f"expected a {colour.name}, a tuple or a mapping")
    except TypeError as exc:
        raise TokenError(
            f"{where}: {value!r} is not a {colour.name} token ({exc}); its fields are "
            f"{', '.join(colour.fields)}"
        ) from None
    check_token(colour, token, where=where)
    return token


def marking_view(engine: Engine) -> MarkingView:
    """The engine's marking as invariants see it: each place's tokens, sorted, untimed
    (:data:`nets.model.MarkingView`); pending tokens included."""
    return {
        place: tuple(sorted(token for _time, token in entries))
        for place, entries in engine.marking().items()
    }


class VirtualNet:
    """A net on the pure engine, under virtual time that only this object moves.

    Time starts at 0 ms with the net's initial marking. Nothing here reads a clock, so
    a test of a one-hour cooldown takes as long as the firings it makes.

    Args:
        net: a validated net.
        seed: seeds the random tie break (and nothing else: a net's own seeded choices
            take the seed when it is loaded, see :func:`virtual_net`).
        tie_break: ``"ordered"`` (the default, one total order) or ``"random"``.
        check_invariants: check the net's declared invariants after every step, so a
            violation fails at the step that made it (an :class:`AssertionError` out of
            :meth:`fire` or :meth:`run`, naming the step).
    """

    def __init__(
        self,
        net: Net,
        *,
        seed: int = 0,
        tie_break: TieBreak | str = TieBreak.ORDERED,
        check_invariants: bool = False,
    ) -> None:
        self.net = net
        self.seed = seed
        # A shard watches its work queues so that their delayed tokens come due on time
        # (nets/engine.py, `watch`); so does this, for take() to see them as a lease would.
        queues = [p.name for p in net.places if p.work_queue]
        self.engine = Engine(net, seed=seed, tie_break=tie_break, watch=queues)
        self._trace: list[Step] = []
        self.engine.hooks.append(self._trace.append)
        if check_invariants:
            self.engine.hooks.append(self._check_after)

    def __repr__(self) -> str:
        return f"VirtualNet({self.net.name!r}, t={self.now_ms} ms, {len(self._trace)} steps)"

    # -- time and firing -----------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """The virtual time, in milliseconds."""
        return self.engine.now

    @property
    def trace(self) -> tuple[Step, ...]:
        """Every step fired so far, in order (each with its transition, time, binding,
        and the entries it consumed and produced)."""
        return tuple(self._trace)

    def fire(self) -> Step | None:
        """Fire the preferred enabled binding at the current time, if there is one.

        Returns:
            The step, or ``None`` when nothing is enabled now (time does not move).

        Raises:
            InscriptionError: a guard or output function raised; the marking is unchanged.
            AssertionError: ``check_invariants`` is on and the step violated one.
        """
        return self.engine.fire(self.engine.now)

    def run(
        self,
        *,
        until_ms: int | None = None,
        for_ms: int | None = None,
        steps_max: int = STEPS_MAX_DEFAULT,
    ) -> list[Step]:
        """Fire everything enabled, jump to the next time a token comes due, and repeat.

        With neither ``until_ms`` nor ``for_ms``, run until the net is quiescent
        (:meth:`quiescent`). With ``until_ms`` (or ``for_ms``, relative to now), run to
        that virtual time inclusive and leave the clock there, so that what the test
        does next happens at that time.

        Returns:
            The steps fired by this call, in order.

        Raises:
            CpnError: more than ``steps_max`` steps (a net that never becomes quiescent,
                e.g. a timed cycle, needs ``until_ms``), or a time in the past.
            InscriptionError, AssertionError: as :meth:`fire`.
        """
        if until_ms is not None and for_ms is not None:
            raise CpnError("run() takes until_ms or for_ms, not both")
        if for_ms is not None:
            until_ms = self.engine.now + for_ms
        if until_ms is not None and until_ms < self.engine.now:
            raise CpnError(
                f"cannot run net {self.net.name!r} until t={until_ms} ms: it is at "
                f"t={self.engine.now} ms already"
            )
        fired: list[Step] = []
        now = self.engine.now
        while True:
            step = self.engine.fire(now)
            if step is not None:
                fired.append(step)
                if len(fired) > steps_max:
                    raise CpnError(
                        f"net {self.net.name!r} fired more than {steps_max} steps in one run "
                        f"(now t={self.engine.now} ms, last {step.transition!r}) without "
                        "becoming quiescent; pass until_ms= for a net that never stops, or "
                        "a larger steps_max="
                    )
                continue
            deadline = self.engine.next_deadline()
            if deadline is None or (until_ms is not None and deadline > until_ms):
                break
            now = deadline
        if until_ms is not None:
            self.engine.advance(until_ms)
        return fired

    def advance(self, to_ms: int) -> None:
        """Move the clock to ``to_ms`` without firing (tokens due by then become
        available; what is enabled fires at ``to_ms`` on the next :meth:`fire` or
        :meth:`run`). To let the net act on the way, use ``run(until_ms=...)``.

        Raises:
            CpnError: ``to_ms`` is before the current time.
        """
        if to_ms < self.engine.now:
            raise CpnError(
                f"cannot move net {self.net.name!r} back to t={to_ms} ms from "
                f"t={self.engine.now} ms"
            )
        self.engine.advance(to_ms)

    def quiescent(self) -> bool:
        """Nothing is enabled now and no token is still to come due: the net cannot
        fire again until something is put into it."""
        now = self.engine.now
        return not self.engine.enabled(now) and self.engine.next_deadline() is None

    def enabled(self) -> list[tuple[str, dict[str, Any]]]:
        """Each transition enabled now, with its preferred binding, in conflict order."""
        return self.engine.enabled(self.engine.now)

    # -- the marking ---------------------------------------------------------------------

    def _place(self, name: str) -> Place:
        try:
            return self.net.place(name)
        except KeyError:
            places = ", ".join(p.name for p in self.net.places)
            raise CpnError(
                f"net {self.net.name!r} has no place {name!r} (places: {places})"
            ) from None

    def put(self, place: str, *tokens: object, delay_ms: int = 0) -> None:
        """Put ``tokens`` into ``place``, available ``delay_ms`` after now.

        A token may be given as its colour set's NamedTuple, as a tuple of its field
        values, or as a mapping of its fields by name.

        Raises:
            CpnError: no such place. TokenError: a token does not fit the place (nothing
                of this call was put then).
        """
        where = self._place(place)
        checked = [as_token(where, token) for token in tokens]
        for token in checked:
            self.engine.add(place, token, time=self.engine.now + delay_ms)

    def take(self, place: str, count: int = 1) -> list[Token]:
        """Take the first ``count`` available tokens out of ``place``, as a worker's
        lease of a work queue would (in marking order: earliest first).

        In a cluster a leased token is held until the worker completes it; here the
        test plays the worker: it takes the tokens, then puts the results.

        Raises:
            CpnError: no such place, or fewer than ``count`` tokens are available now
                (nothing is taken then).
        """
        self._place(place)
        entries = self.engine.available(place, count)
        if len(entries) < count:
            raise CpnError(
                f"cannot take {count} tokens from place {place!r} at t={self.engine.now} ms: "
                f"{len(entries)} available of {self.engine.count(place)} in the place"
            )
        for time_ms, token in entries:
            self.engine.remove(place, token, time=time_ms)
        return [token for _time, token in entries]

    def tokens(self, place: str) -> list[Token]:
        """The tokens of ``place`` in marking order (by time, then value), pending
        ones included."""
        self._place(place)
        return [token for _time, token in self.engine.tokens(place)]

    def entries(self, place: str) -> list[tuple[int, Token]]:
        """The entries ``(time_ms, token)`` of ``place``: when each token is (or
        becomes) available."""
        self._place(place)
        return self.engine.tokens(place)

    def count(self, place: str) -> int:
        """How many tokens ``place`` holds, available or pending."""
        self._place(place)
        return self.engine.count(place)

    def counts(self) -> dict[str, int]:
        """Tokens per place, for every place of the net."""
        return dict(self.engine.statistics().tokens)

    def marking(self) -> MarkingView:
        """Each place's tokens, sorted and untimed: what invariants are given."""
        return marking_view(self.engine)

    def _check_after(self, step: Step) -> None:
        __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
        failures = _invariant_failures(self.net.invariants, self.marking())
        if failures:
            raise AssertionError(
                f"step {len(self._trace)} ({step.transition!r} at t={step.time} ms, "
                f"binding {dict(step.binding)!r}) broke net {self.net.name!r}:\n"
                + "\n".join(f"  {line}" for line in failures)
                + "\nmarking after it:\n"
                + describe_marking(self.marking())
            )


def virtual_net(
    net: Net | str,
    *,
    seed: int = 0,
    params: Mapping[str, object] | None = None,
    tie_break: TieBreak | str = TieBreak.ORDERED,
    check_invariants: bool = False,
) -> VirtualNet:
    """A :class:`VirtualNet` of ``net``: a :class:`Net`, or an import path
    ``package.module:attr`` loaded as ``cpn run`` loads it (``seed`` and the net
    parameters ``params`` are passed to a net-building function).

    Raises:
        LoadError, NetDefinitionError: the path does not name a valid net.
        CpnError: ``params`` given with a :class:`Net` (it is built already).
    """
    if isinstance(net, Net):
        if params:
            raise CpnError(
                f"net {net.name!r} is built already: params apply to an import path "
                "('module:attr' naming a function that builds the net)"
            )
        loaded = net
    else:
        loaded = load_net(net, seed=seed, params=params)
    return VirtualNet(loaded, seed=seed, tie_break=tie_break, check_invariants=check_invariants)


# -- assertions -----------------------------------------------------------------------------


def _counts_of(actual: Mapping[str, int] | HasCounts | Engine) -> dict[str, int]:
    if isinstance(actual, Engine):
        return dict(actual.statistics().tokens)
    if isinstance(actual, Mapping):
        return dict(actual)
    return dict(actual.counts())


def assert_marking(
    actual: Mapping[str, int] | HasCounts | Engine, expected: Mapping[str, int]
) -> None:
    """Assert that each place named in ``expected`` holds exactly that many tokens.

    ``actual`` is a mapping of counts (e.g. ``cluster.counts()``), or anything with a
    ``counts()`` method (a :class:`VirtualNet`, a :class:`cluster.testbed.LocalCluster`),
    or an :class:`Engine`. Places not named are not checked.

    Raises:
        AssertionError: a count differs or a place does not exist; the message is a
            table of every place checked, the differing ones marked, with how many
            tokens are missing or extra, and the places not checked.
    """
    __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
    counts = _counts_of(actual)
    rows = []
    wrong = 0
    for place, want in expected.items():
        have = counts.get(place)
        if have is None:
            note, mark = "no such place", "!="
        elif have == want:
            note, mark = "", ""
        else:
            diff = have - want
            note = f"{diff} extra" if diff > 0 else f"{-diff} missing"
            mark = "!="
        wrong += mark != ""
        rows.append((mark, place, str(want), "-" if have is None else str(have), note))
    if not wrong:
        return
    width = max(len("place"), *(len(place) for _m, place, *_rest in rows))
    lines = [
        f"marking differs in {wrong} of {len(rows)} places checked:",
        f"     {'place':<{width}}  expected    actual",
    ]
    for mark, place, want_text, have_text, note in rows:
        line = f"  {mark:2} {place:<{width}}  {want_text:>8}  {have_text:>8}  {note}"
        lines.append(line.rstrip())
    others = sorted(p for p in counts if p not in expected)
    if others:
        lines.append("  not checked: " + ", ".join(f"{p}={counts[p]}" for p in others))
    raise AssertionError("\n".join(lines))


def _short(value: object, chars_max: int = TOKEN_REPR_CHARS_MAX) -> str:
    text = repr(value)
    return text if len(text) <= chars_max else text[: chars_max - 3] + "..."


def describe_marking(marking: MarkingView) -> str:
    """A bounded, readable listing of a marking: per place, its count and first tokens."""
    lines = []
    for place, tokens in marking.items():
        line = f"  {place} ({len(tokens)})"
        if tokens:
            line += ": " + ", ".join(_short(t) for t in tokens[:TOKENS_SHOWN_MAX])
        if len(tokens) > TOKENS_SHOWN_MAX:
            line += f", ... ({len(tokens) - TOKENS_SHOWN_MAX} more)"
        lines.append(line)
    return "\n".join(lines)


def _invariant_failures(invariants: Mapping[str, Invariant], marking: MarkingView) -> list[str]:
    """One line per invariant that does not hold on ``marking`` (empty: all hold).

    Raises:
        AssertionError: an invariant raised (naming it; the exception is its cause).
    """
    __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
    failures = []
    for name, predicate in invariants.items():
        try:
            holds = bool(predicate(marking))
        except Exception as exc:
            # A predicate is user code: whatever it raises is this check's failure.
            raise AssertionError(
                f"invariant {name!r} raised {type(exc).__name__}: {exc}\nmarking:\n"
                + describe_marking(marking)
            ) from exc
        if not holds:
            failures.append(f"invariant {name!r} is violated")
    return failures


def assert_invariants(
    target: VirtualNet | Engine, *, extra: Mapping[str, Invariant] | None = None
) -> None:
    """Assert that the net's declared invariants (``Net(..., invariants=...)``), and
    ``extra`` ones, hold on the current marking (see :func:`marking_view`).

    Raises:
        AssertionError: an invariant is violated or raised; the message names each
            one, the time and step count, and lists the marking.
        CpnError: there is nothing to check (the net declares no invariant and
            ``extra`` is empty).
    """
    __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
    engine = target.engine if isinstance(target, VirtualNet) else target
    net = engine.net
    invariants = {**net.invariants, **(extra or {})}
    if not invariants:
        raise CpnError(
            f"net {net.name!r} declares no invariants and none were passed with extra=: "
            "declare them with Net(..., invariants={name: predicate})"
        )
    marking = marking_view(engine)
    failures = _invariant_failures(invariants, marking)
    if failures:
        raise AssertionError(
            f"net {net.name!r} at t={engine.now} ms after {engine.steps} steps: "
            f"{len(failures)} of {len(invariants)} invariants fail:\n"
            + "\n".join(f"  {line}" for line in failures)
            + "\nmarking:\n"
            + describe_marking(marking)
        )


def assert_eventually(
    probe: Callable[[], T],
    condition: Callable[[T], bool],
    *,
    timeout_s: float = WAIT_TIMEOUT_S_DEFAULT,
    what: str = "the condition",
    interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Call ``probe`` until ``condition`` holds on its value, for at most ``timeout_s``.

    For what happens in other processes (a real cluster, workers): the probe reads the
    state, the condition judges it. Exceptions from ``probe`` are not caught.

    Returns:
        The probe's value that satisfied ``condition``.

    Raises:
        AssertionError: the time passed first; the message names ``what`` and shows
            the last value probed.
    """
    __tracebackhide__ = True  # pytest shows the failure at the caller, not in here
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if condition(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{what} did not hold within {timeout_s} s; last value: "
                f"{_short(value, VALUE_REPR_CHARS_MAX)}"
            )
        time.sleep(interval_s)
