"""Multi-region failover over the registry: the first region whose circuit admits the call serves it."""

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
    for region in REGIONS:
        try:
            async with circuit(f"api_{region}", failure_threshold=2, recovery_timeout=60):
                return await call(region)
        except CircuitOpenError:
            continue  # refused fast: try the next region
        except ConnectionError:
            continue  # failed (and counted): try the next region
    raise RuntimeError("every region is down")


async def main() -> None:
    for i in range(5):
        print(f"request {i}: {await fetch()}")
    for breaker in default_registry():
        print(f"{breaker.name:16} {breaker.state.value:9} failures={breaker.stats().failures}")


if __name__ == "__main__":
    asyncio.run(main())
