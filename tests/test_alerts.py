"""Tests for circuitry.analysis.alerts: the pure alert rules and the callback deliverer."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from circuitry import CircuitBreaker, CircuitState, ConfigurationError, Event, EventKind, Registry
from circuitry.analysis.alerts import (
    ALERT_TYPES,
    SEVERITIES,
    SEVERITY_OF,
    Aggregate,
    Alert,
    AlertEngine,
    AlertPolicy,
)
from circuitry.runners.delivery import CallbackDeliverer
from circuitry.testing import FakeClock

T0 = 1_700_000_000.0
WAIT = 10.0  # generous upper bound for anything that happens on another thread
#: The time limit of a deliverer whose callbacks are not meant to hang: a liveness bound, never reached on a
#: busy machine (the default 2 s could be, and a callback cut short breaks the test's count and order).
NO_HANG = 60.0
#: The time limit of a deliverer whose test makes one callback hang; the others' results must not depend on
#: beating it (a runner thread may get no CPU for longer than this).
SHORT = 0.2

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def transition(to: CircuitState, frm: CircuitState | None, *, circuit: str = "svc", at: float = T0,
               reason: str | None = "failure_threshold", generation: int = 1, **extra: Any) -> Event:
    return Event(EventKind.TRANSITION, circuit, at, generation, to, frm, reason, **extra)


def trip(engine: AlertEngine, now: float, circuit: str = "svc") -> list[Alert]:
    return engine.observe(transition(OPEN, CLOSED, circuit=circuit, at=now, error_type="TimeoutError",
                                     error_message="read timed out", open_for=60.0), now)


def recover(engine: AlertEngine, now: float, circuit: str = "svc") -> list[Alert]:
    out = engine.observe(transition(HALF_OPEN, OPEN, circuit=circuit, reason="recovery_timeout"), now)
    return out + engine.observe(transition(CLOSED, HALF_OPEN, circuit=circuit, reason="probe_succeeded"), now)


def types(alerts: list[Alert]) -> list[str]:
    return [a.alert_type for a in alerts]


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- records and policy ---------------------------------------------------------------------------------


def test_alert_as_dict_has_the_seed_shape_and_is_json_able() -> None:
    engine = AlertEngine()
    [alert] = trip(engine, T0)
    d = alert.as_dict()
    assert set(d) == {"service_name", "alert_type", "severity", "message", "details", "created_at", "count",
                      "acknowledged"}
    assert d["service_name"] == "svc"
    assert d["alert_type"] == "circuit_opened"
    assert d["severity"] == "error"
    assert d["acknowledged"] is False
    assert d["count"] == 1
    assert d["created_at"] == T0
    json.dumps(d)  # plain data only
    d["details"]["reason"] = "mutated"
    assert alert.details["reason"] == "failure_threshold"  # a copy


def test_severity_is_fixed_per_type() -> None:
    assert set(SEVERITY_OF) == set(ALERT_TYPES)
    assert set(SEVERITY_OF.values()) <= set(SEVERITIES)
    assert SEVERITY_OF["circuit_opened"] == "error"
    assert SEVERITY_OF["circuit_closed"] == "info"
    assert SEVERITY_OF["high_failure_rate"] == "warning"
    assert SEVERITY_OF["threshold_recommendation"] == "warning"
    assert SEVERITY_OF["flapping"] == "critical"
    assert SEVERITY_OF["open_too_long"] == "critical"


def test_policy_defaults() -> None:
    p = AlertPolicy()
    assert (p.high_failure_rate, p.min_calls_for_rate, p.rate_window) == (0.5, 20, 60.0)
    assert (p.flapping_opens, p.flapping_window, p.open_too_long, p.dedup_window) == (3, 600.0, 900.0, 300.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"high_failure_rate": 0.0}, "high_failure_rate"),
        ({"high_failure_rate": 1.5}, "high_failure_rate"),
        ({"high_failure_rate": float("nan")}, "high_failure_rate"),
        ({"high_failure_rate": "0.5"}, "high_failure_rate"),
        ({"min_calls_for_rate": 0}, "min_calls_for_rate"),
        ({"min_calls_for_rate": 2.5}, "min_calls_for_rate"),
        ({"min_calls_for_rate": True}, "min_calls_for_rate"),
        ({"rate_window": 0}, "rate_window"),
        ({"rate_window": float("inf")}, "rate_window"),
        ({"flapping_opens": 1}, "flapping_opens"),
        ({"flapping_window": -1}, "flapping_window"),
        ({"open_too_long": 0}, "open_too_long"),
        ({"dedup_window": -0.1}, "dedup_window"),
        ({"max_services": 0}, "max_services"),
    ],
)
def test_policy_validation_names_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        AlertPolicy(**kwargs)


def test_engine_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="policy"):
        AlertEngine(policy={"dedup_window": 1})  # type: ignore[arg-type]
    engine = AlertEngine()
    with pytest.raises(ConfigurationError, match="failures"):
        engine.observe_counts("svc", 10, 11, T0)
    with pytest.raises(ConfigurationError, match="calls"):
        engine.observe_counts("svc", -1, 0, T0)
    with pytest.raises(ConfigurationError, match="now"):
        engine.observe_counts("svc", 1, 0, float("nan"))
    with pytest.raises(ConfigurationError, match="now"):
        trip(engine, float("inf"))
    with pytest.raises(ConfigurationError, match="open_since"):
        engine.tick(T0, {"svc": float("nan")})
    with pytest.raises(ConfigurationError, match="rec"):
        engine.recommendation("svc", [("has_recommendations", True)], T0)  # type: ignore[arg-type]


# -- transition rules --------------------------------------------------------------------------------


def test_opening_raises_an_error_alert_with_the_cause() -> None:
    engine = AlertEngine()
    [alert] = trip(engine, T0)
    assert alert.alert_type == "circuit_opened"
    assert alert.severity == "error"
    assert alert.key == "svc:circuit_opened"
    assert alert.count == 1
    assert "svc" in alert.message and "TimeoutError" in alert.message
    assert alert.details["from_state"] == "closed"
    assert alert.details["error_type"] == "TimeoutError"
    assert alert.details["open_for"] == 60.0
    assert alert.details["reopened"] is False


def test_closing_after_recovery_raises_an_info_alert() -> None:
    engine = AlertEngine()
    trip(engine, T0)
    alerts = recover(engine, T0 + 60)
    assert types(alerts) == ["circuit_closed"]
    assert alerts[0].severity == "info"
    assert alerts[0].details["from_state"] == "half_open"
    # closing straight from OPEN (a manual reset) also counts
    engine2 = AlertEngine()
    assert types(engine2.observe(transition(CLOSED, OPEN, reason="manual"), T0)) == ["circuit_closed"]


def test_other_events_raise_nothing() -> None:
    engine = AlertEngine()
    assert engine.observe(transition(HALF_OPEN, OPEN), T0) == []
    assert engine.observe(transition(CLOSED, CircuitState.FORCED_OPEN, reason="manual"), T0) == []
    assert engine.observe(transition(CLOSED, CircuitState.DISABLED, reason="manual"), T0) == []
    assert engine.observe(transition(CircuitState.FORCED_OPEN, CLOSED, reason="manual"), T0) == []
    assert engine.observe(Event(EventKind.REJECTION, "svc", T0, 1, OPEN, reason="open"), T0) == []
    assert engine.observe(Event(EventKind.FAILURE, "svc", T0, 1, CLOSED, error_type="E"), T0) == []
    assert engine.pending_aggregates() == []


def test_failed_probe_reopening_is_counted_but_is_not_a_trip() -> None:
    engine = AlertEngine()
    trip(engine, T0)
    for i in range(1, 10):  # a long outage: probe fails every 10 s
        engine.observe(transition(HALF_OPEN, OPEN, reason="recovery_timeout"), T0 + 10 * i)
        assert engine.observe(transition(OPEN, HALF_OPEN, reason="probe_failed"), T0 + 10 * i) == []
    [agg] = engine.pending_aggregates()
    assert agg.alert.alert_type == "circuit_opened"
    assert agg.alert.count == 10
    assert agg.last_details["reopened"] is True  # no flapping: re-openings are not trips


def test_flapping_raises_one_critical_alert() -> None:
    engine = AlertEngine()
    assert types(trip(engine, T0)) == ["circuit_opened"]
    recover(engine, T0 + 10)
    assert trip(engine, T0 + 20) == []  # counted into circuit_opened
    recover(engine, T0 + 30)
    alerts = trip(engine, T0 + 40)
    assert types(alerts) == ["flapping"]
    assert alerts[0].severity == "critical"
    assert alerts[0].details["openings"] == 3
    assert alerts[0].details["window_seconds"] == 600.0


def test_trips_spread_beyond_the_flapping_window_are_not_flapping() -> None:
    engine = AlertEngine(AlertPolicy(flapping_window=600, dedup_window=0))
    for i in range(10):
        alerts = trip(engine, T0 + 400 * i)
        recover(engine, T0 + 400 * i + 10)
        assert types(alerts) == ["circuit_opened"]  # no dedup, never flapping


def test_hundred_flaps_are_aggregated_not_flooded() -> None:
    engine = AlertEngine()
    new: list[Alert] = []
    for i in range(100):
        new += trip(engine, T0 + i)
        new += recover(engine, T0 + i + 0.5)
    assert sorted(types(new)) == ["circuit_closed", "circuit_opened", "flapping"]
    aggregates = engine.pending_aggregates()
    total: dict[str, int] = dict.fromkeys(types(new), 1)
    for agg in aggregates:
        total[agg.alert.alert_type] = agg.alert.count
        assert agg.added == agg.alert.count - 1
    assert total == {"circuit_opened": 100, "circuit_closed": 100, "flapping": 98}
    flapping = next(a for a in aggregates if a.alert.alert_type == "flapping")
    assert flapping.alert.details["openings"] == 3  # as created...
    assert flapping.last_details["openings"] >= 64  # ...and as last seen (bounded, marked "at least")
    assert flapping.last_details["at_least"] is True
    # the latest message too (a repeat stored as a new alert, after an acknowledgement, carries it)
    assert flapping.last_message is not None and flapping.last_message != flapping.alert.message
    assert str(flapping.last_details["openings"]) in flapping.last_message
    assert engine.pending_aggregates() == []  # drained


def test_aggregates_identify_the_original_alert_and_accumulate_between_drains() -> None:
    engine = AlertEngine(AlertPolicy(flapping_opens=100))
    [first] = trip(engine, T0)
    trip(engine, T0 + 1)
    [agg] = engine.pending_aggregates()
    assert (agg.alert.key, agg.alert.created_at, agg.alert.count, agg.added) == (first.key, T0, 2, 1)
    assert agg.last_seen == T0 + 1
    trip(engine, T0 + 2)
    trip(engine, T0 + 3)
    [agg] = engine.pending_aggregates()
    assert (agg.alert.count, agg.added, agg.last_seen) == (4, 2, T0 + 3)
    assert isinstance(agg, Aggregate)


def test_repeat_after_the_dedup_window_is_a_new_alert() -> None:
    engine = AlertEngine(AlertPolicy(dedup_window=300, flapping_opens=100))
    [a] = trip(engine, T0)
    assert trip(engine, T0 + 299) == []
    [b] = trip(engine, T0 + 300)
    assert b.key == a.key and b.created_at == T0 + 300 and b.count == 1
    assert trip(engine, T0 + 301) == []
    aggs = engine.pending_aggregates()
    # the repeat inside the first window belongs to the first alert, the later one to the second
    assert [(g.alert.created_at, g.alert.count) for g in aggs] == [(T0, 2), (T0 + 300, 2)]


def test_zero_dedup_window_disables_deduplication() -> None:
    engine = AlertEngine(AlertPolicy(dedup_window=0, flapping_opens=1000))
    assert sum(len(trip(engine, T0)) for _ in range(5)) == 5
    assert engine.pending_aggregates() == []


def test_higher_severity_is_never_suppressed_by_a_lower_one() -> None:
    engine = AlertEngine()
    # a warning is live for the service...
    assert types(engine.observe_counts("svc", 100, 90, T0)) == ["high_failure_rate"]
    # ...the error still fires, and so does the critical while the error's repeats are being counted
    assert types(trip(engine, T0 + 1)) == ["circuit_opened"]
    recover(engine, T0 + 2)
    trip(engine, T0 + 3)
    recover(engine, T0 + 4)
    assert types(trip(engine, T0 + 5)) == ["flapping"]
    # and the lower ones keep being counted, not raised
    assert engine.observe_counts("svc", 100, 90, T0 + 6) == []


def test_acknowledge_lets_the_next_occurrence_raise_a_new_alert() -> None:
    engine = AlertEngine(AlertPolicy(flapping_opens=100))
    [a] = trip(engine, T0)
    assert trip(engine, T0 + 1) == []
    assert engine.acknowledge(a.key) is True
    assert engine.acknowledge(a.key) is False
    assert engine.acknowledge("nope:circuit_opened") is False
    [b] = trip(engine, T0 + 2)
    assert b.created_at == T0 + 2
    [agg] = engine.pending_aggregates()  # the repeat counted before the acknowledgement is not lost
    assert agg.alert.created_at == T0 and agg.alert.count == 2


# -- failure rate ---------------------------------------------------------------------------------------


def test_high_failure_rate_needs_enough_calls() -> None:
    engine = AlertEngine()
    assert engine.observe_counts("svc", 19, 19, T0) == []  # 19 < 20 calls
    [alert] = engine.observe_counts("svc", 1, 0, T0 + 1)  # 20 calls, 19 failed, same window
    assert alert.alert_type == "high_failure_rate"
    assert alert.severity == "warning"
    assert alert.details["calls"] == 20 and alert.details["failures"] == 19
    assert alert.details["failure_rate"] == pytest.approx(0.95)
    assert "95%" in alert.message


def test_high_failure_rate_threshold_is_inclusive() -> None:
    engine = AlertEngine()
    assert engine.observe_counts("a", 100, 49, T0) == []
    assert types(engine.observe_counts("b", 100, 50, T0)) == ["high_failure_rate"]


def test_failure_rate_window_forgets_old_counts() -> None:
    engine = AlertEngine(AlertPolicy(rate_window=60))
    assert engine.observe_counts("svc", 100, 40, T0) == []
    # a minute later the old period has left the window: 10 of 20 is the rate now
    assert types(engine.observe_counts("svc", 20, 10, T0 + 61)) == ["high_failure_rate"]
    engine2 = AlertEngine(AlertPolicy(rate_window=60))
    engine2.observe_counts("svc", 100, 0, T0)
    assert engine2.observe_counts("svc", 20, 10, T0 + 30) == []  # 10 of 120 within the window


def test_repeated_high_rate_is_aggregated() -> None:
    engine = AlertEngine()
    new = [a for i in range(10) for a in engine.observe_counts("svc", 50, 50, T0 + 60 * i / 10)]
    assert len(new) == 1
    [agg] = engine.pending_aggregates()
    assert agg.alert.count == 10


# -- open too long ------------------------------------------------------------------------------------


def test_open_too_long_fires_once_per_episode_with_explicit_open_since() -> None:
    engine = AlertEngine()
    since = {"svc": T0}
    assert engine.tick(T0 + 899, since) == []
    [alert] = engine.tick(T0 + 900, since)
    assert alert.alert_type == "open_too_long" and alert.severity == "critical"
    assert alert.details["open_since"] == T0 and alert.details["limit_seconds"] == 900.0
    for i in range(100):
        assert engine.tick(T0 + 901 + i, since) == []  # not one per tick...
    assert engine.pending_aggregates() == []  # ...and not counted as repeats either
    assert engine.tick(T0 + 1500, {}) == []  # closed
    assert types(engine.tick(T0 + 3000, {"svc": T0 + 2000})) == ["open_too_long"]  # a new episode


def test_open_too_long_from_observed_episodes() -> None:
    engine = AlertEngine()
    trip(engine, T0)
    for i in range(1, 20):  # half-open probes keep failing: still one episode
        engine.observe(transition(HALF_OPEN, OPEN, reason="recovery_timeout"), T0 + 60 * i)
        engine.observe(transition(OPEN, HALF_OPEN, reason="probe_failed"), T0 + 60 * i)
        if i < 15:
            assert engine.tick(T0 + 60 * i) == []
    [alert] = engine.tick(T0 + 900)
    assert alert.details["open_since"] == T0
    assert engine.tick(T0 + 2000) == []
    recover(engine, T0 + 2001)
    assert engine.tick(T0 + 5000) == []  # closed: no episode
    trip(engine, T0 + 6000)
    assert types(engine.tick(T0 + 6900)) == ["open_too_long"]


def test_forced_open_is_not_an_episode() -> None:
    engine = AlertEngine()
    engine.observe(transition(CircuitState.FORCED_OPEN, CLOSED, reason="manual"), T0)
    assert engine.tick(T0 + 10_000) == []


# -- recommendations ---------------------------------------------------------------------------------


def rec(threshold: int = 3, timeout: float = 30.0, has: bool = True) -> dict[str, Any]:
    return {
        "has_recommendations": has,
        "message": f"consider adjusting threshold to {threshold} and timeout to {timeout} seconds",
        "current_threshold": 5, "recommended_threshold": threshold,
        "current_timeout": 60.0, "recommended_timeout": timeout,
        "confidence": 0.9, "primary_pattern": "burst",
    }


def test_recommendation_alert_carries_the_recommendation() -> None:
    engine = AlertEngine()
    assert engine.recommendation("svc", rec(has=False), T0) == []
    [alert] = engine.recommendation("svc", rec(), T0)
    assert alert.alert_type == "threshold_recommendation" and alert.severity == "warning"
    assert alert.details == rec()
    assert alert.message == rec()["message"]
    assert alert.key.startswith("svc:threshold_recommendation")


def test_same_recommendation_is_aggregated_a_different_one_is_new() -> None:
    engine = AlertEngine()
    [a] = engine.recommendation("svc", rec(), T0)
    assert engine.recommendation("svc", rec(), T0 + 10) == []
    [b] = engine.recommendation("svc", rec(threshold=4), T0 + 20)
    assert a.key != b.key
    [agg] = engine.pending_aggregates()
    assert agg.alert.key == a.key and agg.alert.count == 2


def test_recommendation_details_are_made_plain() -> None:
    engine = AlertEngine()
    r = {"has_recommendations": True, "recommended_threshold": 3, "state": CircuitState.OPEN,
         "values": (1, 2), "odd": object(), "nan": float("nan")}
    [alert] = engine.recommendation("svc", r, T0)
    assert alert.details["state"] == "open"
    assert alert.details["values"] == [1, 2]
    assert isinstance(alert.details["odd"], str)
    json.dumps(alert.as_dict(), allow_nan=False)
    assert "threshold=3" in alert.message


# -- memory and threads ----------------------------------------------------------------------------------


def test_memory_is_bounded_with_many_services() -> None:
    engine = AlertEngine(AlertPolicy(max_services=200))
    new = 0
    for i in range(5_000):
        name = f"svc-{i}"
        new += len(trip(engine, T0 + i, circuit=name))
        new += len(engine.observe_counts(name, 100, 100, T0 + i))
    assert new == 10_000  # every service's first alerts
    assert len(engine) == 200
    assert engine.pending_aggregates() == []
    # the recently seen services are the ones kept: their repeats are still counted
    assert trip(engine, T0 + 5_000, circuit="svc-4999") == []
    assert [g.alert.count for g in engine.pending_aggregates()] == [2]


def test_per_service_state_is_bounded() -> None:
    engine = AlertEngine()
    for i in range(2_000):
        trip(engine, T0 + i * 0.01)
        engine.observe_counts("svc", 1, 1, T0 + i * 0.01)
    svc = engine._services["svc"]
    assert len(svc.openings) <= 64
    assert len(svc.slots) <= 13
    assert len(svc.live) <= len(ALERT_TYPES)
    assert len(engine._pending) <= len(ALERT_TYPES)


def test_engine_is_thread_safe() -> None:
    engine = AlertEngine()
    lock = threading.Lock()
    new: list[Alert] = []

    def work(k: int) -> None:
        for i in range(500):
            got = trip(engine, T0 + i * 0.001, circuit=f"s{k % 2}")
            with lock:
                new.extend(got)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = dict.fromkeys((a.key for a in new), 0)
    for a in new:
        counts[a.key] += 1
    for g in engine.pending_aggregates():
        counts[g.alert.key] += g.added
    assert counts["s0:circuit_opened"] == counts["s1:circuit_opened"] == 1000
    assert counts["s0:flapping"] == counts["s1:flapping"] == 998


# -- deliverer -------------------------------------------------------------------------------------------


def make_alert(i: int = 0, service: str = "svc") -> Alert:
    return Alert(service_name=service, alert_type="circuit_opened", severity="error", message=f"alert {i}",
                 details={"i": i}, created_at=T0 + i, count=1, key=f"{service}:circuit_opened")


@pytest.fixture
def closing() -> Iterator[list[CallbackDeliverer]]:
    made: list[CallbackDeliverer] = []
    yield made
    for d in made:
        d.close(timeout=2.0)


def test_deliverer_validates_arguments() -> None:
    with pytest.raises(ConfigurationError, match="callback"):
        CallbackDeliverer(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        CallbackDeliverer(print, timeout=0)
    with pytest.raises(ConfigurationError, match="max_queue"):
        CallbackDeliverer(print, max_queue=0)
    with pytest.raises(ConfigurationError, match="max_stuck"):
        CallbackDeliverer(print, max_stuck=0)


def test_sync_callback_receives_alert_dicts_in_order(closing: list[CallbackDeliverer]) -> None:
    got: list[dict[str, Any]] = []
    d = CallbackDeliverer(got.append, timeout=NO_HANG)
    closing.append(d)
    assert d.deliver(make_alert(0)) is True
    assert d.deliver(make_alert(1).as_dict()) is True
    assert d.deliver({"service_name": "x", "alert_type": "flapping"}) is True
    assert wait_until(lambda: d.delivered == 3)
    assert [g.get("message") for g in got] == ["alert 0", "alert 1", None]
    assert got[0] == make_alert(0).as_dict()
    assert (d.failed, d.timed_out, d.dropped) == (0, 0, 0)
    assert d.close(timeout=WAIT) is True


async def test_async_callback_receives_alert_dicts(closing: list[CallbackDeliverer]) -> None:
    got: list[dict[str, Any]] = []

    async def callback(alert: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        asyncio.get_running_loop()  # runs on a loop of the deliverer's own
        got.append(alert)

    d = CallbackDeliverer(callback, timeout=NO_HANG)
    closing.append(d)
    for i in range(5):
        d.deliver(make_alert(i))
    assert await asyncio.to_thread(wait_until, lambda: d.delivered == 5)
    assert [g["details"]["i"] for g in got] == [0, 1, 2, 3, 4]


def test_raising_callback_is_counted_logged_and_later_alerts_delivered(
        closing: list[CallbackDeliverer]) -> None:
    got: list[int] = []

    def callback(alert: dict[str, Any]) -> None:
        if alert["details"]["i"] == 0:
            raise RuntimeError("monitoring is down")
        got.append(alert["details"]["i"])

    d = CallbackDeliverer(callback, timeout=NO_HANG)
    closing.append(d)
    with capture_logs() as logs:
        d.deliver(make_alert(0))
        d.deliver(make_alert(1))
        assert wait_until(lambda: d.delivered == 1 and d.failed == 1)
        # the runner counts the failure, then logs it: alert 1 may be delivered in between
        assert wait_until(lambda: any(e["event"] == "circuitry.alert_callback_failed" for e in logs))
    assert got == [1]
    [entry] = [e for e in logs if e["event"] == "circuitry.alert_callback_failed"]
    assert entry["log_level"] == "error"
    assert entry["error_type"] == "RuntimeError"
    assert entry["error_message"] == "monitoring is down"
    assert entry["service_name"] == "svc" and entry["alert_type"] == "circuit_opened"


async def test_raising_async_callback_is_counted(closing: list[CallbackDeliverer]) -> None:
    async def callback(alert: dict[str, Any]) -> None:
        raise ValueError("nope")

    d = CallbackDeliverer(callback, timeout=NO_HANG)
    closing.append(d)
    d.deliver(make_alert())
    assert await asyncio.to_thread(wait_until, lambda: d.failed == 1)
    assert d.delivered == 0 and d.timed_out == 0


def test_hanging_sync_callback_neither_blocks_deliver_nor_stalls_later_alerts(
        closing: list[CallbackDeliverer]) -> None:
    release = threading.Event()
    started = threading.Event()
    got: list[int] = []

    def callback(alert: dict[str, Any]) -> None:
        i = alert["details"]["i"]
        if i == 0:
            started.set()
            release.wait(30)
        got.append(i)

    d = CallbackDeliverer(callback, timeout=SHORT)
    closing.append(d)
    try:
        with capture_logs() as logs:
            assert d.deliver(make_alert(0)) is True
            assert started.wait(WAIT)
            # the callback is provably still blocked while deliver() returns
            assert d.deliver(make_alert(1)) is True
            assert d.deliver(make_alert(2)) is True
            assert not release.is_set()
            # later alerts are handled although alert 0's callback is still blocked (in either order: on
            # a busy machine alert 1 may outlast the short limit too, and alert 2 go to another runner)
            assert wait_until(lambda: sorted(got) == [1, 2])
            assert wait_until(lambda: d.delivered + d.timed_out == 3)
        assert d.timed_out >= 1 and d.failed == 0
        assert any(e["event"] == "circuitry.alert_callback_timed_out" for e in logs)
    finally:
        release.set()
    assert wait_until(lambda: len(got) == 3)
    assert got[2] == 0  # the abandoned callback finishes late...
    assert wait_until(lambda: d.busy == 0)  # (its runner has settled it)
    assert d.delivered + d.timed_out == 3  # ...without being counted twice


async def test_hanging_async_callback_is_cancelled_and_later_alerts_delivered(
        closing: list[CallbackDeliverer]) -> None:
    got: list[int] = []
    cancelled = threading.Event()

    async def callback(alert: dict[str, Any]) -> None:
        if alert["details"]["i"] == 0:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        got.append(alert["details"]["i"])

    d = CallbackDeliverer(callback, timeout=SHORT)
    closing.append(d)
    d.deliver(make_alert(0))
    d.deliver(make_alert(1))
    assert await asyncio.to_thread(wait_until, lambda: got == [1] and d.delivered + d.timed_out == 2)
    assert d.timed_out >= 1
    assert await asyncio.to_thread(cancelled.wait, WAIT)


def test_stuck_runners_are_bounded(closing: list[CallbackDeliverer]) -> None:
    release = threading.Event()
    got: list[int] = []

    def callback(alert: dict[str, Any]) -> None:
        if alert["details"]["i"] < 2:
            release.wait(30)
        got.append(alert["details"]["i"])

    d = CallbackDeliverer(callback, timeout=SHORT, max_stuck=2)
    closing.append(d)
    try:
        for i in range(4):
            d.deliver(make_alert(i))
        assert wait_until(lambda: d.timed_out >= 2)
        assert d.busy == 2 and d._runners == 2  # both runners stuck: no third thread for alert 2
        assert 2 not in got and 3 not in got
        threads = [t for t in threading.enumerate() if t.name.startswith("circuitry-alerts")]
        assert threads and all(t.daemon for t in threads)
    finally:
        release.set()
    assert wait_until(lambda: sorted(got) == [0, 1, 2, 3])  # the runners come back, the queue moves on
    assert wait_until(lambda: d.delivered + d.timed_out == 4)


def test_full_queue_drops_counts_and_logs_once(closing: list[CallbackDeliverer]) -> None:
    release = threading.Event()
    started = threading.Event()
    got: list[int] = []

    def callback(alert: dict[str, Any]) -> None:
        started.set()
        release.wait(30)
        got.append(alert["details"]["i"])

    d = CallbackDeliverer(callback, timeout=30, max_queue=2)
    closing.append(d)
    try:
        with capture_logs() as logs:
            d.deliver(make_alert(0))
            assert started.wait(WAIT)  # the worker holds alert 0: the queue is empty
            results = [d.deliver(make_alert(i)) for i in range(1, 10)]
        assert results == [True, True] + [False] * 7
        assert d.dropped == 7
        assert d.pending == 2
        drops = [e for e in logs if e["event"] == "circuitry.alerts_dropped"]
        assert len(drops) == 1  # once per episode
        assert drops[0]["log_level"] == "warning" and drops[0]["reason"] == "queue_full"
    finally:
        release.set()
    assert wait_until(lambda: d.delivered == 3)
    assert got == [0, 1, 2]
    assert d.deliver(make_alert(10)) is True  # the queue accepts again
    assert wait_until(lambda: d.delivered == 4)


def test_close_drains_then_drops_later_alerts(closing: list[CallbackDeliverer]) -> None:
    got: list[int] = []
    d = CallbackDeliverer(lambda a: got.append(a["details"]["i"]), timeout=NO_HANG)
    for i in range(20):
        d.deliver(make_alert(i))
    assert d.close(timeout=WAIT) is True
    assert got == list(range(20))
    assert d.delivered == 20
    with capture_logs() as logs:
        assert d.deliver(make_alert(99)) is False
    assert d.dropped == 1
    assert [e["reason"] for e in logs if e["event"] == "circuitry.alerts_dropped"] == ["closed"]
    assert d.close(timeout=0) is True  # idempotent


def test_close_with_a_hanging_callback_accounts_for_every_alert() -> None:
    release = threading.Event()
    started = threading.Event()

    def callback(alert: dict[str, Any]) -> None:
        started.set()
        release.wait(30)

    d = CallbackDeliverer(callback, timeout=30)
    try:
        for i in range(5):
            d.deliver(make_alert(i))
        assert started.wait(WAIT)
        d.close(timeout=0.2)  # gives up on the hanging callback and the queue behind it
        assert wait_until(lambda: d.timed_out + d.dropped == 5)
        assert d.delivered + d.failed == 0
    finally:
        release.set()


def test_unused_deliverer_starts_no_thread() -> None:
    before = set(threading.enumerate())
    d = CallbackDeliverer(print)
    # no new thread (a runner left by an earlier test may end meanwhile: fewer threads is no failure)
    assert set(threading.enumerate()) <= before
    assert d.close() is True


def test_callback_may_call_back_into_the_breaker(closing: list[CallbackDeliverer]) -> None:
    """The store's path: a hook turns a transition into alerts and delivers them; the user's callback
    reads and resets the breaker that raised them."""
    clock = FakeClock()
    registry = Registry(clock=clock, hooks=())
    engine = AlertEngine()
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def alert_callback(alert: dict[str, Any]) -> None:
        br = registry.get(alert["service_name"])
        stats = br.stats()
        seen.append((alert["alert_type"], stats.state.value))
        if alert["alert_type"] == "circuit_opened":
            br.reset()
        else:
            done.set()

    d = CallbackDeliverer(alert_callback, timeout=NO_HANG)
    closing.append(d)

    def hook(event: Event) -> None:
        for alert in engine.observe(event, event.at):
            d.deliver(alert)

    registry.add_hook(hook)
    breaker = registry.get("payments", failure_threshold=2)
    assert isinstance(breaker, CircuitBreaker)

    def boom() -> None:
        raise ConnectionError("refused")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert done.wait(WAIT)
    assert seen == [("circuit_opened", "open"), ("circuit_closed", "closed")]
    assert breaker.state is CircuitState.CLOSED
    # done is set inside the second callback: the runner counts it after it returns
    assert wait_until(lambda: d.delivered == 2)
    assert d.failed == 0 and d.timed_out == 0
