from __future__ import annotations

import os
import tracemalloc

# The test suite's default registry keeps breakers in memory: tests that persist say where.
os.environ.setdefault("CIRCUITRY_DB", ":memory:")

from collections.abc import Iterator

import pytest

from circuitry import Registry
from circuitry.testing import CapturedEvents, FakeClock, isolated_registry


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Iterator[Registry]:
    """A fresh default registry on a fake clock, with an event-capturing hook."""
    with isolated_registry(clock=clock) as reg:
        yield reg


@pytest.fixture
def events(registry: Registry) -> Iterator[CapturedEvents]:
    captured = CapturedEvents()
    registry.add_hook(captured)
    yield captured
    registry.remove_hook(captured)


class Boom(Exception):
    pass


class Other(Exception):
    pass


def circuitry_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes still held by allocations made in circuitry's own code (other threads of the test
    process — stores and deliverers left by earlier tests — do not count)."""
    only = [tracemalloc.Filter(True, "*/circuitry/*")]
    diff = after.filter_traces(only).compare_to(before.filter_traces(only), "filename")
    return sum(d.size_diff for d in diff)
