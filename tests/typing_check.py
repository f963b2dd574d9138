"""Checked by ``mypy --strict`` (see pyproject's [tool.mypy] files): decorated functions keep their
parameter and return types. Each ``reveal_type``-free assignment below would fail type checking if
the decorator erased the signature."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from circuitry import CircuitBreaker, Event, Registry, circuit

if TYPE_CHECKING:
    from typing_extensions import assert_type


@circuit("typed_sync", failure_threshold=3)
def add(a: int, b: int = 0) -> int:
    return a + b


@circuit("typed_async")
async def fetch(url: str, *, retries: int = 1) -> bytes:
    return url.encode() * retries


def use() -> None:
    total: int = add(1, b=2)
    assert_type(add(1), int)
    with circuit("typed_with") as breaker:
        assert_type(breaker, CircuitBreaker)
    del total


def coroutine_type() -> Coroutine[Any, Any, bytes]:
    return fetch("u", retries=2)  # the return annotation checks the decorated type


async def use_async() -> bytes:
    data = await fetch("x")
    assert_type(data, bytes)
    return data


def on_event(evt: Event) -> None:  # a hook's parameter may have any name
    del evt


def hooks() -> Registry:
    registry = Registry(hooks=[on_event])
    registry.add_hook(on_event)
    return registry


def plain(a: int, b: str = "") -> float:
    return float(a)


async def fetch_plain(url: str) -> bytes:
    return url.encode()


async def through_call() -> None:
    value = circuit("typed_call").call(plain, 1, b="x")
    assert_type(value, float)
    data = await circuit("typed_call_async").call(fetch_plain, "u")
    assert_type(data, bytes)
