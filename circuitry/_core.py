"""The breaker: a pure, synchronous state machine.

No I/O, no awaiting, no user code under the lock. Every face drives a breaker through one entry and
one exit: :meth:`~Gate.enter` hands out a token (or raises :class:`CircuitOpenError`) and
:meth:`~Gate.exit` reports how the call ended — the outcome rule lives there and in
:meth:`CircuitBreaker._exit_slow`, nowhere else.

The hot path — a closed breaker with only the consecutive-failure rule — takes no lock at all: the
token is the generation number, a success is one atomic counter increment, and the lock is taken only
when there is state to change. That lock-free front is the breaker's base class, :class:`Gate`
(:mod:`circuitry._fastpath`, or its C twin: :mod:`circuitry._accel` chooses).

This module is over 500 lines because the state machine is one lock's worth of code: every method
below changes state under ``_lock``, and splitting them would spread one invariant over two files.
"""

from __future__ import annotations

import builtins
import inspect
import itertools
import math
import random
import sys
import threading
import unicodedata
import warnings
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from circuitry._accel import NO_RESULT, Gate
from circuitry._checks import check_clock, check_rng
from circuitry._clock import Clock
from circuitry._fastpath import count_value, not_started
from circuitry._policy import MAX_DURATION, Policy
from circuitry._state import CircuitState
from circuitry._window import CountWindow, TimeWindow
from circuitry.events import (
    Dispatcher,
    Event,
    EventKind,
    either,
    hold_dispatchers,
    never,
    release_dispatchers,
    report_error,
)
from circuitry.exceptions import CircuitOpenError, ConfigurationError

__all__ = ["LATENCY_BUCKETS", "BreakerStats", "CircuitBreaker", "Counts", "Permit", "SharedState", "StoreLink",
           "call_through", "is_async_callable", "not_started", "validate_name"]

CLOSED: Final = CircuitState.CLOSED
OPEN: Final = CircuitState.OPEN
HALF_OPEN: Final = CircuitState.HALF_OPEN
FORCED_OPEN: Final = CircuitState.FORCED_OPEN
DISABLED: Final = CircuitState.DISABLED

_MESSAGE_LIMIT: Final = 500
_GROUP: Final[type[BaseException] | None] = getattr(builtins, "BaseExceptionGroup", None)  # (Python 3.11+)
#: Upper bounds (seconds) of the call-latency histogram's buckets (Prometheus client's defaults).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MAX_NAME_LENGTH: Final = 200


# Characters a name may not hold: they can rewrite a terminal line or reorder what a reader sees
# (C0/C1 controls, line and paragraph separators, bidirectional overrides and isolates), or cannot be
# written to a database at all (lone surrogates).
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


def validate_name(name: object) -> str:
    """A breaker name: a non-empty ``str`` of at most 200 characters that encodes to UTF-8, with no
    control characters (C0 or C1), line separators or bidirectional controls.

    Raises:
        ConfigurationError: The name is not one (the message says why, with the offending character).
    """
    if not isinstance(name, str):
        if callable(name):
            raise ConfigurationError(
                f"circuit() takes the circuit's name first: write @circuit(\"name\"), got {name!r}")
        raise ConfigurationError(f"name must be a str, got {name!r} ({type(name).__name__})")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(f"name must be 1 to {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not name.isprintable():  # every refused character is unprintable: the usual name is accepted at once
        for c in name:
            if c in _BIDI or unicodedata.category(c) in _REFUSED_CATEGORIES:
                raise ConfigurationError(
                    f"name must not contain control, separator or bidirectional characters, got "
                    f"U+{ord(c):04X} in {name!r}")
    return name


# circuitry/store/_sqlite.py imports this name; the store's rewrite reads Counts through counts().
_count_value = count_value


class Counts(NamedTuple):
    """Every call a breaker has seen, by outcome (exact under any number of threads)."""

    successes: int
    failures: int
    ignored: int
    rejected: int
    cancelled: int


class StoreLink(Protocol):
    """What a breaker calls on the store that persists it (see :meth:`CircuitBreaker.link`).

    Every method is in-memory and non-blocking: the breaker calls them on the protected call's thread,
    :meth:`take_probe` under its own lock. All I/O belongs to the store's threads.
    """

    #: Where the breaker appends each counted failure's exception (bounded: a ``deque`` with a
    #: ``maxlen``; a full log takes no more until the store drains it, so no old exception is freed on
    #: the caller's thread and the counters say how many it missed), or ``None`` when the store does not
    #: keep failure rows.
    failure_log: deque[BaseException] | None

    def take_probe(self) -> int | None:
        """A half-open probe wants to start: a lease id (> 0) this process holds for it, ``0`` to decide
        from memory (the store cannot coordinate now), or ``None`` to refuse the call (no lease free
        here now; the store notes the demand)."""
        ...

    def probe_retry_after(self) -> float:
        """Seconds a caller refused by :meth:`take_probe` should wait (a hint for ``retry_after``)."""
        ...

    def probe_done(self, lease: int) -> None:
        """The probe holding ``lease`` finished, was cancelled, or outlived its lease."""
        ...

    def transitioned(self, event: Event) -> None:
        """A transition this breaker made (not one adopted from the store), in order."""
        ...


class Permit:
    """An admission that is not the plain closed-state one: a half-open probe, a call a
    metrics-only breaker would have rejected (``shadow``), a call through a disabled breaker, or any
    call of a breaker that times its calls (``started``).

    Plain closed-state admissions are represented by the bare generation number (an ``int``) inside
    circuitry; :meth:`CircuitBreaker.admit` wraps those too, for code that drives a breaker by hand.
    """

    __slots__ = ("closed", "generation", "lease", "probe", "shadow", "started")

    def __init__(self, generation: int, probe: int | None = None, shadow: bool = False,
                 closed: bool = False, lease: int = 0, started: float | None = None) -> None:
        self.generation = generation
        self.probe = probe
        self.shadow = shadow
        self.closed = closed  # a plain closed-state admission, wrapped by admit() or timed
        self.lease = lease  # a probe's lease in the store (0: none)
        self.started = started  # the monotonic time the call started, when the breaker times calls

    def __repr__(self) -> str:
        kind = "probe" if self.probe is not None else "shadow" if self.shadow else \
            "closed" if self.closed else "uncounted"
        return f"<Permit {kind} generation={self.generation}>"


def _plain(permit: Token) -> Token:
    """Unwrap what admit() wrapped: a closed-state Permit is its generation number."""
    if type(permit) is not int and permit.closed:  # type: ignore[union-attr]
        return permit.generation  # type: ignore[union-attr]
    return permit


Token = int | Permit

# One generator for every breaker's jitter: a Random holds 2.5 KB of state, more than a whole idle breaker.
_JITTER_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class SharedState:
    """What a store persists of a breaker (wall-clock times, for other processes and later runs)."""

    state: CircuitState
    generation: int
    opened_at: float | None
    open_until: float | None
    open_for: float
    reopens: int
    consecutive_failures: int
    reason: str  # why the latest transition happened ("manual", "failure_threshold", ...)


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A consistent snapshot of a breaker's counters and state.

    ``successes + failures + ignored + rejected + cancelled`` is every call ever attempted.
    """

    name: str
    state: CircuitState
    generation: int
    consecutive_failures: int
    successes: int
    failures: int
    ignored: int
    rejected: int
    cancelled: int
    would_reject: int
    opened_at: float | None
    retry_after: float | None
    probes_in_flight: int

    @property
    def calls(self) -> int:
        return self.successes + self.failures + self.ignored + self.rejected + self.cancelled


class CircuitBreaker(Gate):
    """One named circuit.

    Usually obtained from a registry (``circuit("name").breaker`` or ``registry.get("name")``); it can
    also be built standalone: ``CircuitBreaker("payments", failure_threshold=3)``.

    Code that drives a breaker by hand uses the one entry and exit every face uses::

        token = breaker.enter()              # raises CircuitOpenError when refused
        try:
            result = do_the_call()
        except BaseException as exc:
            breaker.exit(token, exc)         # a failure, ignored, or cancelled: the policy decides
            raise
        breaker.exit(token, None, result)    # a success (unless result_is_failure says otherwise)

    Args:
        name: The circuit's name (1 to 200 characters, UTF-8, no control or bidirectional characters).
        policy: A :class:`Policy`; or give its fields as keyword arguments.
        clock: Where time comes from (default: the system's monotonic and wall clocks).
        dispatcher: Where events go (registries pass theirs; standalone breakers emit to nobody).
        rng: Random source for jitter (inject a seeded ``random.Random`` in tests).

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_classify",
        "_dispatch",
        "_enforce",
        "_lat_buckets",
        "_lat_max",
        "_lat_n",
        "_lat_sum",
        "_lat_total",
        "_link",
        "_lock",
        "_n_shadow",
        "_open_for",
        "_policy",
        "_probe_ok",
        "_probe_seq",
        "_probes",
        "_reason",
        "_reopens",
        "_rng",
        "_state",
        "_timed",
        "_wall",
        "_window",
        "clock",
        "given_policy",
    )

    def __init__(self, name: str, policy: Policy | None = None, *, clock: Clock | None = None,
                 dispatcher: Dispatcher | None = None, rng: random.Random | None = None,
                 **policy_kwargs: Any) -> None:
        name = validate_name(name)
        if policy is None:
            policy = Policy.from_kwargs(policy_kwargs)
        elif policy_kwargs:
            raise ConfigurationError("give a Policy or keyword arguments, not both")
        elif not isinstance(policy, Policy):
            raise ConfigurationError(f"policy must be a Policy, got {policy!r}")
        clock = check_clock(clock)
        rng = check_rng(rng)
        super().__init__(name, clock.monotonic, CircuitOpenError)
        self.clock = clock
        self._wall: Callable[[], float] = clock.time
        self._dispatch = dispatcher if dispatcher is not None else Dispatcher()
        self._dispatch.watch(self)
        self._rng = rng if rng is not None else _JITTER_RNG
        self._lock = threading.Lock()
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._n_shadow = itertools.count()
        self._state = CLOSED
        self._enforce = True
        self._open_for = 0.0
        self._reopens = 0
        self._reason = "initial"
        self._lat_n, self._lat_sum, self._lat_max = 0, 0.0, 0.0  # timed calls, for latency rollups
        self._lat_buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # timed calls per bucket since made (+Inf last)
        self._lat_total = 0.0  # ... and their seconds (_lat_n and _lat_sum restart at each take_latency())
        self._probes: dict[int, float] = {}
        self._probe_seq = 0
        self._probe_ok = 0
        self._link: StoreLink | None = None  # the store's link, when persistence is attached
        #: The policy the application gave (a registry keeps it up to date; the defaults for a breaker a
        #: lookup without a policy made): ``policy`` differs from it after an automatic adjustment.
        self.given_policy: Policy = policy
        self._apply_policy(policy)

    # -- configuration ------------------------------------------------------------------------------

    def _apply_policy(self, policy: Policy) -> None:
        self._policy = policy
        self._classify = policy.is_failure()
        self._timed = policy.timed
        self._thr1 = policy.failure_threshold - 1
        self._window = self._new_window()
        self._update_fast()

    def _new_window(self) -> CountWindow | TimeWindow | None:
        p = self._policy
        if p.window_size is not None:
            return CountWindow(p.window_size)
        if p.window_duration is not None:
            return TimeWindow(p.window_duration)
        return None

    def _update_fast(self) -> None:
        # ``_fast`` tells the gate, in one read, what it may decide alone: the generation number
        # (>= 0) while the breaker is closed and its only rule is consecutive failures (admit and count
        # a success with no lock); -2 for an enforcing open breaker whose rejections nobody listens to
        # (refuse with no lock); -1 for the rest.
        if self._state is CLOSED:
            lean = self._window is None and self._policy.result_is_failure is None and not self._timed
            self._fast = self._gen if lean else -1
        else:
            plain_open = self._state is OPEN and self._enforce and self._dispatch.listen_rejection is not None
            self._fast = -2 if plain_open else -1
        # ``_fail_types``: the exception types the gate may count as failures itself (appending them to
        # the store's failure log) — when classification is an isinstance check, no window needs the
        # call, the open period needs nothing from the exception and no hook wants failure events.
        # It depends on none of the state: a token of the current generation says the rest.
        p = self._policy
        on = p.on
        inline = (isinstance(on, type | tuple) and p.retry_after is None and self._window is None
                  and self._dispatch.listen_failure is not None)
        # Refusal and failure hooks that say when they listen (``listening``) leave those paths inline:
        # the gate asks them per call and leaves a call they want to the slow path, which builds the event.
        rej, fail = self._dispatch.listen_rejection, self._dispatch.listen_failure
        listen = fail if rej is None else rej if fail is None else either(rej, fail)
        self._listen = None if listen is None or listen is never else listen
        # (an empty tuple matches nothing: the gate then takes the general path, with one check less)
        self._fail_types = on if inline else ()  # type: ignore[assignment]

    def _hooks_changed(self) -> None:
        """The dispatcher's hooks changed: which paths the faces may take inline may have too."""
        with self._lock:
            self._update_fast()

    @property
    def policy(self) -> Policy:
        return self._policy

    def reconfigure(self, policy: Policy) -> None:
        """Replace the policy; counts and windows start over, the state is kept."""
        with self._lock:
            self._gen += 1
            self._reset_counts()
            self._apply_policy(policy)

    # -- reading ------------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state. An open circuit whose period has ended reads (and becomes) half-open."""
        if self._state is OPEN and self._now() >= self._open_until:
            events: list[Event] = []
            with self._lock:
                if self._state is OPEN and self._now() >= self._open_until:
                    self._to(HALF_OPEN, "recovery_timeout", self._now(), events)
            self._emit(events)
        return self._state

    @property
    def generation(self) -> int:
        return self._gen

    @property
    def metrics_only(self) -> bool:
        """True when the breaker records and transitions but never refuses a call."""
        return not self._enforce

    def stats(self) -> BreakerStats:
        """A snapshot of the counters and state."""
        state = self.state
        with self._lock:
            ok, failed, ignored, rejected, cancelled = self._tally()
            now = self._now()
            if self._state is OPEN:
                retry: float | None = max(0.0, self._open_until - now)
            elif self._state is FORCED_OPEN:
                retry = None
            else:
                retry = 0.0
            return BreakerStats(
                name=self.name, state=state, generation=self._gen,
                consecutive_failures=self.consecutive_failures,
                successes=ok, failures=failed, ignored=ignored, rejected=rejected, cancelled=cancelled,
                would_reject=count_value(self._n_shadow),
                opened_at=self._opened_at, retry_after=retry,
                probes_in_flight=sum(1 for exp in self._probes.values() if exp > now),
            )

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value} generation={self._gen}>"

    # -- calling ------------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` through this breaker.

        For a plain callable, returns its result. For an ``async`` callable (anything returning an
        awaitable), returns an awaitable: ``await breaker.call(fetch, url)``; its outcome is recorded
        when it completes. Refused calls raise :class:`CircuitOpenError`.
        """
        return call_through(self, fn, args, kwargs)

    # -- admission ----------------------------------------------------------------------------------

    def admit(self) -> Permit:
        """Ask to make a call. Raises :class:`CircuitOpenError` if refused.

        Every permit must be reported exactly once with :meth:`record_success`,
        :meth:`record_failure`, :meth:`record_ignored` or :meth:`release` (or with :meth:`exit`).
        """
        token = self.enter()
        return Permit(token, closed=True) if type(token) is int else token

    def _enter_slow(self) -> Token:
        # (the gate refused a plainly open breaker already; this is every other state)
        events: list[Event] = []
        with self._lock:
            got = self._acquire_locked(events)
        if events:
            self._emit(events)
        if type(got) is tuple:  # refused: hooks run and the error is built outside the lock
            raise self._reject(*got)
        return got  # type: ignore[return-value]

    def _acquire_locked(self, events: list[Event]) -> Token | tuple[CircuitState, float | None, str]:
        state = self._state
        started = self._now() if self._timed else None
        if state is CLOSED:
            return self._gen if started is None else Permit(self._gen, closed=True, started=started)
        if state is DISABLED:
            return Permit(self._gen, started=started)
        now = self._now() if started is None else started
        if state is FORCED_OPEN:
            if self._enforce:
                return (FORCED_OPEN, None, "forced_open")
            next(self._n_shadow)
            return Permit(self._gen, shadow=True, started=started)
        if state is OPEN:
            if now < self._open_until:
                if self._enforce:
                    return (OPEN, self._open_until - now, "open")
                next(self._n_shadow)
                return Permit(self._gen, shadow=True, started=started)
            self._to(HALF_OPEN, "recovery_timeout", now, events)
        # half-open: hand out probe permits, reclaiming those whose lease ran out
        probes = self._probes
        if len(probes) >= self._policy.half_open_max_calls:
            for pid in [pid for pid, exp in probes.items() if exp <= now]:
                del probes[pid]
        if len(probes) >= self._policy.half_open_max_calls:
            if self._enforce:
                return (HALF_OPEN, max(0.0, min(probes.values()) - now), "probes_taken")
            next(self._n_shadow)
            return Permit(self._gen, shadow=True, started=started)
        lease = 0
        link = self._link
        if link is not None:  # across processes a probe also needs a lease the store holds for it
            got = link.take_probe()
            if got is None:
                if self._enforce:
                    return (HALF_OPEN, link.probe_retry_after(), "probes_taken")
                next(self._n_shadow)
                return Permit(self._gen, shadow=True, started=started)
            lease = got
        self._probe_seq += 1
        probes[self._probe_seq] = now + self._policy.effective_probe_timeout
        return Permit(self._gen, probe=self._probe_seq, lease=lease, started=started)

    def _reject(self, state: CircuitState, retry_after: float | None, reason: str) -> CircuitOpenError:
        self._tick(3)
        hooks = self._dispatch.rejection
        if hooks:
            self._dispatch.emit(hooks, Event(
                EventKind.REJECTION, self.name, self._wall(), self._gen, state, reason=reason))
        return CircuitOpenError(self.name, state.value, self._opened_at, retry_after)

    # -- outcomes -----------------------------------------------------------------------------------

    def _exit_slow(self, token: Token, exc: BaseException | None, result: object) -> None:
        """The outcome rule, for every case the gate does not settle itself (see :meth:`exit`)."""
        started = None if type(token) is int else token.started  # type: ignore[union-attr]
        duration = None if started is None else self._now() - started
        try:  # the verdict first: only the predicates run here (the recording, and the hooks it runs, after)
            if exc is None:
                verdict = "success"
                if result is not NO_RESULT:
                    if inspect.iscoroutine(result):
                        verdict = "unawaited"
                    else:
                        predicate = self._policy.result_is_failure
                        if predicate is not None and self._judge(predicate, result):
                            verdict, exc = "failure", _BadResultError(result)
            elif isinstance(exc, Exception):
                # this circuit refused a call made inside its own (a protected function calling itself while
                # it held the probe; or its tasks, in a TaskGroup): no word from the service, no failure of it
                own = self._own_refusal(exc)
                verdict = "ignored" if own or not self._judge(self._classify, exc) else "failure"
            else:
                verdict = "cancelled"
        except BaseException:  # a predicate interrupted (KeyboardInterrupt): the call is given back, uncounted
            self.release(token)
            raise
        if verdict == "success":
            self.record_success(token, duration)
        elif verdict == "failure":
            self.record_failure(token, exc, duration)
        elif verdict == "ignored":
            self.record_ignored(token)
        elif verdict == "unawaited":
            self._unawaited(token)
        else:
            self.release(token)

    def _own_refusal(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this circuit's own refusal, or a group of nothing else."""
        if isinstance(exc, CircuitOpenError):
            return exc.name == self.name
        if _GROUP is not None and isinstance(exc, _GROUP):
            return all(self._own_refusal(e) for e in getattr(exc, "exceptions", ()))
        return False

    def _judge(self, predicate: Callable[[Any], object], value: object) -> bool:
        try:
            return bool(predicate(value))
        except Exception as err:  # a broken predicate must not replace the caller's outcome: a failure
            report_error("circuitry.classifier_failed", self.name, err)
            return True

    def _unawaited(self, token: Token) -> None:
        # A plain function under a sync decorator returned a coroutine: nothing has run yet, so the
        # call is neither a success nor a failure. Say so where the mistake is made.
        level, frame = 1, sys._getframe()
        while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("circuitry."):
            level, frame = level + 1, frame.f_back  # point at the caller's line, not circuitry's
        warnings.warn(
            f"circuit {self.name!r}: the protected call returned a coroutine without awaiting it, so its "
            "outcome is unknown and was not counted; decorate the `async def` itself, or use "
            "circuit(...).call(fn), which awaits what fn returns", RuntimeWarning, stacklevel=level)
        self.record_ignored(token)

    def record_success(self, permit: Token, duration: float | None = None) -> None:
        """Report that an admitted call succeeded (``duration`` in seconds feeds the slow-call rule)."""
        self._tick(0)
        if duration is not None:
            self._note_latency(duration)
        permit = _plain(permit)
        if type(permit) is int:
            if permit != self._gen or (self._window is None and not self.consecutive_failures):
                return
        elif permit.shadow or permit.probe is None:  # type: ignore[union-attr]
            return
        events: list[Event] = []
        with self._lock:
            if type(permit) is int:
                if permit == self._gen and self._state is CLOSED:
                    self._clear_failures()
                    if self._window is not None:
                        now = self._now()
                        self._window.add(False, self._is_slow(duration), now)
                        reason = self._rate_reason(now)
                        if reason is not None:
                            self._to(OPEN, reason, now, events)
            else:
                self._probe_done(permit, True, None, None, events)  # type: ignore[arg-type]
        self._emit(events)

    def record_failure(self, permit: Token, exc: BaseException | None = None,
                       duration: float | None = None) -> None:
        """Report that an admitted call failed (a counted failure; classification is the caller's)."""
        self._tick(1)
        flog = self._flog
        if flog is not None and exc is not None and len(flog) != flog.maxlen:  # full: the count says the rest
            flog.append(exc)
        if duration is not None:
            self._note_latency(duration)
        permit = _plain(permit)
        hint = None
        if exc is not None and self._policy.retry_after is not None:
            hint = self._retry_after_hint(exc)
        events: list[Event] = []
        with self._lock:
            if type(permit) is int:
                if permit == self._gen and self._state is CLOSED:
                    now = self._now()
                    reason = "failure_threshold" if self._failed_once() > self._thr1 else None
                    if self._window is not None:
                        self._window.add(True, self._is_slow(duration), now)
                        if reason is None:
                            reason = self._rate_reason(now)
                    if reason is not None:
                        self._to(OPEN, reason, now, events, exc, hint)
            else:
                self._probe_done(permit, False, exc, hint, events)  # type: ignore[arg-type]
            state = self._state
            gen = self._gen
        hooks = self._dispatch.failure
        if hooks:
            etype, emsg = describe(exc)
            self._dispatch.emit(hooks, Event(EventKind.FAILURE, self.name, self._wall(), gen, state,
                                             error_type=etype, error_message=emsg))
        self._emit(events)

    def record_ignored(self, permit: Token) -> None:
        """Report an exception that is neither failure nor success: it changes no count."""
        self._tick(2)
        if type(permit) is not int:
            self._release_probe(permit)  # type: ignore[arg-type]

    def release(self, permit: Token) -> None:
        """Report a call that never finished (cancelled, interrupted): counted as cancelled only."""
        self._tick(4)
        if type(permit) is not int:
            self._release_probe(permit)  # type: ignore[arg-type]

    def _note_latency(self, duration: float) -> None:
        with self._lock:
            self._lat_n += 1
            self._lat_sum += duration
            if duration > self._lat_max:
                self._lat_max = duration
            self._lat_buckets[bisect_left(LATENCY_BUCKETS, duration)] += 1
            self._lat_total += duration

    def latency_histogram(self) -> tuple[tuple[int, ...], float]:
        """The timed calls' durations since the breaker was made: calls per bucket of
        :data:`LATENCY_BUCKETS` (upper bounds in seconds, inclusive; one more bucket, last, for longer
        calls) and their total in seconds. All zero unless the policy times calls
        (``measure_latency`` or ``slow_call_duration``).

        .. versionadded:: 0.1.0
        """
        with self._lock:
            return tuple(self._lat_buckets), self._lat_total

    def take_latency(self) -> tuple[int, float, float]:
        """``(timed calls, total seconds, longest seconds)`` since the last call (the store's rollups)."""
        with self._lock:
            out = (self._lat_n, self._lat_sum, self._lat_max)
            self._lat_n, self._lat_sum, self._lat_max = 0, 0.0, 0.0
        return out

    def _clear_consecutive(self, token: int) -> None:
        with self._lock:
            if token == self._gen and self._state is CLOSED:
                self._clear_failures()

    def _trip(self, token: int, exc: BaseException) -> None:
        """The gate counted the failure that reached the threshold: open, if still in ``token``'s
        generation (another thread may have opened it already)."""
        events: list[Event] = []
        with self._lock:
            if token == self._gen and self._state is CLOSED:
                self._to(OPEN, "failure_threshold", self._now(), events, exc)
        self._emit(events)

    # -- manual control -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Close the circuit and start counting afresh (in-flight calls become stale)."""
        self._manual(CLOSED)

    def force_open(self) -> None:
        """Refuse every call until :meth:`reset` (or :meth:`force_closed`)."""
        self._manual(FORCED_OPEN)

    def force_closed(self) -> None:
        """Let every call through and change nothing (disabled) until :meth:`reset`."""
        self._manual(DISABLED)

    def set_metrics_only(self, enabled: bool = True) -> None:
        """Keep recording and transitioning, but never refuse a call. Calls that would have been
        refused go through as *shadow* calls: counted in :attr:`BreakerStats.would_reject`, their
        outcomes counted but changing no state."""
        if not isinstance(enabled, bool):
            raise ConfigurationError(f"enabled must be a bool, got {enabled!r}")
        with self._lock:
            self._enforce = not enabled
            self._update_fast()

    def _manual(self, to: CircuitState) -> None:
        events: list[Event] = []
        with self._lock:
            if self._state is to:
                self._gen += 1  # same state: still start over
                self._reset_counts()
                self._update_fast()
            else:
                self._to(to, "manual", self._now(), events)
        self._emit(events)

    # -- shared state (the store's side) ------------------------------------------------------------

    def link(self, link: StoreLink | None) -> None:
        """Attach the store that persists this breaker (``None`` detaches it).

        From then on the breaker appends each counted failure to ``link.failure_log`` while it has
        room (on every path, the lock-free one included; the log is read once, here: a store that replaces its
        deque links again), asks :meth:`StoreLink.take_probe` before a half-open probe, and reports
        its own transitions to :meth:`StoreLink.transitioned`. A store calls this from its
        ``adopt()``. Linking costs a call nothing until it fails or probes.
        """
        with self._lock:
            self._link = link
            self._flog = None if link is None else link.failure_log

    @property
    def linked(self) -> StoreLink | None:
        """The attached store's link, or ``None``."""
        return self._link

    def counts(self) -> Counts:
        """Every call so far, by outcome: cheap, lock-free, exact (a store samples it)."""
        return _counts(self._tally())

    def next_open_period(self) -> float:
        """The open period this breaker would choose if it opened now (backoff and jitter applied),
        for a store that opens the circuit on evidence combined across processes."""
        with self._lock:
            return self._open_period(None)

    def snapshot(self) -> SharedState:
        """The state as the store persists it: wall-clock times, so other processes can read them."""
        with self._lock:
            until = None
            if self._state is OPEN:
                until = self._wall() + max(0.0, self._open_until - self._now())
            return SharedState(self._state, self._gen, self._opened_at, until, self._open_for, self._reopens,
                               self.consecutive_failures, self._reason)

    def adopt(self, state: CircuitState, *, opened_at: float | None = None, open_until: float | None = None,
              open_for: float | None = None, reopens: int = 0, reason: str = "remote",
              expect: int | None = None) -> int:
        """Adopt a state decided elsewhere (another process, or a previous run); returns the generation.

        Hooks hear the transition (with ``reason``, e.g. ``"remote"`` or ``"restored"``); the store's
        link does not: it made the change.

        With ``expect``, only if the breaker is still in that generation (else nothing changes and
        the result is -1): a local transition made since is not overwritten here — the store settles
        it by compare-and-set.

        Wall-clock times become monotonic deadlines here, clamped so a clock jump can neither
        extend an open period past its length nor make it negative.
        """
        events: list[Event] = []
        with self._lock:
            if expect is not None and expect != self._gen:
                return -1
            now = self._now()
            if state is OPEN:
                length = max(0.0, open_for or 0.0)
                remaining = 0.0 if open_until is None else open_until - self._wall()
                remaining = min(max(remaining, 0.0), length)
            same = state is self._state and (state is not OPEN or opened_at == self._opened_at)
            if not same:
                frm = self._state
                self._gen += 1
                self._reason = reason
                self._reset_counts()
                self._state = state
                if self._dispatch.transition:
                    events.append(Event(EventKind.TRANSITION, self.name, self._wall(), self._gen, state, frm,
                                        reason, open_for=open_for if state is OPEN else None))
            if state is OPEN:
                self._open_for = max(0.0, open_for or 0.0)
                self._open_until = now + remaining
            if state is OPEN or state is FORCED_OPEN:
                self._opened_at = opened_at
            elif state is CLOSED or state is DISABLED:
                self._opened_at = None
            self._reopens = max(0, reopens)
            self._update_fast()
            gen = self._gen
        self._emit(events)  # (the link is not told: it made the change)
        return gen

    # -- internals (lock held) ----------------------------------------------------------------------

    def _is_slow(self, duration: float | None) -> bool:
        limit = self._policy.slow_call_duration
        return limit is not None and duration is not None and duration > limit

    def _rate_reason(self, now: float) -> str | None:
        assert self._window is not None
        calls, failures, slow = self._window.totals(now)
        p = self._policy
        if calls < p.minimum_calls:
            return None
        if p.failure_rate_threshold is not None and failures >= p.failure_rate_threshold * calls:
            return "failure_rate"
        if p.slow_call_duration is not None and slow >= p.slow_call_rate_threshold * calls:
            return "slow_call_rate"
        return None

    def _retry_after_hint(self, exc: BaseException) -> float | None:
        fn = self._policy.retry_after
        assert fn is not None
        try:
            value = fn(exc)
        except Exception as err:
            report_error("circuitry.retry_after_failed", self.name, err)
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        v = float(value)
        return None if math.isnan(v) else v

    def _open_period(self, hint: float | None) -> float:
        p = self._policy
        cap = p.recovery_cap
        if hint is not None:
            return min(max(hint, 0.0), cap)
        d = p.recovery_timeout
        if p.backoff_factor > 1.0 and self._reopens:
            # compare in log space: backoff_factor ** reopens overflows long before it matters
            if d <= 0.0 or self._reopens * math.log(p.backoff_factor) >= math.log(cap / d):
                d = cap
            else:
                d *= p.backoff_factor ** self._reopens
        if p.jitter:  # +-jitter around d, the part above the cap cut off: periods at the cap still spread
            d = min(d, cap)
            lo = d * (1.0 - p.jitter)
            d = lo + (min(d * (1.0 + p.jitter), cap) - lo) * self._rng.random()
        return min(max(d, 0.0), cap, MAX_DURATION)

    def _probe_done(self, permit: Permit, ok: bool, exc: BaseException | None, hint: float | None,
                    events: list[Event]) -> None:
        if permit.probe is None:
            return
        self._probes.pop(permit.probe, None)
        now = self._now()
        if permit.generation != self._gen or self._state is not HALF_OPEN:
            pass  # stale: the circuit moved on (a reset, or another probe decided)
        elif ok:  # (also a probe that outlived its permit: a slow service's answer still decides)
            self._probe_ok += 1
            if self._probe_ok >= self._policy.success_threshold:
                self._to(CLOSED, "probe_succeeded", now, events)
        else:
            self._reopens += 1
            self._to(OPEN, "probe_failed", now, events, exc, hint)
        if permit.lease and self._link is not None:
            # After the transition: the store keeps the lease until the transition it caused is written
            # (the shared row says half_open until then), so no other process probes in between.
            self._link.probe_done(permit.lease)

    def _release_probe(self, permit: Permit) -> None:
        if permit.probe is None:
            return
        with self._lock:
            self._probes.pop(permit.probe, None)
            if permit.lease and self._link is not None:
                self._link.probe_done(permit.lease)

    def _reset_counts(self) -> None:
        self._clear_failures()
        self._probes.clear()
        self._probe_ok = 0
        if self._window is not None:
            self._window = self._new_window()

    def _to(self, to: CircuitState, reason: str, now: float, events: list[Event],
            exc: BaseException | None = None, hint: float | None = None) -> None:
        frm = self._state
        self._gen += 1  # before the counters are replaced: the faces read them in the other order
        self._reason = reason
        self._reset_counts()
        open_for = None
        if to is OPEN:
            if frm is not HALF_OPEN:
                self._reopens = 0
            open_for = self._open_period(hint)
            self._open_for = open_for
            self._opened_at = self._wall()
            self._open_until = now + open_for  # before the state: lock-free readers see both
        elif to is FORCED_OPEN:
            self._opened_at = self._wall()
        elif to is CLOSED or to is DISABLED:
            self._reopens = 0
            self._opened_at = None
        self._state = to
        self._update_fast()
        link = self._link
        if self._dispatch.transition or link is not None:
            etype, emsg = describe(exc) if exc is not None else (None, None)
            event = Event(EventKind.TRANSITION, self.name, self._wall(), self._gen, to, frm, reason, etype, emsg,
                          open_for)
            events.append(event)
            if link is not None:
                # Under the lock, as the store's snapshot() is: its writer never sees the new state
                # without the transition that explains it (hooks, after the lock, may run long).
                link.transitioned(event)

    def _emit(self, events: list[Event]) -> None:
        """Hand the transitions to the hooks (the store's link has them already, see :meth:`_to`)."""
        if not events:
            return
        hooks = self._dispatch.transition
        if hooks:
            for ev in events:
                self._dispatch.emit(hooks, ev)


_counts: Final = Counts._make


class _BadResultError(Exception):
    """Stands for a return value that ``result_is_failure`` rejected (never raised to the caller)."""

    def __init__(self, result: object) -> None:
        super().__init__(f"result rejected by result_is_failure: {_short_repr(result)}")


def _short_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def describe(exc: BaseException | None) -> tuple[str | None, str | None]:
    """``(qualified type name, message truncated to 500 characters)`` — never a traceback."""
    if exc is None:
        return None, None
    if isinstance(exc, _BadResultError):
        return "result_is_failure", str(exc)[:_MESSAGE_LIMIT]
    etype = type(exc)
    name = etype.__qualname__ if etype.__module__ == "builtins" else f"{etype.__module__}.{etype.__qualname__}"
    try:
        msg = str(exc)
    except Exception:
        msg = "<unprintable>"
    if len(msg) > _MESSAGE_LIMIT:
        msg = msg[: _MESSAGE_LIMIT - 3] + "..."
    return name, msg


# -- the one general driver (``breaker.call(fn)`` and ``circuit(...).call(fn)``) ------------------------


def call_through(b: CircuitBreaker, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 fallback: Callable[..., Any] | None = None, is_async: bool | None = None) -> Any:
    """Call ``fn(*args, **kwargs)`` through ``b``: for a plain function the result; for a coroutine
    function (or any callable returning an awaitable) an awaitable whose outcome is recorded when it
    completes — never counted a success merely because the coroutine object was created. A refusal
    calls ``fallback(rejection, *args, **kwargs)`` when one is given.

    ``is_async``: ``False`` for a plain function (its result is returned as it is, an awaitable
    included -- what the decorator without a fallback returns); ``True`` for an async callable (a
    plain fallback's value comes back as an awaitable, so that the caller's ``await`` holds on a
    refusal too); ``None``: found out from ``fn`` on a refusal and from the result otherwise."""
    if is_async is None:  # an async callable is admitted in its coroutine; for anything else, see the result
        try:
            is_async = True if fn.__code__.co_flags & _CO_ASYNC else None
        except AttributeError:
            is_async = is_async_callable(fn) or None
    if is_async:
        return _call_async(b, fn, args, kwargs, fallback)
    try:
        token = b.enter()
    except CircuitOpenError as rejection:
        if fallback is None:
            raise
        answer = fallback(rejection, *args, **kwargs)
        if is_async is None:
            is_async = is_async_callable(fn)
        return _ready(answer) if is_async and not inspect.isawaitable(answer) else answer
    try:  # (_invoke() written out: one call less on every synchronous call)
        result = fn(*args, **kwargs)
    except BaseException as exc:
        if not_started(exc):
            b.record_ignored(token)
        else:
            b.exit(token, exc)
        raise
    if is_async is not False and type(result) not in _PLAIN and inspect.isawaitable(result):
        return _finish_async(b, token, result)
    b.exit(token, None, result)
    return result


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` makes a coroutine: an ``async def`` (or a partial of one), or an object
    whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or (callable(fn) and inspect.iscoroutinefunction(type(fn).__call__))


async def _ready(value: Any) -> Any:
    return value


# inspect.isawaitable costs ~150 ns on a plain value; the type check answers most results at once
_PLAIN: Final = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict, set})


_CO_ASYNC: Final = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE


async def _call_async(b: CircuitBreaker, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                      fallback: Callable[..., Any] | None) -> Any:
    """An async callable's call, all of it inside the coroutine the caller awaits: admitted when that
    coroutine starts, so one cancelled before its first step (``task.cancel()``, a failing ``TaskGroup``,
    ``wait_for(..., 0)``) took no permit -- with the permit taken as ``call()`` was called, a cancelled
    probe kept the circuit half-open until ``probe_timeout``, and the call was never counted."""
    try:
        token = b.enter()
    except CircuitOpenError as rejection:
        if fallback is None:
            raise
        answer = fallback(rejection, *args, **kwargs)
        return (await answer) if inspect.isawaitable(answer) else answer
    call = _invoke(b, token, fn, args, kwargs)
    if not inspect.isawaitable(call):  # (it said it was async, and returned a value)
        b.exit(token, None, call)
        return call
    return await _finish_async(b, token, call)


def _invoke(b: CircuitBreaker, token: Token, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)`` for an admitted call; one that raises is reported here (arguments ``fn`` does
    not take -- a ``TypeError`` of the call itself -- reached no service: ignored)."""
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        if not_started(exc):
            b.record_ignored(token)
        else:
            b.exit(token, exc)
        raise


async def _finish_async(b: CircuitBreaker, token: Token, awaitable: Awaitable[Any]) -> Any:
    try:
        result = await awaitable
    except BaseException as exc:
        b.exit(token, exc)
        raise
    b.exit(token, None, result)
    return result


# -- fork() ----------------------------------------------------------------------------------------------
# A thread that holds a breaker's lock as another thread forks leaves the child a lock nobody will ever
# release: the child's first call to that breaker would hang. So the lock of every live breaker is taken
# before the fork (each is held only for a few in-memory steps, never around I/O or another breaker's
# lock) and released on both sides after it: the child starts with every breaker unlocked and consistent.
# The registry's fork handler calls these (and makes the registries' own locks anew in the child: see
# circuitry._registry).

_LIVE: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_HELD: list[CircuitBreaker] = []


# The dispatchers' locks come first (a thread changing hooks holds one while it takes each breaker's lock:
# taken after the breakers', a fork in that moment left the child a dispatcher lock nobody releases, and
# its next add_hook hung). In the child, no probe is in flight: the threads that made them were not
# copied (a child forked while a probe ran was refused until probe_timeout), and the jitter generator is
# seeded afresh (every forked worker drew the same open periods: processes that opened together probed
# together).


def hold_breakers() -> None:
    hold_dispatchers()
    _LIVE_LOCK.acquire()
    held = list(_LIVE)
    for b in held:
        b._lock.acquire()
    _HELD[:] = held


def release_breakers(child: bool = False) -> None:
    for b in _HELD:
        if child:
            b._probes.clear()
        b._lock.release()
    _HELD.clear()
    _LIVE_LOCK.release()
    release_dispatchers()
    if child:
        _JITTER_RNG.seed()
