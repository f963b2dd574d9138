"""The async faces: ``async def``, ``async with``, async generators, ``call()`` of coroutines."""

from __future__ import annotations

import asyncio
import gc
import inspect
from typing import Any

import pytest

from circuitry import CircuitBreaker, CircuitOpenError, CircuitState, Registry, circuit
from circuitry.testing import FakeClock

from .conftest import Boom, Other


async def test_async_def_stays_a_coroutine_function(registry: Registry) -> None:
    @circuit("svc")
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return url

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert await fetch("u") == "u"


async def test_async_failures_count_and_the_tripping_call_raises_its_own_exception(registry: Registry) -> None:
    @circuit("svc", failure_threshold=2)
    async def f() -> None:
        await asyncio.sleep(0)
        raise Boom()

    for _ in range(2):
        with pytest.raises(Boom):
            await f()
    with pytest.raises(CircuitOpenError):
        await f()
    s = registry["svc"].stats()
    assert (s.failures, s.rejected, s.successes) == (2, 1, 0)


async def test_a_coroutine_is_not_counted_a_success_when_created(registry: Registry) -> None:
    """pybreaker#7: a sync wrapper on an ``async def`` counts every call a success."""

    async def failing() -> None:
        raise Boom()

    b = registry.get("svc", failure_threshold=1)
    awaitable = b.call(failing)
    assert b.stats().successes == 0
    with pytest.raises(Boom):
        await awaitable
    assert b.state is CircuitState.OPEN


@pytest.mark.parametrize("how", ["task.cancel", "wait_for", "never awaited"])
async def test_a_call_cancelled_before_it_starts_takes_no_probe(registry: Registry, clock: FakeClock,
                                                               how: str) -> None:
    """``circuit(...).call(async_fn)`` admits the call when its coroutine starts: cancelled before its first
    step, it took no permit (it held the probe until probe_timeout, 30 s here, and was never counted)."""
    c = circuit("svc", failure_threshold=1, recovery_timeout=30)

    async def fetch() -> str:
        await asyncio.sleep(0)
        return "ok"

    with pytest.raises(Boom):
        c.breaker.call(lambda: (_ for _ in ()).throw(Boom()))
    clock.advance(30)
    if how == "task.cancel":
        task = asyncio.ensure_future(c.call(fetch))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    elif how == "wait_for":
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.call(fetch), 0)
    else:
        c.call(fetch).close()
    assert c.breaker.stats().probes_in_flight == 0
    assert await c.call(fetch) == "ok"  # the next caller is the probe
    assert c.breaker.state is CircuitState.CLOSED


async def test_an_async_generator_abandoned_inside_async_with_gives_its_probe_back(registry: Registry,
                                                                                   clock: FakeClock) -> None:
    """An async generator holds ``async with circuit(...)`` across its ``yield`` and its consumer breaks out:
    asyncio closes the generator in a task of its own, in a copy of the consumer's context. The C face
    found no entry there: it raised into the loop's exception handler, and the probe stayed taken until
    probe_timeout (the next caller refused)."""
    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx.get("exception")))
    face = circuit("db", failure_threshold=1, recovery_timeout=30)
    with pytest.raises(Boom):
        async with face:
            raise Boom()
    clock.advance(30)

    async def rows() -> Any:
        async with face:  # the probe
            for i in range(10):
                await asyncio.sleep(0)
                yield i

    async for _ in rows():
        break
    for _ in range(5):
        gc.collect()
        await asyncio.sleep(0)  # asyncio's finaliser task runs aclose()
    assert errors == []
    assert face.breaker.stats().probes_in_flight == 0 and face.breaker.stats().cancelled == 1
    async with face:  # the next caller probes
        pass
    assert face.breaker.state is CircuitState.CLOSED
    assert getattr(face, "_open_entries", 0) == 0


async def test_abandoned_async_generators_leave_nothing_in_their_consumers_context(registry: Registry) -> None:
    """Each abandoned generator's entry stayed in its consumer's context (a chain of 1,000 entries after
    1,000 of them), and an async generator consuming them popped the stale one at its own exit: its own
    call's outcome went to another token."""
    import contextvars

    face = circuit("rows", failure_threshold=1, recovery_timeout=60)

    async def rows() -> Any:
        async with face:
            yield 1
            yield 2

    for _ in range(200):
        async for _ in rows():
            break
        await asyncio.sleep(0)
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    left = [v for k, v in contextvars.copy_context().items() if k.name.startswith("circuitry:rows") and v]
    assert left == [] and getattr(face, "_open_entries", 0) == 0

    async def outer() -> Any:
        async with face:  # its own call, made before a reset: stale when it fails
            face.breaker.reset()
            async for _ in rows():  # admitted after the reset, abandoned
                break
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0)
            yield "x"
            raise OSError("the stale call fails")

    with pytest.raises(OSError):
        async for _ in outer():
            pass
    assert face.breaker.state is CircuitState.CLOSED  # a stale call's failure changes nothing


async def test_a_refused_async_with_in_an_async_generator_keeps_nothing(registry: Registry) -> None:
    """The pure-Python face keyed an empty entry by the generator's frame before the refusal: every refused
    generator's frame, and its locals, stayed referenced by the circuit."""
    face = circuit("refusing", failure_threshold=1, recovery_timeout=60)
    face.breaker.force_open()

    async def rows() -> Any:
        async with face:
            yield 1

    for _ in range(20):
        with pytest.raises(CircuitOpenError):
            async for _ in rows():
                pass
    assert not getattr(face, "_agen", None) and getattr(face, "_open_entries", 0) == 0


async def test_cancellation_is_not_counted_and_releases_the_probe(registry: Registry, clock: FakeClock) -> None:
    started = asyncio.Event()

    @circuit("svc", failure_threshold=1, recovery_timeout=5)
    async def slow(fail: bool) -> None:
        if fail:
            raise Boom()
        started.set()
        await asyncio.sleep(3600)

    with pytest.raises(Boom):
        await slow(True)
    clock.advance(5)
    task = asyncio.ensure_future(slow(False))
    await started.wait()
    assert registry["svc"].stats().probes_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = registry["svc"].stats()
    assert (s.cancelled, s.probes_in_flight, s.failures, s.state) == (1, 0, 1, CircuitState.HALF_OPEN)


async def test_async_with(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=1, on=Boom)
    async with c as b:
        await asyncio.sleep(0)
    assert isinstance(b, CircuitBreaker)
    with pytest.raises(Other):
        async with c:
            raise Other()
    with pytest.raises(Boom):
        async with c:
            raise Boom()
    with pytest.raises(CircuitOpenError):
        async with c:
            raise AssertionError("must not run")
    s = registry["svc"].stats()
    assert (s.successes, s.ignored, s.failures, s.rejected) == (1, 1, 1, 1)


async def test_one_circuit_object_entered_by_many_tasks(registry: Registry, clock: FakeClock) -> None:
    """Permits live per task, not on the shared object: exits never mix up entries."""
    c = circuit("shared", failure_threshold=10**6, recovery_timeout=5, half_open_max_calls=3)
    c.breaker.force_open()
    c.breaker.reset()

    async def worker(i: int) -> str:
        try:
            async with c:
                await asyncio.sleep(0.001 * (i % 7))
                if i % 3 == 0:
                    raise Boom()
        except Boom:
            return "failed"
        return "ok"

    results = await asyncio.gather(*(worker(i) for i in range(300)))
    s = registry["shared"].stats()
    assert s.failures == results.count("failed") == 100
    assert s.successes == results.count("ok") == 200


async def test_async_call_with_async_fallback(registry: Registry) -> None:
    async def fallback(rejection: CircuitOpenError, x: int) -> str:
        await asyncio.sleep(0)
        return f"fallback {x} ({rejection.state})"

    c = circuit("svc", failure_threshold=1, fallback=fallback)

    async def boom(x: int) -> str:
        raise Boom()

    with pytest.raises(Boom):
        await c.call(boom, 1)
    assert await c.call(boom, 2) == "fallback 2 (open)"

    @circuit("svc2", failure_threshold=1, fallback=fallback)
    async def f(x: int) -> str:
        raise Boom()

    with pytest.raises(Boom):
        await f(1)
    assert await f(3) == "fallback 3 (open)"


async def test_async_function_with_sync_fallback(registry: Registry) -> None:
    @circuit("svc", failure_threshold=1, fallback=lambda rej, x: f"cached {x}")
    async def f(x: int) -> str:
        raise Boom()

    with pytest.raises(Boom):
        await f(1)
    assert await f(2) == "cached 2"


async def test_async_generators(registry: Registry) -> None:
    @circuit("agen", failure_threshold=1)
    async def ticks(n: int, fail: bool = False) -> Any:
        for i in range(n):
            await asyncio.sleep(0)
            yield i
        if fail:
            raise Boom()

    assert inspect.isasyncgenfunction(ticks)
    assert [i async for i in ticks(3)] == [0, 1, 2]
    gen = ticks(10)
    assert await gen.__anext__() == 0
    await gen.aclose()
    s = registry["agen"].stats()
    assert (s.successes, s.cancelled) == (1, 1)
    with pytest.raises(Boom):
        async for _ in ticks(1, fail=True):
            pass
    with pytest.raises(CircuitOpenError):
        await ticks(1).__anext__()


async def test_async_generator_asend_and_athrow_are_forwarded(registry: Registry) -> None:
    @circuit("agen")
    async def acc() -> Any:
        total = 0
        while True:
            try:
                v = yield total
            except Other:
                total = -1
                continue
            total += v or 0

    g = acc()
    assert await g.asend(None) == 0
    assert await g.asend(5) == 5
    assert await g.athrow(Other()) == -1
    await g.aclose()
    assert registry["agen"].stats().cancelled == 1


async def test_async_methods(registry: Registry) -> None:
    class Client:
        @circuit("m")
        async def get(self, x: int) -> int:
            return x

        @circuit("cm")
        @classmethod
        async def build(cls) -> type:
            return cls

    assert await Client().get(3) == 3
    assert await Client.build() is Client
    assert inspect.iscoroutinefunction(Client().get)


async def test_multi_region_failover(registry: Registry) -> None:
    for region in ("us-east", "us-west"):
        registry.get(f"api_{region}").force_open()

    async def call(region: str) -> str:
        return region

    served = None
    for region in ("us-east", "us-west", "eu-central"):
        try:
            async with circuit(f"api_{region}"):
                served = await call(region)
                break
        except CircuitOpenError:
            continue
    assert served == "eu-central"
