"""The analyst: runs the pattern engine and the alert rules over a store's history.

It has its own thread and connection, so a 50 ms classification never delays the writer's prompt
commit of a transition. It wakes every ``interval`` seconds, and at once when a transition happens
(transitions raise alerts). Everything it computes comes from the pure modules
(:mod:`circuitry.analysis.patterns`, :mod:`circuitry.analysis.recommend`,
:mod:`circuitry.analysis.alerts`); this module only reads history, writes results, and delivers alerts.

Alerts are deduplicated twice, on purpose: the :class:`~circuitry.analysis.alerts.AlertEngine` counts a
repeat within its window into the alert it already raised, and the database — shared by every
process — is the final word: an unacknowledged alert with the same key inside the window absorbs
the occurrence (``occurrences`` goes up) instead of a second row, so two processes watching one
flapping service raise one alert between them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from circuitry._state import CircuitState
from circuitry.analysis.alerts import Alert, AlertEngine, AlertPolicy
from circuitry.analysis.patterns import PatternResult, classify
from circuitry.analysis.recommend import Recommendation, recommend
from circuitry.events import Event, EventKind
from circuitry.runners.delivery import CallbackDeliverer

if TYPE_CHECKING:
    from circuitry._core import CircuitBreaker
    from circuitry.store._sqlite import SQLiteStore

__all__ = ["ON_OPEN_SPACING", "Analyst", "analyse_history", "load_calls"]

#: Seconds between two analyses of one circuit triggered by its openings (a flapping circuit opens often).
ON_OPEN_SPACING = 10.0

_ISO = "strftime('%Y-%m-%d %H:%M:%f', ?, 'unixepoch')"


def load_calls(conn: sqlite3.Connection, service: str, since: float, until: float) -> list[tuple[float, bool]]:
    """The window's calls as ``(timestamp, failed)`` pairs in time order.

    Failures are exact (one event row each). Successes are stored as per-minute counts, so they are
    spread evenly over their minute: the pattern statistics look at failures against the calls around
    them, at a resolution of seconds to minutes, which this preserves.
    """
    failures = [r[0] for r in conn.execute(
        "SELECT ts FROM circuit_breaker_events WHERE service_name = ? AND event_type = 'failure' "
        "AND ts >= ? AND ts <= ? ORDER BY ts", (service, since, until))]
    ok: list[float] = []
    for minute, n in conn.execute(
            "SELECT minute, successes FROM circuit_breaker_metrics WHERE service_name = ? AND minute >= ? "
            "AND minute <= ? AND successes > 0 ORDER BY minute", (service, int(since // 60), int(until // 60))):
        step = 60.0 / n
        base = minute * 60.0 + step / 2
        ok.extend(t for t in (base + i * step for i in range(n)) if since <= t <= until)
    calls = [(t, True) for t in failures] + [(t, False) for t in ok]
    calls.sort()
    return calls


def analyse_history(conn: sqlite3.Connection, service: str, threshold: int, timeout: float, now: float,
                    window: float) -> tuple[PatternResult, Recommendation, list[tuple[float, bool]]]:
    """Classify the last ``window`` seconds of ``service`` and recommend settings against the current
    ``threshold`` and ``timeout``; also returns the calls it looked at."""
    calls = load_calls(conn, service, now - window, now)
    result = classify(calls, window_start=now - window, window_end=now)
    rec = recommend(result, current_threshold=threshold, current_timeout=timeout, calls=calls)
    return result, rec, calls


class _Callback:
    __slots__ = ("deliverer", "service")

    def __init__(self, deliverer: CallbackDeliverer, service: str | None) -> None:
        self.deliverer = deliverer
        self.service = service


class Analyst:
    """Periodic analysis and alerting for one store (started by the store with its first breaker).

    Args:
        store: The store whose history it reads.
        interval: Seconds between analyses of every circuit.
        window: Seconds of history each analysis classifies.
        alert_policy: Alert thresholds and windows.
        auto_apply: Apply recommendations to the breakers as they are made (off by default).
    """

    def __init__(self, store: SQLiteStore, *, interval: float = 60.0, window: float = 900.0,
                 alert_policy: AlertPolicy | None = None, auto_apply: bool = False) -> None:
        self.store = store
        self.interval = interval
        self.window = window
        self.auto_apply = auto_apply
        self.engine = AlertEngine(alert_policy)
        self.muted: set[str] = set()  # services whose alerts are disabled
        self._callbacks: list[_Callback] = []
        self._transitions: deque[Event] = deque(maxlen=100_000)
        self._wake = threading.Event()
        self.io_lock = threading.RLock()  # held while the connection is in use (fork() waits for it)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._last_run = 0.0
        self._failing = False
        self.runs = 0
        self._analysed_at: dict[str, float] = {}
        self.latest: dict[str, tuple[PatternResult, Recommendation]] = {}

    # -- wiring ---------------------------------------------------------------------------------------

    def add_callback(self, callback: Callable[[dict[str, Any]], Any], service: str | None = None,
                     timeout: float = 2.0) -> None:
        self._callbacks.append(_Callback(CallbackDeliverer(callback, timeout=timeout), service))

    def transitioned(self, event: Event) -> None:
        """A local transition (called from the store's hook): alert on it promptly."""
        if event.kind is EventKind.TRANSITION:
            self._transitions.append(event)
            self._wake.set()

    def start(self) -> None:
        if self._thread is None and not self._closed:
            self._last_run = self.store._time()  # the first periodic run comes one interval from now
            self._thread = threading.Thread(target=self._run, name="circuitry-analyst", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for cb in self._callbacks:
            cb.deliverer.close(timeout)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def after_fork(self) -> None:
        self._conn = None  # closed by the store before the fork
        self.io_lock = threading.RLock()
        self._thread = None
        self._wake = threading.Event()
        self._transitions.clear()

    # -- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(min(self.interval, 1.0))
            self._wake.clear()
            if self._closed:
                return
            try:
                now = self.store._time()
                with self.io_lock:
                    self._alert_transitions(now)
                    if now - self._last_run >= self.interval:
                        self._last_run = now
                        self.run_once(now)
                self._failing = False
            except Exception as exc:  # the analyst is advisory too: report once, try again later
                if not self._failing:
                    self._failing = True
                    from circuitry.store._sqlite import _log

                    _log("warning", "circuitry.analysis_failed", path=str(self.store.path),
                         error_type=type(exc).__qualname__, error_message=str(exc)[:500])
                if self._conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.close()
                    self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self.store._open(timeout=self.store.busy_timeout)
        return self._conn

    def _alert_transitions(self, now: float) -> None:
        alerts: list[Alert] = []
        opened: set[str] = set()
        while self._transitions:
            event = self._transitions.popleft()
            if event.to_state is CircuitState.OPEN:
                opened.add(event.circuit)
            if event.circuit not in self.muted:
                alerts.extend(self.engine.observe(event, event.at))
        if alerts:
            self._persist(alerts, now)
        # A circuit that just opened is analysed at once (at most every ON_OPEN_SPACING seconds each):
        # the pattern behind an outage is most useful while it is happening.
        due = [name for name in opened if now - self._analysed_at.get(name, -1e18) >= ON_OPEN_SPACING]
        if due:
            self._run_once(now, only=due)

    def run_once(self, now: float | None = None) -> dict[str, tuple[PatternResult, Recommendation]]:
        """Analyse every circuit of the store now; returns the results by name."""
        with self.io_lock:
            return self._run_once(self.store._time() if now is None else now)

    def _run_once(self, now: float, only: Sequence[str] | None = None) -> dict[str, tuple[PatternResult,
                                                                                          Recommendation]]:
        conn = self._connection()
        results: dict[str, tuple[PatternResult, Recommendation]] = {}
        alerts: list[Alert] = []
        links = list(self.store._links.values())
        if only is not None:
            links = [link for link in links if link.name in only]
        for link in links:
            self._analysed_at[link.name] = now
            result, rec = self.analyse(conn, link.breaker, now)
            results[link.name] = (result, rec)
            if result.type is not None:
                self._record_pattern(conn, link.name, result, rec, now)
            muted = link.name in self.muted
            if not muted and rec.has_recommendations:
                alerts.extend(self.engine.recommendation(link.name, rec.as_seed_dict(), now))
            if self.auto_apply and rec.has_recommendations:
                apply(link.breaker, rec)
            calls, failures = self._last_minute(conn, link.name, now)
            if not muted and calls:
                alerts.extend(self.engine.observe_counts(link.name, calls, failures, now))
        if only is None:
            alerts.extend(a for a in self.engine.tick(now) if a.service_name not in self.muted)
        self._persist(alerts, now)
        self.latest.update(results)
        self.runs += 1
        return results

    def analyse(self, conn: sqlite3.Connection, breaker: CircuitBreaker,
                now: float) -> tuple[PatternResult, Recommendation]:
        p = breaker.policy
        result, rec, _ = analyse_history(conn, breaker.name, p.failure_threshold, p.recovery_timeout,
                                         now, self.window)
        return result, rec

    def _last_minute(self, conn: sqlite3.Connection, service: str, now: float) -> tuple[int, int]:
        row = conn.execute("SELECT coalesce(sum(successes + failures), 0), coalesce(sum(failures), 0) FROM "
                           "circuit_breaker_metrics WHERE service_name = ? AND minute >= ?",
                           (service, int((now - 60) // 60))).fetchone()
        return int(row[0]), int(row[1])

    def _record_pattern(self, conn: sqlite3.Connection, service: str, result: PatternResult,
                        rec: Recommendation, now: float) -> None:
        ev = result.evidence
        evidence = {k: getattr(ev, k) for k in ev.__dataclass_fields__}
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO circuit_breaker_failure_patterns (service_name, pattern_type, time_window_seconds, "
                "failure_count, error_rate, suggested_threshold, suggested_timeout, confidence_score, evidence, "
                f"created_at, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {_ISO}, ?)",
                (service, result.type, int(self.window), ev.failures, ev.failures_per_second,
                 rec.recommended_threshold, round(rec.recommended_timeout), result.confidence,
                 json.dumps(evidence, default=str), now, now))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    # -- alerts ---------------------------------------------------------------------------------------

    def _persist(self, alerts: Sequence[Alert], now: float) -> None:
        aggregates = self.engine.pending_aggregates()
        if not alerts and not aggregates:
            return
        conn = self._connection()
        window = self.engine.policy.dedup_window
        fresh: list[dict[str, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for alert in alerts:
                row = conn.execute(
                    "SELECT id FROM circuit_breaker_alerts WHERE alert_key = ? AND acknowledged = FALSE "
                    "AND ts >= ? ORDER BY id DESC LIMIT 1", (alert.key, alert.created_at - window)).fetchone()
                if row is not None:  # another process raised it already: count this occurrence in
                    conn.execute(f"UPDATE circuit_breaker_alerts SET occurrences = occurrences + 1, "
                                 f"last_seen_at = {_ISO} WHERE id = ?", (alert.created_at, row[0]))
                    continue
                cur = conn.execute(
                    "INSERT INTO circuit_breaker_alerts (service_name, alert_type, severity, message, details, "
                    f"acknowledged, created_at, occurrences, last_seen_at, alert_key, ts) VALUES "
                    f"(?, ?, ?, ?, ?, FALSE, {_ISO}, 1, {_ISO}, ?, ?)",
                    (alert.service_name, alert.alert_type, alert.severity, alert.message,
                     json.dumps(alert.details, default=str), alert.created_at, alert.created_at, alert.key,
                     alert.created_at))
                data = alert.as_dict()
                data["id"] = cur.lastrowid
                fresh.append(data)
            for agg in aggregates:
                conn.execute(
                    f"UPDATE circuit_breaker_alerts SET occurrences = occurrences + ?, last_seen_at = {_ISO} "
                    "WHERE id = (SELECT id FROM circuit_breaker_alerts WHERE alert_key = ? AND acknowledged = FALSE "
                    "ORDER BY id DESC LIMIT 1)", (agg.added, agg.last_seen, agg.alert.key))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        for data in fresh:  # after the commit: a callback sees an alert that is in the table
            for cb in self._callbacks:
                if cb.service is None or cb.service == data["service_name"]:
                    cb.deliverer.deliver(data)


def apply(breaker: CircuitBreaker, rec: Recommendation) -> bool:
    """Give ``breaker`` the recommended threshold, timeout and backoff. Returns whether it changed."""
    if not rec.has_recommendations:
        return False
    p = breaker.policy
    changes: dict[str, Any] = {"failure_threshold": rec.recommended_threshold,
                               "recovery_timeout": float(rec.recommended_timeout)}
    if rec.backoff_multiplier is not None and rec.backoff_multiplier >= 1.0:
        changes["backoff_factor"] = float(rec.backoff_multiplier)
        cap = p.max_recovery_timeout
        if cap is not None and cap < rec.recommended_timeout:
            changes["max_recovery_timeout"] = float(rec.recommended_timeout)
    elif p.max_recovery_timeout is not None and p.max_recovery_timeout < rec.recommended_timeout:
        changes["max_recovery_timeout"] = float(rec.recommended_timeout)
    new = replace(p, **changes)
    if new == p:
        return False
    breaker.reconfigure(new)
    return True

