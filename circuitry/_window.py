"""Sliding windows for the rate rules, O(1) per call with running totals."""

from __future__ import annotations

import math

__all__ = ["CountWindow", "TimeWindow"]

_FAILED = 1
_SLOW = 2


class CountWindow:
    """The outcomes of the last ``size`` calls, in a ring of bytes (one byte per call)."""

    __slots__ = ("_calls", "_failures", "_pos", "_ring", "_slow")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._pos = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        ring = self._ring
        pos = self._pos
        old = ring[pos]
        if self._calls == len(ring):
            self._failures -= old & _FAILED
            self._slow -= (old & _SLOW) >> 1
        else:
            self._calls += 1
        ring[pos] = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._failures += failed
        self._slow += slow
        self._pos = pos + 1 if pos + 1 < len(ring) else 0

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the window."""
        return self._calls, self._failures, self._slow


class TimeWindow:
    """The outcomes of the last ``duration`` seconds, in ``buckets`` slices with running totals.

    Expired slices are cleared as time moves on; a call costs O(1) amortised and at most O(buckets)
    after a long idle gap.
    """

    __slots__ = ("_calls", "_epoch", "_failures", "_n", "_ring_calls", "_ring_fail", "_ring_slow",
                 "_slow", "_width")

    def __init__(self, duration: float, buckets: int = 20) -> None:
        self._n = buckets
        self._width = duration / buckets
        self._ring_calls = [0] * buckets
        self._ring_fail = [0] * buckets
        self._ring_slow = [0] * buckets
        self._calls = self._failures = self._slow = 0
        self._epoch: int | None = None

    def _advance(self, now: float) -> int:
        epoch = math.floor(now / self._width)
        head = self._epoch
        if head is None or epoch - head >= self._n:
            if self._calls:
                n = self._n
                self._ring_calls = [0] * n
                self._ring_fail = [0] * n
                self._ring_slow = [0] * n
                self._calls = self._failures = self._slow = 0
        elif epoch > head:
            for e in range(head + 1, epoch + 1):
                i = e % self._n
                self._calls -= self._ring_calls[i]
                self._failures -= self._ring_fail[i]
                self._slow -= self._ring_slow[i]
                self._ring_calls[i] = self._ring_fail[i] = self._ring_slow[i] = 0
        else:
            return head % self._n  # same slice, or the clock stood still
        self._epoch = epoch
        return epoch % self._n

    def add(self, failed: bool, slow: bool, now: float) -> None:
        i = self._advance(now)
        self._ring_calls[i] += 1
        self._calls += 1
        if failed:
            self._ring_fail[i] += 1
            self._failures += 1
        if slow:
            self._ring_slow[i] += 1
            self._slow += 1

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        return self._calls, self._failures, self._slow
