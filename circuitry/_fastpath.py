"""The two types that carry circuitry's hot paths, in pure Python.

``circuitry/_speedups.c`` implements the same two types in C; :mod:`circuitry._accel` picks one
implementation of each, in one place. Neither type knows the breaker: each is a self-contained type
with a small contract, documented on the class.

:class:`Gate`
    The lock-free front of a breaker: its one entry (:meth:`Gate.enter`) and one exit
    (:meth:`Gate.exit`), and the exact outcome counters. It decides alone only what needs no lock —
    a call admitted while closed, a refusal while plainly open, a success, a counted failure of a
    listed type, a cancellation — and hands every other case to its subclass's ``_enter_slow`` /
    ``_exit_slow``. :class:`circuitry.CircuitBreaker` is its subclass.

:class:`WithBase`
    ``with`` / ``async with`` for a named gate: each entry is kept per *flow* (the thread's or task's
    :mod:`contextvars` context), so one object may be entered by many threads and tasks at once.

:func:`protect`
    The decorator's wrapper for a plain function: find the gate by name, enter, call, exit.

Counters are :func:`itertools.count` objects: ``next()`` on one is atomic under the GIL, so totals
stay exact under any number of threads without a lock.
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import sys
import types
from collections import deque
from collections.abc import Callable
from typing import Any, Final

__all__ = ["NO_RESULT", "Gate", "WithBase", "count_value", "not_started", "protect"]

_Coroutine: Final = types.CoroutineType


class _NoResult:
    """What :meth:`Gate.exit` gets when the protected code has no return value (a ``with`` block)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_RESULT"


NO_RESULT: Final[Any] = _NoResult()


def count_value(counter: itertools.count[int]) -> int:
    """The next value ``counter`` would give: how many times it was advanced from 0."""
    # itertools.count has no public read; its repr is stable ("count(5)") across supported versions.
    return int(repr(counter)[6:-1])


class Gate:
    """The lock-free front of a breaker.

    Contract with a subclass (which holds the lock and the rest of the state machine):

    - it keeps these attributes current (under its own lock): ``_gen`` (the generation, bumped by
      every transition), ``_fast`` (``_gen`` while a call may be admitted and its success counted with
      no lock; ``-2`` while plainly open, refusals counted here; ``-1`` otherwise), ``_open_until`` and
      ``_opened_at`` (the open period, for refusals), ``_fail_types`` (the exception types whose failure
      this gate counts itself, ``()`` for none), ``_thr1`` (failures that trip, minus one) and
      ``_flog`` (a ``deque`` each counted failure is appended to, or ``None``) and ``_listen`` (``None``,
      or a callable that is true while a hook wants the refusal or failure event of the call at hand:
      the gate then leaves that call to the slow path, which builds the event; the C twin reads a
      callable 4-tuple as a :class:`circuitry.events.ContextListening` and answers it without calling it);
    - it defines ``_enter_slow() -> token``, ``_exit_slow(token, exc, result)`` and
      ``_trip(token, exc)`` (the failure this gate counted reached ``_thr1 + 1``).

    Counters are changed only through this type's methods, so the C twin may keep them as integers.
    """

    __slots__ = ("_consec", "_dirty", "_fail_types", "_fast", "_flog", "_gen", "_listen", "_n_cancel", "_n_fail",
                 "_n_ign", "_n_ok", "_n_rej", "_now", "_open_until", "_opened_at", "_refusal", "_thr1", "name")

    def __init__(self, name: str, now: Callable[[], float], refusal: type[BaseException]) -> None:
        self.name = name
        self._now = now
        self._refusal = refusal
        self._gen = 0
        self._fast = -1
        self._open_until = 0.0
        self._opened_at: float | None = None
        self._fail_types: type[BaseException] | tuple[type[BaseException], ...] = ()
        self._thr1 = 0
        self._flog: deque[BaseException] | None = None
        self._listen: Callable[[], object] | None = None
        self._n_ok = itertools.count()
        self._n_fail = itertools.count()
        self._n_ign = itertools.count()
        self._n_rej = itertools.count()
        self._n_cancel = itertools.count()
        # Consecutive failures: an atomic counter, replaced (not zeroed) when cleared; ``_dirty`` says
        # whether it may be non-zero, so a success costs one attribute read when nothing failed.
        self._consec = itertools.count()
        self._dirty = False

    # -- the one entry and the one exit ---------------------------------------------------------------

    def enter(self) -> Any:
        """Ask to make a call: returns a token to hand to :meth:`exit` when the call ends.

        Raises:
            CircuitOpenError: The circuit refuses the call (open, forced open, or every half-open
                probe taken).

        .. versionadded:: 0.1.0
        """
        fast = self._fast
        if fast >= 0:
            return fast
        if fast == -2:  # open: refuse here while the period runs (an outage is when calls come fastest)
            now = self._now()
            until = self._open_until
            if now < until and (self._listen is None or not self._listening()):
                next(self._n_rej)
                raise self._refusal(self.name, "open", self._opened_at, until - now)
        return self._enter_slow()

    def exit(self, token: Any, exc: BaseException | None = None, result: object = NO_RESULT) -> None:
        """Report how the call admitted with ``token`` ended — exactly once per token.

        The outcome rule: no exception is a success (unless ``result_is_failure`` rejects ``result``);
        an ``Exception`` is a counted failure if the policy's ``on=`` matches it, else ignored; any
        other ``BaseException`` (cancellation, interpreter exit) is cancelled, never counted. A
        half-open probe's permit is settled or given back; a token from an older generation changes
        no state.

        Args:
            token: What :meth:`enter` returned.
            exc: The exception the call raised, or ``None`` if it returned.
            result: What it returned, for ``result_is_failure``; leave it out when there is no
                return value (a ``with`` block).

        .. versionadded:: 0.1.0
        """
        if exc is None:
            if token == self._fast and type(result) is not _Coroutine:
                next(self._n_ok)
                if self._dirty:
                    self._clear_consecutive(token)
                return
        elif isinstance(exc, Exception):
            # The counter is read before the generation: a transition bumps the generation first and
            # then replaces the counter, so a completion racing it lands in the discarded counter.
            consec = self._consec
            if isinstance(exc, self._fail_types) and token == self._gen and (
                    self._listen is None or not self._listening()):
                next(self._n_fail)
                flog = self._flog
                if flog is not None and len(flog) != flog.maxlen:  # a full log takes no more: no eviction here
                    flog.append(exc)
                self._dirty = True
                if next(consec) >= self._thr1:
                    self._trip(token, exc)
                return
        elif type(token) is int:  # cancelled, holding no permit to give back
            next(self._n_cancel)
            return
        self._exit_slow(token, exc, result)

    def _listening(self) -> bool:
        """Whether a hook wants the refusal or failure event of the call at hand (a check that raises
        counts as yes: the hooks then get the event and report their own errors)."""
        listen = self._listen
        if listen is None:
            return False
        try:
            return bool(listen())
        except Exception:
            return True

    # -- counters (the subclass's slow paths change them through these) -------------------------------

    def _tally(self) -> tuple[int, int, int, int, int]:
        """``(successes, failures, ignored, rejected, cancelled)``: exact, lock-free."""
        return (count_value(self._n_ok), count_value(self._n_fail), count_value(self._n_ign), count_value(self._n_rej),
                count_value(self._n_cancel))

    @property
    def consecutive_failures(self) -> int:
        """Counted failures since the last success or transition (0 while not closed)."""
        return count_value(self._consec) if self._dirty else 0

    def _tick(self, kind: int) -> None:
        """Count one call: 0 success, 1 failure, 2 ignored, 3 rejected, 4 cancelled."""
        next((self._n_ok, self._n_fail, self._n_ign, self._n_rej, self._n_cancel)[kind])

    def _failed_once(self) -> int:
        """Count one consecutive failure (lock held); returns how many there are now."""
        self._dirty = True
        return next(self._consec) + 1

    def _clear_failures(self) -> None:
        """Consecutive failures start again from 0 (lock held)."""
        self._dirty = False
        self._consec = itertools.count()

    # -- the subclass's part --------------------------------------------------------------------------

    def _clear_consecutive(self, token: int) -> None:  # pragma: no cover - the subclass defines it
        raise NotImplementedError

    def _enter_slow(self) -> Any:  # pragma: no cover - the subclass defines it
        raise NotImplementedError

    def _exit_slow(self, token: Any, exc: BaseException | None, result: object) -> None:  # pragma: no cover
        raise NotImplementedError

    def _trip(self, token: int, exc: BaseException) -> None:  # pragma: no cover - the subclass defines it
        raise NotImplementedError


class WithBase:
    """``with`` / ``async with`` over the gate called ``name``.

    Contract: ``ref.breakers`` is a dict of gates by name (read on every entry), and a subclass
    defines ``_create()``, which makes the gate when the name is missing. Each entry keeps
    (gate, token, the enclosing entry) in a context variable: per thread and per task, never on the
    shared object, which many tasks may enter at once. An ``async with`` in an async generator keeps its
    entries by the generator's frame instead: asyncio closes an abandoned one in a task of its own, and
    the entry left in its consumer's context was popped by the consumer's next exit (a stale token's
    failure then opened the circuit) and piled up there, one per abandoned generator.
    """

    __slots__ = ("_agen", "_entries", "_ref", "name")

    def __init__(self, name: str, ref: Any) -> None:
        self.name = name
        self._ref = ref
        self._entries: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(f"circuitry:{name}")
        self._agen: dict[types.FrameType, list[tuple[Any, Any]]] = {}

    def _create(self) -> Any:  # pragma: no cover - the subclass defines it
        raise NotImplementedError

    def __enter__(self) -> Any:
        g = self._ref.breakers.get(self.name) or self._create()
        self._entries.set((g, g.enter(), self._entries.get(None)))
        return g

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        entry = self._entries.get(None)
        if entry is None:
            raise RuntimeError(f"{self!r}: __exit__ without a matching __enter__")
        g, token, outer = entry
        self._entries.set(outer)
        g.exit(token, exc)

    async def __aenter__(self) -> Any:
        g = self._ref.breakers.get(self.name) or self._create()
        frame = sys._getframe(1)  # the code running `async with` (this coroutine's caller)
        if frame.f_code.co_flags & inspect.CO_ASYNC_GENERATOR:
            token = g.enter()  # (first: a refusal leaves nothing keyed by the frame)
            self._agen.setdefault(frame, []).append((g, token))
            return g
        self._entries.set((g, g.enter(), self._entries.get(None)))
        return g

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: types.TracebackType | None) -> None:
        if self._agen:
            frame = sys._getframe(1)
            held = self._agen.get(frame)
            if held:
                g, token = held.pop()
                if not held:
                    del self._agen[frame]
                g.exit(token, exc)
                return
        entry = self._entries.get(None)
        if entry is None:
            raise RuntimeError(f"{self!r}: __aexit__ without a matching __aenter__")
        g, token, outer = entry
        self._entries.set(outer)
        g.exit(token, exc)


def not_started(exc: BaseException) -> bool:
    """Whether ``exc``, caught in the frame that made a call, was raised by the call itself before any
    frame of the callee ran: a ``TypeError`` for arguments the callable does not take. Such a call
    never reached the service, so it is ignored, never a failure (and gives back a probe permit)."""
    tb = exc.__traceback__
    return type(exc) is TypeError and tb is not None and tb.tb_next is None


def protect(ref: Any, name: str, create: Callable[[], Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, called through the gate ``ref.breakers[name]`` (made by ``create()`` when missing).

    A ``TypeError`` raised by the call itself — arguments ``fn`` does not take, so no frame of it ran
    and the service was never called — is reported with ``record_ignored``, never as a failure.
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            g = ref.breakers[name]
        except KeyError:
            g = create()
        token = g.enter()
        try:
            result = fn(*args, **kwargs)
        except TypeError as exc:
            g.record_ignored(token) if not_started(exc) else g.exit(token, exc)
            raise
        except BaseException as exc:
            g.exit(token, exc)
            raise
        g.exit(token, None, result)
        return result

    return wrapper
