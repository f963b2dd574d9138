"""``circuitry demo``: a flaky service behind a breaker, transitions printed as they happen.

The service goes through phases — healthy, an outage, a recovery — and a client calls it in a loop
through ``@circuit``. Each line is an event from the breaker's hooks; the summary at the end comes from
the breaker's counters.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import TextIO

from circuitry._faces import circuit
from circuitry._registry import Registry
from circuitry.events import Event, EventKind
from circuitry.exceptions import CircuitOpenError

PHASES = (("healthy", 0.02, 1.5), ("outage", 0.95, 2.0), ("recovering", 0.30, 1.0), ("healthy", 0.02, 1.5))


class FlakyService:
    """A pretend remote service whose failure probability follows :data:`PHASES`."""

    def __init__(self, rng: random.Random, start: float) -> None:
        self.rng = rng
        self.start = start
        self.calls = 0

    def phase(self, now: float) -> tuple[str, float]:
        t = now - self.start
        for name, p_fail, length in PHASES:
            if t < length:
                return name, p_fail
            t -= length
        return PHASES[-1][0], PHASES[-1][1]

    async def fetch(self, item: int) -> str:
        self.calls += 1
        await asyncio.sleep(0.002)
        _, p_fail = self.phase(time.monotonic())
        if self.rng.random() < p_fail:
            raise ConnectionError("service unavailable")
        return f"item-{item}"


async def run_demo(out: TextIO = sys.stdout, seed: int = 7) -> dict[str, int]:
    rng = random.Random(seed)
    start = time.monotonic()
    service = FlakyService(rng, start)

    def show(event: Event) -> None:
        t = time.monotonic() - start
        phase, _ = service.phase(time.monotonic())
        extra = f"  ({event.reason}" + (f", open for {event.open_for:.2f}s" if event.open_for else "") + ")"
        out.write(f"{t:6.2f}s  [{phase:<10}] {event.name:<30}{extra}\n")

    show.kinds = frozenset({EventKind.TRANSITION})  # type: ignore[attr-defined]
    registry = Registry(hooks=[show], rng=rng)

    @circuit("inventory_api", registry=registry, failure_threshold=5, recovery_timeout=0.4,
             backoff_factor=1.5, on=ConnectionError)
    async def fetch(item: int) -> str:
        return await service.fetch(item)

    out.write("circuitry demo: a flaky service behind @circuit('inventory_api', failure_threshold=5, "
              "recovery_timeout=0.4)\n\n")
    served = failed = refused = 0
    total = sum(length for _, _, length in PHASES)
    item = 0
    while time.monotonic() - start < total:
        item += 1
        try:
            await fetch(item)
            served += 1
        except ConnectionError:
            failed += 1
        except CircuitOpenError:
            refused += 1
            await asyncio.sleep(0.002)
    stats = registry["inventory_api"].stats()
    out.write(
        f"\n{item} calls: {served} served, {failed} failed, {refused} refused fast by the open circuit "
        f"(the service saw {service.calls} calls).\n"
        f"breaker counters: successes={stats.successes} failures={stats.failures} rejected={stats.rejected}\n"
    )
    return {"calls": item, "served": served, "failed": failed, "refused": refused,
            "service_calls": service.calls}
