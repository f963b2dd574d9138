"""Failure episodes: stretches of a series where failures come close together.

An episode is a run of failing buckets separated by fewer successful calls than background failures
would bridge by chance, holding at least :data:`MIN_EPISODE_FAILURES` failures. Its duration runs from the
start of its first failing bucket to the end of its last one, so a failure-filled second lasts one second
and an outage that fails for 32 s lasts about 32 s.

Pure; works on a :class:`~circuitry.analysis.series.Series`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from circuitry.analysis.series import Series

__all__ = ["MIN_EPISODE_FAILURES", "Episode", "Episodes", "find_episodes"]

#: Fewest failures that make an episode.
MIN_EPISODE_FAILURES: Final = 5


@dataclass(frozen=True, slots=True)
class Episode:
    """One failure episode.

    Attributes:
        start: Start of its first failing bucket (seconds).
        end: End of its last failing bucket (seconds).
        calls: Calls decided from its first to its last failing bucket.
        failures: Failures among them.
    """

    start: float
    end: float
    calls: int
    failures: int

    @property
    def seconds(self) -> float:
        """Duration."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Episodes:
    """The episodes of a series and the failure probability outside them.

    Attributes:
        episodes: The episodes, in time order.
        background_rate: Failures per call outside the episodes.
    """

    episodes: tuple[Episode, ...]
    background_rate: float


def _scan(s: Series, bridge: int) -> list[Episode]:
    out: list[Episode] = []
    w = s.width
    first = last = -1
    calls = fails = 0
    gap_ok = 0  # successes since the last failing bucket
    run_calls = 0
    for i, c, f in zip(s.index, s.calls, s.failures, strict=True):
        if f:
            if first >= 0 and gap_ok + (c - f) // 2 <= bridge:
                calls += run_calls + c
                fails += f
                last = i
            else:
                if fails >= MIN_EPISODE_FAILURES:
                    out.append(Episode(first * w, (last + 1) * w, calls, fails))
                first, last, calls, fails = i, i, c, f
            gap_ok = 0
            run_calls = 0
        else:
            gap_ok += c
            run_calls += c
    if fails >= MIN_EPISODE_FAILURES:
        out.append(Episode(first * w, (last + 1) * w, calls, fails))
    return out


def find_episodes(series: Series) -> Episodes:
    """Find the failure episodes of a series.

    Failing buckets merge while fewer than ``bridge`` successful calls separate them, ``bridge`` being the
    run of successes that background failures (at probability ``p`` per call) cut short 95 % of the time,
    ``0.05 / p`` -- at least 3. The background probability is estimated twice: over the whole window, then
    outside the episodes the first pass found.

    Args:
        series: The calls and failures per bucket.

    Returns:
        The episodes and the background failure probability.

    .. versionadded:: 0.1.0
    """
    n = series.total_calls
    k = series.total_failures
    if n == 0 or k == 0:
        return Episodes((), 0.0)
    p = k / n
    eps: list[Episode] = []
    for _ in range(2):
        bridge = max(3, min(100_000, int(0.05 / p))) if p > 0 else 100_000
        eps = _scan(series, bridge)
        in_calls = sum(e.calls for e in eps)
        in_fails = sum(e.failures for e in eps)
        p = (k - in_fails) / (n - in_calls) if n > in_calls else 0.0
    return Episodes(tuple(eps), p)
