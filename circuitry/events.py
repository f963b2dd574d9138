"""Events: what a breaker tells the world, and the hooks that listen.

A breaker emits a frozen :class:`Event` for every real transition, every rejection and every
counted failure. Successes are too hot to emit one by one: they are counted (see
:meth:`CircuitBreaker.stats`) and persisted as per-minute rollups by the store.

Hooks are plain callables (the :class:`Hook` protocol). A hook may carry a ``kinds`` attribute (a
set of :class:`EventKind`) to receive only those kinds; a breaker builds no event nobody listens to,
so a hook that only wants transitions costs nothing on failures and rejections. A hook may also carry
``listening``: a callable that says whether it wants refusal and failure events *now* (a tracing hook:
whether the current span records). While every refusal and failure hook has one, a breaker keeps its
inline paths and builds those events only for calls during which one of them says yes. A check of the
form "is the object stored under this key of this context variable recording?" is best given as a
:class:`ContextListening`: the C accelerator answers it without running Python code, so a tracing
hook costs a refusal or a failure almost nothing while no span records. Hooks run *after*
the breaker's lock is released, in the thread of the call that caused the event, and a hook that
raises is logged and otherwise ignored: it never changes a call's outcome.
"""

from __future__ import annotations

import enum
import inspect
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol, runtime_checkable

from circuitry._state import CircuitState

__all__ = ["ContextListening", "Event", "EventKind", "Hook"]  # StructlogHook: see __getattr__ below


class EventKind(enum.Enum):
    """What an :class:`Event` records."""

    TRANSITION = "transition"
    REJECTION = "rejection"
    FAILURE = "failure"


_TRANSITION_NAMES = {
    CircuitState.OPEN: "circuitry.circuit_opened",
    CircuitState.HALF_OPEN: "circuitry.circuit_half_opened",
    CircuitState.CLOSED: "circuitry.circuit_closed",
    CircuitState.FORCED_OPEN: "circuitry.circuit_forced_open",
    CircuitState.DISABLED: "circuitry.circuit_disabled",
}


class Event(NamedTuple):
    """One thing that happened to a breaker: an immutable record (a named tuple, so that building
    one costs a third of a frozen dataclass's — a failure builds one whenever anyone listens).

    Attributes:
        kind: Transition, rejection or failure.
        circuit: The breaker's name.
        at: Wall-clock time (epoch seconds).
        generation: The breaker's generation after the event (bumped by every transition).
        from_state: For transitions, the state left.
        to_state: For transitions, the state entered; for the others, the state at the time.
        reason: Why: ``"failure_threshold"``, ``"failure_rate"``, ``"slow_call_rate"``,
            ``"probe_failed"``, ``"probe_succeeded"``, ``"recovery_timeout"``, ``"manual"``,
            ``"remote"`` (another process's write), ``"restored"`` (the stored state, adopted when the
            breaker was made), ``"shared_failures"`` (opened by the failures of several processes
            together), ``"open"``/``"probes_taken"`` for rejections.
        error_type: For failures (and the transitions they caused), the exception's qualified name.
        error_message: The exception's message, truncated to 500 characters. Never a traceback.
        open_for: For openings, how long the circuit refuses calls (seconds).
        shadow: True when a metrics-only breaker *would* have rejected (the call went through).
    """

    kind: EventKind
    circuit: str
    at: float
    generation: int
    to_state: CircuitState
    from_state: CircuitState | None = None
    reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    open_for: float | None = None
    shadow: bool = False

    @property
    def name(self) -> str:
        """The dotted, past-tense event name, e.g. ``circuitry.circuit_opened``."""
        if self.kind is EventKind.TRANSITION:
            return _TRANSITION_NAMES[self.to_state]
        if self.kind is EventKind.REJECTION:
            return "circuitry.call_rejected"
        return "circuitry.call_failed"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for logs and storage."""
        out: dict[str, Any] = {"event": self.name, "circuit": self.circuit, "at": self.at,
                               "generation": self.generation, "state": self.to_state.value}
        if self.from_state is not None:
            out["from_state"] = self.from_state.value
        for key in ("reason", "error_type", "error_message", "open_for"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.shadow:
            out["shadow"] = True
        return out


@runtime_checkable
class Hook(Protocol):
    """Anything callable with an :class:`Event`. Optionally has ``kinds``: the kinds it wants, and
    ``listening``: a callable, true while it wants refusal and failure events (see the module docstring)."""

    def __call__(self, event: Event, /) -> None: ...  # positional: a function's parameter may have any name


class ContextListening(NamedTuple):
    """A hook's ``listening`` check read from a context variable: true while ``var``'s current value
    (a mapping) holds an object under ``key`` that is not ``None``, not exactly of type ``quiet``, and
    whose method ``method`` returns true.

    OpenTelemetry keeps the current span in such a mapping (a recording span answers
    ``is_recording()`` with true; a sampled-out span is a ``NonRecordingSpan``), which is what
    :class:`~circuitry.instrumentation.otel.TracingHook` uses. Being a tuple, the C accelerator reads it
    without calling it: a refusal or a failure while nothing records costs two lookups, no Python frame.

    .. versionadded:: 0.1.0
    """

    var: ContextVar[Mapping[str, object]]
    key: str
    quiet: type | None = None
    method: str = "is_recording"

    def __call__(self) -> bool:
        try:
            current = self.var.get()
        except LookupError:
            return False
        obj = current.get(self.key)
        if obj is None or type(obj) is self.quiet:
            return False
        return bool(getattr(obj, self.method)())


_ALL_KINDS = frozenset(EventKind)


def hook_kinds(hook: Hook) -> frozenset[EventKind]:
    """The kinds ``hook`` wants: its ``kinds`` (:class:`EventKind` members or their values, such as
    ``"transition"``), or every kind. ``ValueError`` for anything else."""
    kinds = getattr(hook, "kinds", None)
    if kinds is None:
        return _ALL_KINDS
    if isinstance(kinds, str | EventKind):  # one kind, not a collection of them ("transition" is no set)
        kinds = (kinds,)
    return frozenset(k if isinstance(k, EventKind) else EventKind(k) for k in kinds)


_DISPATCHERS: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_DISPATCHERS_LOCK = threading.Lock()
_HELD: list[Dispatcher] = []


def hold_dispatchers() -> None:
    """(Before ``fork()``, see :func:`circuitry._core.hold_breakers`.) Take every dispatcher's lock."""
    _DISPATCHERS_LOCK.acquire()
    held = list(_DISPATCHERS)
    for d in held:
        d._lock.acquire()
    _HELD[:] = held


def release_dispatchers() -> None:
    for d in _HELD:
        d._lock.release()
    _HELD.clear()
    _DISPATCHERS_LOCK.release()


class Dispatcher:
    """Hooks of one registry, pre-sorted by kind so that asking "does anyone listen?" is one load."""

    __slots__ = ("__weakref__", "_hooks", "_lock", "_watchers", "failure", "listen_failure", "listen_rejection",
                 "rejection", "transition")

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self._lock = threading.Lock()
        with _DISPATCHERS_LOCK:
            _DISPATCHERS.add(self)
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._hooks: tuple[Hook, ...] = ()
        self.transition: tuple[Hook, ...] = ()
        self.rejection: tuple[Hook, ...] = ()
        self.failure: tuple[Hook, ...] = ()
        #: Per kind: ``None`` while some hook always wants those events; else a callable, true while one
        #: of them wants the event of the call at hand (:func:`never` when there are no such hooks).
        self.listen_rejection: Callable[[], bool] | None = never
        self.listen_failure: Callable[[], bool] | None = never
        for h in hooks:
            self.add(h)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return self._hooks

    def add(self, hook: Hook) -> None:
        """Deliver events to ``hook`` from now on.

        Raises:
            ConfigurationError: ``hook`` is not callable, is an ``async def`` (hooks run
                synchronously, in the thread of the call that caused the event: a coroutine would
                never be awaited), or has ``kinds`` that are not event kinds.
        """
        from circuitry.exceptions import ConfigurationError

        if not callable(hook):
            raise ConfigurationError(f"hooks must be callable, got {hook!r}")
        if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(type(hook).__call__):
            raise ConfigurationError(
                f"hook {hook!r} is an async def: hooks are called synchronously, in the thread of the call "
                "that caused the event, and a coroutine would never be awaited. Use a plain function "
                "(to reach an event loop, hand the event over with loop.call_soon_threadsafe)")
        try:
            hook_kinds(hook)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"hook {hook!r} has kinds={getattr(hook, 'kinds', None)!r}: give EventKind members or their values "
                f"({', '.join(repr(k.value) for k in EventKind)})") from None
        with self._lock:
            self._set((*self._hooks, hook))

    def remove(self, hook: Hook) -> None:
        with self._lock:
            self._set(tuple(h for h in self._hooks if h is not hook))

    def watch(self, breaker: Any) -> None:
        """Tell ``breaker`` (its ``_hooks_changed()``) whenever the hooks change."""
        self._watchers.add(breaker)

    def _set(self, hooks: tuple[Hook, ...]) -> None:
        self._hooks = hooks
        self.transition = tuple(h for h in hooks if EventKind.TRANSITION in hook_kinds(h))
        self.rejection = tuple(h for h in hooks if EventKind.REJECTION in hook_kinds(h))
        self.failure = tuple(h for h in hooks if EventKind.FAILURE in hook_kinds(h))
        self.listen_rejection = _listener(self.rejection)
        self.listen_failure = _listener(self.failure)
        for breaker in list(self._watchers):
            breaker._hooks_changed()

    def emit(self, hooks: Sequence[Hook], event: Event) -> None:
        """Deliver one event; a hook that raises is logged and skipped, never re-raised."""
        for hook in hooks:
            try:
                returned: object = hook(event)  # type: ignore[func-returns-value]
            except Exception as exc:  # a hook must never change a protected call's outcome
                _report_hook_error(hook, event, exc)
            else:
                if returned is not None and inspect.iscoroutine(returned):  # e.g. a partial of an async def
                    returned.close()
                    _report_hook_error(hook, event, TypeError("the hook returned a coroutine, which is never "
                                                              "awaited: hooks must be plain functions"))


def never() -> bool:
    """Nobody listens."""
    return False


def either(a: Callable[[], bool], b: Callable[[], bool]) -> Callable[[], bool]:
    """A check that is true while ``a`` or ``b`` is."""
    if a is never or a == b:  # (two bound methods of one hook are equal, not identical)
        return b
    if b is never:
        return a

    def listening() -> bool:
        return bool(a()) or bool(b())

    return listening


def _listener(hooks: Sequence[Hook]) -> Callable[[], bool] | None:
    """One check for "does a hook want this call's refusal or failure event?" over ``hooks``: ``_never``
    for none, ``None`` if one of them has no ``listening`` (it always wants them)."""
    checks = [getattr(h, "listening", None) for h in hooks]
    if not checks:
        return never
    if not all(callable(c) for c in checks):
        return None
    if len(checks) == 1:
        return checks[0]

    def any_listening() -> bool:
        return any(c() for c in checks)  # type: ignore[misc]

    return any_listening


def report_error(what: str, circuit: str, exc: Exception, /, **context: Any) -> None:
    """Log that a user's function given to a breaker (a hook, a classifier, ``retry_after``) raised, with
    ``context`` first: through the application's logging configuration, nowhere without one (never on
    stdout); never raises."""
    from circuitry.instrumentation.logging import log  # lazily: that module imports this one

    try:
        log("error", what, **context, circuit=circuit, error_type=type(exc).__qualname__,
            error_message=str(exc)[:500])
    except Exception:  # an exception whose message raises too: nothing left to tell
        pass


def _report_hook_error(hook: object, event: Event, exc: Exception) -> None:
    try:
        shown = repr(hook)
    except Exception:  # a hook whose repr raises too: nothing left to tell
        return
    report_error("circuitry.hook_failed", event.circuit, exc, hook=shown, event_name=event.name)


def __getattr__(name: str) -> Any:
    # Compatibility: the default hook moved to circuitry.instrumentation.logging (as LoggingHook).
    if name == "StructlogHook":
        from circuitry.instrumentation.logging import StructlogHook

        return StructlogHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
