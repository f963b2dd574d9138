"""Behaviour of circuitry.analysis.recommend.recommend."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitry.analysis.patterns import PatternEvidence, PatternResult, PatternType, classify
from circuitry.analysis.recommend import MAX_THRESHOLD, MAX_TIMEOUT, MIN_TIMEOUT, recommend, safe_threshold

SEED_KEYS = {
    "has_recommendations",
    "message",
    "current_threshold",
    "recommended_threshold",
    "current_timeout",
    "recommended_timeout",
    "confidence",
    "primary_pattern",
}


def result(
    kind: PatternType | None,
    confidence: float = 0.9,
    *,
    calls: int = 36_000,
    failures: int = 100,
    seconds: float = 3600.0,
    **evidence: float | None,
) -> PatternResult:
    ev = PatternEvidence(
        calls=calls,
        failures=failures,
        window_seconds=seconds,
        failure_rate=failures / calls,
        failures_per_second=failures / seconds,
        **evidence,  # type: ignore[arg-type]  # the keys are PatternEvidence's optional float fields
    )
    return PatternResult(kind, confidence, ev)


def outage_calls(seed: int) -> list[tuple[float, bool]]:
    rng = random.Random(seed)
    calls, t = [], 0.0
    while t < 1800.0:
        t += rng.expovariate(5.0)
        out = 300.0 <= t < 380.0 or 1200.0 <= t < 1290.0
        calls.append((t, rng.random() < (0.95 if out else 0.002)))
    return calls


# ------------------------------------------------------------------------------------------- floor


def test_below_the_confidence_floor_nothing_is_recommended() -> None:
    rec = recommend(result("burst", 0.59, episode_p90_seconds=120.0), current_threshold=5, current_timeout=60)
    assert not rec.has_recommendations
    assert (rec.recommended_threshold, rec.recommended_timeout) == (5, 60)
    assert rec.backoff_multiplier is None
    assert "below the floor" in rec.rationale


def test_the_floor_is_configurable() -> None:
    r = result("burst", 0.59, episode_p90_seconds=120.0)
    assert recommend(r, current_threshold=5, current_timeout=60, confidence_floor=0.5).has_recommendations


def test_abstention_recommends_nothing() -> None:
    rec = recommend(result(None, 0.0, failures=3), current_threshold=5, current_timeout=60)
    assert not rec.has_recommendations
    assert rec.primary_pattern is None
    assert (rec.recommended_threshold, rec.recommended_timeout) == (5, 60)


# ---------------------------------------------------------------------------------------- patterns


def test_burst_lowers_threshold_and_covers_the_measured_burst_durations() -> None:
    calls = outage_calls(1)
    r = classify(calls)
    assert r.type == "burst"
    rec = recommend(r, current_threshold=5, current_timeout=60, calls=calls)
    assert rec.has_recommendations
    assert rec.recommended_threshold == 3
    # The outages last 80 and 90 s; the timeout should cover the longer one, roughly.
    assert 70.0 <= rec.recommended_timeout <= 120.0


def test_burst_without_calls_uses_the_episode_durations_from_the_evidence() -> None:
    rec = recommend(
        result("burst", episode_p90_seconds=45.0, background_rate=0.0), current_threshold=5, current_timeout=60
    )
    assert rec.recommended_timeout == 45.0
    assert rec.recommended_threshold == 3


def test_burst_on_a_noisy_background_keeps_threshold_safe_from_the_background() -> None:
    rec = recommend(
        result("burst", episode_p90_seconds=45.0, background_rate=0.1), current_threshold=5, current_timeout=60
    )
    # 36,000 calls/h at 10 %: 3 in a row would happen ~30 times an hour.
    assert rec.recommended_threshold >= safe_threshold(0.1, 36_000) > 3


def test_steady_raises_threshold_so_random_runs_rarely_trip_and_keeps_timeout() -> None:
    rec = recommend(result("steady", failures=10_800), current_threshold=5, current_timeout=60)  # p = 0.3
    assert rec.recommended_threshold > 5
    assert rec.recommended_timeout == 60
    k = rec.recommended_threshold
    assert 36_000 * 0.7 * 0.3**k <= 0.01 < 36_000 * 0.7 * 0.3 ** (k - 1)


def test_steady_at_a_low_rate_keeps_the_current_settings() -> None:
    rec = recommend(result("steady", failures=36), current_threshold=5, current_timeout=60)  # p = 0.001
    assert not rec.has_recommendations
    assert rec.recommended_threshold == 5


def test_steady_at_half_the_calls_failing_is_not_treated_as_noise() -> None:
    rec = recommend(result("steady", failures=18_000), current_threshold=5, current_timeout=60)  # p = 0.5
    assert not rec.has_recommendations
    assert rec.recommended_threshold == 5
    assert "failing" in rec.rationale


def test_intermittent_shortens_the_timeout() -> None:
    rec = recommend(result("intermittent", failures=30), current_threshold=5, current_timeout=60)
    assert rec.recommended_timeout == 30.0
    assert rec.recommended_threshold >= 5


def test_escalating_lowers_threshold_and_backs_off() -> None:
    rec = recommend(
        result("escalating", trend_z=4.0, trend_rate_ratio=8.0, rate_after=0.001, change_point_time=1000.0),
        current_threshold=5,
        current_timeout=60,
    )
    assert rec.recommended_threshold == 3
    assert rec.backoff_multiplier == 2.0
    assert "change point" in rec.rationale


# ------------------------------------------------------------------------------------------ ranges


def test_safe_threshold_values() -> None:
    # p = 0.5, 3600 calls/h: 3600 * 0.5 * 0.5**k <= 0.01  <=>  k >= log2(180000) = 17.46
    assert safe_threshold(0.5, 3600) == 18
    assert safe_threshold(0.0, 3600) == 1
    assert safe_threshold(0.99, 1e6) == MAX_THRESHOLD
    assert safe_threshold(1.0, 10) == MAX_THRESHOLD


def test_timeouts_are_clamped() -> None:
    long = recommend(result("burst", episode_p90_seconds=1e6), current_threshold=5, current_timeout=60)
    short = recommend(result("burst", episode_p90_seconds=0.5), current_threshold=5, current_timeout=60)
    assert long.recommended_timeout == MAX_TIMEOUT
    assert short.recommended_timeout == MIN_TIMEOUT


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"current_threshold": 0, "current_timeout": 60}, "current_threshold"),
        ({"current_threshold": 5, "current_timeout": 0}, "current_timeout"),
        ({"current_threshold": 5, "current_timeout": math.inf}, "current_timeout"),
        ({"current_threshold": 5, "current_timeout": 60, "confidence_floor": 1.5}, "confidence_floor"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        recommend(result("steady"), **kwargs)  # type: ignore[arg-type]


_kinds = st.sampled_from(["burst", "steady", "intermittent", "escalating", None])


@settings(max_examples=300, deadline=None)
@given(
    kind=_kinds,
    confidence=st.floats(0.0, 1.0),
    failures=st.integers(0, 36_000),
    p90=st.one_of(st.none(), st.floats(0.0, 1e7)),
    background=st.one_of(st.none(), st.floats(0.0, 1.0)),
    rate_after=st.one_of(st.none(), st.floats(0.0, 1.0)),
    threshold=st.integers(1, 100),
    timeout=st.floats(0.001, 1e5),
)
def test_recommendations_stay_in_range(
    kind: PatternType | None,
    confidence: float,
    failures: int,
    p90: float | None,
    background: float | None,
    rate_after: float | None,
    threshold: int,
    timeout: float,
) -> None:
    r = result(
        kind, confidence, failures=failures, episode_p90_seconds=p90, background_rate=background, rate_after=rate_after
    )
    rec = recommend(r, current_threshold=threshold, current_timeout=timeout)
    if not rec.has_recommendations:
        assert (rec.recommended_threshold, rec.recommended_timeout) == (threshold, timeout)
    else:
        assert confidence >= 0.6 and kind is not None
        assert 1 <= rec.recommended_threshold <= max(MAX_THRESHOLD, threshold)
        assert MIN_TIMEOUT <= rec.recommended_timeout <= MAX_TIMEOUT
    d = rec.as_seed_dict()
    assert set(d) == SEED_KEYS


# --------------------------------------------------------------------------------------- seed dict


def test_seed_dict_has_exactly_the_seed_keys_and_message() -> None:
    rec = recommend(result("burst", 0.82, episode_p90_seconds=90.0), current_threshold=5, current_timeout=60)
    d = rec.as_seed_dict()
    assert set(d) == SEED_KEYS
    assert d["has_recommendations"] is True
    assert d["recommended_threshold"] == 3 and d["recommended_timeout"] == 90.0
    assert d["current_threshold"] == 5 and d["current_timeout"] == 60
    assert d["confidence"] == 0.82 and d["primary_pattern"] == "burst"
    assert d["message"] == (
        "Based on 100 recent failures (burst pattern), consider adjusting threshold to 3 and timeout to 90 seconds"
    )


def test_seed_dict_without_recommendation() -> None:
    d = recommend(result("steady", 0.3), current_threshold=5, current_timeout=60).as_seed_dict()
    assert d["has_recommendations"] is False
    assert str(d["message"]).startswith("No change recommended")
