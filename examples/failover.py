"""Multi-region failover over the registry: the first region that admits the call *and* answers serves it.

The loop catches the regions' own errors as well as ``CircuitOpenError``: a circuit opens only after
``failure_threshold`` failures, and until then each failure is the region's exception. Catching only
the refusal would send the first failures to the caller instead of to the next region.
"""

from __future__ import annotations

import asyncio

from circuitry import CircuitOpenError, circuit, default_registry

REGIONS = ("us-east", "us-west", "eu-central")
down = {"us-east"}


async def call(region: str) -> str:
    await asyncio.sleep(0.001)
    if region in down:
        raise ConnectionError(f"{region} is down")
    return f"served by {region}"


async def fetch() -> str:
    skipped: list[str] = []
    for region in REGIONS:
        try:
            async with circuit(f"api_{region}", failure_threshold=2, recovery_timeout=60):
                served = await call(region)
        except CircuitOpenError as refused:  # open: refused at once, the region is not called
            skipped.append(f"{region} refused: {refused.state}")
        except ConnectionError as exc:  # the region's own failure: its circuit counted it; try the next
            skipped.append(f"{region} failed: {type(exc).__name__}")
        else:
            return served + (f" ({'; '.join(skipped)})" if skipped else "")
    raise RuntimeError("every region is down: " + "; ".join(skipped))


async def main() -> None:
    for i in range(5):
        print(f"request {i}: {await fetch()}")
    for breaker in default_registry():
        print(f"{breaker.name:16} {breaker.state.value:9} failures={breaker.stats().failures}")


if __name__ == "__main__":
    asyncio.run(main())
