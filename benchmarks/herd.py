"""The thundering herd: 50 callers arrive together just after a circuit's open period ends.

With one probe allowed, exactly one of them should reach the recovering service; the others should
be refused until that probe reports. This script opens a circuit in each library, waits out its
recovery timeout, releases 50 callers at once (coroutines for the async forms, threads for the sync
ones) against a function that takes 50 ms, and counts how many calls reached the function, and how
many were in it at once. (pybreaker holds a lock around every call, so its callers reach the function
one after another -- after the first has closed the circuit -- and wait in line meanwhile.)

    python benchmarks/herd.py
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from importlib import metadata
from typing import Any

import aiobreaker
import circuitbreaker
import purgatory
import pybreaker

from circuitry import Registry, circuit

CALLERS = 50
RECOVERY = 0.2  # seconds
WORK = 0.05  # seconds the recovering service takes per call


Herd = tuple[int, int]  # calls that reached the function, most in it at once


class Boom(Exception):
    pass


class Count:
    """Calls that reached the function, and the most that were in it at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entered = self.inside = self.most = 0

    def enter(self) -> None:
        with self.lock:
            self.entered += 1
            self.inside += 1
            self.most = max(self.most, self.inside)

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1


def herd_threads(call: Callable[[], Any]) -> tuple[int, int]:
    """Release CALLERS threads at once on ``call``; return how many reached the function, and the most
    that were in it at once."""
    count = Count()
    barrier = threading.Barrier(CALLERS)

    def work() -> str:
        count.enter()
        time.sleep(WORK)
        count.leave()
        return "ok"

    def caller() -> None:
        barrier.wait(10)
        try:
            call_with(work)
        except Exception:  # each library's own rejection error
            pass

    call_with = call
    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return count.entered, count.most


async def herd_tasks(call: Callable[[Callable[[], Awaitable[str]]], Awaitable[Any]]) -> tuple[int, int]:
    count = Count()
    go = asyncio.Event()

    async def work() -> str:
        count.enter()
        await asyncio.sleep(WORK)
        count.leave()
        return "ok"

    async def caller() -> None:
        await go.wait()
        try:
            await call(work)
        except Exception:
            pass

    tasks = [asyncio.ensure_future(caller()) for _ in range(CALLERS)]
    await asyncio.sleep(0)
    go.set()
    await asyncio.gather(*tasks)
    return count.entered, count.most


def trip_sync(fail: Callable[[], Any]) -> None:
    try:
        fail()
    except Exception:
        pass


async def trip_async(fail: Callable[[], Awaitable[Any]]) -> None:
    try:
        await fail()
    except Exception:
        pass


def boom() -> None:
    raise Boom()


async def aboom() -> None:
    raise Boom()


def run_circuitry() -> tuple[Herd, Herd]:
    reg = Registry(hooks=[])
    c = circuit("herd", registry=reg, failure_threshold=1, recovery_timeout=RECOVERY, half_open_max_calls=1)
    trip_sync(lambda: c.call(boom))
    time.sleep(RECOVERY + 0.05)
    threads = herd_threads(lambda fn: c.call(fn))
    ac = circuit("aherd", registry=reg, failure_threshold=1, recovery_timeout=RECOVERY, half_open_max_calls=1)

    async def main() -> Herd:
        await trip_async(lambda: ac.call(aboom))
        await asyncio.sleep(RECOVERY + 0.05)

        async def call(fn: Callable[[], Awaitable[str]]) -> Any:
            async with ac:
                return await fn()

        return await herd_tasks(call)

    return threads, asyncio.run(main())


def run_pybreaker() -> tuple[Herd, Herd | None]:
    b = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=RECOVERY)
    trip_sync(lambda: b.call(boom))
    time.sleep(RECOVERY + 0.05)
    return herd_threads(lambda fn: b.call(fn)), None  # pybreaker's async support needs Tornado


def run_circuitbreaker() -> tuple[Herd, Herd]:
    b = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=RECOVERY)
    trip_sync(lambda: b(boom)())
    time.sleep(RECOVERY + 0.05)
    threads = herd_threads(lambda fn: b(fn)())
    ab = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=RECOVERY)

    async def main() -> Herd:
        await trip_async(lambda: ab(aboom)())
        await asyncio.sleep(RECOVERY + 0.05)
        return await herd_tasks(lambda fn: ab(fn)())

    return threads, asyncio.run(main())


def run_purgatory() -> tuple[Herd, Herd]:
    sync = purgatory.SyncCircuitBreakerFactory(default_threshold=1, default_ttl=RECOVERY)
    trip_sync(lambda: sync("herd")(boom)())
    time.sleep(RECOVERY + 0.05)
    threads = herd_threads(lambda fn: sync("herd")(fn)())
    asy = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=RECOVERY)

    async def main() -> Herd:
        await trip_async(lambda: asy("aherd")(aboom)())
        await asyncio.sleep(RECOVERY + 0.05)
        return await herd_tasks(lambda fn: asy("aherd")(fn)())

    return threads, asyncio.run(main())


def run_aiobreaker() -> tuple[Herd, Herd]:
    b = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(seconds=RECOVERY))
    trip_sync(lambda: b.call(boom))
    time.sleep(RECOVERY + 0.05)
    threads = herd_threads(lambda fn: b.call(fn))
    ab = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(seconds=RECOVERY))

    async def main() -> Herd:
        await trip_async(lambda: ab.call_async(aboom))
        await asyncio.sleep(RECOVERY + 0.05)
        return await herd_tasks(lambda fn: ab.call_async(fn))

    return threads, asyncio.run(main())


def main() -> None:
    print(f"{CALLERS} callers released together just after the open period ends; one probe allowed.\n")
    print("| library | version | threads reaching the function | most at once | coroutines reaching the function "
          "| most at once |")
    print("|---|---|---|---|---|---|")
    for name, dist, run in (("circuitry", "circuitry-breaker", run_circuitry),
                            ("pybreaker", "pybreaker", run_pybreaker),
                            ("circuitbreaker", "circuitbreaker", run_circuitbreaker),
                            ("purgatory", "purgatory", run_purgatory), ("aiobreaker", "aiobreaker", run_aiobreaker)):
        (threads, t_most), tasks = run()
        a_text = "— | —" if tasks is None else f"{tasks[0]} of {CALLERS} | {tasks[1]}"
        print(f"| {name} | {metadata.version(dist)} | {threads} of {CALLERS} | {t_most} | {a_text} |")


if __name__ == "__main__":
    main()
