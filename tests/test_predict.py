"""circuitry.analysis.predict, the likely_to_open alert, and the analyse() entry point."""

from __future__ import annotations

import math
import random

import pytest

from circuitry._state import CircuitState
from circuitry.analysis.alerts import ALERT_TYPES, SEVERITY_OF, AlertEngine, AlertPolicy
from circuitry.analysis.engine import analyse
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.patterns import classify_series
from circuitry.analysis.predict import _closed_rows, open_features, predict
from circuitry.analysis.replay import Settings, Transition
from circuitry.analysis.series import Series, bucketize
from circuitry.exceptions import ConfigurationError

DEFAULTS = Settings(5, 60.0)


def series_of(seed: int, prob: float | list[tuple[float, float, float]], rate: float = 10.0,
              end: float = 900.0) -> Series:
    """Poisson calls on [0, end): a constant failure probability, or (from, to, p) stretches over 0."""
    rng = random.Random(seed)
    calls = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        p = prob if isinstance(prob, float) else next((q for a, b, q in prob if a <= t < b), 0.0)
        calls.append((t, rng.random() < p))
    return bucketize(calls, start=0.0, end=end)


# ---------------------------------------------------------------------------------------- prediction


def test_a_quiet_service_is_unlikely_to_open_and_a_noisy_one_likely() -> None:
    quiet = predict(series_of(1, 0.001), settings=DEFAULTS)
    noisy = predict(series_of(1, 0.5), settings=DEFAULTS)
    assert quiet.raw_open_probability < 0.05
    assert noisy.raw_open_probability > 0.9
    assert quiet.open_probability < noisy.open_probability


def test_outages_every_few_minutes_make_a_trip_likely_within_five_minutes() -> None:
    spans = [(a, a + 20.0, 1.0) for a in (60.0, 250.0, 440.0, 630.0, 820.0)]
    p = predict(series_of(2, spans), settings=DEFAULTS)
    assert p.raw_open_probability > 0.5


def test_the_failure_share_interval_holds_the_share_of_a_steady_service() -> None:
    hits = 0
    for seed in range(20):
        p = predict(series_of(seed, 0.1), settings=DEFAULTS, seed=seed)
        assert p.failure_rate_low <= p.failure_rate <= p.failure_rate_high
        hits += p.failure_rate_low <= 0.1 <= p.failure_rate_high
    assert hits >= 14  # an 80 % interval around a true share of 10 %


def test_an_escalation_is_predicted_from_after_its_rise() -> None:
    # 1 % until 600 s, then 30 %: the share ahead is about 30 %, not the window's 10 %.
    s = series_of(3, [(0.0, 600.0, 0.01), (600.0, 900.0, 0.3)])
    pattern = classify_series(s)
    assert pattern.type == "escalating"
    with_pattern = predict(s, settings=DEFAULTS, pattern=pattern)
    without = predict(s, settings=DEFAULTS)
    assert abs(with_pattern.failure_rate - 0.3) < abs(without.failure_rate - 0.3) + 0.05
    assert with_pattern.failure_rate > 0.2


def test_an_open_breaker_is_simulated_from_its_open_state() -> None:
    s = series_of(4, 0.001)
    closed = predict(s, settings=DEFAULTS)
    opened = predict(s, settings=DEFAULTS, transitions=[Transition(899.0, "closed", "open")])
    assert opened.raw_open_probability <= closed.raw_open_probability + 0.05  # it must close before it trips


def chance_trip(p: float) -> tuple[Series, list[Transition]]:
    """A service failing at random (``p``, 10 calls/s) whose breaker tripped once by chance at 400 s and
    closed at its first probe 60 s later: the calls of that minute were refused, so the store has none."""
    rng = random.Random(3)
    calls = [(400.2 + 0.05 * i, True) for i in range(5)] + [(460.5, False)]
    t = 0.0
    while (t := t + rng.expovariate(10.0)) < 900.0:
        if not 400.5 <= t < 460.5:
            calls.append((t, rng.random() < p))
    trans = [Transition(400.4, "closed", "open"), Transition(460.5, "open", "half_open"),
             Transition(460.5, "half_open", "closed")]
    return bucketize(calls, start=0.0, end=900.0), trans


def test_a_chance_trip_does_not_make_a_failing_minute_up() -> None:
    # The refused minute is taken out of a closed breaker's futures, not filled in as failing (which gave
    # a raw probability of 0.33-0.38 here): the trip stays one chance run of failures among the rest.
    s, trans = chance_trip(0.02)
    rows = _closed_rows(s, trans)
    assert len(rows) == 900 - 59  # the seconds strictly between the trip's and the probe's
    assert sum(x for _, x in rows) == sum(s.failures) and sum(n for n, _ in rows) == sum(s.calls)
    for seed in range(3):
        raw = predict(s, settings=DEFAULTS, transitions=trans, seed=seed).raw_open_probability
        assert raw < 0.2
        assert raw < predict(s, settings=DEFAULTS, seed=seed).raw_open_probability + 0.1


def test_prediction_is_deterministic_and_validates() -> None:
    s = series_of(5, 0.2)
    assert predict(s, settings=DEFAULTS, seed=3) == predict(s, settings=DEFAULTS, seed=3)
    with pytest.raises(ConfigurationError, match="horizon"):
        predict(s, settings=DEFAULTS, horizon=0)
    with pytest.raises(ConfigurationError, match="coverage"):
        predict(s, settings=DEFAULTS, coverage=1.0)
    d = predict(s, settings=DEFAULTS).as_dict()
    assert set(d) == {"horizon_seconds", "open_probability", "failure_rate", "failure_rate_interval", "coverage"}


def test_an_empty_window_predicts_nothing_much() -> None:
    p = predict(Series(0.0, 900.0, 1.0, (), (), ()), settings=DEFAULTS)
    assert p.failure_rate == 0.0 and 0.0 <= p.open_probability <= 1.0
    assert (p.failure_rate_low, p.failure_rate_high) == (0.0, 1.0)  # nothing is known of the share


@pytest.mark.parametrize("at", [(10, 20), (100, 500), (880, 890)])
@pytest.mark.parametrize("failures", [0, 1, 2])
def test_the_interval_holds_the_estimate_when_calls_are_few(failures: int, at: tuple[int, int]) -> None:
    # two calls in fifteen minutes: most resampled futures hold no call; they must not count as 0 % failing
    p = predict(Series(0.0, 900.0, 1.0, at, (1, 1), (int(failures >= 1), int(failures >= 2))), settings=DEFAULTS)
    assert p.failure_rate_low <= p.failure_rate <= p.failure_rate_high
    assert p.failure_rate_low >= 0.0 and p.failure_rate_high <= 1.0


# ------------------------------------------------------------------------------------ likely_to_open


def test_likely_to_open_is_a_warning_alert_type() -> None:
    assert "likely_to_open" in ALERT_TYPES and SEVERITY_OF["likely_to_open"] == "warning"


def test_likely_to_open_fires_above_the_policy_level_for_closed_circuits_only() -> None:
    engine = AlertEngine(AlertPolicy(likely_to_open=0.6))
    pred = {"open_probability": 0.7, "horizon_seconds": 300.0, "failure_rate": 0.2}
    (alert,) = engine.prediction("api", pred, 100.0)
    assert alert.alert_type == "likely_to_open" and alert.severity == "warning"
    assert "70%" in alert.message and "5 minutes" in alert.message
    assert alert.details["open_probability"] == 0.7
    assert engine.prediction("api", pred, 110.0) == []  # counted into the first
    assert engine.prediction("other", {**pred, "open_probability": 0.5}, 100.0) == []
    assert engine.prediction("third", pred, 100.0, state=CircuitState.OPEN) == []


def test_likely_to_open_validates() -> None:
    engine = AlertEngine()
    with pytest.raises(ConfigurationError):
        engine.prediction("api", {"open_probability": "high"}, 1.0)
    with pytest.raises(ConfigurationError):
        AlertPolicy(likely_to_open=0.0)
    with pytest.raises(ConfigurationError):
        AlertPolicy(likely_to_open=math.nan)


# ------------------------------------------------------------------------------------------- analyse


def test_analyse_classifies_the_window_replays_the_history_and_predicts() -> None:
    hour = series_of(6, [(a, a + 20.0, 1.0) for a in (300.0, 1200.0, 2100.0, 3000.0, 3300.0)], end=3600.0)
    a = analyse(hour, now=3600.0, current_threshold=5, current_timeout=60.0,
                history=[MinuteRollup(m, 600, 594, 6) for m in range(60)])
    assert (a.window_start, a.window_end) == (2700.0, 3600.0)
    assert a.pattern.evidence.window_seconds == 900.0
    assert a.pattern.type == "burst"
    assert a.recommendation.replayed_seconds == 3600.0  # the whole kept history is replayed
    assert a.prediction is not None and 0.0 <= a.prediction.open_probability <= 1.0
    d = a.as_dict()
    assert d["pattern"]["type"] == "burst" and "current_cost_per_hour" in d["recommendation"]


def test_analyse_without_prediction_and_with_bad_arguments() -> None:
    s = series_of(7, 0.01)
    assert analyse(s, now=900.0, current_threshold=5, current_timeout=60.0, horizon=None).prediction is None
    with pytest.raises(ConfigurationError, match="now"):
        analyse(s, now=math.inf, current_threshold=5, current_timeout=60.0)
    with pytest.raises(ConfigurationError, match="window"):
        analyse(s, now=900.0, window=0, current_threshold=5, current_timeout=60.0)


def test_analyse_refuses_malformed_inputs_naming_them() -> None:
    s = series_of(7, 0.05)
    base = {"now": 900.0, "current_threshold": 5, "current_timeout": 60.0}
    cases: list[tuple[dict[str, object], str]] = [
        ({"transitions": [("a", "b")]}, "transitions must hold Transition"),
        ({"transitions": [Transition(800.0, "closed", "banana")]}, "to_state must be one of"),
        ({"transitions": [Transition(800.0, "shut", "open")]}, "from_state must be one of"),
        ({"transitions": [Transition(math.nan, "closed", "open")]}, "transitions: ts"),
        ({"history": [1, 2]}, "history must hold MinuteRollup"),
        ({"confidence_floor": "0.5"}, "confidence_floor"),
        ({"now": 1_700_000_000 * 10**9}, "now must be in seconds.*nanoseconds"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ConfigurationError, match=match):
            analyse(s, **{**base, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="series must be a Series"):
        analyse([(1, 2, 3)], **base)  # type: ignore[arg-type]


def test_the_prediction_reads_a_bounded_past_whatever_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # An hour of data and a window of 10**6 s: the prediction built a row for every second of the window,
    # empty ones included (10**7 s took 7 s, 10**8 ran out of memory). It reads the last four hours now.
    import circuitry.analysis.predict as predict_module

    sizes: list[int] = []
    rows = predict_module._rows

    def counting(source: Series) -> list[tuple[int, int]]:
        out = rows(source)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(predict_module, "_rows", counting)
    hour = series_of(8, 0.05, end=3600.0)
    a = analyse(hour, now=3600.0, window=1e6, current_threshold=5, current_timeout=60.0)
    assert a.prediction is not None and a.pattern.evidence.calls == hour.total_calls
    assert sizes and max(sizes) <= 4 * 3600
    sizes.clear()
    analyse(hour, now=3600.0, current_threshold=5, current_timeout=60.0)  # the usual window: as before
    assert max(sizes) == 3600


def test_the_calibration_sees_the_trip_history_and_whether_the_breaker_is_open() -> None:
    s = series_of(5, 0.01)
    quiet = open_features(0.1, s, [], 300.0)
    assert quiet["trip_history"] == 0.0 and quiet["open_now"] == 0.0
    # A trip in the last 5 minutes weighs 1/2, one 5-10 minutes ago 1/4; older than 40 minutes: nothing.
    trips = [Transition(880.0, "closed", "open"), Transition(940.0 - 600.0 - 300.0, "closed", "open"),
             Transition(900.0 - 2500.0, "closed", "open")]
    recent = open_features(0.1, s, trips[:1], 300.0)
    older = open_features(0.1, s, trips[1:2], 300.0)
    ancient = open_features(0.1, s, trips[2:], 300.0)
    assert recent["trip_history"] == pytest.approx(0.5)
    assert 0.0 < older["trip_history"] < recent["trip_history"]
    assert ancient["trip_history"] == 0.0
    # The share of the eight 5-minute slots with a trip: recent and older alike, nothing past 40 minutes.
    assert recent["trip_share"] == older["trip_share"] == pytest.approx(1 / 8)
    assert open_features(0.1, s, trips, 300.0)["trip_share"] == pytest.approx(2 / 8)
    assert quiet["trip_share"] == ancient["trip_share"] == 0.0
    assert recent["open_now"] == 1.0  # tripped at 880 s, not closed since
    closed_again = open_features(0.1, s, [trips[0], Transition(885.0, "open", "half_open"),
                                          Transition(885.5, "half_open", "closed")], 300.0)
    assert closed_again["open_now"] == 0.0 and closed_again["trip_history"] == pytest.approx(0.5)
    assert list(predict(s, settings=DEFAULTS, transitions=trips[:1]).features) == list(recent)


def test_the_prediction_is_deterministic_and_its_raw_probability_has_enough_futures() -> None:
    s = series_of(6, [(0.0, 900.0, 0.3)])
    a = predict(s, settings=DEFAULTS, seed=3)
    b = predict(s, settings=DEFAULTS, seed=3)
    assert a == b
    assert a.raw_open_probability > 0.9
    # Futures come in batches of 100 until 25 trip and 25 do not, at most 300; the raw probability is
    # (trips + 1/2) / (futures + 1).
    quiet = predict(series_of(6, 0.0001), settings=DEFAULTS)
    assert quiet.raw_open_probability == pytest.approx(0.5 / 301)  # no trip in 300 futures
