"""circuitry.analysis.adjust: the automatic-adjustment decision (pure) and the measured cost."""

from __future__ import annotations

from dataclasses import replace

import pytest

from circuitry.analysis.adjust import Adjustment, AdjustPolicy, MeasuredCost, decide, measure_cost, refused_stretches
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.recommend import Recommendation
from circuitry.analysis.replay import Cost, Settings, Transition
from circuitry.exceptions import ConfigurationError

CURRENT = Settings(5, 60.0)


def rec(threshold: int = 5, timeout: float = 10.0, *, backoff: float | None = None, failures: int = 50,
        confidence: float = 0.95, current: float = 1000.0, expected: float = 400.0, has: bool = True,
        pattern: str = "burst") -> Recommendation:
    return Recommendation(
        recommended_threshold=threshold if has else 5,
        recommended_timeout=timeout if has else 60.0,
        backoff_multiplier=backoff,
        confidence=confidence,
        primary_pattern=pattern,  # type: ignore[arg-type]
        rationale="test",
        has_recommendations=has,
        current_threshold=5,
        current_timeout=60.0,
        failures=failures,
        max_timeout=None if backoff is None else timeout * 10,
        current_cost=Cost(3600.0, 36000.0, 100.0, current - 100.0, 10.0),
        expected_cost=Cost(3600.0, 36000.0, 100.0, expected - 100.0, 10.0),
        replayed_seconds=900.0,
    )


def test_a_confirmed_well_supported_recommendation_moves_one_bounded_step() -> None:
    r = rec(threshold=2, timeout=5.0)
    d = decide(CURRENT, r, now=10_000.0, recent=[r])
    assert d.action == "adjust"
    # At most a factor 2 per change: 5 -> 3 (not 2), 60 s -> 30 s (not 5 s).
    assert (d.settings.threshold, d.settings.timeout) == (3, 30.0)
    assert "a step towards 2/5 s" in d.reason
    assert d.evidence["improvement"] == pytest.approx(0.6)
    assert d.evidence["recommended"] == {"threshold": 2, "timeout": 5.0, "backoff": 1.0}


def test_nothing_recommended_holds() -> None:
    d = decide(CURRENT, rec(has=False), now=1.0)
    assert d.action == "hold" and d.settings == CURRENT and "nothing recommended" in d.reason


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"failures": 5}, "too little evidence"), ({"confidence": 0.5}, "confidence"),
     ({"expected": 900.0}, "replayed saving")],
)
def test_minimum_evidence_holds(kwargs: dict[str, float], words: str) -> None:
    r = rec(**kwargs)  # type: ignore[arg-type]
    d = decide(CURRENT, r, now=1.0, recent=[r])
    assert d.action == "hold" and words in d.reason


def test_one_analysis_alone_is_not_enough_nor_two_that_disagree() -> None:
    r = rec(threshold=3, timeout=30.0)
    assert decide(CURRENT, r, now=1.0).action == "hold"
    assert decide(CURRENT, r, now=1.0, recent=[rec(threshold=10, timeout=60.0)]).action == "hold"
    assert decide(CURRENT, r, now=1.0, recent=[rec(has=False)]).action == "hold"
    assert decide(CURRENT, r, now=1.0, recent=[r]).action == "adjust"
    assert decide(CURRENT, r, now=1.0, recent=[r], policy=AdjustPolicy(confirmations=1)).action == "adjust"


def test_cooldown_and_a_longer_wait_before_reversing() -> None:
    r = rec(threshold=3, timeout=30.0)
    last = Adjustment(1000.0, "adjust", Settings(5, 120.0), CURRENT)  # it shortened the timeout before
    p = AdjustPolicy(cooldown=600.0)
    assert decide(CURRENT, r, now=1500.0, history=[last], recent=[r], policy=p).action == "hold"
    assert decide(CURRENT, r, now=1700.0, history=[last], recent=[r], policy=p).action == "adjust"
    back = rec(threshold=8, timeout=120.0)  # undoes the direction of the last change: waits twice as long
    d = decide(CURRENT, back, now=1700.0, history=[last], recent=[back], policy=p)
    assert d.action == "hold" and "wait 1200" in d.reason
    assert decide(CURRENT, back, now=2300.0, history=[last], recent=[back], policy=p).action == "adjust"


def test_changes_inside_the_dead_band_are_not_made() -> None:
    r = rec(threshold=4, timeout=55.0)
    d = decide(CURRENT, r, now=1.0, recent=[r])
    assert d.action == "hold" and "dead band" in d.reason


def test_bounds_are_kept() -> None:
    r = rec(threshold=1, timeout=5.0)
    p = AdjustPolicy(bounds=(3, 10, 30.0, 300.0), max_step=10.0)
    d = decide(CURRENT, r, now=1.0, recent=[r], policy=p)
    assert (d.settings.threshold, d.settings.timeout) == (3, 30.0)


def test_backoff_comes_with_a_cap() -> None:
    r = rec(threshold=5, timeout=30.0, backoff=2.0)
    d = decide(CURRENT, r, now=1.0, recent=[r])
    assert d.action == "adjust" and d.settings.backoff == 2.0
    assert d.settings.max_timeout == 300.0


def test_a_change_that_made_things_worse_is_rolled_back() -> None:
    before = MeasuredCost(1800.0, 10_000, 100.0)
    worse = MeasuredCost(1800.0, 10_000, 150.0)
    change = Adjustment(1000.0, "adjust", Settings(5, 60.0), Settings(3, 30.0), before, worse)
    current = Settings(3, 30.0)
    d = decide(current, rec(has=False), now=1000.0 + 1800.0, history=[change])
    assert d.action == "rollback" and d.settings == Settings(5, 60.0)
    assert d.evidence["cost_per_call_after"] == pytest.approx(0.015)
    # Not before it has been in force for the evaluation period, nor on too few calls, nor within the margin.
    assert decide(current, rec(has=False), now=2000.0, history=[change]).action == "hold"
    thin = Adjustment(1000.0, "adjust", change.before, change.after, MeasuredCost(1800.0, 100, 1.0),
                      MeasuredCost(1800.0, 100, 2.0))
    assert decide(current, rec(has=False), now=3000.0, history=[thin]).action == "hold"
    close = Adjustment(1000.0, "adjust", change.before, change.after, before, MeasuredCost(1800.0, 10_000, 105.0))
    assert decide(current, rec(has=False), now=3000.0, history=[close]).action == "hold"


def test_a_change_is_not_rolled_back_for_what_the_service_did_after_it() -> None:
    """The service got worse after a change (an escalation began): the measured cost per call rose whatever
    the settings, and the change was rolled back (and blocked for five hours) -- in a review's run the
    same stretches cost x2.1 more with no change at all. Replayed over the stretch after it, the settings
    before it would have cost more: the change stays. Where the replay agrees it was worse, it goes."""
    before = MeasuredCost(1800.0, 10_000, 100.0)
    worse = MeasuredCost(1800.0, 10_000, 150.0)
    current = Settings(3, 30.0)
    escalation = Adjustment(1000.0, "adjust", Settings(5, 60.0), current, before, worse, replayed=(0.020, 0.015))
    assert decide(current, rec(has=False), now=2800.0, history=[escalation]).action == "hold"
    bad = replace(escalation, replayed=(0.010, 0.015))
    d = decide(current, rec(has=False), now=2800.0, history=[bad])
    assert d.action == "rollback" and "the settings before it cost 0.0100 per call" in d.reason
    assert d.evidence["replayed"] == [0.010, 0.015]


def test_a_change_after_a_stretch_that_cost_nothing_is_judged_against_a_floor() -> None:
    # Nothing went wrong in the 30 minutes before the change: any cost at all after it was "more than 10 %
    # worse" than zero, so one minute of an outage the breaker opened on (20 calls let through of 9000)
    # undid it. Below one call in a hundred a change stays; above it, it is rolled back as before.
    healthy = MeasuredCost(1800.0, 9000, 0.0)
    one_bad_minute = Adjustment(1000.0, "adjust", CURRENT, Settings(3, 30.0), healthy, MeasuredCost(1800.0, 9000, 20.0))
    d = decide(Settings(3, 30.0), rec(has=False), now=1000.0 + 1800.0, history=[one_bad_minute])
    assert d.action == "hold"
    worse = replace(one_bad_minute, cost_after=MeasuredCost(1800.0, 9000, 300.0))  # a whole minute let through
    d = decide(Settings(3, 30.0), rec(has=False), now=1000.0 + 1800.0, history=[worse])
    assert d.action == "rollback" and "above 0.01" in d.reason
    strict = AdjustPolicy(rollback_floor=0.0)  # the floor is a tunable: 0 judges on the margin alone
    assert decide(Settings(3, 30.0), rec(has=False), now=2800.0, history=[one_bad_minute],
                  policy=strict).action == "rollback"


def test_settings_outside_the_bounds_move_towards_them_a_bounded_step_at_a_time() -> None:
    # Configured at 50 failures and an hour open, far outside the bounds (1-20, 5-600 s): one step moved
    # them to 20 / 600 s at once (2.5x and 6x); now each change is at most a factor two, towards the target.
    r = rec(threshold=10, timeout=300.0)
    current = Settings(50, 3600.0)
    steps = []
    for k in range(4):
        d = decide(current, r, now=10_000.0 * (k + 1), recent=[r])
        assert d.action == "adjust"
        assert current.threshold / 2 <= d.settings.threshold <= current.threshold
        assert current.timeout / 2 <= d.settings.timeout <= current.timeout
        steps.append((d.settings.threshold, d.settings.timeout))
        current = d.settings
    assert steps == [(25, 1800.0), (13, 900.0), (10, 450.0), (10, 300.0)]
    # With backoff the cap is never below the open period, even while it is above the bounds.
    d = decide(Settings(5, 3600.0), rec(threshold=5, timeout=300.0, backoff=2.0), now=1.0,
               recent=[rec(threshold=5, timeout=300.0, backoff=2.0)])
    assert d.settings.timeout == 1800.0 and d.settings.max_timeout == 1800.0


def test_a_rolled_back_change_is_not_retried_soon() -> None:
    change = Adjustment(1000.0, "adjust", Settings(5, 60.0), Settings(3, 30.0))
    rollback = Adjustment(3000.0, "rollback", Settings(3, 30.0), Settings(5, 60.0))
    r = rec(threshold=3, timeout=30.0)
    p = AdjustPolicy(cooldown=600.0)
    d = decide(CURRENT, r, now=3000.0 + 1200.0, history=[change, rollback], recent=[r], policy=p)
    assert d.action == "hold" and "rolled back recently" in d.reason
    assert decide(CURRENT, r, now=3000.0 + 6001.0, history=[change, rollback], recent=[r], policy=p).action == "adjust"


def test_part_of_a_rolled_back_change_is_not_retried_soon_either() -> None:
    """A rollback undid 5/30 s -> 4/15 s; thirty minutes later the open period alone went 30 -> 15 s again
    (the check compared both settings' directions at once, so a partial repeat passed)."""
    change = Adjustment(1000.0, "adjust", Settings(5, 30.0), Settings(4, 15.0))
    rollback = Adjustment(3000.0, "rollback", Settings(4, 15.0), Settings(5, 30.0))
    r = rec(threshold=5, timeout=15.0)
    p = AdjustPolicy(cooldown=600.0)
    d = decide(Settings(5, 30.0), r, now=3000.0 + 1800.0, history=[change, rollback], recent=[r], policy=p)
    assert d.action == "hold" and "rolled back recently" in d.reason
    other = rec(threshold=5, timeout=60.0)  # the other way: not what was undone
    assert decide(Settings(5, 30.0), other, now=3000.0 + 1800.0, history=[change, rollback], recent=[other],
                  policy=p).action == "adjust"


def test_a_rolled_back_backoff_is_not_retried_soon() -> None:
    """A change that added backoff x2 was rolled back, and applied again half an hour later: only the
    threshold's and the open period's directions were compared."""
    change = Adjustment(1000.0, "adjust", Settings(5, 60.0), Settings(5, 60.0, 2.0, 600.0))
    rollback = Adjustment(3000.0, "rollback", Settings(5, 60.0, 2.0, 600.0), Settings(5, 60.0))
    r = rec(threshold=5, timeout=60.0, backoff=2.0)
    d = decide(Settings(5, 60.0), r, now=3000.0 + 1800.0, history=[change, rollback], recent=[r],
               policy=AdjustPolicy(cooldown=600.0))
    assert d.action == "hold" and "rolled back recently" in d.reason


def test_probes_locked_in_phase_get_jitter_first_and_alone() -> None:
    locked = replace(rec(threshold=3, timeout=30.0), locked_probes=4)
    d = decide(CURRENT, locked, now=10_000.0, recent=[locked])
    assert d.action == "adjust" and d.settings == Settings(5, 60.0, jitter=0.2)  # nothing else moves
    assert "jitter 0 -> 0.2" in d.reason and d.evidence == {"locked_probes": 4, "jitter": 0.2}
    # One analysis is not enough: the usual advice goes its usual way meanwhile.
    unconfirmed = decide(CURRENT, locked, now=10_000.0, recent=[rec(threshold=3, timeout=30.0)])
    assert unconfirmed.action == "adjust" and unconfirmed.settings.jitter == 0.0
    # No advice beside the lock (the window cannot tell a lock from an outage): jitter all the same.
    quiet = replace(rec(has=False), locked_probes=3)
    assert decide(CURRENT, quiet, now=10_000.0, recent=[quiet]).settings.jitter == 0.2
    # Within the cooldown of a change: wait. Already jittered, or the policy says 0: the usual rules.
    earlier = Adjustment(9_000.0, "adjust", Settings(6, 60.0), CURRENT)
    assert decide(CURRENT, locked, now=10_000.0, history=[earlier], recent=[locked]).action == "hold"
    jittered = Settings(5, 60.0, jitter=0.1)
    d = decide(jittered, locked, now=10_000.0, recent=[locked])
    assert d.action == "adjust" and (d.settings.threshold, d.settings.timeout, d.settings.jitter) == (3, 30.0, 0.1)
    off = decide(CURRENT, quiet, now=10_000.0, recent=[quiet], policy=AdjustPolicy(jitter=0.0))
    assert off.action == "hold"


def test_a_change_of_jitter_alone_is_not_rolled_back() -> None:
    # A breaker that never saw the service healthy, against one that does: the coarse measure calls the
    # healthy calls the second refuses a loss. Jitter keeps the mean open period, so it is not judged.
    before, worse = MeasuredCost(1800.0, 10_000, 100.0), MeasuredCost(1800.0, 10_000, 900.0)
    change = Adjustment(1000.0, "adjust", CURRENT, Settings(5, 60.0, jitter=0.2), before, worse)
    d = decide(Settings(5, 60.0, jitter=0.2), rec(has=False), now=1000.0 + 1800.0, history=[change])
    assert d.action == "hold"
    other = replace(change, after=Settings(3, 60.0, jitter=0.2))
    assert decide(other.after, rec(has=False), now=2800.0, history=[other]).action == "rollback"


def test_measure_cost_counts_calls_into_failing_minutes_and_refusals_in_healthy_ones() -> None:
    minutes = [
        MinuteRollup(0, 600, 594, 6),  # healthy, nothing refused: no cost
        MinuteRollup(1, 20, 2, 18, rejections=580),  # failing: the 20 calls let through count
        MinuteRollup(2, 300, 297, 3, rejections=300),  # healthy: the 300 refused count
        MinuteRollup(3, 0, 0, 0, rejections=600),  # refused throughout, no call decided: failing
    ]
    m = measure_cost(minutes)
    assert (m.seconds, m.calls, m.cost) == (240.0, 2400, 320.0)
    assert m.per_call == pytest.approx(320 / 2400)
    assert measure_cost([]).per_call == 0.0


def test_measure_cost_prices_refusals_at_a_healthy_share_for_censored_advice() -> None:
    minutes = [
        MinuteRollup(0, 600, 594, 6),  # decided throughout: its 6 failures
        MinuteRollup(1, 20, 2, 18, rejections=580),  # refused more than decided: 18 + 0.4 * 580
        MinuteRollup(2, 300, 270, 30, rejections=100),  # decided more: 30 + (270 / 300) * 100
        MinuteRollup(3, 0, 0, 0, rejections=600),  # refused throughout: 0.4 * 600
    ]
    m = measure_cost(minutes, refused_healthy=0.4)
    assert m.calls == 2200 and m.cost == pytest.approx(6 + 18 + 232 + 30 + 90 + 240)
    # The coarse measure takes minutes 1 and 3 for an outage: refusing there is free.
    assert measure_cost(minutes).cost == pytest.approx(20 + 100)
    for bad in (-0.1, 1.5, True, float("nan")):
        with pytest.raises(ConfigurationError, match="refused_healthy"):
            measure_cost(minutes, refused_healthy=bad)  # type: ignore[arg-type]


def test_censored_advice_rests_on_the_probes_not_on_a_label() -> None:
    base = rec(threshold=5, timeout=5.0, failures=3, confidence=0.0, pattern=None)  # type: ignore[arg-type]
    r = replace(base, censored=True, probes=12, refused_healthy=0.45)
    d = decide(CURRENT, r, now=10_000.0, recent=[r])
    assert d.action == "adjust" and (d.settings.threshold, d.settings.timeout) == (5, 30.0)
    assert "censored window (12 probes, 45% found the service healthy)" in d.reason
    assert d.evidence["refused_healthy"] == 0.45 and d.evidence["probes"] == 12
    few = replace(r, probes=9)
    d = decide(CURRENT, few, now=10_000.0, recent=[few])
    assert d.action == "hold" and "censored window with 9 probes (need 10)" in d.reason
    # Without the censored reading the same advice has no label behind it: held as before.
    d = decide(CURRENT, base, now=10_000.0, recent=[base])
    assert d.action == "hold" and "too little evidence: 3 failures" in d.reason


@pytest.mark.parametrize(
    "kwargs",
    [{"min_failures": -1}, {"confirmations": 0}, {"min_confidence": 2.0}, {"cooldown": -1.0}, {"max_step": 1.0},
     {"bounds": (5, 3, 10.0, 60.0)}, {"rollback_margin": 1.5}, {"min_probes": -1}, {"jitter": 1.5},
     {"rollback_floor": -0.1},
     # a review gave these and they were taken: an infinite open period, a step of a billion, True for 1
     {"bounds": (1, 20, 5.0, float("inf"))}, {"max_step": 1e9}, {"bounds": (True, 20, 5.0, 600.0)},
     {"bounds": (1.5, 20, 5.0, 600.0)}, {"bounds": (1, 20)}],
)
def test_policy_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        AdjustPolicy(**kwargs)  # type: ignore[arg-type]


def _periodic_outage(threshold: int, open_for: float, cycles: int = 6) -> tuple[list[MinuteRollup], list[Transition]]:
    """A service at 5 calls/s that fails for the first 30 s of every 5 minutes, each outage starting as a
    minute starts, behind a breaker of ``threshold`` failures and a fixed ``open_for`` open period: the
    trip at ``threshold / 5`` s, one probe as the period ends, which succeeds (the outage is over)."""
    minutes: list[MinuteRollup] = []
    transitions: list[Transition] = []
    for c in range(cycles):
        t0 = c * 300.0
        trip = t0 + threshold / 5
        until = trip + open_for
        transitions += [Transition(trip, "closed", "open"), Transition(until, "open", "half_open"),
                        Transition(until, "half_open", "closed")]
        for k in range(5):
            lo, hi = t0 + 60 * k, t0 + 60 * (k + 1)
            refused = round(5 * max(0.0, min(hi, until) - max(lo, trip)))
            failures = threshold if k == 0 else 0
            calls = 300 - refused - (round(5 * (trip - lo)) - threshold if k == 0 else 0)
            minutes.append(MinuteRollup(int(lo // 60), calls, calls - failures, failures, refused))
    return minutes, transitions


def test_the_measured_cost_prices_refused_calls_by_the_probe_that_ended_them() -> None:
    """A 30 s outage every 5 minutes: a 30 s open period refuses far fewer healthy calls than a 60 s one.
    Per minute alone the verdict was the other way round: the minute holding the trip and its whole 60 s
    open period counted as failing, so its refused calls looked free, while the 30 s period's minute was
    healthy and its refusals all counted -- and ``auto_apply`` rolled the good change back."""
    long_m, long_t = _periodic_outage(5, 60.0)
    short_m, short_t = _periodic_outage(3, 30.0)
    long_cost, short_cost = measure_cost(long_m, transitions=long_t), measure_cost(short_m, transitions=short_t)
    # each 60 s period refused 300 calls, half of them guessed healthy (the probe succeeded: the service came
    # back somewhere in it); each 30 s period 150, half of that; plus the 5 failures of the trip's minute
    assert long_cost.cost == pytest.approx(6 * (5 + 150.0))
    assert short_cost.cost == pytest.approx(6 * 75.0)
    coarse_long, coarse_short = measure_cost(long_m), measure_cost(short_m)
    assert coarse_short.per_call > coarse_long.per_call  # the coarse measure's inverted verdict
    change = Adjustment(1800.0, "adjust", Settings(5, 60.0), Settings(3, 30.0), long_cost, short_cost)
    assert decide(Settings(3, 30.0), rec(has=False), now=3600.0, history=[change]).action == "hold"
    coarse = replace(change, cost_before=coarse_long, cost_after=coarse_short)
    assert decide(Settings(3, 30.0), rec(has=False), now=3600.0, history=[coarse]).action == "rollback"


def test_refused_calls_of_a_stretch_whose_probe_failed_were_not_healthy() -> None:
    trip = [Transition(0.0, "closed", "open"), Transition(60.0, "open", "half_open"),
            Transition(60.0, "half_open", "open"), Transition(120.0, "open", "half_open"),
            Transition(120.0, "half_open", "closed")]
    assert refused_stretches(trip, 0.0, 180.0) == [(0.0, 60.0, 0.0), (60.0, 120.0, 0.5)]
    minutes = [MinuteRollup(0, 5, 0, 5, 295), MinuteRollup(1, 1, 0, 1, 299), MinuteRollup(2, 300, 300, 0, 0)]
    assert measure_cost(minutes, transitions=trip).cost == pytest.approx(5 + 1 + 0.5 * 299)
    forced = [Transition(0.0, "closed", "forced_open"), Transition(120.0, "forced_open", "closed")]
    assert measure_cost(minutes, transitions=forced).cost == pytest.approx(5 + 1)  # the operator's, not the settings'
    assert refused_stretches([Transition(100.0, "closed", "open")], 0.0, 180.0) == [(100.0, 180.0, 0.5)]


def test_an_open_period_the_operator_forced_open_costs_nothing_from_then_on() -> None:
    took_over = [Transition(0.0, "closed", "open"), Transition(10.0, "open", "forced_open"),
                 Transition(170.0, "forced_open", "closed")]
    assert refused_stretches(took_over, 0.0, 180.0) == [(0.0, 10.0, 0.5), (10.0, 170.0, 0.0)]
