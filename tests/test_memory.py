"""Rejections retain nothing; failing calls' frames are not kept alive by the breaker."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from circuitry import CircuitOpenError, Registry, circuit

from .conftest import Boom, measure_in_subprocess


class Big:
    def __init__(self) -> None:
        self.payload = bytearray(10_000_000)


def test_one_hundred_thousand_rejections_per_face_retain_no_memory() -> None:
    grown = measure_in_subprocess("""
        import asyncio, gc, tracemalloc
        from circuitry import CircuitOpenError, Registry, circuit
        reg = Registry(hooks=[])

        @circuit("mem", registry=reg, failure_threshold=1, recovery_timeout=3600)
        def f():
            raise ValueError()

        try:
            f()
        except ValueError:
            pass

        c = circuit("mem", registry=reg)
        loop = asyncio.new_event_loop()

        async def reject_async_with(n):
            for _ in range(n):
                try:
                    async with c:
                        pass
                except CircuitOpenError:
                    pass

        def reject(n):  # by the decorator, a `with` block and an `async with` block
            for _ in range(n):
                try:
                    f()
                except CircuitOpenError:
                    pass
                try:
                    with c:
                        pass
                except CircuitOpenError:
                    pass
            loop.run_until_complete(reject_async_with(n))

        reject(1000)  # warm up caches
        gc.collect()
        tracemalloc.start()
        reject(1000)  # what tracing itself allocates once
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        reject(100_000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        assert reg["mem"].stats().rejected == 3 * 102_000
        print(after - before)
    """)
    assert grown < 4096, grown  # purgatory's shared error grows ~1.5 KB per call


@pytest.mark.parametrize("face", ["decorator", "with", "call"])
def test_a_failing_calls_locals_are_not_kept_alive(registry: Registry, face: str) -> None:
    refs: list[weakref.ref[Big]] = []

    def work() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        raise Boom()

    c = circuit("frames", failure_threshold=10**6)
    for _ in range(3):
        try:
            if face == "decorator":
                c(work)()
            elif face == "with":
                with c:
                    work()
            else:
                c.call(work)
        except Boom:
            pass
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_the_call_that_opens_the_circuit_does_not_keep_its_frames(registry: Registry) -> None:
    refs: list[weakref.ref[Big]] = []

    @circuit("opening", failure_threshold=1)
    def work() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        raise Boom()

    try:
        work()
    except Boom:
        pass
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            work()
    gc.collect()
    assert refs[0]() is None


async def test_async_failures_do_not_keep_frames(registry: Registry) -> None:
    refs: list[weakref.ref[Big]] = []

    @circuit("afr", failure_threshold=10**6)
    async def work() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        await asyncio.sleep(0)
        raise Boom()

    for _ in range(3):
        try:
            await work()
        except Boom:
            pass
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


@pytest.mark.parametrize("path", ["success", "failure", "ignored", "cancelled", "nested", "timed", "probe",
                                  "async_success", "async_failure"])
def test_with_blocks_retain_nothing_per_entry(path: str) -> None:
    """Each outcome of a `with` / `async with` block, 20,000 times: nothing is retained (the C faces
    keep their entries in a table per circuit; this is where a lost reference would show)."""
    grown = measure_in_subprocess(f"""
        import asyncio, gc, tracemalloc
        from circuitry import CircuitOpenError, Registry, circuit
        from circuitry.testing import FakeClock
        clock = FakeClock()
        reg = Registry(clock=clock, hooks=[])
        path = {path!r}
        policy = dict(failure_threshold=10**9, on=KeyError)
        if path == "timed":
            policy["measure_latency"] = True
        if path == "probe":
            policy = dict(failure_threshold=1, recovery_timeout=1, on=KeyError)
        c = circuit("mem", registry=reg, **policy)
        loop = asyncio.new_event_loop()

        async def aone():
            try:
                async with c:
                    if path == "async_failure":
                        raise KeyError("x")
            except KeyError:
                pass

        def one():
            try:
                if path == "success" or path == "timed":
                    with c:
                        clock.advance(0.001)
                elif path == "failure":
                    with c:
                        raise KeyError("x")
                elif path == "ignored":
                    with c:
                        raise ValueError("x")
                elif path == "cancelled":
                    with c:
                        raise KeyboardInterrupt
                elif path == "nested":
                    with c:
                        with c:
                            pass
                elif path == "probe":  # fail (opens), wait, probe succeeds (closes)
                    with c:
                        raise KeyError("x")
            except (KeyError, ValueError, KeyboardInterrupt):
                pass
            if path == "probe":
                clock.advance(1)
                with c:
                    pass

        def run(n):
            if path.startswith("async"):
                for _ in range(n):
                    loop.run_until_complete(aone())
            else:
                for _ in range(n):
                    one()

        run(2000)
        gc.collect()
        tracemalloc.start()
        run(1000)  # what tracing itself allocates once
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        run(20_000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        s = reg["mem"].stats()
        assert s.successes + s.failures + s.ignored + s.cancelled >= 23_000, s
        print(after - before)
    """)
    assert grown < 4096, grown
