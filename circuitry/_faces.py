"""``circuit()``: one name that is a decorator, a ``with`` block, an ``async with`` block and a
``call()`` — like :func:`wrapt.synchronized`, it picks the sync or async driver once, at decoration.

Plain functions (``def``, ``async def``, generators, async generators, and so methods) are wrapped in
a lean closure: ``functools.wraps`` keeps ``__name__``, ``__doc__``, ``__wrapped__`` (and through it
``inspect.signature``), a ``def`` stays a ``def`` and an ``async def`` an ``async def``, and a function
stays a descriptor, so it binds as a method. ``classmethod``/``staticmethod`` objects are unwrapped,
their function wrapped, and rewrapped. Every other callable — objects with ``__call__``, partials,
builtins, custom descriptors — is wrapped in a :class:`wrapt.FunctionWrapper`, a transparent proxy
that keeps attributes, ``isinstance`` and binding behaviour. wrapt's proxy costs about 0.8 µs per call
(its call path probes ``__self__`` on the wrapped object), four times the whole closure path; it earns
that where a closure would break the object, not on the common path.

The decorator finds its breaker *by name at call time* (one dict lookup), so a test that swaps the
default registry, or code that reconfigures a breaker, reaches functions decorated at import time.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import wrapt

from circuitry import _calls
from circuitry._core import CircuitBreaker, validate_name
from circuitry._policy import Policy
from circuitry._registry import DEFAULT, Registry
from circuitry.exceptions import CircuitOpenError, ConfigurationError

__all__ = ["SPEEDUPS", "Circuit", "circuit"]

P = ParamSpec("P")
R = TypeVar("R")

_CACHE_LIMIT = 4096
_cache: dict[tuple[Any, ...], Circuit] = {}
_cache_lock = threading.Lock()


def circuit(name: str, *, registry: Registry | None = None, fallback: Callable[..., Any] | None = None,
            **policy: Any) -> Circuit:
    """The circuit called ``name``: decorate with it, or enter it with ``with`` / ``async with``.

    Args:
        name: The breaker's name in the registry.
        registry: An explicit :class:`Registry`; default: the process-wide one, looked up per call.
        fallback: Called as ``fallback(rejection, *args, **kwargs)`` instead of raising
            :class:`~circuitry.CircuitOpenError` (decorator and :meth:`Circuit.call` only); may be
            ``async`` for ``async`` functions.
        **policy: Policy fields (:class:`~circuitry.Policy`), e.g. ``failure_threshold=5``,
            ``recovery_timeout=60``, ``on=(TimeoutError, ConnectionError)``. The seed's
            ``expected_exception=`` is accepted as an alias of ``on=``.

    Raises:
        ConfigurationError: A policy argument is invalid (the message names it).
        RegistryConflictError: ``name`` is registered with a different policy.

    .. versionadded:: 0.1.0
    """
    key: tuple[Any, ...] | None
    if not policy and fallback is None:
        key = (name, registry)
    else:
        try:
            key = (name, registry, fallback, *sorted(policy.items()))
            hash(key)
        except TypeError:
            key = None
    if key is not None:
        face = _cache.get(key)
        if face is not None:
            return face
    face = Circuit(name, registry=registry, fallback=fallback, policy=Policy.from_kwargs(policy) if policy else None)
    if key is not None:
        with _cache_lock:
            if len(_cache) >= _CACHE_LIMIT:
                _cache.clear()
            _cache[key] = face
    return face


# -- the hot paths that have a C twin --------------------------------------------------------------
#
# circuitry/_speedups.c holds three pieces in C: the `with` methods below, the decorator's inline
# failure count (`_py_failed`), and its refusal of an open circuit (written out in the wrappers,
# which call the C twin when it is there: a helper call would cost the Python build up to 100 ns per
# refusal, and refusals are what an outage is made of). The C versions read the breaker's slots where
# these read its attributes and call the same methods everywhere else. CIRCUITRY_NO_SPEEDUPS=1 (read
# at import) runs the Python ones.


def _py_failed(b: CircuitBreaker, token: int, exc: Exception) -> None:
    """Count ``exc``, raised by a call the decorator admitted lock-free with ``token``."""
    # The counter is read before the generation: a transition in between replaces it, so a
    # completion that raced one lands in the discarded counter, never the new one.
    consec = b._consec
    if isinstance(exc, b._fail_types) and token == b._gen:
        next(b._n_fail)
        b._dirty = True
        if next(consec) >= b._thr1:
            b._trip_fast(token, exc)
    else:
        b._on_error(token, exc)


class _PyWithBase:
    """``with`` / ``async with`` for :class:`Circuit`. Each entry keeps (breaker, permit, start time,
    the enclosing entry) in a context variable — per thread and per task, never on the shared object,
    which many tasks may enter at once."""

    __slots__ = ("_entries", "_ref", "name")

    def __init__(self, name: str, ref: Any) -> None:
        self.name = name
        self._ref = ref  # a Registry, or the default registry's ref: has ``.breakers``
        self._entries: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(f"circuitry:{name}")

    def _create(self) -> CircuitBreaker:
        raise NotImplementedError

    # -- with / async with --------------------------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        b = self._ref.breakers.get(self.name) or self._create()
        token = b._fast
        if token < 0:
            token = b._acquire_slow()
        self._entries.set((b, token, b._now() if b._timed else None, self._entries.get(None)))
        return b

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        entry = self._entries.get(None)
        if entry is None:
            raise RuntimeError(f"{self!r}: __exit__ without a matching __enter__")
        b, token, t0, outer = entry
        self._entries.set(outer)
        if exc is None:
            if token == b._fast:  # closed, lock-free, same generation
                next(b._n_ok)
                if b._dirty:
                    b._clear_consecutive(token)
            else:
                b.record_success(token, None if t0 is None else b._now() - t0)
        elif isinstance(exc, Exception):
            b._on_error(token, exc, None if t0 is None else b._now() - t0)
        else:
            b.release(token)

    async def __aenter__(self) -> CircuitBreaker:
        b = self._ref.breakers.get(self.name) or self._create()
        token = b._fast
        if token < 0:
            token = b._acquire_slow()
        self._entries.set((b, token, b._now() if b._timed else None, self._entries.get(None)))
        return b

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        entry = self._entries.get(None)
        if entry is None:
            raise RuntimeError(f"{self!r}: __aexit__ without a matching __aenter__")
        b, token, t0, outer = entry
        self._entries.set(outer)
        if exc is None:
            if token == b._fast:
                next(b._n_ok)
                if b._dirty:
                    b._clear_consecutive(token)
            else:
                b.record_success(token, None if t0 is None else b._now() - t0)
        elif isinstance(exc, Exception):
            b._on_error(token, exc, None if t0 is None else b._now() - t0)
        else:
            b.release(token)


_speedups: Any = None
if not os.environ.get("CIRCUITRY_NO_SPEEDUPS"):
    try:
        from circuitry import _speedups
    except ImportError:  # built without a C compiler
        pass
    else:
        _speedups.bind(CircuitBreaker, CircuitOpenError)

#: Whether the C accelerator is in use.
SPEEDUPS: bool = _speedups is not None

_reject: Callable[[CircuitBreaker], None] | None = None if _speedups is None else _speedups.reject
_failed: Callable[[CircuitBreaker, int, Exception], None] = _py_failed if _speedups is None else _speedups.failed
if TYPE_CHECKING or _speedups is None:  # noqa: SIM108 (mypy needs a plain alias for a base class)
    _WithBase = _PyWithBase
else:
    _WithBase = _speedups.WithBase


class Circuit(_WithBase):
    """What :func:`circuit` returns. Safe to share: one object may be entered by many threads and
    tasks at once (each entry is kept per thread and per task, never on the object)."""

    __slots__ = ("_fallback", "_policy", "_registry")

    def __init__(self, name: str, *, registry: Registry | None = None,
                 fallback: Callable[..., Any] | None = None, policy: Policy | None = None) -> None:
        name = validate_name(name)
        if registry is not None and not isinstance(registry, Registry):
            raise ConfigurationError(f"registry must be a Registry, got {registry!r}")
        if fallback is not None and not callable(fallback):
            raise ConfigurationError(f"fallback must be callable, got {fallback!r}")
        super().__init__(name, registry if registry is not None else DEFAULT)
        self._registry = registry
        self._fallback = fallback
        self._policy = policy
        if policy is not None:  # a conflicting policy fails here; the breaker is made on first use
            self._current_registry().declare(name, policy)

    def _current_registry(self) -> Registry:
        return self._registry if self._registry is not None else DEFAULT.registry

    def _create(self) -> CircuitBreaker:
        return self._current_registry().get(self.name, self._policy)

    def _breaker_now(self) -> CircuitBreaker:
        return self._ref.breakers.get(self.name) or self._create()

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker this circuit uses now (from the current registry)."""
        return self._breaker_now()

    def __repr__(self) -> str:
        return f"circuit({self.name!r})"

    # A circuit is a shared handle, like a function: copying gives the same object.
    def __copy__(self) -> Circuit:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Circuit:
        return self

    # -- call ---------------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` through the breaker; for an ``async`` callable, returns the
        awaitable to ``await``."""
        return _calls.call_through(self.breaker, fn, args, kwargs, self._fallback)

    # -- decorator ----------------------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if isinstance(fn, classmethod | staticmethod):
            return type(fn)(self(fn.__func__))
        fallback = self._fallback
        if inspect.iscoroutinefunction(fn):
            wrapper: Any = self._wrap_async(fn)
        elif inspect.isasyncgenfunction(fn):
            wrapper = self._wrap_async_gen(fn)
        elif inspect.isgeneratorfunction(fn):
            wrapper = self._wrap_gen(fn)
        elif inspect.isfunction(fn) or inspect.ismethod(fn):
            if fallback is not None and inspect.iscoroutinefunction(fallback):
                raise ConfigurationError(f"fallback {fallback!r} is async but {fn!r} is not")
            wrapper = self._wrap_sync(fn)
        elif callable(fn):
            return self._wrap_object(fn)
        else:
            raise ConfigurationError(f"circuit() decorates callables, got {fn!r}")
        functools.update_wrapper(wrapper, fn)  # type: ignore[arg-type]
        wrapper.circuit = self
        return wrapper  # type: ignore[no-any-return]

    def _wrap_sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref, name, create, fallback = self._ref, self.name, self._create, self._fallback
        drive, reject, failed = _calls.drive_sync, _reject, _failed

        # The hot path, written out: a closed breaker admits with one read (`_fast` is the generation)
        # and counts a success with one atomic increment; an open one refuses from this frame. Every
        # other case goes to the general driver.
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                b = ref.breakers[name]
            except KeyError:
                b = create()
            token = b._fast
            if token < 0:
                if token == -2 and fallback is None:
                    if reject is not None:
                        reject(b)  # the C twin of the lines below
                    else:
                        now = b._now()
                        until = b._open_until
                        if now < until:
                            next(b._n_rej)
                            raise CircuitOpenError(name, "open", b._opened_at, until - now)
                return drive(b, fn, args, kwargs, fallback)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                failed(b, token, exc)
                raise
            except BaseException:
                next(b._n_cancel)
                raise
            next(b._n_ok)
            if b._dirty:
                b._clear_consecutive(token)
            return result

        return wrapper

    # The async wrapper and the async-with methods repeat their sync twins line for line, on purpose:
    # sharing a helper would put one more call (~50 ns) on every protected call.

    def _wrap_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref, name, create, fallback = self._ref, self.name, self._create, self._fallback
        drive, reject, failed = _calls.drive_async, _reject, _failed

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                b = ref.breakers[name]
            except KeyError:
                b = create()
            token = b._fast
            if token < 0:
                if token == -2 and fallback is None:
                    if reject is not None:
                        reject(b)  # the C twin of the lines below
                    else:
                        now = b._now()
                        until = b._open_until
                        if now < until:
                            next(b._n_rej)
                            raise CircuitOpenError(name, "open", b._opened_at, until - now)
                return await drive(b, fn, args, kwargs, fallback)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                failed(b, token, exc)
                raise
            except BaseException:
                next(b._n_cancel)
                raise
            next(b._n_ok)
            if b._dirty:
                b._clear_consecutive(token)
            return result

        return wrapper

    def _wrap_gen(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return _calls.gen_wrapper(self._breaker_now, fn, self._fallback)

    def _wrap_async_gen(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return _calls.async_gen_wrapper(self._breaker_now, fn, self._fallback)

    def _wrap_object(self, fn: Callable[P, R]) -> Callable[P, R]:
        lookup, fallback = self._breaker_now, self._fallback

        def through(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            return _calls.call_through(lookup(), wrapped, args, kwargs, fallback)

        return wrapt.FunctionWrapper(fn, through)
