"""The analyst: runs the pattern engine and the alert rules over a store's history, beside its writer.

It has its own thread and connection (:class:`~circuitry.store.records.Records`), so a classification
never delays the writer's prompt commit of a transition. It wakes every ``interval`` seconds, and at
once when this process writes a shared transition (transitions raise alerts). Everything it computes
comes from the pure modules (:mod:`circuitry.analysis`); this module reads history through the store's
read model, writes results, and delivers alerts.

Across processes: a circuit is analysed once per period by whichever process claims the period
first (``circuitry_analysis_leases``), and the process recorded with each pattern row. Alerts on a
transition are raised by the process that wrote the transition; repeats are deduplicated in the
database, so several workers watching one flapping circuit raise one alert between them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from circuitry._core import CircuitBreaker
from circuitry._state import CircuitState
from circuitry.analysis.alerts import Alert, AlertEngine, AlertPolicy
from circuitry.analysis.patterns import PatternResult, classify
from circuitry.analysis.recommend import Recommendation, recommend
from circuitry.events import Event
from circuitry.exceptions import StoreError
from circuitry.instrumentation.logging import log as _log
from circuitry.runners.delivery import CallbackDeliverer
from circuitry.store.engine import SharedStore
from circuitry.store.records import Records

__all__ = ["ON_OPEN_SPACING", "Analyst", "analyse_series", "apply"]

#: Seconds between two analyses of one circuit triggered by its openings (a flapping circuit opens often).
ON_OPEN_SPACING = 10.0


def analyse_series(series: Sequence[tuple[int, int, int]], *, now: float, window: float, threshold: int,
                   timeout: float) -> tuple[PatternResult, Recommendation, int]:
    """Classify per-second ``(second, calls, failures)`` rows of the last ``window`` seconds and recommend
    settings against the current ``threshold`` and ``timeout``; also returns the number of calls."""
    calls: list[tuple[float, bool]] = []
    since = now - window
    for second, n, failed in series:
        if n <= 0:
            continue
        # a second's calls spread over it, its failures evenly among them (the store keeps counts per second)
        step = 1.0 / n
        base = second + step / 2
        calls.extend((min(max(base + i * step, since), now), (i * failed) // n != ((i + 1) * failed) // n)
                     for i in range(n))
    result = classify(calls, window_start=now - window, window_end=now)
    rec = recommend(result, current_threshold=threshold, current_timeout=timeout, calls=calls)
    return result, rec, len(calls)


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


class Analyst:
    """Periodic analysis and alerting for one store (see the module docstring). Made by
    :meth:`attach` when the store is attached to a registry; its thread starts with the store's writer.
    """

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.interval = store.analysis_interval
        self.window = store.analysis_window
        self.auto_apply = store.auto_apply
        policy = store.alert_policy
        self.engine = AlertEngine(policy if isinstance(policy, AlertPolicy) or policy is None else None)
        self.records = Records(store.backend, store.process, timeout=store.busy_timeout)
        self._callbacks: list[tuple[CallbackDeliverer, str | None]] = []
        self._transitions: deque[Event] = deque(maxlen=100_000)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_run = 0.0
        self._failing = False
        self.runs = 0
        self.latest: dict[str, tuple[PatternResult, Recommendation]] = {}

    @classmethod
    def attach(cls, store: SharedStore) -> Analyst:
        """The store's analyst, made and registered once."""
        for runner in store.runners:
            if isinstance(runner, Analyst):
                return runner
        analyst = cls(store)
        for callback, service, timeout in store.alert_callbacks:
            analyst.add_callback(callback, service, timeout)
        store.add_runner(analyst)
        return analyst

    # -- Runner --------------------------------------------------------------------------------------

    def add_callback(self, callback: Callable[[dict[str, Any]], Any], service: str | None = None,
                     timeout: float = 2.0) -> None:
        self._callbacks.append((CallbackDeliverer(callback, timeout=timeout), service))

    def transitioned(self, event: Event) -> None:
        """A shared transition this process wrote: alert on it promptly."""
        self._transitions.append(event)
        self.start()
        self._wake.set()

    def acknowledged(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.engine.acknowledge(key)  # the next occurrence raises a fresh alert

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
        for deliverer, _ in self._callbacks:
            deliverer.close(timeout)
        self.records.close()

    def hold(self) -> None:
        self.records.hold()

    def release(self) -> None:
        self.records.release()

    def after_fork(self) -> None:
        self.records.inherited()
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
                self._alert_transitions(now)
                if now - self._last_run >= self.interval:
                    self._last_run = now
                    self.run_once(now)
                self._failing = False
            except Exception as exc:  # the analyst is advisory too: report once, try again later
                if not self._failing:
                    self._failing = True
                    _log("warning", "circuitry.analysis_failed", location=self.store.backend.location,
                         error_type=type(exc).__qualname__, error_message=str(exc)[:500])
                self.records.close()

    def _alert_transitions(self, now: float) -> None:
        alerts: list[Alert] = []
        opened: set[str] = set()
        while self._transitions:
            event = self._transitions.popleft()
            if event.to_state is CircuitState.OPEN:
                opened.add(event.circuit)
            if event.circuit in self.store.muted:
                continue
            alerts.extend(self.engine.observe(event, event.at))
        self._persist(alerts)
        # A circuit that just opened is analysed at once (one process, at most every ON_OPEN_SPACING
        # seconds): the pattern behind an outage is most useful while it is happening.
        if opened:
            self._run_once(now, only=opened, kind="opened", period=int(now // ON_OPEN_SPACING))

    def run_once(self, now: float | None = None) -> dict[str, tuple[PatternResult, Recommendation]]:
        """Analyse every circuit of this process that no other process has analysed this period."""
        now = self.store._time() if now is None else now
        return self._run_once(now, only=None, kind="periodic", period=int(now // self.interval))

    def _run_once(self, now: float, *, only: set[str] | None, kind: str,
                  period: int) -> dict[str, tuple[PatternResult, Recommendation]]:
        results: dict[str, tuple[PatternResult, Recommendation]] = {}
        alerts: list[Alert] = []
        muted = self.store.muted
        for link in self.store.links():
            name = link.name
            if only is not None and name not in only:
                continue
            if not self.records.claim(name, kind, period, now):
                continue  # another process analyses this circuit this period
            result, rec, _ = self.analyse(link.breaker, now)
            results[name] = (result, rec)
            if result.type is not None:
                ev = result.evidence
                self.records.pattern(name, pattern=result.type, window=self.window, failures=ev.failures,
                                     error_rate=ev.failures_per_second, threshold=rec.recommended_threshold,
                                     timeout=rec.recommended_timeout, confidence=result.confidence,
                                     evidence={k: getattr(ev, k) for k in ev.__dataclass_fields__}, now=now)
            if name not in muted and rec.has_recommendations:
                alerts.extend(self.engine.recommendation(name, rec.as_seed_dict(), now))
            if self.auto_apply and rec.has_recommendations:
                apply(link.breaker, rec)
            if name not in muted and kind == "periodic":
                last = self.store.read.series(name, now - 60.0, now)
                calls_1m, fails_1m = sum(r[1] for r in last), sum(r[2] for r in last)
                if calls_1m:
                    alerts.extend(self.engine.observe_counts(name, calls_1m, fails_1m, now))
        if kind == "periodic":
            alerts.extend(a for a in self.engine.tick(now) if a.service_name not in muted)
        self._persist(alerts)
        self.latest.update(results)
        self.runs += 1
        return results

    def analyse(self, breaker: CircuitBreaker, now: float | None = None) -> tuple[PatternResult, Recommendation, int]:
        """Classify ``breaker``'s last window from the stored per-second counts (no rows written)."""
        now = self.store._time() if now is None else now
        p = breaker.policy
        series = self.store.read.series(breaker.name, now - self.window, now)
        return analyse_series(series, now=now, window=self.window, threshold=p.failure_threshold,
                              timeout=p.recovery_timeout)

    def _persist(self, alerts: Sequence[Alert]) -> None:
        aggregates = self.engine.pending_aggregates()
        fresh = self.records.alerts(alerts, aggregates, self.engine.policy.dedup_window)
        for runner in self.store.runners if fresh else ():  # the webhook outbox (runners/webhooks.py)
            if hasattr(runner, "alerts_stored"):
                runner.alerts_stored(fresh)
        for data in fresh:  # after the commit: a callback sees an alert that is in the table
            for deliverer, service in self._callbacks:
                if service is None or service == data["service_name"]:
                    deliverer.deliver(data)


def analyse_now(store: SharedStore, service: str) -> tuple[PatternResult, Recommendation]:
    """Classify ``service``'s recent history now and recommend settings (no rows written)."""
    link = next((link for link in store.links() if link.name == service), None)
    if link is None:
        raise StoreError(f"no circuit {service!r} in this store")
    store.flush(0.5)
    result, rec, _ = Analyst.attach(store).analyse(link.breaker)
    return result, rec

