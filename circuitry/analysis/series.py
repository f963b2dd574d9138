"""Per-second call and failure counts: what the store keeps and what every analysis reads.

The pattern engine never looks at individual calls. It reads a :class:`Series`: for every time bucket
(one second by default) in which a circuit decided at least one call, the number of calls (successes
plus counted failures) and the number of counted failures. That is exactly what a store can keep
exactly and cheaply, and it is all the statistics need: the store may attribute a call to its second a
few tens of milliseconds late, so nothing below one second may matter.

:func:`bucketize` turns raw ``(timestamp, failed)`` calls into a series (benchmarks and tests use it, so
they exercise the same path as the analyst); :meth:`Series.from_rows` builds one from stored rows.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress, islice
from operator import itemgetter
from typing import Final, cast

from circuitry.exceptions import ConfigurationError

__all__ = ["MAX_SECONDS", "Series", "bucketize"]

#: The largest timestamp magnitude taken for epoch seconds: 1 January 10000 (about 2.5e11 s). Anything
#: larger is another unit -- milliseconds (``time.time() * 1000``, about 1.7e12 today), microseconds or
#: nanoseconds (``time.time_ns()``, about 1.7e18) -- and read as seconds it would give a window a
#: thousand times too long, or seconds that floats cannot tell apart (beyond 2**53 ~ 9e15).
MAX_SECONDS: Final = 253_402_300_800.0
_CHUNK: Final = 65_536  # calls read at a time: bounded memory for a stream of millions of calls
_BOOL: Final = frozenset({bool})


def _unit_hint(v: float) -> str:
    """What unit a timestamp too large for epoch seconds is probably in."""
    for unit, scale, text in (("milliseconds", 1e3, "1000"), ("microseconds", 1e6, "10**6"),
                              ("nanoseconds", 1e9, "10**9")):
        if abs(v) / scale <= MAX_SECONDS:
            return f"; it looks like {unit} (divide by {text})"
    return ""


def check_seconds(name: str, v: float) -> None:
    """Raise if ``v`` (a finite number) cannot be epoch seconds: beyond :data:`MAX_SECONDS` either way."""
    if not -MAX_SECONDS <= v <= MAX_SECONDS:
        raise ConfigurationError(
            f"{name} must be in seconds (at most {MAX_SECONDS:.3g} in magnitude, the year 10000), got "
            f"{v!r}{_unit_hint(v)}"
        )


@dataclass(frozen=True, slots=True)
class Series:
    """Call and failure counts per time bucket over an analysis window ``[start, end)``.

    Bucket ``index`` covers ``[index * width, (index + 1) * width)`` seconds (epoch seconds for the
    store's per-second rows: ``index`` is then the second). Buckets without calls are absent; present
    buckets are in increasing order and each overlaps the window (a bucket starting exactly at ``end``
    counts: it holds calls made at the window's last instant).

    Build one with :func:`bucketize` (from raw calls) or :meth:`from_rows` (from stored rows); the
    constructor validates its arguments either way.

    Attributes:
        start: Window start (seconds).
        end: Window end (seconds, ``>= start``).
        width: Bucket width (seconds, ``> 0``).
        index: Bucket indices, strictly increasing.
        calls: Calls decided in each bucket (``>= 1``).
        failures: Counted failures in each bucket (``0 <= failures <= calls``).

    Raises:
        ConfigurationError: An argument is invalid; the message names it.

    .. versionadded:: 0.1.0
    """

    start: float
    end: float
    width: float
    index: tuple[int, ...]
    calls: tuple[int, ...]
    failures: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("start", "end", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigurationError(f"{name} must be a finite number of seconds, got {v!r}")
            object.__setattr__(self, name, float(v))
        check_seconds("start", self.start)
        check_seconds("end", self.end)
        if self.width <= 0.0:
            raise ConfigurationError(f"width must be positive, got {self.width!r}")
        if self.end < self.start:
            raise ConfigurationError(f"end ({self.end!r}) is before start ({self.start!r})")
        n = len(self.index)
        if len(self.calls) != n or len(self.failures) != n:
            raise ConfigurationError(
                f"index, calls and failures must have one entry per bucket; got {n}, {len(self.calls)}, "
                f"{len(self.failures)}"
            )
        if not n:
            return
        if not set(map(type, self.index)) | set(map(type, self.calls)) | set(map(type, self.failures)) <= {int}:
            raise ConfigurationError("index, calls and failures must hold ints")
        if any(b <= a for a, b in zip(self.index, islice(self.index, 1, None), strict=False)):
            raise ConfigurationError("bucket indices must be strictly increasing")
        if min(self.calls) < 1:
            raise ConfigurationError("every bucket must hold at least one call (absent buckets have no row)")
        if min(self.failures) < 0 or any(f > c for f, c in zip(self.failures, self.calls, strict=True)):
            raise ConfigurationError("failures must be between 0 and the bucket's calls")
        w = self.width
        if abs(self.index[0]) * w > MAX_SECONDS or abs(self.index[-1]) * w > MAX_SECONDS:
            raise ConfigurationError(
                f"bucket indices from {self.index[0]!r} to {self.index[-1]!r} at width {w!r} s are not epoch "
                f"seconds (beyond the year 10000){_unit_hint(max(abs(self.index[0]), abs(self.index[-1])) * w)}"
            )
        if self.index[0] * w + w <= self.start or self.index[-1] * w > self.end:
            raise ConfigurationError(
                f"buckets from {self.index[0] * w!r} to {self.index[-1] * w + w!r} s fall outside the window "
                f"[{self.start!r}, {self.end!r})"
            )

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_rows(
        cls, rows: Iterable[tuple[int, int, int]], *, start: float, end: float, width: float = 1.0
    ) -> Series:
        """A series from stored ``(bucket index, calls, failures)`` rows, clipped to ``[start, end]``.

        Rows may come in any order; rows of one bucket are added up (several processes may each write
        a row for the same second). Rows outside the window are dropped.

        Args:
            rows: ``(index, calls, failures)`` per bucket; for the store, ``index`` is the epoch second.
            start: Window start (seconds).
            end: Window end (seconds).
            width: Bucket width (seconds).

        Returns:
            The series.

        Raises:
            ConfigurationError: A row is malformed, a bucket lies beyond the year 10000 (an index in
                milliseconds or nanoseconds, not seconds), or the window is invalid.
        """
        calls: Counter[int] = Counter()
        fails: Counter[int] = Counter()
        for row in rows:
            try:
                i, c, f = row
            except (TypeError, ValueError):
                raise ConfigurationError(f"a row must be (index, calls, failures), got {row!r}") from None
            for name, v in (("index", i), ("calls", c), ("failures", f)):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigurationError(f"row {row!r}: {name} must be an int, got {v!r}")
            if c < 0 or f < 0 or f > c:
                raise ConfigurationError(f"row {row!r}: need 0 <= failures <= calls")
            calls[i] += c
            fails[i] += f
        return cls._build(calls, fails, start, end, width)

    @classmethod
    def _build(cls, calls: Counter[int], fails: Counter[int], start: float, end: float, width: float) -> Series:
        w = float(width)
        if not (math.isfinite(w) and w > 0.0):
            raise ConfigurationError(f"width must be a positive number of seconds, got {width!r}")
        if calls:  # a bucket beyond the year 10000 is another unit, not a row outside the window
            far = max(abs(min(calls)), abs(max(calls)))
            check_seconds(f"a row's bucket index times the width ({far!r} x {w:g} s)", far * w)
        keep = sorted(i for i, c in calls.items() if c > 0 and (i + 1) * w > start and i * w <= end)
        return cls(start, end, w, tuple(keep), tuple(calls[i] for i in keep), tuple(fails[i] for i in keep))

    # -- views ----------------------------------------------------------------------------------------

    @property
    def span(self) -> float:
        """Length of the window in seconds."""
        return self.end - self.start

    @property
    def total_calls(self) -> int:
        """Calls in the window."""
        return sum(self.calls)

    @property
    def total_failures(self) -> int:
        """Counted failures in the window."""
        return sum(self.failures)

    def window(self, start: float, end: float) -> Series:
        """The buckets overlapping ``[start, end]``, as a series over that window.

        Args:
            start: Window start (seconds).
            end: Window end (seconds).

        Returns:
            The sub-series.
        """
        w = self.width
        keep = [k for k, i in enumerate(self.index) if (i + 1) * w > start and i * w <= end]
        return Series(
            start,
            end,
            w,
            tuple(self.index[k] for k in keep),
            tuple(self.calls[k] for k in keep),
            tuple(self.failures[k] for k in keep),
        )

    def rows(self) -> list[tuple[int, int, int]]:
        """The buckets as ``(index, calls, failures)`` rows, the shape :meth:`from_rows` reads."""
        return list(zip(self.index, self.calls, self.failures, strict=True))


def _check_flags(flags: list[object]) -> None:
    if not set(map(type, flags)) <= _BOOL:
        bad = next(f for f in flags if type(f) is not bool)
        raise ConfigurationError(
            f"a call's failed flag must be a bool, got {bad!r} ({type(bad).__name__}); "
            "convert explicitly (a string such as 'False' is not a failure flag)"
        )


def _check_times(raw: list[object]) -> list[float]:
    """The timestamps, checked to be finite numbers (one C-level sum; a scan only on failure). Their range
    is checked by the caller, which needs their minimum and maximum anyway."""
    ts = cast("list[float]", raw)
    try:
        total = sum(ts)
    except TypeError:
        total = math.nan
    if not math.isfinite(total) or _BOOL & set(map(type, raw)):
        bad = next(t for t in raw if type(t) is bool or not isinstance(t, int | float) or not math.isfinite(t))
        raise ConfigurationError(f"a call's timestamp must be a finite number, got {bad!r}")
    if type(total) is not float and type(total) is not int:  # Decimal, Fraction, numpy scalars: as floats
        ts = [float(t) for t in ts]
    return ts


def bucketize(
    calls: Iterable[tuple[float, bool]],
    width: float = 1.0,
    *,
    start: float | None = None,
    end: float | None = None,
) -> Series:
    """Count raw calls per time bucket: the rows a store keeps, computed from the calls themselves.

    The calls may come in any order and are read once (a generator is fine), in chunks, so a stream of
    millions of calls needs little memory.

    Args:
        calls: ``(timestamp_seconds, failed)`` pairs; ``failed`` must be a ``bool``.
        width: Bucket width in seconds (the store uses 1).
        start: Window start; defaults to the start of the first call's bucket.
        end: Window end; defaults to the end of the last call's bucket.

    Returns:
        The series over ``[start, end)``.

    Raises:
        ConfigurationError: A call is not a ``(timestamp, failed)`` pair, a flag is not a bool, a timestamp
            is not a finite number of epoch seconds (beyond :data:`MAX_SECONDS`, the year 10000, it is
            milliseconds or nanoseconds: the message says which it looks like), a call falls outside a
            given window (``start <= t <= end``), or the window is invalid.

    .. versionadded:: 0.1.0
    """
    if isinstance(width, bool) or not isinstance(width, int | float) or not (math.isfinite(width) and width > 0):
        raise ConfigurationError(f"width must be a positive number of seconds, got {width!r}")
    w = float(width)
    counts: Counter[int] = Counter()
    fails: Counter[int] = Counter()
    lo_t, hi_t = math.inf, -math.inf
    try:
        it = iter(calls)
    except TypeError:
        raise ConfigurationError(f"calls must be an iterable of (timestamp, failed) pairs, got {calls!r}") from None
    while True:
        chunk = list(islice(it, _CHUNK))
        if not chunk:
            break
        try:
            ts: list[object] = list(map(itemgetter(0), chunk))
            flags: list[object] = list(map(itemgetter(1), chunk))
            # every call has two items or more (itemgetter(1) held), so a total of 2 per call is exactly 2 each
            pairs = sum(map(len, chunk)) == 2 * len(chunk)
        except (TypeError, IndexError, KeyError):
            pairs = False
        if not pairs:
            bad = next(c for c in chunk if not (isinstance(c, tuple | list) and len(c) == 2))
            raise ConfigurationError(f"a call must be a (timestamp, failed) pair, got {bad!r}")
        _check_flags(flags)
        times = _check_times(ts)
        t_lo, t_hi = min(times), max(times)
        check_seconds("a call's timestamp", t_lo)
        check_seconds("a call's timestamp", t_hi)
        idx = list(map(math.floor, times)) if w == 1.0 else [math.floor(t / w) for t in times]
        lo_t = min(lo_t, t_lo)
        hi_t = max(hi_t, t_hi)
        counts.update(idx)
        fails.update(compress(idx, cast("list[bool]", flags)))
    if counts:
        s = math.floor(lo_t / w) * w if start is None else start
        e = (math.floor(hi_t / w) + 1) * w if end is None else end
    else:
        s = 0.0 if start is None else start
        e = s if end is None else end
    for name, v in (("start", s), ("end", e)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigurationError(f"{name} must be a finite number of seconds, got {v!r}")
        check_seconds(name, v)
    if e < s:
        raise ConfigurationError(f"end ({e!r}) is before start ({s!r})")
    if counts and (lo_t < s or hi_t > e):
        raise ConfigurationError(f"calls from {lo_t!r} to {hi_t!r} fall outside the window [{s!r}, {e!r}]")
    return Series._build(counts, fails, float(s), float(e), w)
