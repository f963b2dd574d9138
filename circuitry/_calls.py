"""Drivers: run a callable under a breaker's permit and report the outcome.

One driver per kind of callable (plain, coroutine, generator, async generator). They hold no state
of their own: every decision is the breaker's (:mod:`circuitry._core`).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from circuitry.exceptions import CircuitOpenError

if TYPE_CHECKING:
    from circuitry._core import CircuitBreaker, Token

__all__ = ["async_gen_wrapper", "call_through", "drive_async", "drive_sync", "gen_wrapper"]

Fallback = Callable[..., Any]


def drive_sync(b: CircuitBreaker, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               fallback: Fallback | None, defer_awaitables: bool = False) -> Any:
    """Run a plain callable through the breaker (the general path: any state, any policy).

    With ``defer_awaitables`` (``call()``, which cannot know what it is given), a result that is
    awaitable is returned wrapped, and its outcome recorded when it completes.
    """
    try:
        token = b._acquire()
    except CircuitOpenError as rejection:
        if fallback is None:
            raise
        return fallback(rejection, *args, **kwargs)
    t0 = b._now() if b._timed else None
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        b._on_error(token, exc, None if t0 is None else b._now() - t0)
        raise
    except BaseException:
        b.release(token)
        raise
    if defer_awaitables and _awaitable(result):
        return finish_async(b, token, result, t0)
    b._on_result(token, result, None if t0 is None else b._now() - t0)
    return result


async def drive_async(b: CircuitBreaker, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                      kwargs: dict[str, Any], fallback: Fallback | None) -> Any:
    """Run a coroutine function through the breaker."""
    try:
        token = b._acquire()
    except CircuitOpenError as rejection:
        if fallback is None:
            raise
        result = fallback(rejection, *args, **kwargs)
        return (await result) if inspect.isawaitable(result) else result
    return await finish_async(b, token, fn(*args, **kwargs), b._now() if b._timed else None)


async def finish_async(b: CircuitBreaker, token: Token, awaitable: Awaitable[Any], t0: float | None) -> Any:
    try:
        result = await awaitable
    except Exception as exc:
        b._on_error(token, exc, None if t0 is None else b._now() - t0)
        raise
    except BaseException:
        b.release(token)
        raise
    b._on_result(token, result, None if t0 is None else b._now() - t0)
    return result


def gen_wrapper(lookup: Callable[[], CircuitBreaker], fn: Callable[..., Generator[Any, Any, Any]],
                fallback: Fallback | None) -> Callable[..., Generator[Any, Any, Any]]:
    """Wrap a generator function. A generator is one call: admitted when iteration starts, done when
    it returns or raises. Closing it early (``GeneratorExit``) is a cancellation: never counted, any
    probe permit released."""

    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        b = lookup()
        try:
            token = b._acquire()
        except CircuitOpenError as rejection:
            if fallback is None:
                raise
            return (yield from fallback(rejection, *args, **kwargs))
        t0 = b._now() if b._timed else None
        try:
            result = yield from fn(*args, **kwargs)
        except Exception as exc:
            b._on_error(token, exc, None if t0 is None else b._now() - t0)
            raise
        except BaseException:
            b.release(token)
            raise
        b._on_result(token, result, None if t0 is None else b._now() - t0)
        return result

    return wrapper


def async_gen_wrapper(lookup: Callable[[], CircuitBreaker], fn: Callable[..., AsyncGenerator[Any, Any]],
                      fallback: Fallback | None) -> Callable[..., AsyncGenerator[Any, Any]]:
    """The async-generator twin of :func:`gen_wrapper`; ``asend``/``athrow``/``aclose`` are forwarded
    to the wrapped generator as ``yield from`` would."""

    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        b = lookup()
        try:
            token = b._acquire()
        except CircuitOpenError as rejection:
            if fallback is None:
                raise
            async for item in fallback(rejection, *args, **kwargs):
                yield item
            return
        t0 = b._now() if b._timed else None
        agen = fn(*args, **kwargs)
        try:
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
        except Exception as exc:
            b._on_error(token, exc, None if t0 is None else b._now() - t0)
            raise
        except BaseException:
            b.release(token)
            raise
        b._on_result(token, None, None if t0 is None else b._now() - t0)

    return wrapper


def _awaitable(value: object) -> bool:
    # inspect.isawaitable costs ~150 ns on a plain value; the type check answers most results at once
    t = type(value)
    if t in _PLAIN:
        return False
    return inspect.isawaitable(value)


_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict, set})


def call_through(b: CircuitBreaker, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 fallback: Fallback | None = None) -> Any:
    """``breaker.call(fn, ...)``: for a plain function the result; for a coroutine function (or any
    callable returning an awaitable) an awaitable whose outcome is recorded when it completes —
    never counted a success merely because the coroutine object was created."""
    return drive_sync(b, fn, args, kwargs, fallback, defer_awaitables=True)
