"""Predict what a circuit does next: will it open within the next minutes, and how often will calls fail?

Pure and deterministic (seeded; no clock). :func:`predict` looks at the per-second counts the store keeps, the
breaker's settings and its transitions, and returns a :class:`Prediction`:

* ``open_probability`` -- the probability that the circuit trips (closed -> open) within ``horizon``
  seconds. Its raw form is a simulation: the breaker, in its current state, replayed over futures drawn
  from the past (blocks of 30 s resampled from the per-second counts given, at most the last four hours
  of them, recent ones more often -- from after the change point if the failure rate is escalating; for a
  breaker closed now, from the seconds it let calls through, the stretches it refused taken out), in
  batches until enough futures trip and enough do not. A logistic calibration maps that raw probability,
  the trips of the last 40 minutes (per 5-minute slot: recent ones weighted most, and all alike) and
  whether the breaker is open now to a calibrated one; the constants are fitted by
  ``benchmarks/patterns/predict_bench.py``, never by hand.
* ``failure_rate`` -- the expected failure share of the calls in the next ``horizon`` seconds, with an
  interval meant to hold it ``coverage`` of the time, from the same resampled futures, widened by a
  fitted factor.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
import random
from bisect import bisect, bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final

from circuitry.analysis import _calibration_predict as _calibration
from circuitry.analysis._stats import clamp, logistic
from circuitry.analysis.patterns import PatternResult
from circuitry.analysis.replay import Settings, Transition, _open_periods, _Sim, impute
from circuitry.analysis.series import Series
from circuitry.exceptions import ConfigurationError

__all__ = ["DEFAULT_HORIZON", "Prediction", "open_features", "predict"]

#: Seconds ahead the prediction looks by default.
DEFAULT_HORIZON: Final = 300.0
_BLOCK: Final = 30.0  # seconds per resampled block: keeps bursts whole
_RUNS: Final = 100  # simulated futures per batch (and for the failure share)
_MAX_RUNS: Final = 300  # simulated futures for a trip at most
_ENOUGH: Final = 25  # ... in batches, until this many futures trip and this many do not
_SLOTS: Final = 8  # the trip history: 5-minute slots before the end (40 minutes) ...
_SLOT_WEIGHT: Final = 0.5  # ... averaged with this weight (an EWMA, newest slot weighted most)
_RECENT: Final = 300.0  # the "recent" failure share: the last five minutes (and its futures' recency)
_TRIP_RECENT: Final = 900.0  # the trip futures' recency: blocks weighted exp(-age / 15 min) (chosen on dev)
#: The past the futures are drawn from, at most: 16 trip recencies (4 hours). An older block weighs under
#: exp(-16) ~ 1e-7 of the newest and is all but never drawn, and the rows are one per bucket of the past,
#: empty ones included: without this bound the work grew with the window asked for, not with the data.
_PAST: Final = 16 * _TRIP_RECENT


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the circuit is expected to do next.

    Attributes:
        horizon_seconds: How far ahead.
        open_probability: Calibrated probability of a trip (closed -> open) within the horizon.
        raw_open_probability: The simulation's own estimate, before calibration.
        failure_rate: Expected failure share of the calls in the horizon.
        failure_rate_low: Lower end of the interval.
        failure_rate_high: Upper end of the interval.
        coverage: How often the interval is meant to hold the true share.
        features: The facts the calibration used.
    """

    horizon_seconds: float
    open_probability: float
    raw_open_probability: float
    failure_rate: float
    failure_rate_low: float
    failure_rate_high: float
    coverage: float
    features: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, e.g. for ``get_stats()`` or an alert's details."""
        return {
            "horizon_seconds": self.horizon_seconds,
            "open_probability": round(self.open_probability, 4),
            "failure_rate": round(self.failure_rate, 6),
            "failure_rate_interval": [round(self.failure_rate_low, 6), round(self.failure_rate_high, 6)],
            "coverage": self.coverage,
        }


def _state_at_end(transitions: Sequence[Transition], end: float) -> tuple[bool, float]:
    """Whether the breaker is refusing at ``end`` and until when its open period runs (best guess)."""
    last = None
    for tr in sorted(transitions, key=lambda t: t.ts):
        if tr.ts <= end:
            last = tr
    if last is None or last.to_state not in ("open", "forced_open"):
        return False, end
    return True, last.ts


def _rows(source: Series) -> list[tuple[int, int]]:
    """``source`` as one ``(calls, failures)`` row per bucket of its window, empty buckets included."""
    w = source.width
    start = source.start
    seconds = max(1, int(max(source.span, w) // w))
    rows = [(0, 0)] * seconds
    for i, n, x in zip(source.index, source.calls, source.failures, strict=True):
        j = int((i * w - start) // w)
        if 0 <= j < seconds:
            rows[j] = (n, x)
    return rows


def _closed_rows(source: Series, transitions: Sequence[Transition]) -> list[tuple[int, int]]:
    """``source``'s rows with the seconds its breaker refused taken out (the rest closed up, in order).

    What a closed breaker would meet: those seconds hold no calls but the probes, and filling them in
    (:func:`~circuitry.analysis.replay.impute`) takes the service to be failing through every open period
    -- right for an outage, but after a chance trip of a service failing at random it makes a minute of
    failures up. The second of each trip and of each close (the successful probe and the calls after
    it) stay."""
    w = source.width
    rows = _rows(source)
    refused: set[int] = set()
    for a, b, _ in _open_periods(transitions, source.start, source.end, forced=True):
        refused.update(range(int((a - source.start) // w) + 1, int((b - source.start) // w)))
    return [r for j, r in enumerate(rows) if j not in refused] if refused else rows


def _futures(rows: list[tuple[int, int]], w: float, horizon: float, runs: int, rng: random.Random,
             recent: float) -> tuple[list[tuple[int, int]], list[list[int]], int, int]:
    """``runs`` futures of ``horizon`` seconds: 30 s blocks of ``rows`` (one per bucket of width ``w``)
    drawn with replacement, recent blocks more often (weight ``exp(-age / recent)``). Returns the rows,
    each future as its blocks' first rows, the rows per block and the rows per future (the last block is
    cut short)."""
    seconds = len(rows)
    block = min(seconds, max(1, int(_BLOCK // w)))
    steps = max(1, math.ceil(horizon / w))
    starts = list(range(max(1, seconds - block + 1)))
    cum = list(accumulate(math.exp(-(seconds - b0) * w / recent) for b0 in starts))
    total = cum[-1]
    hi = len(starts) - 1
    per_future = math.ceil(steps / block)
    futures = [[starts[bisect(cum, rng.random() * total, 0, hi)] for _ in range(per_future)] for _ in range(runs)]
    return rows, futures, block, steps


def open_features(raw: float, series: Series, transitions: Sequence[Transition], horizon: float) -> dict[str, float]:
    """The facts the open-probability calibration uses (exposed so the fitting script uses the same): the
    simulation's probability (as a logit), the trip history, whether the breaker is refusing now and the
    share of the eight slots with a trip.

    The trip history is a longer memory for bursts that come and go at random: whether the breaker
    tripped (closed -> open) in each of the eight 5-minute slots before the window's end, averaged with
    weights halving slot by slot (newest first, an EWMA of weight 1/2 from 0); the share of slots with a
    trip, unweighted, is the long run's rate beside it (a stationary stream's best guess). A breaker open now must
    close before it can trip again, and mostly does so on a service still failing: the simulation of its
    probes is the least certain part, so the state is a fact of its own."""
    end = series.end
    slot = DEFAULT_HORIZON
    history = 0.0
    slots_tripped = 0
    for k in range(_SLOTS - 1, -1, -1):  # oldest first
        hi = end - k * slot
        tripped = any(tr.to_state == "open" and tr.from_state == "closed" and hi - slot < tr.ts <= hi
                      for tr in transitions)
        history = _SLOT_WEIGHT * float(tripped) + (1.0 - _SLOT_WEIGHT) * history
        slots_tripped += tripped
    refusing, _ = _state_at_end(transitions, end)
    r = clamp(raw, 0.001, 0.999)
    return {"logit_raw": math.log(r / (1.0 - r)), "trip_history": history, "open_now": float(refusing),
            "trip_share": slots_tripped / _SLOTS}


def predict(
    series: Series,
    *,
    settings: Settings,
    transitions: Sequence[Transition] = (),
    pattern: PatternResult | None = None,
    horizon: float = DEFAULT_HORIZON,
    coverage: float = 0.8,
    seed: int = 0,
    calibration: Sequence[float] | None = None,
    interval_scale: float | None = None,
) -> Prediction:
    """Predict the next ``horizon`` seconds of a circuit.

    Args:
        series: The per-second counts: all the store keeps (the analyst gives an hour), not only the
            analysis window -- older blocks are drawn less often, and a longer past estimates how often
            bursts come better. Only its last four hours are read: an older block would all but never
            be drawn, and the work is one row per second of the past read.
        settings: The breaker's settings in force.
        transitions: Its state changes (to know whether it is open now, and its recent trips).
        pattern: The window's classification; an escalation resamples only the stretch after its change
            point (the past before the rise is not the future).
        horizon: Seconds ahead (> 0).
        coverage: The failure-rate interval's target coverage, in (0, 1).
        seed: Seed of the simulated futures.
        calibration: Coefficients ``(intercept, *weights)`` over :func:`open_features`; default: shipped.
        interval_scale: Widening of the failure-rate interval; default: shipped.

    Returns:
        The prediction.

    Raises:
        ConfigurationError: ``horizon`` or ``coverage`` is out of range.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int | float) or not math.isfinite(horizon) or horizon <= 0:
        raise ConfigurationError(f"horizon must be a positive number of seconds, got {horizon!r}")
    if isinstance(coverage, bool) or not isinstance(coverage, int | float) or not 0.0 < coverage < 1.0:
        raise ConfigurationError(f"coverage must be within (0, 1), got {coverage!r}")
    # Only the last _PAST seconds: older blocks are all but never drawn, and a window of days or years
    # would otherwise cost a row per second of it.
    if series.span > _PAST:
        series = series.window(series.end - _PAST, series.end)
    # Trips: futures drawn from the window with what the open breaker refused filled in (it would be
    # called again). The failure share: from the calls let through only -- a breaker decides on calls
    # already made, so they are a fair sample of a service whose calls fail independently, while the
    # filled-in seconds are a guess.
    source = impute(series, transitions) if transitions else series
    observed = series
    if pattern is not None and pattern.type == "escalating" and pattern.evidence.change_point_time is not None:
        cut = pattern.evidence.change_point_time
        if series.start < cut < series.end - _BLOCK:
            source = source.window(cut, series.end)
            observed = series.window(cut, series.end)
    rng = random.Random(seed)
    w = series.width
    share_rows, share_futures, share_block, share_steps = _futures(_rows(observed), w, horizon, _RUNS, rng,
                                                                   _RECENT)
    refusing, opened_at = _state_at_end(transitions, series.end)
    # A closed breaker's futures: the seconds it let calls through, refused stretches taken out (the
    # imputed ones are kept for a breaker open now: whether its probe succeeds is what they guess at).
    trip_rows = _rows(source)
    if not refusing and transitions:
        closed = _closed_rows(observed, transitions)
        if len(closed) * w >= 2 * _BLOCK:
            trip_rows = closed

    def simulate(rows: list[tuple[int, int]], futures: list[list[int]], block: int, steps: int,
                 first: int) -> int:
        """How many of ``futures`` trip the breaker (numbered from ``first`` for their seeds)."""
        # A closed breaker only needs the seconds with a failure, and whether a call succeeded between
        # two of them (which starts the run of failures again); a future stops at its first trip.
        calls = [0, *accumulate(n for n, _ in rows)]
        failing = [j for j, (_, x) in enumerate(rows) if x]
        opened = 0
        t0 = series.end
        for r, fut in enumerate(futures, first):
            sim = _Sim(settings, seed * 7919 + r)
            if refusing:
                sim.state = 1
                sim.open_until = opened_at + settings.timeout
            for q, b0 in enumerate(fut):
                j0 = q * block - b0  # a row's offset into the future
                stop = b0 + min(block, steps - q * block)
                if sim.state:
                    for j in range(b0, stop):
                        n, x = rows[j]
                        if n:
                            sim.second(t0 + (j0 + j) * w, w, n, x)
                    continue
                at = b0
                for j in failing[bisect_left(failing, b0) : bisect_left(failing, stop)]:
                    if calls[j] > calls[at]:
                        sim.run = 0
                    n, x = rows[j]
                    sim.second(t0 + (j0 + j) * w, w, n, x)
                    if sim.state:
                        break
                    at = j + 1
                else:
                    if calls[stop] > calls[at]:
                        sim.run = 0
                if sim.trips:
                    break
            opened += sim.trips > 0
        return opened

    # Batches of futures until enough of them trip and enough do not (or _MAX_RUNS): the raw
    # probability's noise matters most where it is near 0 or 1, and those futures are cheap to replay.
    opened = runs = 0
    while runs < _MAX_RUNS and min(opened, runs - opened) < _ENOUGH:
        opened += simulate(*_futures(trip_rows, w, horizon, _RUNS, rng, _TRIP_RECENT), runs)
        runs += _RUNS
    raw = (opened + 0.5) / (runs + 1.0)
    shares: list[float] = []  # futures without a call say nothing of the failure share
    s_fails = [0, *accumulate(x for _, x in share_rows)]
    s_calls = [0, *accumulate(n for n, _ in share_rows)]
    for fut in share_futures:
        n_sum = x_sum = 0
        for q, b0 in enumerate(fut):
            end = b0 + min(share_block, share_steps - q * share_block)
            n_sum += s_calls[end] - s_calls[b0]
            x_sum += s_fails[end] - s_fails[b0]
        if n_sum:
            shares.append(x_sum / n_sum)
    feats = open_features(raw, series, transitions, horizon)
    coef = list(calibration) if calibration is not None else list(_calibration.PREDICT_OPEN)
    z = coef[0] + sum(c * v for c, v in zip(coef[1:], feats.values(), strict=False))
    p_open = logistic(z)
    # Failure share: the recency-weighted share of the calls let through (weight exp(-age / 5 min)); the
    # interval from the spread of the resampled futures around their mean, widened.
    shares.sort()
    wx = wn = 0.0
    for i, n, x in zip(observed.index, observed.calls, observed.failures, strict=True):
        weight = math.exp(-(series.end - i * w) / _RECENT)
        wx += weight * x
        wn += weight * n
    if not shares:  # no call at all in the window: nothing is known of the share
        return Prediction(horizon, p_open, raw, 0.0, 0.0, 1.0, coverage, feats)
    centre = sum(shares) / len(shares)
    mean = wx / wn if wn > 0 else centre
    scale = _calibration.PREDICT_INTERVAL if interval_scale is None else interval_scale
    lo_q = shares[int((1.0 - coverage) / 2.0 * (len(shares) - 1))]
    hi_q = shares[int((1.0 + coverage) / 2.0 * (len(shares) - 1) + 0.5)]
    low = min(mean, max(0.0, mean - scale * (centre - lo_q)))
    high = max(mean, min(1.0, mean + scale * (hi_q - centre)))
    return Prediction(horizon, p_open, raw, mean, low, high, coverage, feats)
