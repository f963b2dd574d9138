"""Async quickstart: a decorated coroutine, an ``async with`` block, and a fallback."""

from __future__ import annotations

import asyncio

from circuitry import CircuitOpenError, circuit


async def cached_price(rejection: CircuitOpenError, sku: str) -> float:
    return 9.99  # degraded but useful while the pricing service is refused


@circuit("pricing_api", failure_threshold=2, recovery_timeout=30, on=TimeoutError, fallback=cached_price)
async def get_price(sku: str) -> float:
    await asyncio.sleep(0.001)
    raise TimeoutError("pricing service timed out")


async def check_stock(item: str) -> int:
    await asyncio.sleep(0.001)
    return 7


async def main() -> None:
    for _ in range(4):
        try:
            print("price:", await get_price("sku-1"))
        except TimeoutError:
            print("price: timed out")
    async with circuit("inventory_api"):
        print("stock:", await check_stock("sku-1"))


if __name__ == "__main__":
    asyncio.run(main())
