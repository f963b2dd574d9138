"""The store's analyst: patterns from stored history, recommendations, alerts and their callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitry import CircuitOpenError, CircuitState, DatabaseCircuitBreaker, Registry, circuit
from circuitry.analysis.adjust import AdjustPolicy, decide, measure_cost
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.recommend import Recommendation
from circuitry.analysis.replay import Settings
from circuitry.runners.adjuster import _plain_settings, _reconfigure, _settings, apply, settings_of
from circuitry.runners.analyst import Analyst
from circuitry.runners.stored import rollups_of
from circuitry.store import SQLiteStore
from circuitry.testing import FakeClock

from .conftest import Boom, eventually

NOW = time.time()




@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0, wall=NOW)


@pytest.fixture
def make(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., tuple[Registry, SQLiteStore]]]:
    made: list[SQLiteStore] = []

    def factory(**options: Any) -> tuple[Registry, SQLiteStore]:
        options.setdefault("poll_interval", 0.01)
        options.setdefault("analysis_interval", 3600.0)  # the tests run analyses themselves
        store = SQLiteStore(tmp_path / "a.db", clock=clock, **options)
        made.append(store)
        return Registry(clock=clock, hooks=[], store=store), store

    yield factory
    for store in made:
        store.close(timeout=2)


def write_history(path: Path, service: str, failures: list[float], ok_per_minute: int, start: float,
                  end: float) -> None:
    """Stored history as the writer leaves it: a row per failure, per-second and per-minute counts (the
    successes of a minute spread evenly over its seconds)."""
    seconds: dict[int, list[int]] = {}
    for m in range(int(start // 60), int(end // 60) + 1):
        for i in range(ok_per_minute):
            sec = seconds.setdefault(m * 60 + (i * 60) // ok_per_minute, [0, 0])
            sec[0] += 1
    for t in failures:
        sec = seconds.setdefault(int(t), [0, 0])
        sec[0] += 1
        sec[1] += 1
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO circuit_breaker_events (service_name, event_type, to_state, error_type, ts) "
            "VALUES (?, 'failure', 'closed', 'TimeoutError', ?)", [(service, t) for t in failures])
        conn.executemany(
            "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures) "
            "VALUES (?, ?, '', ?, ?, 0)",
            [(service, m, ok_per_minute, ok_per_minute) for m in range(int(start // 60), int(end // 60) + 1)])
        conn.executemany("INSERT INTO circuit_breaker_seconds (service_name, second, calls, failures) "
                         "VALUES (?, ?, ?, ?)", [(service, sec, c, f) for sec, (c, f) in seconds.items()])


def bursts(start: float, n_bursts: int, per_burst: int, rng: random.Random) -> list[float]:
    out = []
    for k in range(n_bursts):
        t0 = start + 60 + k * 270 + rng.uniform(0, 30)
        out.extend(t0 + rng.uniform(0, 3) for _ in range(per_burst))
    return sorted(out)


def test_calls_reach_the_analyst_through_the_store_at_one_second_resolution(make: Any, clock: FakeClock) -> None:
    """End to end: calls through a breaker -> the store's per-second rows -> what the analyst reads."""
    reg, store = make()
    b = reg.get("svc", failure_threshold=10**6, on=Boom)
    start = clock.time()
    for second in range(30):
        for i in range(10):
            if second % 10 == 0 and i < 3:
                b.record_failure(b.admit(), Boom())
            else:
                b.record_success(b.admit())
        assert store.flush()
        clock.advance(1)
    series = store.read.series("svc", start - 1, clock.time())
    assert [c for _, c, _ in series] == [10] * 30
    assert [f for _, _, f in series] == [3 if k % 10 == 0 else 0 for k in range(30)]
    assert [s for s, _, _ in series] == [int(start) + k for k in range(30)]


def test_a_burst_history_is_classified_stored_and_recommended(make: Any, tmp_path: Path) -> None:
    reg, store = make()
    b = reg.get("bursty", failure_threshold=5, recovery_timeout=60)
    assert store.flush()
    start = NOW - 900
    write_history(tmp_path / "a.db", "bursty", bursts(start, 3, 12, random.Random(4)), 600, start, NOW)
    results = Analyst.attach(store).run_once(NOW)
    result, rec = results["bursty"].pattern, results["bursty"].recommendation
    assert result.type == "burst"
    assert 0.0 < result.confidence <= 1.0
    ((ptype, failures, conf, thr),) = store.query(
        "SELECT pattern_type, failure_count, confidence_score, suggested_threshold "
        "FROM circuit_breaker_failure_patterns WHERE service_name = 'bursty'")[0].values(),
    assert (ptype, failures) == ("burst", 36) and conf == pytest.approx(result.confidence)
    assert thr == rec.recommended_threshold
    breaker = DatabaseCircuitBreaker(service_name="bursty", registry=reg, failure_threshold=5,
                                     recovery_timeout=60)
    stats = breaker.get_stats()
    assert stats["latest_pattern"]["type"] == "burst"
    assert stats["latest_pattern"]["confidence"] == pytest.approx(result.confidence)
    prediction = results["bursty"].prediction
    assert prediction is not None
    assert stats["latest_pattern"]["prediction"]["open_probability"] == round(prediction.open_probability, 4)
    assert b.policy.failure_threshold == 5  # nothing applied without asking


def outages(path: Path, service: str, end: float, *, span: int = 3600,
            starts: tuple[int, ...] = (600, 1500, 2400, 3300), length: int = 90) -> None:
    """An hour of stored history with 90-second outages: 10 calls a second, every call failing during an
    outage, one in a thousand otherwise (per-second rows and per-minute rollups, as the writers leave them)."""
    first = int(end) - span
    seconds = []
    for s in range(first, int(end) + 1):
        off = s - first
        failing = any(o <= off < o + length for o in starts)
        seconds.append((s, 10, 10 if failing else int(off % 97 == 0)))
    minutes: dict[int, list[int]] = {}
    for s, c, f in seconds:
        m = minutes.setdefault(s // 60, [0, 0])
        m[0] += c
        m[1] += f
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO circuit_breaker_seconds (service_name, second, calls, failures) "
                         "VALUES (?, ?, ?, ?)", [(service, *row) for row in seconds])
        conn.executemany(
            "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures) "
            "VALUES (?, ?, '', ?, ?, ?)", [(service, m, c, c - f, f) for m, (c, f) in minutes.items()])


def test_get_recommendations_and_apply_them_explicitly(make: Any, tmp_path: Path, clock: FakeClock) -> None:
    reg, store = make()
    breaker = DatabaseCircuitBreaker(service_name="outages", registry=reg, failure_threshold=5,
                                     recovery_timeout=60)
    assert store.flush()
    outages(tmp_path / "a.db", "outages", NOW)
    rec = breaker.get_recommendations()
    assert set(rec) == {"has_recommendations", "message", "current_threshold", "recommended_threshold",
                        "current_timeout", "recommended_timeout", "confidence", "primary_pattern"}
    assert rec["primary_pattern"] == "burst" and rec["has_recommendations"] is True
    # 60 s open after each 90 s outage refuses up to a minute of healthy calls: probe sooner
    assert rec["current_timeout"] == 60 and rec["recommended_timeout"] < 60
    assert "consider adjusting threshold to" in rec["message"] and "healthy calls refused" in rec["message"]
    assert breaker.apply_recommendations() is True
    p = breaker.breaker.policy
    assert (p.failure_threshold, p.recovery_timeout) == (rec["recommended_threshold"], rec["recommended_timeout"])


def test_brief_blips_a_breaker_cannot_help_with_get_no_advice(make: Any, tmp_path: Path) -> None:
    # 12 failures within 3 s among 10 calls a second: never 8 in a row, nothing to gain from other settings
    reg, store = make()
    breaker = DatabaseCircuitBreaker(service_name="bursty", registry=reg, failure_threshold=8,
                                     recovery_timeout=10)
    assert store.flush()
    write_history(tmp_path / "a.db", "bursty", bursts(NOW - 900, 3, 12, random.Random(5)), 600, NOW - 900, NOW)
    rec = breaker.get_recommendations()
    assert rec["primary_pattern"] == "burst" and rec["has_recommendations"] is False
    assert rec["recommended_threshold"] == 8 and "no setting saves" in rec["message"]


def test_thin_history_recommends_nothing(make: Any) -> None:
    reg, store = make()
    breaker = DatabaseCircuitBreaker(service_name="quiet", registry=reg)
    assert store.flush()
    rec = breaker.get_recommendations()
    assert rec["has_recommendations"] is False and rec["recommended_threshold"] == rec["current_threshold"]


def test_a_circuit_younger_than_a_minute_gets_no_label(make: Any, clock: FakeClock) -> None:
    """Three seconds of calls, thirty failures among them, read over the analyst's 60 s window: the seconds
    before the circuit's first call are no history of it. They counted as such, and a few seconds of a
    new circuit were labelled (intermittent at 0.38, steady at 1.00, burst at 0.99 on different runs)."""
    reg, store = make(analysis_window=60)
    b = reg.get("young", failure_threshold=10**6)
    for second in range(3):
        for i in range(40):
            if second == 2 or i % 10 == 0:
                b.record_failure(b.admit(), Boom())
            else:
                b.record_success(b.admit())
        assert store.flush()
        clock.advance(1)
    analysis = Analyst.attach(store).analyse(b)
    assert analysis.pattern.evidence.failures == 48 and analysis.pattern.type is None
    assert 3 <= analysis.window_end - analysis.window_start < 4  # from the first call's second
    rationale = analysis.recommendation.rationale
    assert re.search(r"too little history to classify \([34] s of the 60 a label needs\)", rationale)
    clock.advance(60)  # a minute later, with calls all along: a label
    for second in range(60):
        b.record_success(b.admit())
        if second % 5 == 0:
            b.record_failure(b.admit(), Boom())
        assert store.flush()
        clock.advance(1)
    assert Analyst.attach(store).analyse(b).pattern.type is not None


def test_auto_apply_is_off_by_default(make: Any, tmp_path: Path) -> None:
    reg, store = make(analysis_interval=60.0)
    b = reg.get("outages", failure_threshold=5, recovery_timeout=60)
    assert store.flush()
    outages(tmp_path / "a.db", "outages", NOW)
    analyst = Analyst.attach(store)
    for k in range(3):
        assert analyst.run_once(NOW - 120 + 60 * k)["outages"].recommendation.has_recommendations
    assert (b.policy.failure_threshold, b.policy.recovery_timeout) == (5, 60)
    assert store.query("SELECT * FROM circuit_breaker_events WHERE event_type = 'adjustment'") == []


def test_auto_apply_moves_one_confirmed_bounded_step_and_every_process_follows(make: Any, tmp_path: Path) -> None:
    (reg_a, store_a), (reg_b, store_b) = make(auto_apply=True, analysis_interval=60.0), \
        make(auto_apply=True, analysis_interval=60.0)
    a = reg_a.get("outages", failure_threshold=5, recovery_timeout=60)
    b = reg_b.get("outages", failure_threshold=5, recovery_timeout=60)
    assert store_a.flush() and store_b.flush()
    outages(tmp_path / "a.db", "outages", NOW)
    first = Analyst.attach(store_a).run_once(NOW - 60)["outages"].recommendation
    assert first.has_recommendations and first.recommended_timeout < 30
    assert a.policy.recovery_timeout == 60  # one analysis is not enough: it must be confirmed
    Analyst.attach(store_a).run_once(NOW)
    assert a.policy.recovery_timeout == 30  # at most a factor two per step, not straight to the advice
    ((data, message),) = [(json.loads(r["additional_data"]), r["error_message"]) for r in store_a.query(
        "SELECT additional_data, error_message FROM circuit_breaker_events WHERE event_type = 'adjustment'")]
    assert data["action"] == "adjust" and data["before"]["timeout"] == 60 and data["after"]["timeout"] == 30
    assert data["cost_before"]["calls"] > 0 and "open period 60 s -> 30 s" in message
    assert b.policy.recovery_timeout == 60
    Analyst.attach(store_b).run_once(NOW + 1)  # the other process follows the recorded change
    assert b.policy.recovery_timeout == 30
    Analyst.attach(store_a).run_once(NOW + 60)  # within the cooldown: no second step
    assert a.policy.recovery_timeout == 30
    assert len(store_a.query("SELECT id FROM circuit_breaker_events WHERE event_type = 'adjustment'")) == 1


def test_an_adjustment_is_followed_by_every_process_of_the_same_code_only(make: Any, tmp_path: Path) -> None:
    """A worker with auto_apply off ran its own settings beside the adjusted ones (the change was then
    judged on that mixed fleet); a worker whose code now gives other settings (changed and deployed) was
    put back to the old adjusted ones at its first analysis. The first follows now; the second keeps its
    code's settings."""
    (reg_a, store_a), (reg_b, store_b), (reg_c, store_c) = (
        make(auto_apply=True, analysis_interval=60.0), make(analysis_interval=60.0), make(analysis_interval=60.0))
    a = reg_a.get("outages", failure_threshold=5, recovery_timeout=60)
    b = reg_b.get("outages", failure_threshold=5, recovery_timeout=60)  # auto_apply off
    c = reg_c.get("outages", failure_threshold=5, recovery_timeout=90)  # the code was changed here
    assert store_a.flush() and store_b.flush() and store_c.flush()
    outages(tmp_path / "a.db", "outages", NOW)
    Analyst.attach(store_a).run_once(NOW - 60)
    Analyst.attach(store_a).run_once(NOW)
    assert a.policy.recovery_timeout == 30
    (given,) = [json.loads(r["additional_data"])["given"] for r in store_a.query(
        "SELECT additional_data FROM circuit_breaker_events WHERE event_type = 'adjustment'")]
    assert (given["threshold"], given["timeout"]) == (5, 60.0)
    Analyst.attach(store_b).run_once(NOW + 1)
    assert b.policy.recovery_timeout == 30  # followed without auto_apply
    Analyst.attach(store_c).run_once(NOW + 2)
    assert c.policy.recovery_timeout == 90  # its code's settings, not the adjustment of other ones


def test_a_circuit_on_the_defaults_is_adjusted_and_followed_like_any_other(make: Any, tmp_path: Path) -> None:
    """A circuit named without a policy (``@circuit("pay")``): the settings its code gives are the defaults.
    They were taken to be whatever the breaker ran, so after the first step the adjusted ones were the
    code's: the cooldown and the history were lost (60 -> 30 s, then 30 -> 15 s two minutes later), and a
    process still on the defaults stopped following."""
    (reg_a, store_a), (reg_b, store_b) = make(auto_apply=True, analysis_interval=60.0), make(analysis_interval=60.0)
    a, b = reg_a.get("outages"), reg_b.get("outages")
    assert store_a.flush() and store_b.flush()
    outages(tmp_path / "a.db", "outages", NOW)
    analyst = Analyst.attach(store_a)
    analyst.run_once(NOW - 60)
    analyst.run_once(NOW)
    assert a.policy.recovery_timeout == 30
    analyst.run_once(NOW + 120)
    analyst.run_once(NOW + 180)
    assert a.policy.recovery_timeout == 30  # within the cooldown: no second step
    Analyst.attach(store_b).run_once(NOW + 181)
    assert b.policy.recovery_timeout == 30  # followed
    givens = [json.loads(r["additional_data"])["given"]["timeout"] for r in store_a.query(
        "SELECT additional_data FROM circuit_breaker_events WHERE event_type = 'adjustment'")]
    assert givens == [60.0]


def test_a_change_made_on_censored_advice_is_judged_with_the_healthy_share_it_recorded(
        make: Any, tmp_path: Path) -> None:
    reg, store = make(auto_apply=True, analysis_interval=60.0)
    reg.get("blips", failure_threshold=5, recovery_timeout=30)
    assert store.flush()
    at = (int(NOW) // 60 - 10) * 60.0
    after = [MinuteRollup(int(at // 60) + k, 100, 60, 40, rejections=500) for k in range(1, 9)]
    change = {"action": "adjust", "reason": "test", "before": {"threshold": 5, "timeout": 60.0},
              "after": {"threshold": 5, "timeout": 30.0}, "evidence": {},
              "cost_before": {"seconds": 1800.0, "calls": 4800, "cost": 2000.0}}
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.executemany(
            "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures, "
            "rejections) VALUES ('blips', ?, '', ?, ?, ?, ?)",  # the table's calls: every call, refused too
            [(m.minute, m.calls + m.rejections, m.successes, m.failures, m.rejections) for m in after])
        conn.executemany(
            "INSERT INTO circuit_breaker_events (service_name, event_type, to_state, ts, additional_data) "
            "VALUES ('blips', 'adjustment', 'closed', ?, ?)",
            [(at, json.dumps({**change, "refused_healthy": 0.4})),
             (at + 1.0, json.dumps({**change, "refused_healthy": None})),
             (at + 2.0, json.dumps({**change, "refused_healthy": "0.4"}))])  # not ours: the coarse measure
    got = Analyst.attach(store).adjuster.adjustments("blips", NOW)
    assert [a.refused_healthy for a in got] == [0.4, None, None]
    censored, coarse, odd = (a.cost_after for a in got)
    assert censored is not None and coarse is not None and odd is not None
    # The minutes after it (the current one may hold nothing yet): 40 failures + 0.4 * 500 refused each.
    assert censored.cost == pytest.approx(measure_cost(after, 0.4).cost) == pytest.approx(8 * 240.0)
    assert coarse.cost == pytest.approx(measure_cost(after).cost) == odd.cost == pytest.approx(8 * 500.0)


def test_a_change_is_judged_on_the_evaluation_stretch_after_it_not_on_an_outage_hours_later(
        make: Any, tmp_path: Path) -> None:
    # A change kept after its 30 minutes was rolled back four hours later: the cost after it was measured
    # from the change to now, so a 40-minute outage it had nothing to do with counted against it.
    reg, store = make(auto_apply=True, analysis_interval=60.0)
    reg.get("svc", failure_threshold=8, recovery_timeout=30)
    assert store.flush()
    first = int(NOW) // 60 - 240  # the change, four hours ago, on a minute boundary
    at = first * 60.0
    evaluation = AdjustPolicy().evaluation
    healthy = [MinuteRollup(m, 300, 297, 3) for m in range(first, first + 200)]
    outage = [MinuteRollup(m, 20, 1, 19, rejections=280) for m in range(first + 200, first + 240)]
    change = {"action": "adjust", "reason": "test", "before": {"threshold": 5, "timeout": 60.0},
              "after": {"threshold": 8, "timeout": 30.0}, "evidence": {}, "refused_healthy": None,
              "cost_before": {"seconds": 1800.0, "calls": 9000, "cost": 0.0}}
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.executemany(
            "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures, "
            "rejections) VALUES ('svc', ?, '', ?, ?, ?, ?)",
            [(m.minute, m.calls + m.rejections, m.successes, m.failures, m.rejections) for m in healthy + outage])
        conn.execute("INSERT INTO circuit_breaker_events (service_name, event_type, to_state, ts, additional_data) "
                     "VALUES ('svc', 'adjustment', 'closed', ?, ?)", (at, json.dumps(change)))
    analyst = Analyst.attach(store)
    nothing = Recommendation(8, 30.0, None, 0.9, "steady", "n/a", False, 8, 30.0, 50)
    nows = (at + evaluation, at + evaluation + 600.0, NOW)  # analyses after it, the last in the outage
    judged = [analyst.adjuster.adjustments("svc", now) for now in nows]
    verdicts = [decide(Settings(8, 30.0), nothing, now=now, history=got).action
                for now, got in zip(nows, judged, strict=True)]
    assert verdicts == ["hold"] * 3  # kept at its evaluation, and never re-judged after
    # Every analysis after it measures the same stretch: its 30 minutes, no more.
    assert [got.cost_after for (got,) in judged] == [measure_cost(healthy[:30])] * 3
    # No per-second rows to replay (they are kept an hour): nothing says the old settings would have done
    # better, and every analysis after the stretch reaches the same verdict.
    assert [got.replayed for (got,) in judged] == [(0.0, 0.0)] * 3


def test_a_change_judged_without_its_replay_is_not_rolled_back(make: Any, tmp_path: Path) -> None:
    """Every analysis re-judges the last change; once the per-second rows of the stretch after it were gone
    (kept an hour), the measure alone decided and rolled back a change the replay had kept: the verdict
    changed from one analysis to the next. Without the replay, nothing says the old settings were better."""
    reg, store = make(auto_apply=True, analysis_interval=60.0)
    reg.get("svc", failure_threshold=8, recovery_timeout=30)
    assert store.flush()
    first = int(NOW) // 60 - 120
    at = first * 60.0
    worse = [MinuteRollup(m, 300, 100, 200) for m in range(first, first + 60)]  # failing: 2 in 3 calls after it
    change = {"action": "adjust", "reason": "test", "before": {"threshold": 5, "timeout": 60.0},
              "after": {"threshold": 8, "timeout": 30.0}, "evidence": {}, "refused_healthy": None,
              "cost_before": {"seconds": 1800.0, "calls": 9000, "cost": 90.0}}  # 0.01 per call before it
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.executemany(
            "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures) "
            "VALUES ('svc', ?, '', ?, ?, ?)", [(m.minute, m.calls, m.successes, m.failures) for m in worse])
        conn.execute("INSERT INTO circuit_breaker_events (service_name, event_type, to_state, ts, additional_data) "
                     "VALUES ('svc', 'adjustment', 'closed', ?, ?)", (at, json.dumps(change)))
    history = Analyst.attach(store).adjuster.adjustments("svc", NOW)
    assert history[-1].cost_after is not None and history[-1].cost_after.per_call > 0.05  # measured: worse
    nothing = Recommendation(8, 30.0, None, 0.9, "steady", "n/a", False, 8, 30.0, 50)
    assert decide(Settings(8, 30.0), nothing, now=NOW, history=history).action == "hold"


def test_a_change_about_to_be_judged_is_replayed_over_the_stretch_after_it(make: Any, tmp_path: Path) -> None:
    """Both settings are priced on the same stretch after the change (the per-second rows of its 30 minutes),
    so the verdict does not blame the change for what the service did meanwhile."""
    reg, store = make(auto_apply=True, analysis_interval=60.0)
    reg.get("svc", failure_threshold=3, recovery_timeout=30)
    assert store.flush()
    at = (int(NOW) // 60 - 40) * 60.0
    change = {"action": "adjust", "reason": "test", "before": {"threshold": 10, "timeout": 60.0},
              "after": {"threshold": 3, "timeout": 30.0}, "evidence": {}, "refused_healthy": None,
              "cost_before": {"seconds": 1800.0, "calls": 9000, "cost": 10.0}}
    write_history(tmp_path / "a.db", "svc", bursts(at, 6, 12, random.Random(3)), 300, at, at + 1800.0)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("INSERT INTO circuit_breaker_events (service_name, event_type, to_state, ts, additional_data) "
                     "VALUES ('svc', 'adjustment', 'closed', ?, ?)", (at, json.dumps(change)))
    adjuster = Analyst.attach(store).adjuster
    assert adjuster.adjustments("svc", at + 600.0)[-1].replayed is None  # not judged yet: not replayed
    (got,) = adjuster.adjustments("svc", at + 1800.0)
    assert got.replayed is not None
    old, new = got.replayed
    # Bursts of 12 failures among 5 calls a second: a threshold of 3 trips on each and refuses healthy calls
    # for 30 s; one of 10 rarely sees 10 failures in a row.
    assert 0.0 <= old < new


def test_the_analysis_reads_decided_calls_from_the_rollups(make: Any, clock: FakeClock) -> None:
    # The table's calls is every call; read as decided calls, a minute the open breaker refused 50 calls
    # of looked like 51 decided calls with one failure: a healthy minute, never a failing one.
    reg, store = make()
    b = reg.get("svc", failure_threshold=1, recovery_timeout=600)
    b.record_failure(b.admit(), Boom())
    refused = 0
    for _ in range(50):
        with contextlib.suppress(CircuitOpenError):
            b.admit()
            raise AssertionError("the open breaker let a call through")
        refused += 1
    assert store.flush()
    rows = store.query("SELECT calls, rejections FROM circuit_breaker_metrics WHERE service_name = 'svc'")
    assert [(r["calls"], r["rejections"]) for r in rows] == [(51, 50)]
    now = clock.time()
    (m,) = rollups_of(store.read, "svc", now - 600, now + 60)
    assert (m.calls, m.successes, m.failures, m.rejections) == (1, 0, 1, refused)


def test_an_adjustment_carries_jitter_to_the_breaker_and_to_every_process(make: Any) -> None:
    reg, _ = make()
    b = reg.get("locked", failure_threshold=5, recovery_timeout=60)
    assert settings_of(b) == Settings(5, 60.0)
    jittered = Settings(5, 60.0, jitter=0.2)
    assert _reconfigure(b, jittered) and b.policy.jitter == 0.2 and settings_of(b) == jittered
    assert _settings(json.loads(json.dumps(_plain_settings(jittered)))) == jittered  # as the event row keeps it
    # A row from before adjustments recorded jitter did not change it: a follower keeps its own.
    assert _settings({"threshold": 5, "timeout": 60.0}) == Settings(5, 60.0)
    assert _settings({"threshold": 5, "timeout": 60.0}, 0.3) == Settings(5, 60.0, jitter=0.3)
    assert _reconfigure(b, Settings(5, 60.0)) and b.policy.jitter == 0.0
    # Applying advice explicitly keeps the jitter the application configured.
    mine = reg.get("mine", failure_threshold=5, recovery_timeout=60, jitter=0.3)
    advice = Recommendation(3, 20.0, None, 0.9, "burst", "test", True, 5, 60.0, 40)
    assert apply(mine, advice) and (mine.policy.failure_threshold, mine.policy.jitter) == (3, 0.3)


def test_opening_and_closing_raise_alerts_delivered_to_the_callback(make: Any, clock: FakeClock) -> None:
    reg, store = make()
    got: list[dict[str, Any]] = []
    store.add_alert_callback(got.append)
    b = reg.get("svc", failure_threshold=1, recovery_timeout=5)
    b.record_failure(b.admit(), Boom())
    assert eventually(lambda: len(got) == 1)
    clock.advance(5)
    assert store.flush()  # the probe's lease is taken as the open period ends
    b.record_success(b.admit())
    assert eventually(lambda: len(got) == 2)
    assert [(a["alert_type"], a["severity"]) for a in got] == [("circuit_opened", "error"), ("circuit_closed", "info")]
    rows = store.alerts("svc")
    assert {r["alert_type"] for r in rows} == {"circuit_opened", "circuit_closed"}
    assert all(r["id"] == a["id"] for r, a in zip(sorted(rows, key=lambda r: r["id"]), got, strict=True))


def test_an_opening_raises_its_alert_although_the_store_closes_at_once(tmp_path: Path, clock: FakeClock,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that exits just after a circuit opens closes its store before the analyst's thread got
    the CPU (a busy machine; docs/tutorial.md's ``python app.py`` once lost its alert so): the thread,
    finding the store closing, still raises the alerts on the transitions it was told about. Here it
    gets the CPU only once close() has begun."""
    on_time = Analyst._run

    def late(self: Analyst) -> None:
        while not self._closed:
            time.sleep(0.001)
        on_time(self)

    monkeypatch.setattr(Analyst, "_run", late)
    store = SQLiteStore(tmp_path / "a.db", clock=clock, poll_interval=0.01, analysis_interval=3600.0)
    reg = Registry(clock=clock, hooks=[], store=store)
    b = reg.get("svc", failure_threshold=1)
    b.record_failure(b.admit(), Boom())
    store.close(timeout=10)

    def stored() -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(tmp_path / "a.db")) as conn:
            return conn.execute("SELECT service_name, alert_type, severity FROM circuit_breaker_alerts").fetchall()

    assert eventually(lambda: stored() == [("svc", "circuit_opened", "error")])


def test_acknowledge_by_id_and_by_service(make: Any, clock: FakeClock) -> None:
    reg, store = make()
    b = reg.get("svc", failure_threshold=1, recovery_timeout=5)
    b.record_failure(b.admit(), Boom())
    clock.advance(5)
    assert store.flush()
    b.record_success(b.admit())
    assert eventually(lambda: len(store.alerts("svc")) == 2)
    first = store.alerts("svc")[-1]["id"]
    assert store.acknowledge(first) == 1
    assert len(store.alerts("svc")) == 1
    assert store.acknowledge(service="svc") == 1
    assert store.alerts("svc") == []
    assert len(store.alerts("svc", include_acknowledged=True)) == 2
    seed = DatabaseCircuitBreaker(service_name="svc", registry=reg, failure_threshold=1, recovery_timeout=5)
    assert seed.get_stats()["unacknowledged_alerts"] == 0


def test_an_alert_acknowledged_elsewhere_does_not_silence_its_repeats(make: Any, clock: FakeClock,
                                                                       tmp_path: Path) -> None:
    """An operator acknowledges the opening from the CLI (another process: this one's engine does not
    hear of it), then the circuit opens again within the deduplication window: the repeats are a new
    alert, stored unacknowledged with their count and handed to the callback -- they were counted into
    the acknowledged row's in-memory copy and lost."""
    reg, store = make()
    got: list[dict[str, Any]] = []
    store.add_alert_callback(got.append)
    b = reg.get("svc", failure_threshold=1, recovery_timeout=5)
    b.record_failure(b.admit(), Boom())
    assert eventually(lambda: [a["alert_type"] for a in got] == ["circuit_opened"])
    with contextlib.closing(sqlite3.connect(tmp_path / "a.db")) as conn, conn:
        conn.execute("UPDATE circuit_breaker_alerts SET acknowledged = TRUE")  # what `circuitry ack` writes
    for _ in range(3):
        clock.advance(5)
        assert store.flush()
        b.record_success(b.admit())  # closes
        assert store.flush()
        b.record_failure(b.admit(), Boom())  # and opens again
        assert store.flush()

    def opened() -> list[dict[str, Any]]:
        return [r for r in store.alerts("svc") if r["alert_type"] == "circuit_opened"]

    assert eventually(lambda: sum(r["occurrences"] for r in opened()) >= 3)
    Analyst.attach(store).run_once(clock.time())
    assert [r["occurrences"] for r in opened()] == [3]
    assert opened()[0]["id"] != got[0]["id"]
    assert eventually(lambda: [a["alert_type"] for a in got if a["alert_type"] == "circuit_opened"]
                      == ["circuit_opened", "circuit_opened"])
    assert any(a["id"] == opened()[0]["id"] and a["count"] >= 1 for a in got)


def test_the_failure_rate_rule_counts_each_second_once(make: Any, clock: FakeClock) -> None:
    """With an analysis interval shorter than the rule's window, every run read the whole last minute
    and added it again: 10 calls with 5 failures became "50% of 20 calls failed" on the second run
    (below min_calls_for_rate, 20, there is no rule). 30 such calls are a real high failure rate."""
    reg, store = make(analysis_interval=1.0)
    few, many = reg.get("few", failure_threshold=10**6), reg.get("many", failure_threshold=10**6)
    for b, n in ((few, 10), (many, 30)):
        for i in range(n):
            if i % 2:
                b.record_failure(b.admit(), Boom())
            else:
                b.record_success(b.admit())
    assert store.flush()
    analyst = Analyst.attach(store)
    for _ in range(8):
        clock.advance(1)
        assert store.flush()
        analyst.run_once(clock.time())

    def rate_alerts(name: str) -> list[dict[str, Any]]:
        return [a for a in store.alerts(name, include_acknowledged=True) if a["alert_type"] == "high_failure_rate"]

    assert rate_alerts("few") == []
    (alert,) = rate_alerts("many")
    assert "of 30 calls" in alert["message"], alert["message"]


def test_a_flapping_circuit_does_not_flood(make: Any, clock: FakeClock) -> None:
    reg, store = make()
    got: list[dict[str, Any]] = []
    store.add_alert_callback(got.append)
    b = reg.get("flappy", failure_threshold=1, recovery_timeout=1)
    for _ in range(40):
        b.record_failure(b.admit(), Boom())
        assert store.flush()
        clock.advance(1)
        assert store.flush()
        b.record_success(b.admit())
        assert store.flush()
    assert eventually(lambda: any(a["alert_type"] == "flapping" for a in got))

    def opened() -> list[dict[str, Any]]:
        return [r for r in store.alerts("flappy") if r["alert_type"] == "circuit_opened"]

    # the analyst's thread takes the transitions behind the writer, and stores the counted repeats as it
    # goes: wait until it has seen the last opening (a fixed pause was too short on a busy machine)
    assert eventually(lambda: sum(r["occurrences"] for r in opened()) >= 40)
    Analyst.attach(store).run_once(clock.time())  # drains any repeats still counted into the rows
    rows = store.alerts("flappy")
    assert len(got) <= 6 and len(rows) <= 6
    assert len(opened()) == 1 and opened()[0]["occurrences"] == 40
    assert any(r["severity"] == "critical" for r in rows)


def test_two_processes_raise_one_alert_between_them(make: Any, clock: FakeClock) -> None:
    """Both processes open the circuit before either hears of the other: one transition is written (by
    the process that won the compare-and-set), so one alert is raised."""
    (reg_a, store_a), (reg_b, store_b) = make(), make()
    a, b = reg_a.get("svc", failure_threshold=1), reg_b.get("svc", failure_threshold=1)
    assert store_a.flush() and store_b.flush()
    a.record_failure(a.admit(), Boom())
    b.record_failure(b.admit(), Boom())

    def opened() -> list[dict[str, Any]]:
        return [r for r in store_a.alerts("svc") if r["alert_type"] == "circuit_opened"]

    assert eventually(lambda: len(opened()) == 1)
    assert store_a.flush() and store_b.flush()
    time.sleep(0.2)
    assert len(opened()) == 1 and opened()[0]["occurrences"] == 1
    assert a.state is b.state is CircuitState.OPEN


def test_open_too_long_reads_the_state_every_process_shares(make: Any, clock: FakeClock) -> None:
    """Process B saw the circuit open and go half-open; process A's probe closed it. B's periodic check
    then said "open for 4 seconds" (critical) from its own transitions: every open_too_long alert of a
    review's 3-hour runs with four workers was false. A circuit that is open is still reported."""
    from circuitry.analysis.alerts import AlertPolicy

    policy = AlertPolicy(open_too_long=4)
    (reg_a, store_a), (reg_b, store_b) = make(alert_policy=policy), make(alert_policy=policy)
    analyst_a, analyst_b = Analyst.attach(store_a), Analyst.attach(store_b)
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=2)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=2)
    b.record_failure(b.admit(), Boom())  # B opens it
    assert eventually(lambda: a.state is CircuitState.OPEN)
    clock.advance(2)
    assert store_a.flush() and store_b.flush()  # a lease for the probe, taken as the open period ends

    def a_probes() -> bool:
        try:
            a.record_success(a.admit())
            return True
        except CircuitOpenError:
            return False

    assert eventually(a_probes)  # A's probe succeeds: closed
    assert eventually(lambda: b.state is CircuitState.CLOSED)
    clock.advance(5)

    def open_too_long() -> list[dict[str, Any]]:
        return [r for r in store_a.alerts("svc") if r["alert_type"] == "open_too_long"]

    analyst_b.run_once()
    assert store_b.flush() and open_too_long() == []
    b.record_failure(b.admit(), Boom())  # open again, and for good
    assert eventually(lambda: a.state is CircuitState.OPEN)
    clock.advance(5)
    analyst_a.run_once(clock.time() + 3600)  # (another period: the analysis lease of the first is taken)
    assert eventually(lambda: len(open_too_long()) == 1)


def test_processes_with_different_intervals_share_the_analyses(make: Any, clock: FakeClock) -> None:
    """A worker analysing every 60 s beside one analysing every 30 s (a rolling change of settings): the
    periods were numbered per interval, so the 60 s worker's numbers were always the smaller and it
    analysed once in an hour. Periods are named by the second they start at now."""
    (reg_a, store_a), (reg_b, store_b) = make(analysis_interval=60), make(analysis_interval=30)
    reg_a.get("svc")
    reg_b.get("svc")
    assert store_a.flush() and store_b.flush()
    a, b = Analyst.attach(store_a), Analyst.attach(store_b)
    start = (clock.time() // 60 + 1) * 60
    runs_a = runs_b = 0
    for t in range(0, 3600, 30):
        if t % 60 == 0:
            runs_a += len(a.run_once(start + t))
        runs_b += len(b.run_once(start + t))
    assert runs_a == 60 and runs_b == 60  # one analysis per 30 s period between them


def test_analysis_periods_under_a_second_are_periods_of_their_own(make: Any, clock: FakeClock) -> None:
    """Periods were named by the second they start at: with an interval of 0.5 s two periods had one name,
    and the second analysis of each second was refused its claim."""
    reg, store = make(analysis_interval=0.5)
    reg.get("svc")
    assert store.flush()
    analyst = Analyst.attach(store)
    start = float(int(clock.time()) + 10)
    assert [len(analyst.run_once(start + k * 0.5)) for k in range(4)] == [1, 1, 1, 1]


def test_flapping_counts_the_trips_of_every_process(make: Any, clock: FakeClock) -> None:
    """Two processes trip one circuit in turn, four times in four seconds: each process's alert engine
    heard of the two trips it wrote, so neither raised ``flapping`` (three trips in ten minutes). The
    periodic analysis counts the trips in the shared history."""
    (reg_a, store_a), (reg_b, store_b) = make(), make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=600)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=600)
    assert store_a.flush() and store_b.flush()
    for i in range(4):
        (mine, store), (theirs, other) = ((a, store_a), (b, store_b)) if i % 2 == 0 else ((b, store_b), (a, store_a))
        mine.record_failure(mine.admit(), Boom())  # a trip, written by this process
        assert store.flush()
        assert eventually(lambda t=theirs, o=other: o.flush() and t.state is CircuitState.OPEN)
        mine.reset()
        assert store.flush()
        assert eventually(lambda t=theirs, o=other: o.flush() and t.state is CircuitState.CLOSED)
        clock.advance(1)
    history = store_a.read.transitions("svc", 0, clock.time() + 1)
    assert sum(1 for t in history if (t["from_state"], t["to_state"]) == ("closed", "open")) == 4

    def flapping() -> list[dict[str, Any]]:
        return [r for r in store_a.alerts("svc") if r["alert_type"] == "flapping"]

    assert eventually(lambda: len(store_a.alerts("svc", include_acknowledged=True)) >= 2)  # the openings'
    assert flapping() == []  # each process's engine saw two trips
    Analyst.attach(store_a).run_once(clock.time())  # the periodic analysis reads the shared history
    assert len(flapping()) == 1 and "opened 4 times" in flapping()[0]["message"]


def test_the_seeds_alert_handler_gets_the_seeds_keys(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    def alert_handler(alert_data: dict[str, Any]) -> None:
        if alert_data["severity"] == "critical":
            received.append(alert_data)
        if alert_data["alert_type"] == "threshold_recommendation":
            received.append(alert_data)
        received.append(alert_data)

    breaker = DatabaseCircuitBreaker(db_path=str(tmp_path / "seed.db"), service_name="openrouter_api",
                                     failure_threshold=1, enable_alerts=True, alert_callback=alert_handler)

    async def down() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        asyncio.run(breaker.call(down))
    assert eventually(lambda: len(received) >= 1)
    assert {"service_name", "alert_type", "severity", "message", "details", "acknowledged"} <= set(received[0])
    assert received[0]["alert_type"] == "circuit_opened"


def test_disabled_alerts_raise_nothing(tmp_path: Path) -> None:
    breaker = DatabaseCircuitBreaker(db_path=str(tmp_path / "quiet.db"), service_name="quiet",
                                     failure_threshold=1, enable_alerts=False)

    async def down() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        asyncio.run(breaker.call(down))
    store = breaker.registry.store
    assert store is not None and store.flush()
    time.sleep(0.2)
    assert store.alerts("quiet") == []


@pytest.mark.parametrize("kind", ["raises", "hangs", "calls_back", "async_hangs"])
def test_alert_callbacks_cannot_affect_protected_calls(make: Any, clock: FakeClock, kind: str) -> None:
    reg, store = make()
    release = threading.Event()
    seen: list[str] = []
    b = reg.get("svc", failure_threshold=1, recovery_timeout=1)

    def raises(alert: dict[str, Any]) -> None:
        seen.append(alert["alert_type"])
        raise RuntimeError("callback bug")

    def hangs(alert: dict[str, Any]) -> None:
        seen.append(alert["alert_type"])
        release.wait(30)

    def calls_back(alert: dict[str, Any]) -> None:
        seen.append(alert["alert_type"])
        b.stats()
        b.reset()

    async def async_hangs(alert: dict[str, Any]) -> None:
        seen.append(alert["alert_type"])
        await asyncio.sleep(30)

    store.add_alert_callback({"raises": raises, "hangs": hangs, "calls_back": calls_back,
                              "async_hangs": async_hangs}[kind], timeout=0.2)

    @circuit("svc", registry=reg)
    def call(fail: bool) -> str:
        if fail:
            raise Boom()
        return "ok"

    outcomes = []
    for i in range(200):
        try:
            outcomes.append(call(i % 10 == 0))
        except Boom:
            outcomes.append("boom")
        except CircuitOpenError:
            outcomes.append("refused")
            clock.advance(1)
    release.set()
    assert set(outcomes) <= {"ok", "boom", "refused"}
    assert outcomes.count("boom") >= 1
    assert eventually(lambda: len(seen) >= 1)


def test_a_circuit_that_opens_is_analysed_at_once(make: Any, tmp_path: Path) -> None:
    """Besides the periodic run (an hour apart here), an opening triggers an analysis of that circuit."""
    reg, store = make()
    b = reg.get("bursty", failure_threshold=1, recovery_timeout=60)
    assert store.flush()
    write_history(tmp_path / "a.db", "bursty", bursts(NOW - 900, 3, 12, random.Random(7)), 600, NOW - 900, NOW)
    b.record_failure(b.admit(), Boom())

    def stored() -> list[dict[str, Any]]:
        return store.query("SELECT pattern_type FROM circuit_breaker_failure_patterns WHERE service_name = 'bursty'")

    assert eventually(lambda: stored() == [{"pattern_type": "burst"}])


def test_a_circuit_with_little_history_raises_no_likely_to_open(make: Any, clock: FakeClock) -> None:
    """A circuit that tripped in its first seconds was "likely to open" (50 %, from that one trip) the moment
    it closed: the alert waits for three horizons of history."""
    reg, store = make()
    b = reg.get("young", failure_threshold=1, recovery_timeout=5)
    b.record_success(b.admit())
    b.record_failure(b.admit(), Boom())
    clock.advance(5)
    assert store.flush()
    b.record_success(b.admit())
    assert store.flush()
    analysis = Analyst.attach(store).run_once(clock.time() + 1)["young"]
    assert analysis.prediction is not None and analysis.prediction.open_probability >= 0.5
    assert [a["alert_type"] for a in store.alerts("young") if a["alert_type"] == "likely_to_open"] == []


def test_a_closed_circuit_predicted_to_trip_raises_likely_to_open(make: Any, tmp_path: Path) -> None:
    reg, store = make()
    reg.get("flaky", failure_threshold=5, recovery_timeout=30)
    assert store.flush()
    # 20-second outages every two minutes for an hour: the next five minutes very likely hold one
    starts = tuple(range(0, 3600, 120))
    outages(tmp_path / "a.db", "flaky", NOW, starts=starts, length=20)
    first = int(NOW) - 3600
    with sqlite3.connect(tmp_path / "a.db") as conn:  # the breaker opened in each, and closed after it
        conn.executemany(
            "INSERT INTO circuit_breaker_events (service_name, event_type, from_state, to_state, additional_data, ts) "
            "VALUES ('flaky', 'state_change', ?, ?, ?, ?)",
            [row for o in starts for row in (
                ("closed", "open", '{"reason": "failure_threshold"}', first + o + 0.5),
                ("open", "half_open", '{"reason": "recovery_timeout"}', first + o + 30.5),
                ("half_open", "closed", '{"reason": "probe_succeeded"}', first + o + 30.6))])
    analysis = Analyst.attach(store).run_once(NOW)["flaky"]
    assert analysis.prediction is not None and analysis.prediction.open_probability >= 0.5
    rows = {r["alert_type"]: r for r in store.alerts("flaky")}
    assert rows["likely_to_open"]["severity"] == "warning" and "likely to open" in rows["likely_to_open"]["message"]
