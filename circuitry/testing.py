"""Helpers for testing code that uses circuitry: a fake clock, event capture, an isolated registry.

.. code-block:: python

    from circuitry.testing import FakeClock, capture_events, isolated_registry

    def test_opens_after_three_failures():
        clock = FakeClock()
        with isolated_registry(clock=clock), capture_events() as events:
            ...
            clock.advance(60)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from circuitry._clock import Clock
from circuitry._registry import DEFAULT, Registry, default_registry, set_default_registry
from circuitry.events import Event, EventKind, Hook

__all__ = ["CapturedEvents", "FakeClock", "capture_events", "isolated_registry"]


class FakeClock:
    """A clock that moves only when told to. Thread-safe.

    Args:
        start: The initial monotonic reading.
        wall: The initial wall-clock reading (epoch seconds); it advances with :meth:`advance`.
    """

    __slots__ = ("_lock", "_mono", "_wall")

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._mono = float(start)
        self._wall = float(wall)

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (a finite number, not negative)."""
        if not (isinstance(seconds, int | float) and math.isfinite(seconds)) or seconds < 0:
            raise ValueError(f"seconds must be a finite number, not negative, got {seconds!r}")
        with self._lock:
            self._mono += seconds
            self._wall += seconds

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock (as NTP or a user might); the monotonic clock is unaffected."""
        with self._lock:
            self._wall = float(wall)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._mono}, wall={self._wall})"


class CapturedEvents(list[Event]):
    """A list of captured events with helpers to query it."""

    kinds = frozenset(EventKind)

    def __call__(self, event: Event) -> None:
        self.append(event)

    def names(self) -> list[str]:
        return [e.name for e in self]

    def transitions(self) -> list[tuple[str, str]]:
        """``(from_state, to_state)`` values of the transitions, in order."""
        return [(e.from_state.value if e.from_state else "", e.to_state.value)
                for e in self if e.kind is EventKind.TRANSITION]

    def of(self, kind: EventKind) -> list[Event]:
        return [e for e in self if e.kind is kind]


@contextmanager
def capture_events(registry: Registry | None = None) -> Iterator[CapturedEvents]:
    """Capture every event of ``registry`` (default: the current default registry) while inside."""
    reg = default_registry() if registry is None else registry
    captured = CapturedEvents()
    reg.add_hook(captured)
    try:
        yield captured
    finally:
        reg.remove_hook(captured)


@contextmanager
def isolated_registry(*, clock: Clock | None = None, hooks: Iterable[Hook] = ()) -> Iterator[Registry]:
    """Make a fresh registry the process-wide default while inside (restored afterwards).

    Functions decorated with ``@circuit(...)`` at import time use it too, since the decorator looks up
    its breaker per call, and their policies are declared in it (a name looked up before its function
    first runs has the decorator's policy). Circuits made inside stay inside: the next isolated registry
    does not see them. By default the isolated registry has no hooks (no log output).
    """
    registry = Registry(clock=clock, hooks=hooks)
    previous = set_default_registry(registry)
    DEFAULT.isolated += 1
    try:
        yield registry
    finally:
        DEFAULT.isolated -= 1
        set_default_registry(previous)
