"""The analyst: runs the pattern engine and the alert rules over a store's history, beside its writer.

It has its own thread and connection (:class:`~circuitry.store.records.Records`), so a classification
never delays the writer's prompt commit of a transition. It wakes every ``interval`` seconds, and at
once when this process writes a shared transition (transitions raise alerts). Everything it computes
comes from the pure modules (:mod:`circuitry.analysis`); this module reads history through the store's
read model (:mod:`~circuitry.runners.stored`), writes results, and delivers alerts; automatic adjustment is
:mod:`~circuitry.runners.adjuster`'s.

Across processes: a circuit is analysed once per period by whichever process claims the period
first (``circuitry_analysis_leases``), and the process recorded with each pattern row. Alerts on a
transition are raised by the process that wrote the transition; repeats are deduplicated in the
database, so several workers watching one flapping circuit raise one alert between them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from circuitry._core import CircuitBreaker
from circuitry._state import CircuitState
from circuitry.analysis.alerts import Alert, AlertEngine
from circuitry.analysis.engine import Analysis
from circuitry.events import Event
from circuitry.exceptions import StoreError
from circuitry.instrumentation.logging import log as _log
from circuitry.runners.adjuster import ADJUSTMENT_EVENT, Adjuster, apply, settings_of
from circuitry.runners.delivery import CallbackDeliverer
from circuitry.runners.stored import analyse_stored
from circuitry.store.engine import SharedStore
from circuitry.store.records import Records

__all__ = ["ADJUSTMENT_EVENT", "ON_OPEN_SPACING", "Analyst", "analyse_stored", "apply", "settings_of"]

#: Seconds between two analyses of one circuit triggered by its openings (a flapping circuit opens often).
ON_OPEN_SPACING = 10.0

#: Seconds behind now the failure-rate rule reads: the per-second counts are written once a second.
_WRITE_LAG: Final = 2


class Analyst:
    """Periodic analysis and alerting for one store (see the module docstring). Made by
    :meth:`attach` when the store is attached to a registry; its thread starts with the store's writer.
    """

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.interval = store.analysis_interval
        self.window = store.analysis_window
        self.auto_apply = store.auto_apply
        self.engine = AlertEngine(store.alert_policy)  # an AlertPolicy or None: the store checked it
        self.records = Records(store.backend, store.process, timeout=store.busy_timeout)
        self._callbacks: list[tuple[CallbackDeliverer, str | None]] = []
        self._transitions: deque[Event] = deque(maxlen=100_000)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_run = 0.0
        self._failing = False
        self.runs = 0
        self.latest: dict[str, Analysis] = {}
        self._counted: dict[str, int] = {}  # per circuit: the seconds before this one are in the rate rule
        self.adjuster = Adjuster(store, self.records, store.adjust_policy, self.interval)

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
            self._thread.join(timeout)  # (it raises the alerts on the transitions it has been told)
        for deliverer, _ in self._callbacks:
            deliverer.close(timeout)
        self.records.close()

    def hold(self) -> None:
        self.records.hold()

    def release(self) -> None:
        self.records.release()

    def drop_idle(self) -> None:
        self.records.drop_idle()

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
                break
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
        # Closing. A program that exits just after a circuit opens closes its store before this thread
        # got the CPU: the alerts on the transitions told before close() are raised all the same (not
        # their analyses), here, so close() waits for the database no longer than its timeout.
        if self._transitions:
            try:
                self._persist(self._observe_transitions()[0])
            except Exception as exc:
                _log("warning", "circuitry.analysis_failed", location=self.store.backend.location,
                     error_type=type(exc).__qualname__, error_message=str(exc)[:500])

    def _alert_transitions(self, now: float) -> None:
        alerts, opened = self._observe_transitions()
        self._persist(alerts)
        # A circuit that just opened is analysed at once (one process, at most every ON_OPEN_SPACING
        # seconds): the pattern behind an outage is most useful while it is happening.
        if opened:
            self._run_once(now, only=opened, kind="opened", span=ON_OPEN_SPACING)

    def _observe_transitions(self) -> tuple[list[Alert], set[str]]:
        """The alerts on the transitions told so far (taken from the queue), and the circuits that opened."""
        alerts: list[Alert] = []
        opened: set[str] = set()
        while self._transitions:
            event = self._transitions.popleft()
            if event.to_state is CircuitState.OPEN:
                opened.add(event.circuit)
            if event.circuit in self.store.muted:
                continue
            alerts.extend(self.engine.observe(event, event.at))
        return alerts, opened

    def run_once(self, now: float | None = None) -> dict[str, Analysis]:
        """Analyse every circuit of this process that no other process has analysed this period."""
        now = self.store._time() if now is None else now
        return self._run_once(now, only=None, kind="periodic", span=self.interval)

    def _run_once(self, now: float, *, only: set[str] | None, kind: str, span: float) -> dict[str, Analysis]:
        # A period is named by the moment it starts at, so that processes with different intervals claim
        # comparable periods (numbered, a worker with a 60 s interval never beat one with 30 s: 1 analysis
        # of 120 an hour in a review's run).
        period = int(now // span * span * 1000.0)  # (milliseconds: an interval may be under a second)
        results: dict[str, Analysis] = {}
        alerts: list[Alert] = []
        muted = self.store.muted
        for link in self.store.links():
            name = link.name
            if only is not None and name not in only:
                continue
            # Settings adjusted by any process, this one's included -- followed with auto_apply off too:
            # a worker without it (a rolling change of settings) ran its own beside the adjusted ones, and
            # the change was judged on that mixed fleet.
            self.adjuster.follow(link.breaker, now)
            if not self.records.claim(name, kind, period, now, span):
                continue  # another process analyses this circuit this period
            analysis = self.analyse(link.breaker, now)
            results[name] = analysis
            result, rec, prediction = analysis.pattern, analysis.recommendation, analysis.prediction
            if result.type is not None or result.evidence.censored:  # a censored window says why it abstained
                ev = result.evidence
                evidence: dict[str, Any] = {k: getattr(ev, k) for k in ev.__dataclass_fields__}
                evidence["recommendation"] = rec.as_dict()
                evidence["prediction"] = None if prediction is None else prediction.as_dict()
                self.records.pattern(name, pattern=result.type, window=self.window, failures=ev.failures,
                                     error_rate=ev.failures_per_second, threshold=rec.recommended_threshold,
                                     timeout=rec.recommended_timeout, confidence=result.confidence,
                                     evidence=evidence, now=now)
            if name not in muted:
                if rec.has_recommendations:
                    alerts.extend(self.engine.recommendation(name, rec.as_seed_dict(), now))
                # "Likely to open" rests on the circuit's past trips: a circuit with less history than three
                # horizons (15 minutes) has too few of them -- one that tripped in its first seconds was
                # "likely to open" at 50 % from that one trip.
                if prediction is not None and now - analysis.window_start >= min(
                        self.window, 3.0 * prediction.horizon_seconds):
                    alerts.extend(self.engine.prediction(name, prediction.as_dict(), now,
                                                         state=link.breaker.state))
            if self.auto_apply and kind == "periodic":
                self.adjuster.adjust(link.breaker, analysis, now)
            if name not in muted and kind == "periodic":  # flapping, from every process's trips
                window = self.engine.policy.flapping_window
                trips = [float(t["ts"]) for t in self.store.read.transitions(name, now - window, now)
                         if t["from_state"] in ("closed", None) and t["to_state"] == "open"]
                alerts.extend(self.engine.observe_openings(name, trips, now))
                # The seconds since the last count (at most the rule's window), each once: read whole,
                # an analysis interval shorter than the window counted the same seconds again and again
                # ("50 % of 20 calls" of 10). Two seconds behind now: later ones may not be written yet.
                until = int(now) - _WRITE_LAG
                since = max(self._counted.get(name, 0), until - int(self.engine.policy.rate_window))
                if until > since:
                    rows = self.store.read.series(name, since, until - 1)
                    self._counted[name] = until
                    calls, fails = sum(r[1] for r in rows), sum(r[2] for r in rows)
                    if calls:
                        alerts.extend(self.engine.observe_counts(name, calls, fails, now))
        if kind == "periodic":
            alerts.extend(a for a in self.engine.tick(now, self._open_since(now)) if a.service_name not in muted)
        self._persist(alerts)
        self.latest.update(results)
        self.runs += 1
        return results

    def _open_since(self, now: float) -> dict[str, float]:
        """When each circuit open now (in the shared state every process follows) opened after being
        closed, from the shared history. From this process's own transitions, a circuit another process
        had closed since was "open for 4 seconds": every open_too_long of a review's 3-hour runs with four
        workers was false."""
        out: dict[str, float] = {}
        look = max(2.0 * self.engine.policy.open_too_long, 3600.0)
        for link in self.store.links():
            snap = link.breaker.snapshot()
            if snap.state is not CircuitState.OPEN and snap.state is not CircuitState.HALF_OPEN:
                continue
            since: float | None = None
            for t in self.store.read.transitions(link.name, now - look, now):
                if t["to_state"] == "open" and t["from_state"] in ("closed", None):
                    since = since if since is not None else float(t["ts"])
                elif t["to_state"] in ("closed", "disabled", "forced_open"):
                    since = None
            out[link.name] = since if since is not None else (snap.opened_at or now - look)
        return out

    def analyse(self, breaker: CircuitBreaker, now: float | None = None) -> Analysis:
        """Analyse ``breaker``'s history as the store holds it (no rows written)."""
        now = self.store._time() if now is None else now
        return analyse_stored(self.store.read, breaker.name, now=now, window=self.window,
                              settings=settings_of(breaker), replay=self.store.second_retention)

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


def analyse_now(store: SharedStore, service: str) -> Analysis:
    """Analyse ``service``'s recent history now (no rows written)."""
    link = next((link for link in store.links() if link.name == service), None)
    if link is None:
        raise StoreError(f"no circuit {service!r} in this store")
    store.flush(0.5)
    return Analyst.attach(store).analyse(link.breaker)
