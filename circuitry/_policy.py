"""A breaker's policy: every tunable, validated once, at construction.

Validation is strict on purpose. ``0``, negatives, NaN, infinities, booleans (``True`` is an ``int``
in Python), strings and absurd sizes raise :class:`~circuitry.ConfigurationError` naming the
argument, instead of being coerced (``threshold or DEFAULT`` turns a deliberate 0 into 5).
"""

from __future__ import annotations

import builtins
import types
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Final

from circuitry._checks import check_int, check_number
from circuitry.exceptions import ConfigurationError

# (Python >= 3.11; on 3.10 nothing is a group)
_GROUPS: Final[tuple[type[BaseException], ...]] = tuple(
    t for t in (getattr(builtins, "BaseExceptionGroup", None),) if t is not None)

__all__ = ["MAX_DURATION", "Policy", "check_int", "check_number"]

#: The longest duration any setting may take (one year); computed durations clamp to it.
MAX_DURATION: Final = 365.0 * 24 * 3600
_MAX_COUNT: Final = 1_000_000_000
_MAX_WINDOW: Final = 1_000_000
_MAX_PROBES: Final = 10_000
_MINIMUM_CALLS_DEFAULT: Final = 10
_SLOW_RATE_DEFAULT: Final = 1.0

ExceptionFilter = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _optional_callable(name: str, value: object, takes: str = "") -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{name} must be callable or None, got {value!r}")
    if value is not None and takes:
        _one_argument(name, value, takes)
    return value


def _one_argument(name: str, fn: Callable[..., Any], takes: str) -> None:
    """``fn`` must accept being called with one positional argument, as circuitry calls it: a function of
    another shape (circuitbreaker's ``(thrown_type, exc)`` predicate) raised at every call, and an ``on``
    predicate that raises counts the call as a failure, so each such call counted, silently."""
    import inspect

    if isinstance(fn, types.FunctionType):  # the common case, without building a signature (~10 us a policy)
        code = fn.__code__
        required = code.co_argcount - len(fn.__defaults__ or ())
        kwonly = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        if (required <= 1 and (code.co_argcount >= 1 or code.co_flags & inspect.CO_VARARGS)
                and all(name in (fn.__kwdefaults__ or {}) for name in kwonly)):
            return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or a C callable without one: nothing to check
        return
    try:
        sig.bind(None)
    except TypeError as exc:
        raise ConfigurationError(
            f"{name} is called with one argument, {takes}, but {getattr(fn, '__qualname__', fn)!r}{sig} "
            f"cannot take it ({exc})") from None


def _exception_filter(name: str, value: object) -> ExceptionFilter:
    types: tuple[object, ...]
    if isinstance(value, type):
        types = (value,)
    elif isinstance(value, tuple):
        if not value:
            raise ConfigurationError(f"{name} must not be an empty tuple")
        types = value
    elif callable(value):
        _one_argument(name, value, "the exception")
        return value
    else:
        raise ConfigurationError(
            f"{name} must be an exception type, a tuple of them, or a predicate; got {value!r}"
        )
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise ConfigurationError(f"{name} must contain exception types, got {t!r}")
        if not issubclass(t, Exception):
            raise ConfigurationError(
                f"{name} contains {t.__name__}, which is not an Exception subclass: "
                "cancellation and interpreter exits are never counted"
            )
    return value


#: Other circuit breakers' argument names, and what circuitry calls them (docs/how-to/migrate.md).
_PEER_NAMES: Final = {
    "fail_max": "failure_threshold= (pybreaker's and aiobreaker's fail_max)",
    "threshold": "failure_threshold= (purgatory's threshold)",
    "default_threshold": "failure_threshold= (purgatory's default_threshold)",
    "reset_timeout": "recovery_timeout= in seconds (pybreaker's reset_timeout)",
    "timeout_duration": "recovery_timeout= in seconds (aiobreaker's timeout_duration, a timedelta there)",
    "ttl": "recovery_timeout= in seconds (purgatory's ttl)",
    "default_ttl": "recovery_timeout= in seconds (purgatory's default_ttl)",
    "exclude": "on= a predicate false for the excluded errors, e.g. on=lambda e: not isinstance(e, NotFound) "
               "(an excluded error is ignored: it neither counts nor resets the count)",
    "fallback_function": "fallback= on circuit(...), which is called with the rejection first, then the "
                         "call's arguments (circuitbreaker's fallback_function)",
    "listeners": "hooks: Registry(hooks=[...]) or registry.add_hook(fn), called with each Event (pybreaker's "
                 "listeners)",
    "state_storage": "a store shared by processes: circuitry.configure(db='breakers.db') (pybreaker's "
                     "state_storage)",
    "expected_exceptions": "on= (or expected_exception=) with an exception type, a tuple of them, or a predicate",
}


def _hint(name: str, known: set[str]) -> str:
    """What to write instead of an unknown argument: circuitry's name for another library's, or the
    closest known name."""
    import difflib

    if name in _PEER_NAMES:
        return f"{name}: use {_PEER_NAMES[name]}"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f"{name}: did you mean {close[0]}?" if close else ""


def same_value(a: object, b: object, _seen: set[tuple[int, int]] | None = None, *, by_name: bool = True) -> bool:
    """Equal; or both functions of one module made from equal code, with the same defaults and captured
    values; or (``by_name``) both classes of one module and qualified name, as a module and its
    reloaded self define them (see :meth:`Policy.same_as`). Never raises: a comparison that does is "not
    the same"."""
    if a is b:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):  # (``on=`` as a tuple of classes)
        return len(a) == len(b) and all(same_value(x, y, _seen, by_name=by_name) for x, y in zip(a, b, strict=True))
    if isinstance(a, type) and isinstance(b, type):
        return by_name and _same_class(a, b)
    if not (isinstance(a, types.FunctionType) and isinstance(b, types.FunctionType)):
        try:
            return bool(a == b)
        except Exception:
            return False
    seen = set() if _seen is None else _seen
    if (id(a), id(b)) in seen:  # a function that captures itself (a recursive predicate): met again
        return True
    seen.add((id(a), id(b)))
    # Equal code, not only the same code object: importlib.reload() compiles the module again, and the
    # reloaded module's functions (an inline lambda too) have new, equal code, in the same module dict.
    if a.__globals__ is not b.__globals__ or (a.__code__ is not b.__code__ and not _equal(a.__code__, b.__code__)):
        return False
    if not (same_value(a.__defaults__, b.__defaults__, seen, by_name=by_name)
            and same_value(a.__kwdefaults__, b.__kwdefaults__, seen, by_name=by_name)):
        return False
    for x, y in zip(a.__closure__ or (), b.__closure__ or (), strict=True):
        x_empty, y_empty = _empty(x), _empty(y)
        if x_empty or y_empty:  # a name not yet bound: alike only if both are
            if x_empty != y_empty:
                return False
            continue
        if not same_value(x.cell_contents, y.cell_contents, seen, by_name=by_name):
            return False
    return True


def _equal(a: types.CodeType, b: types.CodeType) -> bool:
    try:
        return bool(a == b)
    except Exception:  # (a constant whose comparison raises)
        return False


def _same_class(a: type, b: type) -> bool:
    """Whether ``b`` is ``a`` defined again: one module, one qualified name -- what importlib.reload()
    makes. A class defined inside a function (``<locals>`` in its name) is a new class on every run of
    the function, not a reload: two of them stay two classes."""
    return (a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__
            and "<locals>" not in a.__qualname__)


def _empty(cell: types.CellType) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return True
    return False


@dataclass(frozen=True, slots=True)
class Policy:
    """How a breaker decides. Build one with keyword arguments; every field is validated.

    Args:
        failure_threshold: Consecutive failures that open a closed circuit.
        recovery_timeout: Seconds an open circuit refuses calls before it lets probes through.
        half_open_max_calls: Probes allowed in flight at once while half-open.
        success_threshold: Successful probes needed to close a half-open circuit.
        probe_timeout: Seconds a probe permit lives; a probe that never reports back loses its permit
            after this (default: ``recovery_timeout``).
        failure_rate_threshold: Optional rule: open when the failure fraction over the sliding window
            reaches this (``0 < x <= 1``), once ``minimum_calls`` are in the window.
        window_size: Count-based sliding window (the last N calls) for the rate rules.
        window_duration: Time-based sliding window in seconds, instead of ``window_size``.
        minimum_calls: Calls the window must hold before a rate rule can open the circuit (only with
            a rate rule).
        slow_call_duration: Optional rule: calls slower than this many seconds are *slow*.
        slow_call_rate_threshold: Open when the slow fraction over the window reaches this (only with
            ``slow_call_duration``).
        on: What counts as a failure: an exception type, a tuple of types, or a predicate
            ``(exc) -> bool``. Other exceptions pass through as *ignored*. Alias: ``expected_exception``.
        result_is_failure: Optional predicate ``(result) -> bool`` marking bad return values as failures.
        backoff_factor: Multiply the open period by this on every re-open from half-open (``>= 1``).
        max_recovery_timeout: Cap on the open period (default: ``10 * recovery_timeout`` with backoff).
        jitter: Randomise each open period by up to this fraction (``0 <= x <= 1``).
        retry_after: Optional ``(exc) -> seconds | None`` setting the open period from the failure that
            opened the circuit (e.g. an HTTP ``Retry-After``); clamped to ``max_recovery_timeout``.
        measure_latency: Time every call (two clock reads) so latency reaches the metrics; implied by
            ``slow_call_duration``. Off by default: it takes the call off the lock-free path.

    .. versionadded:: 0.1.0
    """

    failure_threshold: int = 5
    recovery_timeout: float = 60.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    probe_timeout: float | None = None
    failure_rate_threshold: float | None = None
    window_size: int | None = None
    window_duration: float | None = None
    minimum_calls: int = 10  # (_MINIMUM_CALLS_DEFAULT)
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float = 1.0  # (_SLOW_RATE_DEFAULT)
    on: ExceptionFilter = Exception
    result_is_failure: Callable[[Any], bool] | None = None
    backoff_factor: float = 1.0
    max_recovery_timeout: float | None = None
    jitter: float = 0.0
    retry_after: Callable[[BaseException], float | None] | None = None
    measure_latency: bool = False

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "failure_threshold", check_int("failure_threshold", self.failure_threshold, 1, _MAX_COUNT))
        s(self, "recovery_timeout",
          check_number("recovery_timeout", self.recovery_timeout, lo=0.0, hi=MAX_DURATION))
        s(self, "half_open_max_calls",
          check_int("half_open_max_calls", self.half_open_max_calls, 1, _MAX_PROBES))
        s(self, "success_threshold", check_int("success_threshold", self.success_threshold, 1, _MAX_COUNT))
        if self.probe_timeout is not None:
            s(self, "probe_timeout", check_number("probe_timeout", self.probe_timeout, lo=0.0, hi=MAX_DURATION))
        if self.failure_rate_threshold is not None:
            s(self, "failure_rate_threshold",
              check_number("failure_rate_threshold", self.failure_rate_threshold, lo=0.0, hi=1.0))
        if self.slow_call_duration is not None:
            s(self, "slow_call_duration",
              check_number("slow_call_duration", self.slow_call_duration, lo=0.0, hi=MAX_DURATION))
        s(self, "slow_call_rate_threshold",
          check_number("slow_call_rate_threshold", self.slow_call_rate_threshold, lo=0.0, hi=1.0))
        if self.window_size is not None and self.window_duration is not None:
            raise ConfigurationError("window_size and window_duration are exclusive: give one of them")
        if self.window_size is not None:
            s(self, "window_size", check_int("window_size", self.window_size, 1, _MAX_WINDOW))
        if self.window_duration is not None:
            s(self, "window_duration",
              check_number("window_duration", self.window_duration, lo=0.0, hi=24 * 3600.0))
        rules = self.failure_rate_threshold is not None or self.slow_call_duration is not None
        if rules and self.window_size is None and self.window_duration is None:
            s(self, "window_size", 100)
        if not rules and (self.window_size is not None or self.window_duration is not None):
            raise ConfigurationError(
                "window_size/window_duration need a rate rule: set failure_rate_threshold "
                "or slow_call_duration"
            )
        s(self, "minimum_calls", check_int("minimum_calls", self.minimum_calls, 1, _MAX_WINDOW))
        # Settings of a rule without the rule do nothing: refused, as a window without a rule is (a
        # setting equal to its default cannot be told from no setting, and changes nothing either).
        if self.slow_call_duration is None and self.slow_call_rate_threshold != _SLOW_RATE_DEFAULT:
            raise ConfigurationError(
                "slow_call_rate_threshold needs the slow-call rule: set slow_call_duration (the seconds "
                "above which a call is slow)"
            )
        if not rules and self.minimum_calls != _MINIMUM_CALLS_DEFAULT:
            raise ConfigurationError(
                "minimum_calls needs a rate rule: set failure_rate_threshold or slow_call_duration"
            )
        if self.window_size is not None and self.minimum_calls > self.window_size:
            raise ConfigurationError(
                f"minimum_calls ({self.minimum_calls}) must not exceed window_size ({self.window_size})"
            )
        s(self, "on", _exception_filter("on", self.on))
        _optional_callable("result_is_failure", self.result_is_failure, "the result")
        _optional_callable("retry_after", self.retry_after, "the exception")
        s(self, "backoff_factor", check_number("backoff_factor", self.backoff_factor, lo=1.0, hi=1000.0,
                                          lo_open=False))
        if self.max_recovery_timeout is not None:
            cap = check_number("max_recovery_timeout", self.max_recovery_timeout, lo=0.0, hi=MAX_DURATION)
            if cap < self.recovery_timeout:
                raise ConfigurationError(
                    f"max_recovery_timeout ({cap:g}) must not be below recovery_timeout "
                    f"({self.recovery_timeout:g})"
                )
            s(self, "max_recovery_timeout", cap)
        s(self, "jitter", check_number("jitter", self.jitter, lo=0.0, hi=1.0, lo_open=False))
        if not isinstance(self.measure_latency, bool):
            raise ConfigurationError(f"measure_latency must be a bool, got {self.measure_latency!r}")

    # -- derived ------------------------------------------------------------------------------------

    @property
    def windowed(self) -> bool:
        """Whether a rate rule needs the sliding window on every call."""
        return self.window_size is not None or self.window_duration is not None

    @property
    def timed(self) -> bool:
        """Whether calls must be timed (the slow-call rule, or latency metrics)."""
        return self.slow_call_duration is not None or self.measure_latency

    @property
    def effective_probe_timeout(self) -> float:
        return self.probe_timeout if self.probe_timeout is not None else self.recovery_timeout

    @property
    def recovery_cap(self) -> float:
        """The longest open period: ``max_recovery_timeout`` or its default."""
        if self.max_recovery_timeout is not None:
            return self.max_recovery_timeout
        if self.backoff_factor > 1.0 or self.jitter > 0.0 or self.retry_after is not None:
            return min(MAX_DURATION, self.recovery_timeout * 10.0)
        return self.recovery_timeout

    def is_failure(self) -> Callable[[BaseException], bool]:
        """The exception classifier, built once per breaker."""
        on = self.on
        if isinstance(on, type | tuple):
            types = on

            def matches(exc: BaseException) -> bool:
                # an exception group (a TaskGroup's) matches if any exception in it does
                return isinstance(exc, types) or (
                    isinstance(exc, _GROUPS) and exc.subgroup(types) is not None)  # type: ignore[attr-defined]

            return matches
        return on

    def same_as(self, other: Policy, *, by_name: bool = True) -> bool:
        """Whether ``other`` decides as this policy does: every field equal, where two functions made from
        equal code in one module, with the same defaults and the same captured values, count as equal,
        and so do two classes of one module and qualified name. So ``with circuit("billing", on=lambda
        e: ...)`` may be written inline and run again (each run makes a new function object, and
        comparing them as objects refused the second run as "another policy"), and a module reloaded
        with ``importlib.reload()`` may declare its circuits again (its classes and functions are new
        objects, made from the same source).

        With ``by_name=False``, classes are the same only if they are one object: a policy that is the
        same as a breaker's but not so is a reloaded module's, whose classes the breaker must use from
        then on (an exception of the new ``PaymentError`` is no instance of the old one).
        """
        if self == other:
            return True
        if type(other) is not type(self):
            return False
        return (all(getattr(self, name) == getattr(other, name) for name in _PLAIN_FIELDS)
                and all(same_value(getattr(self, name), getattr(other, name), by_name=by_name)
                        for name in _CALLABLE_FIELDS))

    def differences(self, other: Policy) -> list[str]:
        """What ``other`` sets otherwise, one ``"name: old -> new"`` per field (for a conflict's message).
        Functions of the same name that differ in what they captured, or are different functions of one
        name, are said to be another function, and classes of one name another class, rather than left
        out of an empty list."""
        a, b = self.as_dict(), other.as_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" if a[k] != b[k] else _another(k, getattr(self, k), getattr(other, k))
                for k in a if a[k] != b[k] or not same_value(getattr(self, k), getattr(other, k))]

    def as_dict(self) -> dict[str, Any]:
        """The policy as plain data (callables by their qualified name), for display and storage."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, type):
                v = v.__qualname__
            elif isinstance(v, tuple):
                v = [t.__qualname__ for t in v]
            elif callable(v):
                v = getattr(v, "__qualname__", repr(v))
            out[f.name] = v
        return out

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Policy:
        """Build a policy from keyword arguments, accepting ``expected_exception`` as an alias of ``on``."""
        if "expected_exception" in kwargs:
            if "on" in kwargs:
                raise ConfigurationError("give on= or expected_exception=, not both")
            kwargs = dict(kwargs)
            kwargs["on"] = kwargs.pop("expected_exception")
            _exception_filter("expected_exception", kwargs["on"])  # an error names the argument given
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigurationError(f"unknown policy argument(s): {', '.join(unknown)}"
                                     + "".join(f"; {_hint(name, known)}" for name in unknown if _hint(name, known)))
        return cls(**kwargs)


def _another(field: str, old: object, new: object) -> str:
    """A conflict's line for a field whose old and new values have the same name."""
    if isinstance(old, type | tuple) and isinstance(new, type | tuple):
        before, after = _where(old), _where(new)
        if before != after:
            return f"{field}: another class, {before!r} -> {after!r}"
        return (f"{field}: another class {before!r} of the same name (a class defined inside a function is a "
                "new class on every run of it: define it once, at module level)")
    return (f"{field}: another function {getattr(old, '__qualname__', repr(old))!r} (it captured other values, "
            "or is defined elsewhere)")


def _where(value: object) -> object:
    """A class (or a tuple of them) by module and qualified name."""
    if isinstance(value, tuple):
        return [_where(v) for v in value]
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"


#: The policy's fields that may hold a function, and the others (see :meth:`Policy.same_as`).
_CALLABLE_FIELDS: Final = ("on", "result_is_failure", "retry_after")
_PLAIN_FIELDS: Final = tuple(f.name for f in fields(Policy) if f.name not in _CALLABLE_FIELDS)
