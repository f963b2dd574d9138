"""Long history: per-minute rollups, and what they say about a service between incidents.

The store keeps per-second counts for an hour or so and per-minute rollups for days. Advice fitted to the
last fifteen minutes -- often the middle of an incident -- must also suit the service once it recovers;
:func:`normal_failure_rate` estimates how often it fails in normal times from the rollups.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from circuitry.exceptions import ConfigurationError

__all__ = [
    "MIN_INCIDENT_SHARE", "PRESUMED_NORMAL", "MinuteRollup", "degraded_share", "incident_length", "incident_share",
    "normal_failure_rate",
]

#: The failure share assumed between incidents when the history shows no healthy minute at all.
PRESUMED_NORMAL: Final = 0.01
#: The least share of time a service is assumed to spend failing (about half an hour a day).
MIN_INCIDENT_SHARE: Final = 0.02
_MIN_CALLS: Final = 10  # minutes with fewer decided calls say too little to count
_QUANTILE: Final = 0.25  # the quarter of minutes failing least, where incidents rarely reach


@dataclass(frozen=True, slots=True)
class MinuteRollup:
    """One minute of one circuit, as the store rolls it up.

    Attributes:
        minute: ``epoch_seconds // 60``.
        calls: Decided calls (successes plus counted failures).
        successes: Successful calls.
        failures: Counted failures.
        rejections: Calls the open circuit refused.
        ignored: Calls whose exception did not count.
        cancelled: Calls cancelled before an outcome.
    """

    minute: int
    calls: int
    successes: int
    failures: int
    rejections: int = 0
    ignored: int = 0
    cancelled: int = 0

    def __post_init__(self) -> None:
        for name in ("minute", "calls", "successes", "failures", "rejections", "ignored", "cancelled"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or (v < 0 and name != "minute"):
                raise ConfigurationError(f"{name} must be a non-negative int, got {v!r}")
        if self.failures > self.calls:
            raise ConfigurationError(f"failures ({self.failures}) exceed calls ({self.calls})")


def normal_failure_rate(minutes: Iterable[MinuteRollup]) -> float:
    """The failure share of a service in normal times, from its per-minute history.

    Minutes with at least 10 decided calls are ranked by failure share; the answer is the calls-weighted
    failure share of the quarter that failed least -- incidents rarely cover three quarters of a service's
    history, so that quarter is normal time. If even those minutes fail half their calls or more (the
    whole history is an incident), :data:`PRESUMED_NORMAL` is returned: advice must still suit a service
    that recovers.

    Args:
        minutes: Per-minute rollups (any order).

    Returns:
        A failure probability; :data:`PRESUMED_NORMAL` with no usable minute.
    """
    rows = sorted((m.failures / m.calls, m.calls, m.failures) for m in minutes if m.calls >= _MIN_CALLS)
    if not rows:
        return PRESUMED_NORMAL
    total = sum(c for _, c, _ in rows)
    take = 0
    fails = 0
    for _, c, f in rows:
        take += c
        fails += f
        if take >= _QUANTILE * total:
            break
    p = fails / take if take else PRESUMED_NORMAL
    return PRESUMED_NORMAL if p >= 0.5 or math.isnan(p) else p


def _failing(m: MinuteRollup) -> bool:
    if m.calls == 0:
        return m.rejections > 0
    return m.failures >= 0.5 * m.calls or m.rejections > m.calls


def incident_length(minutes: Iterable[MinuteRollup]) -> float | None:
    """The median length (seconds) of the service's incidents: runs of consecutive failing minutes
    (see :func:`incident_share`); ``None`` if the history holds none.

    Args:
        minutes: Per-minute rollups (any order).

    Returns:
        Seconds, or ``None``.
    """
    usable = sorted((m for m in minutes if m.calls + m.rejections >= _MIN_CALLS), key=lambda m: m.minute)
    runs: list[int] = []
    last = None
    for m in usable:
        if not _failing(m):
            continue
        if last is not None and m.minute == last + 1 and runs:
            runs[-1] += 1
        else:
            runs.append(1)
        last = m.minute
    if not runs:
        return None
    runs.sort()
    return 60.0 * runs[len(runs) // 2]


def incident_share(minutes: Iterable[MinuteRollup]) -> float:
    """The share of minutes the service spent failing: half its decided calls or more failed, or the circuit
    refused more calls than it let through. At least :data:`MIN_INCIDENT_SHARE`: a short history without
    an incident does not prove there will be none.

    Args:
        minutes: Per-minute rollups (any order).

    Returns:
        A share of time.
    """
    total = failing = 0
    for m in minutes:
        if m.calls + m.rejections < _MIN_CALLS:
            continue
        total += 1
        if (m.failures >= 0.5 * m.calls if m.calls else m.rejections > 0) or m.rejections > m.calls:
            failing += 1
    return max(MIN_INCIDENT_SHARE, failing / total if total else 0.0)


def degraded_share(minutes: Iterable[MinuteRollup]) -> float:
    """The share of minutes the service spent degraded but not failing: 10 % to 50 % of its decided calls
    failed. At least :data:`MIN_INCIDENT_SHARE`, like :func:`incident_share`.

    Args:
        minutes: Per-minute rollups (any order).

    Returns:
        A share of time.
    """
    total = degraded = 0
    for m in minutes:
        if m.calls + m.rejections < _MIN_CALLS:
            continue
        total += 1
        if m.calls and 0.1 * m.calls <= m.failures < 0.5 * m.calls and m.rejections <= m.calls:
            degraded += 1
    return max(MIN_INCIDENT_SHARE, degraded / total if total else 0.0)
