"""The state machine, driven directly: admit() / record_*() with a fake clock."""

from __future__ import annotations

import random
from typing import Any

import pytest

from circuitry import CircuitBreaker, CircuitOpenError, CircuitState, EventKind, Permit
from circuitry.events import Dispatcher
from circuitry.testing import CapturedEvents, FakeClock

from .conftest import Boom


def make(clock: FakeClock, **policy: Any) -> tuple[CircuitBreaker, CapturedEvents]:
    events = CapturedEvents()
    b = CircuitBreaker("svc", clock=clock, dispatcher=Dispatcher([events]), rng=random.Random(1), **policy)
    return b, events


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.record_failure(b.admit(), Boom("x"))


def succeed(b: CircuitBreaker, n: int = 1, duration: float | None = None) -> None:
    for _ in range(n):
        b.record_success(b.admit(), duration)


def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=3)
    fail(b, 2)
    assert b.state is CircuitState.CLOSED
    fail(b)
    assert b.state is CircuitState.OPEN
    assert events.transitions() == [("closed", "open")]
    assert events.of(EventKind.TRANSITION)[0].reason == "failure_threshold"


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=3)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert b.state is CircuitState.CLOSED
    assert b.stats().consecutive_failures == 2


def test_ignored_neither_counts_nor_resets(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=3)
    fail(b, 2)
    b.record_ignored(b.admit())
    assert b.stats().consecutive_failures == 2
    fail(b)
    assert b.state is CircuitState.OPEN


def test_open_rejects_with_a_snapshot_then_half_opens_after_timeout(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=30)
    fail(b)
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        b.admit()
    err = info.value
    assert (err.name, err.state) == ("svc", "open")
    assert err.retry_after == pytest.approx(20)
    assert err.opened_at == pytest.approx(clock.time() - 10)
    assert "svc" in str(err) and "open" in str(err)
    clock.advance(20)
    p = b.admit()
    assert p.probe is not None
    assert b.state is CircuitState.HALF_OPEN


def test_rejections_are_fresh_instances(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1)
    fail(b)
    errors = []
    for _ in range(3):
        try:
            b.admit()
        except CircuitOpenError as e:
            errors.append(e)
    assert len({id(e) for e in errors}) == 3
    assert b.stats().rejected == 3


def test_half_open_limits_probes_and_closes_on_success(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=5, half_open_max_calls=2)
    fail(b)
    clock.advance(5)
    p1, p2 = b.admit(), b.admit()
    with pytest.raises(CircuitOpenError) as info:
        b.admit()
    assert info.value.state == "half_open"
    b.record_success(p1)
    assert b.state is CircuitState.CLOSED
    b.record_success(p2)  # stale: the circuit moved on
    assert events.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_success_threshold_needs_several_probe_successes(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5, success_threshold=3)
    fail(b)
    clock.advance(5)
    for i in range(3):
        assert b.state is CircuitState.HALF_OPEN, i
        succeed(b)
    assert b.state is CircuitState.CLOSED


def test_probe_failure_reopens(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=5)
    fail(b)
    clock.advance(5)
    fail(b)
    assert b.state is CircuitState.OPEN
    assert events.of(EventKind.TRANSITION)[-1].reason == "probe_failed"


def test_probe_lease_expires_when_a_probe_never_reports(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5, probe_timeout=2)
    fail(b)
    clock.advance(5)
    lost = b.admit()
    with pytest.raises(CircuitOpenError):
        b.admit()
    clock.advance(2)
    p = b.admit()  # the lost probe's permit was reclaimed
    b.record_success(p)
    assert b.state is CircuitState.CLOSED
    b.record_failure(lost, Boom())  # the lost probe, reporting after another probe decided: stale
    assert b.state is CircuitState.CLOSED


def test_a_probe_that_outlives_its_permit_still_decides(clock: FakeClock) -> None:
    """A slow service answers after probe_timeout: its answer closes the circuit (it was thrown away, and
    a service slower than the timeout kept its circuit half-open for ever, a new probe every period)."""
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5, probe_timeout=2)
    fail(b)
    clock.advance(5)
    slow = b.admit()
    clock.advance(3)
    b.record_success(slow)
    assert b.state is CircuitState.CLOSED
    fail(b)
    clock.advance(5)
    first = b.admit()
    clock.advance(3)
    second = b.admit()  # the first's permit ran out: another probe
    b.record_failure(first, Boom())  # the first reports late, and fails: open again
    assert b.state is CircuitState.OPEN
    b.record_success(second)  # stale: the circuit moved on
    assert b.state is CircuitState.OPEN


def test_cancelled_and_ignored_probes_release_their_permit(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5)
    fail(b)
    clock.advance(5)
    b.release(b.admit())
    b.record_ignored(b.admit())
    p = b.admit()
    assert b.stats().probes_in_flight == 1
    b.record_success(p)
    s = b.stats()
    assert (s.cancelled, s.ignored, s.state) == (1, 1, CircuitState.CLOSED)


def test_stale_completion_from_an_older_generation_changes_nothing(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=2, recovery_timeout=5)
    old = b.admit()
    fail(b, 2)
    clock.advance(5)
    succeed(b)  # probe closes the circuit: a new generation
    b.record_failure(old, Boom())
    b.record_failure(old, Boom())
    assert b.state is CircuitState.CLOSED
    assert b.stats().consecutive_failures == 0
    assert b.stats().failures == 4  # still counted as outcomes


def test_generation_bumps_on_every_transition(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=1)
    g0 = b.generation
    fail(b)
    clock.advance(1)
    assert b.state is CircuitState.HALF_OPEN
    succeed(b)
    assert b.generation == g0 + 3


def test_failure_rate_rule_count_window(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1000, failure_rate_threshold=0.5, window_size=10, minimum_calls=10)
    for _ in range(5):
        succeed(b)
        fail(b)
        if b.state is not CircuitState.CLOSED:
            break
    assert b.state is CircuitState.OPEN
    assert events.of(EventKind.TRANSITION)[0].reason == "failure_rate"
    assert b.stats().calls == 10


def test_failure_rate_needs_minimum_calls(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1000, failure_rate_threshold=0.5, window_size=100, minimum_calls=20)
    fail(b, 19)
    assert b.state is CircuitState.CLOSED
    fail(b)
    assert b.state is CircuitState.OPEN


def test_count_window_slides(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1000, failure_rate_threshold=0.5, window_size=4, minimum_calls=4)
    fail(b)
    succeed(b, 3)  # 1/4
    fail(b)  # window: s s s f -> 1/4
    succeed(b)  # s s f s
    assert b.state is CircuitState.CLOSED
    fail(b)  # s f s f -> 2/4 opens
    assert b.state is CircuitState.OPEN


def test_time_window_forgets_old_calls(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1000, failure_rate_threshold=0.5, window_duration=10, minimum_calls=4)
    fail(b, 3)
    clock.advance(11)  # those failures leave the window
    succeed(b, 3)
    fail(b)
    assert b.state is CircuitState.CLOSED  # 1 failure in 4
    fail(b)  # 2 in 5
    assert b.state is CircuitState.CLOSED
    fail(b)  # 3 in 6
    assert b.state is CircuitState.OPEN


def test_slow_call_rule(clock: FakeClock) -> None:
    b, events = make(clock, slow_call_duration=1.0, slow_call_rate_threshold=0.5, window_size=4, minimum_calls=4)
    succeed(b, 2, duration=0.1)
    succeed(b, 1, duration=2.0)
    assert b.state is CircuitState.CLOSED
    succeed(b, 1, duration=2.0)
    assert b.state is CircuitState.OPEN
    assert events.of(EventKind.TRANSITION)[0].reason == "slow_call_rate"


def test_exponential_backoff_capped(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=10, backoff_factor=2, max_recovery_timeout=35)
    fail(b)
    periods = []
    for _ in range(4):
        periods.append(events.of(EventKind.TRANSITION)[-1].open_for)
        clock.advance(1000)
        fail(b)  # probe fails: re-open, longer
    periods.append(events.of(EventKind.TRANSITION)[-1].open_for)
    assert periods == [10, 20, 35, 35, 35]
    clock.advance(1000)
    succeed(b)
    fail(b)  # a fresh trip from closed starts from the base again
    assert events.of(EventKind.TRANSITION)[-1].open_for == 10


def test_backoff_never_overflows(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=1, backoff_factor=1000)
    fail(b)
    for _ in range(200):
        clock.advance(10**7)
        fail(b)
    assert events.of(EventKind.TRANSITION)[-1].open_for == 10.0  # default cap: 10 x recovery_timeout


def test_jitter_stays_within_its_fraction(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=100, jitter=0.2)
    for _ in range(50):
        fail(b)
        b.reset()
    opens = [e.open_for for e in events.of(EventKind.TRANSITION) if e.to_state is CircuitState.OPEN]
    assert all(o is not None and 80 <= o <= 120 for o in opens)
    assert len(set(opens)) > 10


def test_retry_after_from_the_failing_exception(clock: FakeClock) -> None:
    class RateLimited(Exception):
        def __init__(self, seconds: float) -> None:
            super().__init__("slow down")
            self.seconds = seconds

    b, _ = make(clock, failure_threshold=1, recovery_timeout=60, max_recovery_timeout=600,
                retry_after=lambda e: getattr(e, "seconds", None))
    b.record_failure(b.admit(), RateLimited(7))
    with pytest.raises(CircuitOpenError) as info:
        b.admit()
    assert info.value.retry_after == pytest.approx(7)
    b.reset()
    b.record_failure(b.admit(), RateLimited(1e300))  # absurd: clamped to the cap
    with pytest.raises(CircuitOpenError) as info:
        b.admit()
    assert info.value.retry_after == pytest.approx(600)


def test_retry_after_hook_that_raises_falls_back_to_recovery_timeout(clock: FakeClock) -> None:
    def broken(exc: BaseException) -> float:
        raise RuntimeError("bug")

    b, _ = make(clock, failure_threshold=1, recovery_timeout=60, retry_after=broken)
    b.record_failure(b.admit(), Boom())
    with pytest.raises(CircuitOpenError) as info:
        b.admit()
    assert info.value.retry_after == pytest.approx(60)


def test_manual_control(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1)
    b.force_open()
    with pytest.raises(CircuitOpenError) as info:
        b.admit()
    assert info.value.state == "forced_open" and info.value.retry_after is None
    clock.advance(10**6)
    with pytest.raises(CircuitOpenError):
        b.admit()  # forced open never half-opens by itself
    b.force_closed()
    for _ in range(10):
        fail(b)
    assert b.state is CircuitState.DISABLED
    b.reset()
    assert b.state is CircuitState.CLOSED
    fail(b)
    assert b.state is CircuitState.OPEN
    b.reset()
    assert b.state is CircuitState.CLOSED
    assert [t for _, t in events.transitions()] == ["forced_open", "disabled", "closed", "open", "closed"]


def test_reset_when_closed_clears_counts_without_a_transition_event(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=3)
    fail(b, 2)
    b.reset()
    assert b.stats().consecutive_failures == 0
    assert events.transitions() == []


def test_metrics_only_never_refuses_but_transitions_and_counts(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=2, recovery_timeout=10)
    b.set_metrics_only()
    fail(b, 2)
    assert b.state is CircuitState.OPEN
    p = b.admit()  # would have been refused
    assert isinstance(p, Permit) and p.shadow
    b.record_success(p)
    assert b.state is CircuitState.OPEN  # shadow outcomes change nothing
    assert b.stats().would_reject == 1
    assert events.transitions() == [("closed", "open")]
    b.set_metrics_only(False)
    with pytest.raises(CircuitOpenError):
        b.admit()
    with pytest.raises(Exception, match="enabled"):
        b.set_metrics_only("yes")  # type: ignore[arg-type]


def test_failure_event_carries_type_and_truncated_message_only(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=10)
    b.record_failure(b.admit(), Boom("m" * 5000))
    (ev,) = events.of(EventKind.FAILURE)
    assert ev.error_type == "tests.conftest.Boom"
    assert ev.error_message is not None and len(ev.error_message) == 500
    assert ev.name == "circuitry.call_failed"


def test_opening_event_names_the_exception(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1)
    b.record_failure(b.admit(), TimeoutError("slow"))
    opened = events.of(EventKind.TRANSITION)[0]
    assert (opened.error_type, opened.error_message, opened.name) == ("TimeoutError", "slow",
                                                                      "circuitry.circuit_opened")


def test_stats_account_for_every_call(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=2, recovery_timeout=5)
    succeed(b, 3)
    b.record_ignored(b.admit())
    b.release(b.admit())
    fail(b, 2)
    for _ in range(4):
        with pytest.raises(CircuitOpenError):
            b.admit()
    s = b.stats()
    assert (s.successes, s.ignored, s.cancelled, s.failures, s.rejected) == (3, 1, 1, 2, 4)
    assert s.calls == 11


def test_state_read_turns_an_expired_open_into_half_open_once(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=5)
    fail(b)
    clock.advance(5)
    assert b.state is CircuitState.HALF_OPEN
    assert b.state is CircuitState.HALF_OPEN
    assert events.transitions().count(("open", "half_open")) == 1


def test_reconfigure_keeps_state_and_restarts_counts(clock: FakeClock) -> None:
    from circuitry import Policy

    b, _ = make(clock, failure_threshold=3)
    fail(b, 2)
    b.reconfigure(Policy(failure_threshold=2))
    fail(b)
    assert b.state is CircuitState.CLOSED
    fail(b)
    assert b.state is CircuitState.OPEN


def test_wall_clock_jumps_do_not_move_the_open_period(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=30)
    fail(b)
    clock.set_wall(clock.time() + 10**6)  # NTP jumps a long way: nothing happens
    with pytest.raises(CircuitOpenError):
        b.admit()
    clock.set_wall(0)
    with pytest.raises(CircuitOpenError):
        b.admit()
