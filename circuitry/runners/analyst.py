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
from typing import Any, Final

from circuitry._core import CircuitBreaker
from circuitry._state import CircuitState
from circuitry.analysis.adjust import Adjustment, AdjustPolicy, Decision, MeasuredCost, decide, measure_cost
from circuitry.analysis.alerts import Alert, AlertEngine
from circuitry.analysis.engine import Analysis, analyse
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.predict import DEFAULT_HORIZON
from circuitry.analysis.recommend import Recommendation
from circuitry.analysis.replay import Settings, Transition
from circuitry.analysis.series import Series
from circuitry.events import Event
from circuitry.exceptions import StoreError
from circuitry.instrumentation.logging import log as _log
from circuitry.runners.delivery import CallbackDeliverer
from circuitry.store.engine import SharedStore
from circuitry.store.readmodel import ReadModel, json_object
from circuitry.store.records import Records

__all__ = ["ADJUSTMENT_EVENT", "ON_OPEN_SPACING", "Analyst", "analyse_stored", "apply", "settings_of"]

#: Seconds between two analyses of one circuit triggered by its openings (a flapping circuit opens often).
ON_OPEN_SPACING = 10.0
#: Seconds of per-minute rollups read for a service's failure rate between incidents.
ROLLUP_SPAN = 86_400.0
#: The event type of an automatic adjustment (or its rollback) in ``circuit_breaker_events``.
ADJUSTMENT_EVENT = "adjustment"


def _rollups(read: ReadModel, name: str, since: float, until: float) -> list[MinuteRollup]:
    """The per-minute rollups as the analysis reads them. The table's ``calls`` is every call (refused,
    ignored and cancelled ones too); a rollup's ``calls`` is the decided ones: successes and failures."""
    out = []
    for m in read.metrics(name, since, until):
        successes, failures = int(m["successes"] or 0), int(m["failures"] or 0)
        out.append(MinuteRollup(int(m["minute"]), successes + failures, successes, failures,
                                int(m["rejections"] or 0), int(m["ignored"] or 0), int(m["cancelled"] or 0)))
    return out


def _transitions(read: ReadModel, name: str, since: float, until: float) -> list[Transition]:
    """The breaker's state changes as the analysis reads them."""
    return [Transition(float(r["ts"]), r["from_state"] or "closed", r["to_state"] or "closed",
                       str(json_object(r["additional_data"]).get("reason") or ""))
            for r in read.transitions(name, since, until)]


def analyse_stored(read: ReadModel, name: str, *, now: float, window: float, settings: Settings,
                   replay: float = 3600.0, horizon: float | None = DEFAULT_HORIZON) -> Analysis:
    """Analyse circuit ``name`` from what the store holds: the per-second counts of the last ``replay``
    seconds (the label reads the last ``window`` of them -- fewer if the first stored call is more recent:
    seconds before a circuit's first call are no history of it; the recommendation replays all), the breaker's
    transitions over them, and a day of per-minute rollups; ``settings`` are the ones in force.

    This is the one path from stored history to :func:`circuitry.analysis.analyse` -- the analyst, the
    explicit ``get_recommendations()`` and ``circuitry recommend`` all take it.
    """
    since = now - max(window, replay)
    rows = read.series(name, since, now)
    series = Series.from_rows(rows, start=since, end=now)
    if rows:  # a circuit younger than the window: its history starts at its first call, not before
        window = max(1.0, min(window, now - rows[0][0]))  # (a label needs a minute of it: MIN_SPAN)
    transitions = _transitions(read, name, since - 3600.0, now)
    history = _rollups(read, name, now - ROLLUP_SPAN, now)
    return analyse(series, now=now, current_threshold=settings.threshold, current_timeout=settings.timeout,
                   current_backoff=settings.backoff, current_max_timeout=settings.max_timeout, window=window,
                   transitions=transitions, history=history, horizon=horizon)


def settings_of(breaker: CircuitBreaker) -> Settings:
    """The replay's view of ``breaker``'s policy (threshold, open period, backoff and its cap, jitter)."""
    return _settings_of(breaker.policy)


def _given(breaker: CircuitBreaker) -> dict[str, Any]:
    """The settings of the policy the application gave ``breaker`` (see ``CircuitBreaker.given_policy``)."""
    return _plain_settings(_settings_of(breaker.given_policy or breaker.policy))


def _settings_of(p: Any) -> Settings:
    return Settings(p.failure_threshold, float(p.recovery_timeout), float(p.backoff_factor),
                    None if p.max_recovery_timeout is None else float(p.max_recovery_timeout), float(p.jitter))


def _reconfigure(breaker: CircuitBreaker, s: Settings) -> bool:
    p = breaker.policy
    changes: dict[str, Any] = {"failure_threshold": s.threshold, "recovery_timeout": float(s.timeout),
                               "backoff_factor": float(s.backoff), "jitter": float(s.jitter)}
    if s.max_timeout is not None:
        changes["max_recovery_timeout"] = float(max(s.max_timeout, s.timeout))
    elif p.max_recovery_timeout is not None and p.max_recovery_timeout < s.timeout:
        changes["max_recovery_timeout"] = float(s.timeout)
    new = replace(p, **changes)
    if new == p:
        return False
    breaker.reconfigure(new)
    return True


def apply(breaker: CircuitBreaker, rec: Recommendation) -> bool:
    """Give ``breaker`` the recommended threshold, timeout and backoff. Returns whether it changed."""
    if not rec.has_recommendations:
        return False
    backoff = rec.backoff_multiplier if rec.backoff_multiplier is not None and rec.backoff_multiplier >= 1.0 else None
    current = settings_of(breaker)
    return _reconfigure(breaker, Settings(rec.recommended_threshold, float(rec.recommended_timeout),
                                          current.backoff if backoff is None else backoff,
                                          rec.max_timeout if backoff is not None else current.max_timeout,
                                          current.jitter))


def _settings(d: Any, jitter: float = 0.0) -> Settings | None:
    """The settings an ``adjustment`` row keeps; ``jitter`` where the row has none (rows written before
    adjustments recorded it: they did not change it)."""
    try:
        return Settings(int(d["threshold"]), float(d["timeout"]), float(d.get("backoff", 1.0)),
                        None if d.get("max_timeout") is None else float(d["max_timeout"]),
                        float(d.get("jitter", jitter)))
    except Exception:  # a row not of ours, or damaged: not an adjustment
        return None


def _plain_settings(s: Settings) -> dict[str, Any]:
    return {"threshold": s.threshold, "timeout": s.timeout, "backoff": s.backoff, "max_timeout": s.max_timeout,
            "jitter": s.jitter}


def _recommendation_of(d: Any, current: Settings) -> Recommendation | None:
    """An earlier analysis' recommendation, as its pattern row keeps it (enough for the confirmation rule)."""
    if not isinstance(d, dict):
        return None
    try:
        return Recommendation(int(d["recommended_threshold"]), float(d["recommended_timeout"]),
                              d.get("backoff_multiplier"), float(d.get("confidence") or 0.0), d.get("primary_pattern"),
                              str(d.get("rationale", "")), bool(d["has_recommendations"]), current.threshold,
                              current.timeout, int(d.get("failures") or 0), d.get("max_timeout"),
                              locked_probes=int(d.get("locked_probes") or 0))
    except Exception:
        return None


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
        self.adjust_policy: AdjustPolicy = store.adjust_policy
        self._followed: dict[str, float] = {}

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
        # A period is named by the second it starts at, so that processes with different intervals claim
        # comparable periods (numbered, a worker with a 60 s interval never beat one with 30 s: 1 analysis
        # of 120 an hour in a review's run).
        period = int(now // span * span)
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
            self._follow(link.breaker, now)
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
                if prediction is not None:
                    alerts.extend(self.engine.prediction(name, prediction.as_dict(), now,
                                                         state=link.breaker.state))
            if self.auto_apply and kind == "periodic":
                self.adjust(link.breaker, analysis, now)
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

    # -- automatic adjustment (``auto_apply=True``) ------------------------------------------------------

    def adjust(self, breaker: CircuitBreaker, analysis: Analysis, now: float) -> Decision:
        """Decide (:func:`circuitry.analysis.adjust.decide`) whether to move ``breaker``'s settings a step
        towards ``analysis``' recommendation, or to roll the last change back; a change is written as an
        ``adjustment`` event (reason, settings before and after, measured cost before) that every process
        follows. Only the process that analysed the circuit this period decides (the analysis lease)."""
        name = breaker.name
        current = settings_of(breaker)
        p = self.adjust_policy
        history = self._adjustments(name, now, _given(breaker))
        recent = self._recent(name, now, current, analysis.window_end)
        d = decide(current, analysis.recommendation, now=now, history=history, recent=recent, policy=p)
        if d.action == "hold":
            return d
        # A change made on censored advice is judged with refused calls priced at the healthy share the
        # probes saw, before and after alike (see measure_cost).
        healthy = d.refused_healthy
        before = self._measure(name, now - p.evaluation, now, healthy)
        data = {"action": d.action, "reason": d.reason, "given": _given(breaker), "before": _plain_settings(current),
                "after": _plain_settings(d.settings), "evidence": d.evidence, "refused_healthy": healthy,
                "cost_before": {"seconds": before.seconds, "calls": before.calls, "cost": before.cost}}
        self.records.event(name, ADJUSTMENT_EVENT, data, now, message=d.reason[:500])
        self._followed[name] = now
        _reconfigure(breaker, d.settings)
        _log("warning" if d.action == "rollback" else "info", "circuitry.adjusted", circuit=name,
             action=d.action, reason=d.reason)
        return d

    def _measure(self, name: str, since: float, until: float, healthy: float | None) -> MeasuredCost:
        """:func:`~circuitry.analysis.adjust.measure_cost` of a stretch, its refused calls priced by the
        transitions (from an hour before it: an open period that began earlier)."""
        read = self.store.read
        return measure_cost(_rollups(read, name, since, until), healthy,
                            transitions=_transitions(read, name, since - 3600.0, until + 60.0))

    def _rows_of(self, name: str, since: float, now: float) -> list[dict[str, Any]]:
        rows = self.store.read.events(name, since, now, event_type=ADJUSTMENT_EVENT, limit=1000)
        for r in rows:
            r["data"] = json_object(r["additional_data"])
        return rows

    def _adjustments(self, name: str, now: float, given: dict[str, Any] | None = None) -> list[Adjustment]:
        """The circuit's earlier changes (any process's; with ``given``, those made from the settings the
        code gives now), with their measured costs."""
        p = self.adjust_policy
        out: list[Adjustment] = []
        for r in self._rows_of(name, now - 10.0 * max(p.cooldown, p.evaluation), now):
            d = r["data"]
            if given is not None and d.get("given", given) != given:
                continue
            before, after = _settings(d.get("before")), _settings(d.get("after"))
            if before is None or after is None or d.get("action") not in ("adjust", "rollback"):
                continue
            cb = d.get("cost_before")
            try:
                cost_before: MeasuredCost | None = MeasuredCost(float(cb["seconds"]), int(cb["calls"]),
                                                                float(cb["cost"]))
            except (TypeError, KeyError, ValueError):  # not measured, or a row not of ours
                cost_before = None
            at = float(r["ts"])
            healthy = d.get("refused_healthy")
            if not isinstance(healthy, int | float) or isinstance(healthy, bool) or not 0.0 <= healthy <= 1.0:
                healthy = None  # not censored advice, or a row not of ours
            # The evaluation seconds after it and no later (the whole minutes in them, from the first that
            # starts at or after it): a fixed stretch, so the change is judged once, whatever comes after.
            cost_after = (self._measure(name, at + (-at) % 60.0, min(now, at + p.evaluation) - 60.0, healthy)
                          if d["action"] == "adjust" else None)
            out.append(Adjustment(at, d["action"], before, after, cost_before, cost_after, healthy))
        return out

    def _recent(self, name: str, now: float, current: Settings, until: float) -> list[Recommendation]:
        """The recommendations of the earlier analyses of the last few periods (any process's), oldest first."""
        want = self.adjust_policy.confirmations - 1
        if want <= 0:
            return []
        rows = [r for r in self.store.read.patterns(name, limit=want + 1) if float(r["ts"]) < until
                and float(r["ts"]) >= now - (want + 1.5) * self.interval]
        out = []
        for r in reversed(rows[:want]):
            rec = _recommendation_of(json_object(r.get("evidence")).get("recommendation"), current)
            if rec is not None:
                out.append(rec)
        return out

    def _follow(self, breaker: CircuitBreaker, now: float) -> None:
        """Give ``breaker`` the settings of its latest adjustment, if this process has not yet."""
        name = breaker.name
        seen = self._followed.get(name, -1.0)
        rows = [r for r in self._rows_of(name, max(seen, 0.0), now) if float(r["ts"]) > seen]
        if not rows:
            return
        last = rows[-1]
        if last["data"].get("given", _given(breaker)) != _given(breaker):
            # Made from other settings than the code of this process gives (settings changed in the code
            # and deployed): not followed -- a redeploy's new settings were put back to the old adjusted
            # ones at the first analysis. The adjuster starts afresh from the code's.
            self._followed[name] = float(last["ts"])
            _log("info", "circuitry.adjustment_not_followed", circuit=name,
                 note="the adjustment started from other settings than the ones this process's code gives")
            return
        current = settings_of(breaker)
        after = _settings(last["data"].get("after"), current.jitter)
        self._followed[name] = float(last["ts"])
        if after is not None and after != current:
            _reconfigure(breaker, after)

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
