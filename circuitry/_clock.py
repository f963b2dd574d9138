"""Clocks: where a breaker reads the time.

Every duration a breaker measures uses a monotonic clock, so wall-clock jumps (NTP, suspend, a user
changing the date) never open or close a circuit. Wall-clock time is read only to stamp events and
persisted state, which other processes (and later runs) must be able to interpret.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What a breaker needs of a clock: monotonic seconds for durations, epoch seconds for stamps."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        ...


class SystemClock:
    """The real clocks: :func:`time.monotonic` and :func:`time.time`."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
