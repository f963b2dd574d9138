"""Automatic adjustment at run time (``auto_apply``): the process that analysed a circuit decides, with
:func:`circuitry.analysis.adjust.decide`, whether to move its settings a step or roll the last change back,
and writes the change as an ``adjustment`` row; every process follows the latest one of each circuit --
unless its code gives other settings than the ones the change started from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from circuitry._core import CircuitBreaker
from circuitry.analysis.adjust import (
    Adjustment,
    AdjustPolicy,
    Decision,
    MeasuredCost,
    decide,
    measure_cost,
    replayed_costs,
)
from circuitry.analysis.engine import Analysis
from circuitry.analysis.recommend import Recommendation
from circuitry.analysis.replay import Settings
from circuitry.analysis.series import Series
from circuitry.instrumentation.logging import log as _log
from circuitry.runners.stored import rollups_of, transitions_of
from circuitry.store.engine import SharedStore
from circuitry.store.readmodel import json_object
from circuitry.store.records import Records

__all__ = ["ADJUSTMENT_EVENT", "Adjuster", "apply", "settings_of"]

#: The event type of an automatic adjustment (or its rollback) in ``circuit_breaker_events``.
ADJUSTMENT_EVENT = "adjustment"


def settings_of(breaker: CircuitBreaker) -> Settings:
    """The replay's view of ``breaker``'s policy (threshold, open period, backoff and its cap, jitter)."""
    return _settings_of(breaker.policy)


def _given(breaker: CircuitBreaker) -> dict[str, Any]:
    """The settings of the policy the application gave ``breaker`` (see ``CircuitBreaker.given_policy``)."""
    return _plain_settings(_settings_of(breaker.given_policy))


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


class Adjuster:
    """The adjustments of one store's circuits, on the analyst's thread and records (see the module
    docstring); ``interval`` is the analysis interval (the confirmation rule reads its latest analyses)."""

    def __init__(self, store: SharedStore, records: Records, policy: AdjustPolicy, interval: float) -> None:
        self.store = store
        self.records = records
        self.policy = policy
        self.interval = interval
        self._followed: dict[str, float] = {}  # per circuit: the newest adjustment row this process took up

    def adjust(self, breaker: CircuitBreaker, analysis: Analysis, now: float) -> Decision:
        """Decide (:func:`circuitry.analysis.adjust.decide`) whether to move ``breaker``'s settings a step
        towards ``analysis``' recommendation, or to roll the last change back; a change is written as an
        ``adjustment`` event (reason, settings before and after, measured cost before) that every process
        follows. Only the process that analysed the circuit this period decides (the analysis lease)."""
        name = breaker.name
        current = settings_of(breaker)
        p = self.policy
        history = self.adjustments(name, now, _given(breaker))
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
        return measure_cost(rollups_of(read, name, since, until), healthy,
                            transitions=transitions_of(read, name, since - 3600.0, until + 60.0))

    def _rows_of(self, name: str, since: float, now: float) -> list[dict[str, Any]]:
        rows = self.store.read.events(name, since, now, event_type=ADJUSTMENT_EVENT, limit=1000)
        for r in rows:
            r["data"] = json_object(r["additional_data"])
        return rows

    def adjustments(self, name: str, now: float, given: dict[str, Any] | None = None) -> list[Adjustment]:
        """The circuit's earlier changes (any process's; with ``given``, those made from the settings the
        code gives now), with their measured costs."""
        p = self.policy
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
        last = out[-1] if out else None
        if last is not None and last.kind == "adjust" and now - last.at >= p.evaluation:  # about to be judged
            # Without the replay (its per-second rows are kept an hour: every analysis re-judges the last
            # change, and a later one found them gone), nothing says the old settings would have done
            # better: no rollback -- the verdict must be the same at every analysis after the stretch.
            replayed = self._replayed(name, last.at, last.at + p.evaluation, last.before, last.after)
            out[-1] = replace(last, replayed=replayed if replayed is not None else (0.0, 0.0))
        return out

    def _replayed(self, name: str, since: float, until: float, before: Settings,
                  after: Settings) -> tuple[float, float] | None:
        """Both settings replayed over the stretch after a change (see ``replayed_costs``); ``None`` when
        its per-second rows are gone (kept ``second_retention``) or it had no calls."""
        read = self.store.read
        rows = read.series(name, since, until)
        if not rows:
            return None
        rejected = {m.minute: m.rejections for m in rollups_of(read, name, since, until) if m.rejections}
        return replayed_costs(Series.from_rows(rows, start=since, end=until),
                              transitions_of(read, name, since - 3600.0, until), rejected, before, after)

    def _recent(self, name: str, now: float, current: Settings, until: float) -> list[Recommendation]:
        """The recommendations of the earlier analyses of the last few periods (any process's), oldest first."""
        want = self.policy.confirmations - 1
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

    def follow(self, breaker: CircuitBreaker, now: float) -> None:
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
