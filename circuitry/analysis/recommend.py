"""Recommend a failure threshold and recovery timeout from a classified failure pattern.

Pure: no I/O, no clock. :func:`recommend` turns a :class:`~circuitry.analysis.patterns.PatternResult` into a
:class:`Recommendation` for a consecutive-failure circuit breaker (open after ``threshold`` failures in a
row, stay open ``timeout`` seconds, then let one probe through). Nothing is recommended when the
classification abstained or its confidence is below ``confidence_floor``.

The rules, with the measured statistics they use:

``burst``
    Open fast: threshold 3 (or the current one if lower), but never so low that the *background* failures
    between bursts (``evidence.background_rate``) would trip the breaker more than about once per 100
    hours. Timeout: long enough to cover a typical burst -- the 90th percentile of the measured burst
    durations -- so the probe lands after the outage rather than inside it.
``steady``
    Failures are independent with probability ``p`` per call, so a run of ``k`` failures starts at a given
    call with probability about ``(1 - p) p^k``. The threshold is the smallest ``k`` (never below the
    current one) for which the expected number of such runs per hour of traffic is below 0.01. Timeout
    unchanged. At 50 % failures or more the service is down rather than noisy: nothing is recommended.
``intermittent``
    Failures are isolated: keep the threshold (raised by the same rule as ``steady`` if needed) and
    shorten the timeout to at most 30 s, since a trip is most likely transient.
``escalating``
    The service is degrading: a lower threshold -- 3, or the smallest that the failure rate measured after
    the change point rarely reaches by chance, never above the current one -- the timeout kept, and an
    exponential backoff multiplier of 2 for consecutive failed probes.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from circuitry.analysis.patterns import PatternResult, PatternType

__all__ = ["MAX_THRESHOLD", "MAX_TIMEOUT", "MIN_TIMEOUT", "Recommendation", "recommend", "safe_threshold"]

#: Largest threshold ever recommended.
MAX_THRESHOLD: Final = 20
#: Shortest timeout ever recommended (seconds).
MIN_TIMEOUT: Final = 5.0
#: Longest timeout ever recommended (seconds).
MAX_TIMEOUT: Final = 900.0

_FAST_THRESHOLD: Final = 3  # "open fast" for bursts and escalation
_FALSE_TRIPS_PER_HOUR: Final = 0.01  # tolerated random trips from independent failures
_BURST_TIMEOUT_FACTOR: Final = 1.0  # timeout = factor * p90 burst duration
_INTERMITTENT_TIMEOUT: Final = 30.0
_ESCALATING_BACKOFF: Final = 2.0
_FAILING_RATE: Final = 0.5  # a "steady" service failing this share of calls is down, not noisy
_MIN_BURST_FAILURES: Final = 5  # a run of at least this many failures counts as a burst


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Suggested breaker settings and why.

    Attributes:
        recommended_threshold: Consecutive failures before opening (equals the current one when
            ``has_recommendations`` is false).
        recommended_timeout: Seconds to stay open before a probe.
        backoff_multiplier: Factor to grow the timeout by after each failed probe, or ``None`` for a
            fixed timeout.
        confidence: Confidence of the pattern the recommendation rests on (0-1).
        primary_pattern: That pattern, or ``None`` if the classification abstained.
        rationale: Human-readable reasoning, with the numbers used.
        has_recommendations: Whether anything differs from the current settings.
        current_threshold: The threshold in force.
        current_timeout: The timeout in force.
        failures: Failures in the analysed window.
    """

    recommended_threshold: int
    recommended_timeout: float
    backoff_multiplier: float | None
    confidence: float
    primary_pattern: PatternType | None
    rationale: str
    has_recommendations: bool
    current_threshold: int
    current_timeout: float
    failures: int

    def as_seed_dict(self) -> dict[str, object]:
        """The recommendation in the original design's ``get_recommendations()`` shape.

        Returns:
            A dict with exactly the keys ``has_recommendations``, ``message``, ``current_threshold``,
            ``recommended_threshold``, ``current_timeout``, ``recommended_timeout``, ``confidence`` and
            ``primary_pattern``.
        """
        if self.has_recommendations:
            message = (
                f"Based on {self.failures} recent failures ({self.primary_pattern} pattern), consider "
                f"adjusting threshold to {self.recommended_threshold} and timeout to "
                f"{_fmt_seconds(self.recommended_timeout)} seconds"
            )
        else:
            message = f"No change recommended: {self.rationale}"
        return {
            "has_recommendations": self.has_recommendations,
            "message": message,
            "current_threshold": self.current_threshold,
            "recommended_threshold": self.recommended_threshold,
            "current_timeout": self.current_timeout,
            "recommended_timeout": self.recommended_timeout,
            "confidence": self.confidence,
            "primary_pattern": self.primary_pattern,
        }


def _fmt_seconds(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _clamp_threshold(k: int) -> int:
    return max(1, min(MAX_THRESHOLD, k))


def _clamp_timeout(t: float) -> float:
    if not math.isfinite(t):
        return MAX_TIMEOUT
    return round(max(MIN_TIMEOUT, min(MAX_TIMEOUT, t)), 1)


def safe_threshold(p: float, calls_per_hour: float, trips_per_hour: float = _FALSE_TRIPS_PER_HOUR) -> int:
    """Smallest run length ``k`` that independent failures rarely reach.

    With failure probability ``p`` per call, a run of ``k`` failures starts at a given call with
    probability ``(1 - p) * p^k`` (the call before it succeeded), so about ``calls_per_hour * (1-p) p^k``
    runs start per hour. Returns the smallest ``k >= 1`` for which that is at most ``trips_per_hour``,
    capped at :data:`MAX_THRESHOLD`.

    Args:
        p: Failure probability per call.
        calls_per_hour: Traffic.
        trips_per_hour: Tolerated rate of random trips.

    Returns:
        The threshold.
    """
    if p <= 0.0 or calls_per_hour <= 0.0:
        return 1
    if p >= 1.0:
        return MAX_THRESHOLD
    budget = trips_per_hour / (calls_per_hour * (1.0 - p))
    if budget >= 1.0:
        return 1
    k = math.ceil(math.log(budget) / math.log(p) - 1e-9)
    return _clamp_threshold(k)


def _burst_durations(calls: Sequence[tuple[float, bool]], background_rate: float) -> list[float]:
    """Durations (seconds, sorted) of bursts: runs of failures interrupted by only a few successes.

    Failures are merged while fewer than ``s`` successes separate them, with ``s`` the gap that
    background failures at ``background_rate`` per call bridge only 5 % of the time (at least 3), and a
    merged run counts as a burst if it holds at least :data:`_MIN_BURST_FAILURES` failures.
    """
    bridge = max(3, min(10_000, int(0.05 / background_rate))) if background_rate > 0 else 10_000
    out: list[float] = []
    first_t = last_t = 0.0
    count = 0
    successes = 0
    for t, failed in calls:
        if failed:
            if count and successes <= bridge:
                count += 1
            else:
                if count >= _MIN_BURST_FAILURES:
                    out.append(last_t - first_t)
                first_t, count = t, 1
            last_t = t
            successes = 0
        else:
            successes += 1
    if count >= _MIN_BURST_FAILURES:
        out.append(last_t - first_t)
    out.sort()
    return out


def _p90(values: Sequence[float]) -> float:
    pos = 0.9 * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def recommend(
    result: PatternResult,
    *,
    current_threshold: int,
    current_timeout: float,
    calls: Sequence[tuple[float, bool]] | None = None,
    confidence_floor: float = 0.6,
) -> Recommendation:
    """Recommend breaker settings for a classified window.

    Args:
        result: What :func:`circuitry.analysis.patterns.classify` returned for the window.
        current_threshold: Consecutive failures that open the breaker now (>= 1).
        current_timeout: Seconds the breaker now stays open (> 0).
        calls: The same calls that were classified, optional. With them, burst durations are measured
            on the calls (runs of failures broken by only a few successes); without, the declustered
            episode durations in ``result.evidence`` are used.
        confidence_floor: Below this confidence nothing is recommended.

    Returns:
        The recommendation; ``has_recommendations`` is false (and the recommended settings equal the
        current ones) when the pattern is unknown, its confidence is below the floor, or the rules
        land on the current settings.

    Raises:
        ValueError: If ``current_threshold < 1``, ``current_timeout`` is not a positive finite number, or
            ``confidence_floor`` is outside [0, 1].
    """
    if current_threshold < 1:
        raise ValueError(f"current_threshold must be >= 1, got {current_threshold!r}")
    if not (math.isfinite(current_timeout) and current_timeout > 0):
        raise ValueError(f"current_timeout must be a positive number of seconds, got {current_timeout!r}")
    if not 0.0 <= confidence_floor <= 1.0:
        raise ValueError(f"confidence_floor must be within [0, 1], got {confidence_floor!r}")
    ev = result.evidence
    kind = result.type

    def unchanged(reason: str) -> Recommendation:
        return Recommendation(
            recommended_threshold=current_threshold,
            recommended_timeout=current_timeout,
            backoff_multiplier=None,
            confidence=result.confidence,
            primary_pattern=kind,
            rationale=reason,
            has_recommendations=False,
            current_threshold=current_threshold,
            current_timeout=current_timeout,
            failures=ev.failures,
        )

    if kind is None:
        return unchanged(f"too few failures to classify ({ev.failures})")
    if result.confidence < confidence_floor:
        return unchanged(
            f"{kind} pattern at confidence {result.confidence:.2f} is below the floor {confidence_floor:.2f}"
        )

    calls_per_hour = ev.calls / ev.window_seconds * 3600.0 if ev.window_seconds > 0 else 0.0
    threshold = current_threshold
    timeout = current_timeout
    backoff: float | None = None
    if kind == "burst":
        p_bg = ev.background_rate or 0.0
        floor = safe_threshold(p_bg, calls_per_hour)
        threshold = max(floor, min(current_threshold, _FAST_THRESHOLD))
        if calls is not None:
            durations = _burst_durations(calls, p_bg)
            p90 = _p90(durations) if durations else (ev.episode_p90_seconds or 0.0)
        else:
            p90 = ev.episode_p90_seconds or 0.0
        timeout = _BURST_TIMEOUT_FACTOR * p90 if p90 > 0 else current_timeout
        why = (
            f"failures are clustered (pair excess {ev.dispersion_index or 0:.1f}x at "
            f"{ev.dispersion_bucket_seconds or 0:g} s buckets); opening after {threshold} failures limits "
            f"calls into an outage (background failure rate {p_bg:.3%} needs >= {floor}); timeout covers "
            f"the 90th-percentile burst of {p90:.0f} s"
        )
    elif kind == "steady" and ev.failure_rate >= _FAILING_RATE:
        # Not noise to ride out: the service fails most calls. Raising the threshold would only send more
        # calls into it, so leave the settings alone.
        return unchanged(f"steady failures at {ev.failure_rate:.0%} of calls: the service is failing, not noisy")
    elif kind == "steady":
        p = ev.failure_rate
        needed = safe_threshold(p, calls_per_hour)
        threshold = max(current_threshold, needed)
        why = (
            f"independent failures at {p:.2%} per call and {calls_per_hour:.0f} calls/h: {needed} in a row "
            f"happen by chance less than {_FALSE_TRIPS_PER_HOUR:g} times per hour"
        )
    elif kind == "intermittent":
        p = ev.failure_rate
        needed = safe_threshold(p, calls_per_hour)
        threshold = max(current_threshold, needed)
        timeout = min(current_timeout, _INTERMITTENT_TIMEOUT)
        why = (
            f"isolated failures ({ev.failures_per_second * 60:.2f}/min, {p:.2%} of calls): a trip is "
            f"probably transient, so recover quickly"
        )
    else:  # escalating
        # Lower, but not so low that the current (post-change) failure rate trips it by chance.
        floor = safe_threshold(ev.rate_after or ev.failure_rate, calls_per_hour)
        threshold = min(current_threshold, max(_FAST_THRESHOLD, floor))
        backoff = _ESCALATING_BACKOFF
        cp = ev.change_point_time
        why = (
            f"failure probability per call rising (trend z {ev.trend_z or 0:.1f}, fitted ratio "
            f"{ev.trend_rate_ratio or 0:.1f}x"
            + (f", change point at t={cp:g}" if cp is not None else "")
            + "): open sooner and back off exponentially while it persists"
        )

    threshold = _clamp_threshold(threshold)
    timeout = _clamp_timeout(timeout)
    changed = threshold != current_threshold or timeout != current_timeout or backoff is not None
    if not changed:
        return unchanged(f"{kind} pattern; current settings already fit: {why}")
    return Recommendation(
        recommended_threshold=threshold,
        recommended_timeout=timeout,
        backoff_multiplier=backoff,
        confidence=result.confidence,
        primary_pattern=kind,
        rationale=why,
        has_recommendations=True,
        current_threshold=current_threshold,
        current_timeout=current_timeout,
        failures=ev.failures,
    )
