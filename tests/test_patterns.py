"""Behaviour of circuitry.analysis.patterns on clear generated streams (fixed seeds).

The ``test_regression_*`` tests pin the failure modes of issue 9; each failed on the engine before it
(commit 9d341c5), where it could run at all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitry.analysis.patterns import (
    MIN_FAILURES,
    PATTERN_TYPES,
    PatternResult,
    burstiness,
    classify,
    classify_seed_heuristic,
    classify_series,
    confidence,
)
from circuitry.analysis.series import Series, bucketize
from circuitry.exceptions import ConfigurationError

Call = tuple[float, bool]


def poisson_times(rng: random.Random, rate: Callable[[float], float], end: float, peak: float) -> list[float]:
    """Poisson arrivals on [0, end) with intensity ``rate(t) <= peak``, by thinning."""
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return out
        if rng.random() * peak <= rate(t):
            out.append(t)


def bernoulli(seed: int, prob: Callable[[float], float], rate: float = 20.0, end: float = 900.0,
              ramp: float = 1.0) -> list[Call]:
    """Calls at ``rate`` (rising linearly to ``rate * ramp``), each failing with ``prob(t)``."""
    rng = random.Random(seed)
    peak = rate * max(1.0, ramp)
    times = poisson_times(rng, lambda t: rate * (1.0 + (ramp - 1.0) * t / end), end, peak)
    return [(t, rng.random() < prob(t)) for t in times]


def outages(seed: int, spans: list[tuple[float, float]], p_bg: float = 0.002, rate: float = 10.0,
            end: float = 900.0) -> list[Call]:
    return bernoulli(seed, lambda t: 0.9 if any(a <= t < b for a, b in spans) else p_bg, rate, end)


def attach(times: list[float], events: list[float]) -> list[Call]:
    """The first call at or after each event fails."""
    failed = [False] * len(times)
    j = 0
    for e in sorted(events):
        while j < len(times) and (times[j] < e or failed[j]):
            j += 1
        if j < len(times):
            failed[j] = True
    return list(zip(times, failed, strict=True))


def failures(calls: list[Call]) -> int:
    return sum(1 for _, f in calls if f)


# ----------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_steady_failures_are_classified_steady(seed: int) -> None:
    r = classify(bernoulli(seed, lambda _t: 0.02), window_start=0.0, window_end=900.0)
    assert r.type == "steady"
    assert r.confidence > 0.6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_high_rate_steady_is_not_burst_although_the_seed_rule_says_burst(seed: int) -> None:
    # 30 failures a minute: most gaps are under 5 s, which is all the original rule looks at.
    calls = bernoulli(seed, lambda _t: 0.05, rate=10.0)
    assert classify(calls).type == "steady"
    assert classify_seed_heuristic(calls).type == "burst"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rare_independent_failures_are_intermittent(seed: int) -> None:
    calls = bernoulli(seed, lambda _t: 1 / 300, rate=1.0, end=6 * 3600.0)
    assert failures(calls) >= MIN_FAILURES
    r = classify(calls, window_start=0.0, window_end=6 * 3600.0)
    assert r.type == "intermittent"
    assert r.evidence.failures_per_second < 1 / 60


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_outages_on_a_quiet_background_are_bursts(seed: int) -> None:
    r = classify(outages(seed, [(100.0, 115.0), (400.0, 420.0), (700.0, 710.0)]), window_start=0.0,
                 window_end=900.0)
    assert r.type == "burst"
    assert r.confidence > 0.9
    assert r.evidence.dispersion_p_value is not None and r.evidence.dispersion_p_value < 1e-6
    assert r.evidence.episodes == 3


@pytest.mark.parametrize("seed", range(4))
def test_rising_failure_probability_is_escalating(seed: int) -> None:
    calls = bernoulli(seed, lambda t: 0.005 * 20.0 ** (t / 1800.0), rate=5.0, end=1800.0)
    r = classify(calls, window_start=0.0, window_end=1800.0)
    assert r.type == "escalating"
    ev = r.evidence
    assert ev.trend_rate_ratio is not None and ev.trend_rate_ratio > 3.0
    assert ev.change_point_time is not None and 0.0 < ev.change_point_time < 1800.0
    assert ev.rate_after is not None and ev.rate_before is not None and ev.rate_after > ev.rate_before


@pytest.mark.parametrize("seed", range(6))
def test_traffic_ramp_at_constant_failure_probability_is_not_escalating(seed: int) -> None:
    calls = bernoulli(seed, lambda _t: 0.02, rate=2.0, ramp=8.0)
    fts = [t for t, f in calls if f]
    assert sum(1 for t in fts if t >= 450) > 1.5 * sum(1 for t in fts if t < 450)  # more failures per second...
    r = classify(calls, window_start=0.0, window_end=900.0)
    assert r.type == "steady"  # ... but not per call


@pytest.mark.parametrize("seed", range(6))
def test_a_single_burst_late_in_the_window_is_a_burst(seed: int) -> None:
    r = classify(outages(seed, [(600.0, 625.0)], p_bg=0.005), window_start=0.0, window_end=900.0)
    assert r.type == "burst"


def test_an_episode_that_ended_is_a_burst_not_an_escalation() -> None:
    # Calm, then a 5-minute stretch at 40 %, then calm again for 3 minutes.
    calls = bernoulli(4, lambda t: 0.4 if 300 <= t < 600 else 0.005, rate=2.0, end=780.0)
    assert classify(calls, window_start=0.0, window_end=780.0).type == "burst"


# ------------------------------------------------------------------------------ regression (issue 9)


@pytest.mark.parametrize("after", [0.5, 0.8])
@pytest.mark.parametrize("seed", range(3))
def test_regression_1_a_step_to_a_high_failure_rate_is_escalating_with_a_finite_trend(after: float,
                                                                                       seed: int) -> None:
    # The fitted mean once exceeded a bucket's calls, blowing the dispersion factor up to 1e9: a step
    # from 5 % to 80 % was "burst, confidence 1.00, z = 0.00".
    calls = bernoulli(seed, lambda t: 0.05 if t < 450 else after, rate=5.0)
    r = classify(calls, window_start=0.0, window_end=900.0)
    assert r.type == "escalating"
    assert r.evidence.trend_z is not None and 2.0 < r.evidence.trend_z < 1e3


def batched(seed: int, p: float, offset: float = 0.0) -> list[Call]:
    """About 100 calls every ~20 s, each batch within a second; failures independent at ``p``."""
    rng = random.Random(seed)
    calls = []
    t = offset
    while t < offset + 900.0:
        base = t
        calls.extend((base + rng.random() * 0.8, rng.random() < p) for _ in range(rng.randint(80, 120)))
        t += rng.uniform(15.0, 25.0)
    calls.sort()
    return calls


@pytest.mark.parametrize("seed", range(5))
def test_regression_2_batched_traffic_with_steady_failures_is_steady_from_stored_rows(seed: int) -> None:
    # The analyst spread each minute's successes evenly while failures kept their times, so failures
    # arriving with batched traffic looked clustered: "burst" 40/40. The store now keeps per-second
    # counts and the analysis reads exactly those rows.
    calls = batched(seed, 0.05)
    stored = bucketize(calls, start=0.0, end=900.0).rows()
    r = classify_series(Series.from_rows(stored, start=0.0, end=900.0))
    assert r.type == "steady"
    assert r == classify(calls, window_start=0.0, window_end=900.0)


@pytest.mark.parametrize("offset", [0.0, 29.0, 44.0])
def test_regression_2_the_label_does_not_depend_on_where_the_clock_minute_starts(offset: float) -> None:
    rng = random.Random(3)
    calls = [(offset + t, rng.random() < 0.2) for t in poisson_times(rng, lambda _t: 5.0, 900.0, 5.0)]
    assert classify(calls, window_start=offset, window_end=offset + 900.0).type == "steady"


@pytest.mark.parametrize("kind", ["cron", "poisson"])
@pytest.mark.parametrize("seed", range(5))
def test_regression_3_time_homogeneous_failures_under_falling_traffic_are_not_escalating(kind: str,
                                                                                         seed: int) -> None:
    # Traffic falls x10 over the window while failures keep their pace in time: more failures per call,
    # not per minute. This was "escalating" in 102 of 129 windows.
    rng = random.Random(seed)
    end = 1800.0
    times = poisson_times(rng, lambda t: 20.0 * 10.0 ** (-t / end), end, 20.0)
    if kind == "cron":
        events = [30.0 * i + rng.uniform(-2, 2) for i in range(1, 60)]
    else:
        events = poisson_times(rng, lambda _t: 1 / 30, end, 1 / 30)
    calls = attach(times, events)
    fts = [t for t, f in calls if f]
    first, last = fts[: len(fts) // 2], fts[len(fts) // 2 :]
    assert len(first) >= 20 and len(last) >= 20
    r = classify(calls, window_start=0.0, window_end=end)
    assert r.type in ("steady", "intermittent")


def high_traffic_clusters(seed: int, clusters: int = 30, size: int = 5, spread: float = 10.0,
                          end: float = 300.0) -> list[Call]:
    """2,000 calls a second; Neyman-Scott failure clusters (``size`` failures, spread ``spread`` s)."""
    rng = random.Random(seed)
    times = []
    for s in range(int(end)):
        times.extend(sorted(s + rng.random() for _ in range(2000)))
    events = []
    for _ in range(clusters):
        c = rng.uniform(0.0, end - 3 * spread)
        events.extend(c + abs(rng.gauss(0.0, spread)) for _ in range(size))
    return attach(times, events)


@pytest.mark.parametrize("seed", range(2))
def test_regression_4_clusters_at_2000_calls_per_second_are_bursts(seed: int) -> None:
    # Many small clusters among 600,000 calls: the pair excess is modest at the most significant
    # scale, which was the only one whose effect size was checked ("steady" 24/25).
    calls = high_traffic_clusters(seed)
    assert classify(calls, window_start=0.0, window_end=300.0).type == "burst"


def hawkes(rng: random.Random, mu: float, branching: float, tau: float, end: float) -> list[float]:
    """A Hawkes process by branching: immigrants at ``mu``, each with Poisson(branching) children."""
    out: list[float] = []
    queue = poisson_times(rng, lambda _t: mu, end, mu)
    while queue:
        t = queue.pop()
        out.append(t)
        n, acc = 0, rng.random()
        while acc > math.exp(-branching):
            n += 1
            acc *= rng.random()
        queue.extend(c for c in (t + rng.expovariate(1 / tau) for _ in range(n)) if c < end)
    return sorted(out)


def test_regression_4_hawkes_failures_with_a_slow_kernel_are_bursts() -> None:
    # Overlapping self-exciting clusters with a 20 s kernel: each bin holds several failures, so the
    # pair excess is small, though the counts vary ~4x more than chance. Was "steady" 6/6.
    labels = []
    for seed in range(6):
        rng = random.Random(seed)
        times = poisson_times(rng, lambda _t: 20.0, 1800.0, 20.0)
        calls = attach(times, hawkes(rng, mu=0.03, branching=0.7, tau=20.0, end=1800.0))
        assert failures(calls) >= 50
        labels.append(classify(calls, window_start=0.0, window_end=1800.0).type)
    assert labels.count("burst") >= 5, labels


@pytest.mark.parametrize("seed", range(6))
def test_regression_5_a_step_late_in_the_window_is_escalating(seed: int) -> None:
    # 2 % -> 30 % for the last tenth of the window: the step made the old engine's clustering test fire
    # and "strong clustering wins over a trend" ("burst" 5/6).
    calls = bernoulli(seed, lambda t: 0.02 if t < 810.0 else 0.3, rate=10.0)
    assert classify(calls, window_start=0.0, window_end=900.0).type == "escalating"


@pytest.mark.parametrize("mid", [450.0, 720.0])
def test_regression_5_failures_rising_from_0_to_60_percent_in_30_seconds_are_escalating(mid: float) -> None:
    # The deployment's escalation: nothing, then 60 % failures within about 30 s, lasting. Was "burst".
    labels = [
        classify(bernoulli(seed, lambda t: 0.002 + 0.6 / (1.0 + math.exp(-(t - mid) / 6.0))),
                 window_start=0.0, window_end=900.0).type
        for seed in range(6)
    ]
    assert labels.count("escalating") >= 5, labels


def test_regression_7_an_iterator_is_read_once_and_classified_like_a_list() -> None:
    calls = bernoulli(5, lambda _t: 0.05)
    assert classify(iter(calls)) == classify(calls)
    assert classify(c for c in calls) == classify(calls)


@pytest.mark.parametrize("flag", ["False", "True", 1, 0, None, 1.0])
def test_regression_7_a_failure_flag_must_be_a_bool(flag: object) -> None:
    calls: list[tuple[float, object]] = [(float(i), False) for i in range(20)]
    calls[7] = (7.0, flag)
    with pytest.raises(ConfigurationError, match="must be a bool"):
        classify(calls)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- abstention


def test_empty_input_abstains() -> None:
    r = classify([])
    assert r == PatternResult(None, 0.0, r.evidence)
    assert r.evidence.calls == 0 and r.evidence.failures == 0
    assert r.evidence.failure_rate == 0.0 and r.evidence.failures_per_second == 0.0


def test_too_few_failures_abstains() -> None:
    calls = [(float(i), i % 100 == 0) for i in range(900)]  # 9 failures
    assert failures(calls) == MIN_FAILURES - 1
    r = classify(calls)
    assert r.type is None and r.confidence == 0.0


def test_single_second_window_does_not_crash() -> None:
    r = classify([(5.0, True)] * 20)
    assert r.type in (None, *PATTERN_TYPES)
    assert 0.0 <= r.confidence <= 1.0


# ---------------------------------------------------------------------------------------- validation


def test_order_does_not_matter() -> None:
    calls = bernoulli(6, lambda _t: 0.05)
    shuffled = calls[:]
    random.Random(1).shuffle(shuffled)
    assert classify(shuffled) == classify(calls)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamps_are_refused(bad: float) -> None:
    for calls in ([(bad, True)], [(0.0, False), (bad, True)], [(0.0, False), (bad, True), (2.0, False)]):
        with pytest.raises(ConfigurationError, match="finite"):
            classify(calls)


def test_window_must_contain_the_calls() -> None:
    with pytest.raises(ValueError, match="outside the window"):
        classify([(1.0, False), (5.0, True)], window_start=2.0)
    with pytest.raises(ValueError, match="before start"):
        classify([], window_start=5.0, window_end=1.0)
    with pytest.raises(ValueError, match="finite"):
        classify([(1.0, True)], window_end=math.nan)


def test_seed_heuristic_validates_flags_too() -> None:
    with pytest.raises(ConfigurationError, match="must be a bool"):
        classify_seed_heuristic([(2.0, "yes"), (1.0, True)])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------ evidence


def test_rates_use_the_given_window() -> None:
    calls = [(100.0 + i, i % 10 == 0) for i in range(200)]  # 20 failures in 200 calls
    r = classify(calls, window_start=0.0, window_end=1000.0)
    assert r.evidence.window_seconds == 1000.0
    assert r.evidence.failure_rate == pytest.approx(0.1)
    assert r.evidence.failures_per_second == pytest.approx(0.02)


def test_an_outage_of_32_seconds_is_an_episode_of_about_32_seconds() -> None:
    calls = outages(2, [(400.0, 432.0)], p_bg=0.0005)
    r = classify(calls, window_start=0.0, window_end=900.0)
    assert r.evidence.episodes == 1
    assert r.evidence.episode_max_seconds is not None and 30.0 <= r.evidence.episode_max_seconds <= 34.0


def test_burstiness_of_regular_and_bursty_gaps() -> None:
    b, a = burstiness([10.0] * 50)
    assert b == pytest.approx(-1.0) and a == pytest.approx(-1.0)
    b, a = burstiness([0.0] * 19 + [100.0])
    assert a == pytest.approx(1.0)
    assert b is not None and b < 1.0
    assert burstiness([1.0]) == (None, None)


def test_burstiness_of_poisson_gaps_is_near_zero() -> None:
    rng = random.Random(0)
    _, a = burstiness([rng.expovariate(1.0) for _ in range(5000)])
    assert a is not None and abs(a) < 0.05


def test_confidence_follows_the_calibration_given() -> None:
    calib = dict.fromkeys(PATTERN_TYPES, (0.0, 1.0, 0.0))
    assert confidence("burst", 0.0, 50, calib) == pytest.approx(0.5)
    assert confidence("burst", 2.0, 50, calib) == pytest.approx(1 / (1 + math.exp(-2.0)))
    calls = outages(1, [(100.0, 115.0), (400.0, 420.0)])
    r = classify(calls, calibration=calib)
    assert r.confidence == pytest.approx(confidence("burst", r.evidence.score or 0.0, r.evidence.failures, calib))


# ----------------------------------------------------------------------------------- seed heuristic


def test_seed_heuristic_needs_five_failures() -> None:
    assert classify_seed_heuristic([(float(i), i < 4) for i in range(10)]).type is None
    assert classify_seed_heuristic([(float(i), i < 5) for i in range(10)]).type == "burst"


def test_seed_heuristic_escalating_when_second_half_has_more() -> None:
    calls = [(float(t), t in (10, 200, 500, 600, 700, 800, 900)) for t in range(1000)]
    assert classify_seed_heuristic(calls).type == "escalating"


# ---------------------------------------------------------------------------------------- properties

_calls = st.lists(st.tuples(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.booleans()), max_size=300)


@settings(max_examples=200, deadline=None)
@given(_calls)
def test_classify_never_raises_on_finite_input(calls: list[Call]) -> None:
    r = classify(calls)
    assert r.type in (None, *PATTERN_TYPES)
    assert 0.0 <= r.confidence <= 1.0
    assert r.evidence.failures == sum(1 for _, f in calls if f)
    if r.evidence.failures < MIN_FAILURES:
        assert r.type is None


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0.0, max_value=1.0))
def test_confidence_is_a_probability_on_random_bernoulli_streams(seed: int, p: float) -> None:
    rng = random.Random(seed)
    r = classify([(i * 0.5, rng.random() < p) for i in range(400)])
    assert 0.0 <= r.confidence <= 1.0
    assert (r.type is None) == (r.confidence == 0.0) or r.type is not None


def test_a_window_too_short_to_hold_time_structure_abstains() -> None:
    """Every call of a few seconds looks alike: it said "steady, 1.00" of 20 calls in one second and of a
    window of no length. Under a minute, no label."""
    now = 1_700_000_000.0
    assert classify([(now + 0.001 * i, i % 2 == 0) for i in range(40)]).type is None
    assert classify([(now, True)] * 20, window_start=now, window_end=now).type is None
    assert classify([(now + i, True) for i in range(30)]).type is None  # 30 s
    assert classify([(now + i, True) for i in range(100)]).type == "steady"  # every call failing, 100 s


def test_timestamps_of_other_number_types_and_calls_that_are_not_iterable() -> None:
    from decimal import Decimal
    from fractions import Fraction

    calls = [(1_700_000_000.0 + i, i % 3 == 0) for i in range(600)]
    plain = classify(calls)
    assert classify([(Decimal(repr(t)), f) for t, f in calls]) == plain
    assert classify([(Fraction(t), f) for t, f in calls]) == plain
    for bad in (None, 5):
        with pytest.raises(ConfigurationError, match="calls must be an iterable"):
            classify(bad)  # type: ignore[arg-type]
