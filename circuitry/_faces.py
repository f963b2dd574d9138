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

Every wrapper drives the breaker through its one entry and one exit (``enter()`` / ``exit()``, see
:mod:`circuitry._core`); none reads the breaker's state. The ``with`` methods come from
:mod:`circuitry._accel` (C where built, else Python).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

import wrapt

from circuitry._accel import SPEEDUPS, WithBase, protect
from circuitry._core import CircuitBreaker, call_through, is_async_callable, not_started, validate_name
from circuitry._policy import Policy
from circuitry._registry import DEFAULT, Registry
from circuitry.exceptions import CircuitOpenError, ConfigurationError

__all__ = ["SPEEDUPS", "Circuit", "Protected", "circuit"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")
T = TypeVar("T")

_CACHE_LIMIT = 4096
_cache: dict[tuple[Any, ...], Circuit] = {}
_cache_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # held for a few dict steps: a fork then left the child a lock never released
    os.register_at_fork(before=_cache_lock.acquire, after_in_parent=_cache_lock.release,
                        after_in_child=_cache_lock.release)


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
            ``recovery_timeout=60``, ``on=(TimeoutError, ConnectionError)``.
            ``expected_exception=`` (the database API's name) is accepted as an alias of ``on=``.

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
            if face._policy is not None:  # the registry in force now may hold the name with another policy
                current = face._current_registry()
                held = current.breakers.get(name)
                if held is None or current.given_policy(name) is not face._policy:
                    current.declare(name, face._policy)
            return face
    face = Circuit(name, registry=registry, fallback=fallback, policy=Policy.from_kwargs(policy) if policy else None)
    if key is not None:
        with _cache_lock:
            if len(_cache) >= _CACHE_LIMIT:
                _cache.clear()
            _cache[key] = face
    return face


class Protected(Protocol[P, R_co]):
    """What ``@circuit(...)`` returns, for type checkers: the function with the same signature, plus
    its ``circuit``. It binds as a method does (``obj.method`` drops ``self``).

    .. versionadded:: 0.1.0
    """

    #: The circuit this function is protected by (``fn.circuit.breaker`` is its breaker).
    circuit: Circuit

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Protected[P, R_co]: ...
    @overload
    def __get__(self: Protected[Concatenate[S, P2], R], instance: S,
                owner: type[Any] | None = None) -> Protected[P2, R]: ...
    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        raise NotImplementedError  # pragma: no cover - a type, never called: wrappers are functions


class Circuit(WithBase):
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
            if registry is None and not DEFAULT.isolated:
                DEFAULT.declared[name] = policy

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

    # -- with / async with: inherited (WithBase) ------------------------------------------------------

    if TYPE_CHECKING:  # the base's methods, typed for users
        def __enter__(self) -> CircuitBreaker: ...
        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                     tb: TracebackType | None) -> None: ...
        async def __aenter__(self) -> CircuitBreaker: ...
        async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                            tb: TracebackType | None) -> None: ...

    # -- call ---------------------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the breaker; for an ``async`` callable, returns the
        awaitable to ``await``. Typed as ``fn`` is: the arguments are checked, the result keeps its type."""
        result: R = call_through(self.breaker, fn, args, kwargs, self._fallback)
        return result

    # -- decorator ----------------------------------------------------------------------------------

    @overload
    def __call__(self, fn: classmethod[T, P, R]) -> classmethod[T, P, R]: ...
    @overload
    def __call__(self, fn: staticmethod[P, R]) -> staticmethod[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, R]) -> Protected[P, R]: ...
    def __call__(self, fn: Any) -> Any:
        """Protect ``fn``: a ``def``, ``async def``, generator, async generator, method,
        ``classmethod``/``staticmethod`` object (put ``@circuit`` above it) or callable object.

        Raises:
            ConfigurationError: ``fn`` is a class, or ``fallback`` cannot take ``fn``'s arguments.
        """
        if isinstance(fn, classmethod | staticmethod):
            return type(fn)(self(fn.__func__))
        if inspect.isclass(fn):
            raise ConfigurationError(
                f"circuit({self.name!r}) protects calls, not classes: decorating {fn.__qualname__} would "
                "protect only its constructor. Decorate the methods that call the service instead")
        if not callable(fn):
            raise ConfigurationError(f"circuit() decorates callables, got {fn!r}")
        fallback = self._fallback
        if fallback is not None:
            _check_fallback(fallback, fn)
        if inspect.iscoroutinefunction(fn):
            wrapper: Any = self._wrap_async(fn)
        elif inspect.isasyncgenfunction(fn):
            if fallback is not None and (inspect.iscoroutinefunction(fallback)
                                         or inspect.isgeneratorfunction(fallback)):
                raise ConfigurationError(f"fallback {fallback!r} must be an async generator, as {fn!r} is "
                                         "(its items are yielded instead, with `async for`)")
            wrapper = self._wrap_async_gen(fn)
        elif inspect.isgeneratorfunction(fn):
            if fallback is not None and (inspect.iscoroutinefunction(fallback)
                                         or inspect.isasyncgenfunction(fallback)):
                raise ConfigurationError(f"fallback {fallback!r} must be a generator or return an iterable, as "
                                         f"{fn!r} is a generator (its items are yielded instead, with `yield from`)")
            wrapper = self._wrap_gen(fn)
        elif inspect.isfunction(fn) or inspect.ismethod(fn):
            if fallback is not None and inspect.iscoroutinefunction(fallback):
                raise ConfigurationError(f"fallback {fallback!r} is async but {fn!r} is not")
            wrapper = self._wrap_sync(fn)
        else:
            return self._wrap_object(fn)
        functools.update_wrapper(wrapper, fn)
        wrapper.circuit = self
        return wrapper

    # The wrappers: find the breaker by name, enter, call, exit. A TypeError raised by the call itself
    # (arguments the function does not take) never reached the service: ignored, never a failure.
    # A plain function's wrapper is protect() (circuitry/_fastpath.py, or its C twin); the async one
    # writes the same steps out, on purpose: a shared helper would put one more call (~50 ns) on every
    # protected call, and a `try` around enter() would cost every refusal ~1,100 instructions
    # (catching and re-raising). With a fallback both use call_through().

    def _wrap_sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref, name, create, fallback = self._ref, self.name, self._create, self._fallback
        if fallback is not None:
            lookup = self._breaker_now

            def with_fallback(*args: Any, **kwargs: Any) -> Any:
                return call_through(lookup(), fn, args, kwargs, fallback, False)

            return with_fallback

        return protect(ref, name, create, fn)  # (C where built: no Python frame of its own)

    def _wrap_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref, name, create, fallback = self._ref, self.name, self._create, self._fallback
        if fallback is not None:
            lookup = self._breaker_now

            async def with_fallback(*args: Any, **kwargs: Any) -> Any:
                # the call's own awaitable (its outcome recorded when it completes), or the fallback's answer
                outcome = call_through(lookup(), fn, args, kwargs, fallback)
                return (await outcome) if inspect.isawaitable(outcome) else outcome

            return with_fallback

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                b = ref.breakers[name]
            except KeyError:
                b = create()
            token = b.enter()
            try:
                # (without keywords, the call needs no keyword dict: ~25 ns less a call)
                call = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:  # raised making the coroutine: bad arguments are no call
                if isinstance(exc, TypeError) and not_started(exc):
                    b.record_ignored(token)
                else:
                    b.exit(token, exc)
                raise
            try:
                result = await call
            except BaseException as exc:  # one clause: a second one costs every counted failure a match
                b.exit(token, exc)
                raise
            b.exit(token, None, result)
            return result

        return wrapper

    def _wrap_gen(self, fn: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Generator[Any, Any, Any]]:
        """A generator is one call: admitted when iteration starts, done when it returns or raises.
        Closing it early (``GeneratorExit``) is a cancellation: never counted, any probe permit
        released."""
        lookup, fallback = self._breaker_now, self._fallback

        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            b = lookup()
            try:
                token = b.enter()
            except CircuitOpenError as rejection:
                if fallback is None:
                    raise
                return (yield from fallback(rejection, *args, **kwargs))
            try:
                result = yield from fn(*args, **kwargs)
            except TypeError as exc:
                b.record_ignored(token) if not_started(exc) else b.exit(token, exc)
                raise
            except BaseException as exc:
                b.exit(token, exc)
                raise
            b.exit(token, None, result)
            return result

        return wrapper

    def _wrap_async_gen(self, fn: Callable[..., AsyncGenerator[Any, Any]]) -> Callable[..., AsyncGenerator[Any, Any]]:
        """The async-generator twin of :meth:`_wrap_gen`; ``asend``/``athrow``/``aclose`` are forwarded
        to the wrapped generator as ``yield from`` would."""
        lookup, fallback = self._breaker_now, self._fallback

        async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            b = lookup()
            try:
                token = b.enter()
            except CircuitOpenError as rejection:
                if fallback is None:
                    raise
                async for item in fallback(rejection, *args, **kwargs):
                    yield item
                return
            try:
                agen = fn(*args, **kwargs)
                to_send: Any = None
                to_throw: BaseException | None = None
                while True:
                    try:
                        if to_throw is not None:
                            thrown, to_throw = to_throw, None
                            item = await agen.athrow(thrown)
                        else:
                            item = await agen.asend(to_send)
                    except StopAsyncIteration:
                        break
                    try:
                        to_send = yield item
                    except GeneratorExit:
                        await agen.aclose()
                        raise
                    except BaseException as exc:  # thrown in by the consumer: forward it
                        to_throw = exc
            except TypeError as exc:
                b.record_ignored(token) if not_started(exc) else b.exit(token, exc)
                raise
            except BaseException as exc:
                b.exit(token, exc)
                raise
            b.exit(token, None)

        return wrapper

    def _wrap_object(self, fn: Callable[..., Any]) -> _ObjectProxy:
        lookup, fallback = self._breaker_now, self._fallback
        is_async = is_async_callable(fn) or None  # (a plain __call__ may still return an awaitable)

        def through(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            return call_through(lookup(), wrapped, args, kwargs, fallback, is_async)

        proxy = _ObjectProxy(fn, through)
        proxy._self_circuit = self  # (wrapt keeps `_self_` names on the proxy, not the object)
        return proxy


if TYPE_CHECKING:
    _FunctionWrapper = wrapt.FunctionWrapper[Any, Any]
else:  # (wrapt < 2 cannot be subscripted at run time)
    _FunctionWrapper = wrapt.FunctionWrapper


class _ObjectProxy(_FunctionWrapper):
    """wrapt's transparent proxy, with the ``circuit`` attribute on the proxy itself (an attribute
    set through a plain proxy would land on the wrapped object)."""

    _self_circuit: Circuit

    @property
    def circuit(self) -> Circuit:
        return self._self_circuit


def _check_fallback(fallback: Callable[..., Any], fn: Callable[..., Any]) -> None:
    """A fallback is called as ``fallback(rejection, *args, **kwargs)`` with the protected function's
    arguments: check, at decoration, that it can be (not at the first refusal, mid-outage)."""
    try:
        fn_sig = inspect.signature(fn)
        fb_sig = inspect.signature(fallback)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return
    args: list[object] = [None]  # the rejection
    kwargs: dict[str, object] = {}
    for p in fn_sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            args.append(None)
        elif p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = None
    try:
        fb_sig.bind(*args, **kwargs)
    except TypeError as err:
        params = [p.replace(annotation=_Shown(p.annotation)) if isinstance(p.annotation, str) else p
                  for p in fn_sig.parameters.values()]
        first = params[0].kind if params else inspect.Parameter.POSITIONAL_OR_KEYWORD
        kind = first if first is inspect.Parameter.POSITIONAL_ONLY else inspect.Parameter.POSITIONAL_OR_KEYWORD
        rejection = inspect.Parameter("rejection", kind, annotation=_Shown("CircuitOpenError"))
        expected = inspect.Signature([rejection, *params])
        name = getattr(fallback, "__name__", "fallback")
        raise ConfigurationError(
            f"fallback {name}{fb_sig} cannot take the calls of {getattr(fn, '__qualname__', fn)!r} ({err}): "
            f"a fallback is called with the refusal first, then the function's arguments, so it must "
            f"accept: def {name}{expected}") from None


class _Shown(str):
    """An annotation written as a string (``from __future__ import annotations``), shown unquoted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)
