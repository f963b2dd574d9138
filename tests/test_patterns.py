"""Behaviour of circuitry.analysis.patterns.classify on clear generated streams (fixed seeds)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitry.analysis.patterns import (
    MIN_FAILURES,
    PatternResult,
    burstiness,
    classify,
    classify_seed_heuristic,
)

Call = tuple[float, bool]


def poisson_times(rng: random.Random, rate: float, end: float, ramp: float = 1.0) -> list[float]:
    """Poisson arrivals on [0, end) whose rate goes linearly from ``rate`` to ``rate * ramp``."""
    peak = rate * max(1.0, ramp)
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return out
        if rng.random() * peak <= rate * (1.0 + (ramp - 1.0) * t / end):
            out.append(t)


def steady_calls(seed: int, p: float, rate: float = 20.0, end: float = 900.0, ramp: float = 1.0) -> list[Call]:
    rng = random.Random(seed)
    return [(t, rng.random() < p) for t in poisson_times(rng, rate, end, ramp)]


def outage_calls(
    seed: int, outages: list[tuple[float, float]], p_bg: float = 0.002, rate: float = 10.0, end: float = 900.0
) -> list[Call]:
    rng = random.Random(seed)
    calls = []
    for t in poisson_times(rng, rate, end):
        p = 0.9 if any(a <= t < b for a, b in outages) else p_bg
        calls.append((t, rng.random() < p))
    return calls


def escalating_calls(seed: int, p0: float = 0.005, ratio: float = 20.0, end: float = 1800.0) -> list[Call]:
    rng = random.Random(seed)
    return [(t, rng.random() < p0 * ratio ** (t / end)) for t in poisson_times(rng, 5.0, end)]


def intermittent_calls(seed: int, gap: float = 300.0, end: float = 6 * 3600.0, rate: float = 1.0) -> list[Call]:
    return steady_calls(seed, 1.0 / (gap * rate), rate=rate, end=end)


def failures(calls: list[Call]) -> int:
    return sum(1 for _, f in calls if f)


# ----------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_steady_failures_are_classified_steady(seed: int) -> None:
    r = classify(steady_calls(seed, p=0.02), window_start=0.0, window_end=900.0)
    assert r.type == "steady"
    assert r.confidence > 0.6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_high_rate_steady_is_not_burst_although_the_seed_rule_says_burst(seed: int) -> None:
    # 30 failures a minute: most gaps are under 5 s, which is all the seed rule looks at.
    calls = steady_calls(seed, p=0.05, rate=10.0)
    assert classify(calls).type == "steady"
    assert classify_seed_heuristic(calls).type == "burst"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rare_independent_failures_are_intermittent(seed: int) -> None:
    calls = intermittent_calls(seed)
    assert failures(calls) >= MIN_FAILURES
    r = classify(calls, window_start=0.0, window_end=6 * 3600.0)
    assert r.type == "intermittent"
    assert r.evidence.failures_per_second < 1 / 60


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_outages_on_a_quiet_background_are_bursts(seed: int) -> None:
    r = classify(outage_calls(seed, [(100.0, 115.0), (400.0, 420.0), (700.0, 710.0)]))
    assert r.type == "burst"
    assert r.confidence > 0.9
    assert r.evidence.dispersion_p_value is not None and r.evidence.dispersion_p_value < 1e-6
    assert r.evidence.burstiness_corrected is not None and r.evidence.burstiness_corrected > 0.3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rising_failure_probability_is_escalating_with_a_change_point_inside(seed: int) -> None:
    r = classify(escalating_calls(seed), window_start=0.0, window_end=1800.0)
    assert r.type == "escalating"
    assert r.evidence.trend_rate_ratio is not None and r.evidence.trend_rate_ratio > 3.0
    assert r.evidence.change_point_time is not None and 0.0 < r.evidence.change_point_time < 1800.0
    assert r.evidence.rate_after is not None and r.evidence.rate_before is not None
    assert r.evidence.rate_after > r.evidence.rate_before


@pytest.mark.parametrize("seed", range(6))
def test_traffic_ramp_at_constant_failure_probability_is_not_escalating(seed: int) -> None:
    # Calls (and so failures per second) rise eightfold; failures per call do not.
    calls = steady_calls(seed, p=0.02, rate=2.0, ramp=8.0)
    fts = [t for t, f in calls if f]
    assert sum(1 for t in fts if t >= 450) > 1.5 * sum(1 for t in fts if t < 450)  # the ramp is visible
    r = classify(calls, window_start=0.0, window_end=900.0)
    assert r.type == "steady"
    assert r.evidence.trend_z is not None and r.evidence.trend_z < 2.0


@pytest.mark.parametrize("seed", range(6))
def test_a_single_burst_late_in_the_window_is_not_escalating(seed: int) -> None:
    calls = outage_calls(seed, [(600.0, 625.0)], p_bg=0.005)
    r = classify(calls)
    assert r.type == "burst"
    assert r.evidence.half_rate_ratio is not None and r.evidence.half_rate_ratio > 2  # it does look "rising"


def test_a_late_burst_at_low_traffic_is_burst() -> None:
    calls = outage_calls(4, [(700.0, 720.0)], p_bg=0.01, rate=2.0)
    assert classify(calls).type == "burst"


# ---------------------------------------------------------------------------------------- abstention


def test_empty_input_abstains() -> None:
    r = classify([])
    assert r == PatternResult(None, 0.0, r.evidence)
    assert r.evidence.calls == 0 and r.evidence.failures == 0
    assert r.evidence.failure_rate == 0.0 and r.evidence.failures_per_second == 0.0


def test_too_few_failures_abstains() -> None:
    calls = [(float(i), i % 100 == 0) for i in range(900)]  # 9 failures, evenly spread
    assert failures(calls) == MIN_FAILURES - 1
    r = classify(calls)
    assert r.type is None
    assert r.confidence == 0.0


def test_no_failures_abstains() -> None:
    r = classify([(float(i), False) for i in range(1000)])
    assert r.type is None and r.evidence.failures == 0


def test_single_timestamp_window_does_not_crash() -> None:
    r = classify([(5.0, True)] * 20)
    assert r.type in (None, "burst", "steady", "intermittent", "escalating")
    assert 0.0 <= r.confidence <= 1.0


# ---------------------------------------------------------------------------------------- validation


def test_unsorted_timestamps_raise_value_error() -> None:
    with pytest.raises(ValueError, match="time order"):
        classify([(1.0, False), (3.0, True), (2.0, False)])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamps_raise_value_error(bad: float) -> None:
    for calls in (
        [(bad, True)],
        [(0.0, False), (bad, True)],
        [(bad, True), (1.0, False)],
        [(0.0, False), (bad, True), (2.0, False)],
    ):
        with pytest.raises(ValueError, match=r"finite|time order"):
            classify(calls)


def test_non_finite_timestamp_message_names_finiteness() -> None:
    with pytest.raises(ValueError, match="finite"):
        classify([(0.0, False), (1.0, True), (math.inf, False)])


def test_window_must_contain_the_calls() -> None:
    with pytest.raises(ValueError, match="outside the window"):
        classify([(1.0, False), (5.0, True)], window_start=2.0)
    with pytest.raises(ValueError, match="before window_start"):
        classify([], window_start=5.0, window_end=1.0)
    with pytest.raises(ValueError, match="finite"):
        classify([(1.0, True)], window_end=math.nan)


def test_seed_heuristic_validates_too() -> None:
    with pytest.raises(ValueError, match="time order"):
        classify_seed_heuristic([(2.0, True), (1.0, True)])


# ------------------------------------------------------------------------------------------ evidence


def test_rates_use_the_given_window() -> None:
    calls = [(100.0 + i, i % 10 == 0) for i in range(200)]  # 20 failures in 200 calls
    r = classify(calls, window_start=0.0, window_end=1000.0)
    assert r.evidence.window_seconds == 1000.0
    assert r.evidence.failure_rate == pytest.approx(0.1)
    assert r.evidence.failures_per_second == pytest.approx(0.02)


def test_burstiness_of_regular_and_bursty_gaps() -> None:
    b, a = burstiness([10.0] * 50)
    assert b == pytest.approx(-1.0) and a == pytest.approx(-1.0)
    # All gaps but one zero: the most bursty finite sequence, A_n = 1 exactly.
    gaps = [0.0] * 19 + [100.0]
    b, a = burstiness(gaps)
    assert a == pytest.approx(1.0)
    assert b is not None and b < 1.0  # the raw B cannot reach 1 with finitely many events
    assert burstiness([1.0]) == (None, None)


def test_burstiness_of_poisson_gaps_is_near_zero() -> None:
    rng = random.Random(0)
    _, a = burstiness([rng.expovariate(1.0) for _ in range(5000)])
    assert a is not None and abs(a) < 0.05


# ----------------------------------------------------------------------------------- seed heuristic


def test_seed_heuristic_needs_five_failures() -> None:
    assert classify_seed_heuristic([(float(i), i < 4) for i in range(10)]).type is None
    assert classify_seed_heuristic([(float(i), i < 5) for i in range(10)]).type == "burst"


def test_seed_heuristic_escalating_when_second_half_has_more() -> None:
    calls = [(float(t), t in (10, 200, 500, 600, 700, 800, 900)) for t in range(1000)]
    assert classify_seed_heuristic(calls).type == "escalating"


# ---------------------------------------------------------------------------------------- properties

_sorted_calls = st.lists(
    st.tuples(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.booleans()), max_size=300
).map(sorted)


@settings(max_examples=200, deadline=None)
@given(_sorted_calls)
def test_classify_never_raises_on_sorted_finite_input(calls: list[Call]) -> None:
    r = classify(calls)
    assert r.type in (None, "burst", "steady", "intermittent", "escalating")
    assert 0.0 <= r.confidence <= 1.0
    assert r.evidence.failures == sum(1 for _, f in calls if f)
    if r.evidence.failures < MIN_FAILURES:
        assert r.type is None


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0.0, max_value=1.0))
def test_confidence_is_a_probability_on_random_bernoulli_streams(seed: int, p: float) -> None:
    rng = random.Random(seed)
    calls = [(i * 0.5, rng.random() < p) for i in range(400)]
    r = classify(calls)
    assert 0.0 <= r.confidence <= 1.0
    assert (r.type is None) == (r.confidence == 0.0) or r.type is not None
