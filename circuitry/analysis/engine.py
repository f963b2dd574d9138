"""One entry point for the analyst, the command line and the benchmarks: :func:`analyse`.

Give it what the store keeps for a circuit -- per-second counts (an hour or so), per-minute rollups (days),
the breaker's transitions -- its settings and ``now``; it returns an :class:`Analysis`: the pattern of the
last ``window`` seconds, a recommendation proven by replaying the per-second history, and a prediction of
the next minutes. Pure: no I/O, no clock (``now`` is given).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from circuitry._state import CircuitState
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.patterns import PatternResult, classify_series
from circuitry.analysis.predict import DEFAULT_HORIZON, Prediction, predict
from circuitry.analysis.recommend import Recommendation, recommend
from circuitry.analysis.replay import Settings, Transition
from circuitry.analysis.series import Series, check_seconds
from circuitry.exceptions import ConfigurationError

__all__ = ["DEFAULT_WINDOW", "Analysis", "analyse"]

#: Seconds of history classified by default (the analyst's window).
DEFAULT_WINDOW: Final = 900.0
_STATES: Final = frozenset(s.value for s in CircuitState)


def _check_transitions(transitions: Sequence[Transition]) -> None:
    """Raise unless every transition is a :class:`Transition` at finite epoch seconds between known states."""
    for tr in transitions:
        if not isinstance(tr, Transition):
            raise ConfigurationError(f"transitions must hold Transition objects, got {tr!r}")
        if isinstance(tr.ts, bool) or not isinstance(tr.ts, int | float) or not math.isfinite(tr.ts):
            raise ConfigurationError(f"transitions: ts must be a finite number of epoch seconds, got {tr!r}")
        check_seconds("transitions: ts", tr.ts)
        for name in ("from_state", "to_state"):
            if getattr(tr, name) not in _STATES:
                raise ConfigurationError(f"transitions: {name} must be one of {sorted(_STATES)}, got {tr!r}")


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the engine concluded about one circuit at one moment.

    Attributes:
        pattern: The label of the last ``window`` seconds, its confidence and evidence.
        recommendation: Settings proven by replay (or none), with their expected effect.
        prediction: The next minutes: probability of a trip, expected failure share (``None`` if not asked).
        window_start: Start of the classified window.
        window_end: Its end (``now``).
    """

    pattern: PatternResult
    recommendation: Recommendation
    prediction: Prediction | None
    window_start: float
    window_end: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data for storage, ``get_stats()`` and the command line."""
        ev = self.pattern.evidence
        return {
            "window_start": self.window_start,
            "window_end": self.window_end,
            "pattern": {
                "type": self.pattern.type,
                "confidence": round(self.pattern.confidence, 4),
                "failures": ev.failures,
                "calls": ev.calls,
                "failure_rate": round(ev.failure_rate, 6),
                "refused_share": None if ev.refused_share is None else round(ev.refused_share, 4),
                "censored": ev.censored,
            },
            "recommendation": self.recommendation.as_dict(),
            "prediction": None if self.prediction is None else self.prediction.as_dict(),
        }


def analyse(
    series: Series,
    *,
    now: float,
    current_threshold: int,
    current_timeout: float,
    current_backoff: float = 1.0,
    current_max_timeout: float | None = None,
    window: float = DEFAULT_WINDOW,
    transitions: Sequence[Transition] = (),
    history: Sequence[MinuteRollup] = (),
    horizon: float | None = DEFAULT_HORIZON,
    failed_weight: float = 1.0,
    refused_weight: float = 1.0,
    confidence_floor: float = 0.6,
) -> Analysis:
    """Classify the last ``window`` seconds, recommend settings, predict the next ``horizon`` seconds.

    Args:
        series: Per-second counts up to ``now`` (the store keeps an hour or more; at least ``window``).
            The recommendation replays all of it; the label and the prediction use the last ``window``.
        now: The current time (epoch seconds): the end of the window.
        current_threshold: The breaker's failure threshold.
        current_timeout: Its open period (seconds).
        current_backoff: Its backoff factor (1: fixed open period).
        current_max_timeout: Its cap on the open period.
        window: Seconds classified (default 900).
        transitions: The breaker's state changes over the series (and before).
        history: Per-minute rollups (days of them, if kept).
        horizon: Seconds predicted; ``None`` skips the prediction.
        failed_weight: Cost of a call let through to a failing service.
        refused_weight: Cost of a healthy call refused.
        confidence_floor: Below this pattern confidence nothing is recommended.

    Returns:
        The analysis.

    Raises:
        ConfigurationError: An argument is invalid (``now`` beyond the year 10000 is not epoch seconds; a
            transition that is not a :class:`~circuitry.analysis.replay.Transition` between the breaker's
            states; a history entry that is not a :class:`~circuitry.analysis.history.MinuteRollup`); the
            message names it.
    """
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ConfigurationError(f"now must be a finite number of epoch seconds, got {now!r}")
    check_seconds("now", now)
    if isinstance(window, bool) or not isinstance(window, int | float) or not math.isfinite(window) or window <= 0:
        raise ConfigurationError(f"window must be a positive number of seconds, got {window!r}")
    if not isinstance(series, Series):
        raise ConfigurationError(f"series must be a Series (bucketize() or Series.from_rows()), got "
                                 f"{type(series).__name__}")
    _check_transitions(transitions)
    start = now - window
    recent = series.window(start, now)
    recent_transitions = [tr for tr in transitions if start <= tr.ts <= now]
    pattern = classify_series(recent, transitions=recent_transitions)
    kept = series.window(min(series.start, start), now)
    rec = recommend(
        pattern,
        current_threshold=current_threshold,
        current_timeout=current_timeout,
        current_backoff=current_backoff,
        current_max_timeout=current_max_timeout,
        series=kept,
        transitions=[tr for tr in transitions if kept.start <= tr.ts <= now],
        history=history,
        failed_weight=failed_weight,
        refused_weight=refused_weight,
        confidence_floor=confidence_floor,
    )
    prediction = None
    if horizon is not None:
        settings = Settings(current_threshold, float(current_timeout), float(current_backoff), current_max_timeout)
        prediction = predict(kept, settings=settings, transitions=[tr for tr in transitions if tr.ts <= now],
                             pattern=pattern, horizon=horizon)
    return Analysis(pattern, rec, prediction, start, now)
