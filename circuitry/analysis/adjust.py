"""Automatic adjustment (opt-in): decide, from the latest analysis and the record of earlier changes,
whether to hold the breaker's settings, adjust them one bounded step, or roll the last change back.

Pure: :func:`decide` does no I/O and reads no clock. The runner that calls it owns the rest: it writes each
change to the events table with the decision's ``reason`` and ``evidence``, makes one decision per circuit
across processes (a lease), and fills in the measured cost before and after each change
(:func:`measure_cost` over the store's per-minute rollups and the breaker's transitions).

The rules, with their :class:`AdjustPolicy` tunables:

* **Minimum evidence** -- act only on a recommendation from a window with at least ``min_failures``
  failures, a pattern confidence of at least ``min_confidence`` and a replayed saving of at least
  ``min_gain``. Advice from a *censored* window (the breaker refused most of it, so no label backs it;
  :mod:`circuitry.analysis.censored`) rests on the probes instead: at least ``min_probes`` of them, and
  the saving.
* **Confirmation** -- the same direction of change must have been advised in the last ``confirmations``
  analyses (give them as ``recent``), so one odd window moves nothing.
* **Hysteresis** -- no change within ``cooldown`` seconds of the previous one; a change that undoes the
  direction of the previous change waits twice as long; changes too small to matter (the dead band: a
  threshold within one, an open period within 25 %) are not made.
* **Bounded steps** -- one change moves the threshold and the open period at most ``max_step`` times (up
  or down), within ``bounds``. Settings outside the bounds (a breaker configured so) are brought towards
  them by at most ``max_step`` a change too, not in one jump.
* **Phase lock** -- when the last probes failed one fixed open period apart
  (:attr:`~circuitry.analysis.recommend.Recommendation.locked_probes`) in ``confirmations`` analyses in a
  row and the breaker has no jitter, the change is ``jitter`` (to ``AdjustPolicy.jitter``) and nothing
  else. A fixed period can keep every probe in the failing phase of a periodic failure, and then the
  history shows nothing but an outage; in a real outage jitter costs nothing, since the mean open period
  stays. It is not judged for a rollback either: the measured cost would compare a breaker that never
  saw the service healthy with one that does, and the coarse measure calls the healthy calls it then
  refuses a loss.
* **Rollback** -- once a change has been in force for ``evaluation`` seconds, its measured cost per call
  over those ``evaluation`` seconds (:attr:`Adjustment.cost_after`; the runner measures that stretch and
  no other) is compared with the cost per call before it: with at least ``min_measured_calls`` calls in
  each, worse by more than ``rollback_margin`` and above ``rollback_floor`` per call -- and, replayed over
  those same seconds (:func:`replayed_costs`), worse than the settings before it would have been by more
  than ``rollback_margin`` -- the previous settings come back (no setting moves again the way it undid
  for ``10 * cooldown``). The replay tells a bad change from a service that got worse after it: measured
  alone, every change made before an escalation looked bad. The stretch is fixed,
  so the change is judged once: every later analysis reads the same stretch and comes to the same
  verdict, and an outage hours later, which the change has nothing to do with, cannot undo it. A change
  kept then (or with too few calls to judge) is settled. The floor makes a stretch before that cost
  nothing comparable: any cost at all would be "more than 10 % worse" than zero, and one minute of an
  outage the breaker opened on would undo a good change. A change made on censored advice is measured
  with refused calls priced at the share of the probes that found the service healthy, before and after
  alike (see :func:`measure_cost`): the usual measure takes a minute whose probes failed for an outage,
  so refusing a service that keeps coming back looks free, and a change that serves it would be rolled
  back.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from circuitry.analysis.censored import LOCKED_PROBES
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.recommend import Recommendation
from circuitry.analysis.replay import Settings, Transition, impute, replay
from circuitry.analysis.series import Series
from circuitry.exceptions import ConfigurationError

__all__ = ["AdjustPolicy", "Adjustment", "Decision", "MeasuredCost", "decide", "measure_cost", "refused_stretches"]

Action = Literal["hold", "adjust", "rollback"]


@dataclass(frozen=True, slots=True)
class AdjustPolicy:
    """The tunables of :func:`decide`; validated at construction.

    Args:
        min_failures: Failures the analysed window must hold.
        min_confidence: Pattern confidence the recommendation must rest on.
        min_gain: Share of the replayed cost the recommendation must save.
        confirmations: Consecutive analyses that must advise the same direction (>= 1).
        cooldown: Seconds between two changes.
        max_step: Largest factor one change applies to the threshold or the open period (> 1).
        bounds: ``(min threshold, max threshold, min timeout, max timeout)``.
        evaluation: Seconds a change stays in force before it is judged.
        min_measured_calls: Calls needed, before and after, to judge a change.
        rollback_margin: A change whose measured cost per call is this share worse is rolled back ...
        rollback_floor: ... if that cost is also above this much per call (one call in a hundred): below
            it a change is never rolled back, whatever the cost before (``0`` included).
        min_probes: Probes a censored window must hold for its advice to be acted on.
        jitter: The breaker's ``jitter`` once its probes are found locked in phase (``0``: never set).
    """

    min_failures: int = 20
    min_confidence: float = 0.8
    min_gain: float = 0.2
    confirmations: int = 2
    cooldown: float = 1800.0
    max_step: float = 2.0
    bounds: tuple[int, int, float, float] = (1, 20, 5.0, 600.0)
    evaluation: float = 1800.0
    min_measured_calls: int = 500
    rollback_margin: float = 0.1
    min_probes: int = 10
    jitter: float = 0.2
    rollback_floor: float = 0.01

    def __post_init__(self) -> None:
        for name in ("min_failures", "confirmations", "min_measured_calls", "min_probes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "confirmations" else 0):
                raise ConfigurationError(f"{name} must be a non-negative int (confirmations >= 1), got {v!r}")
        for name in ("min_confidence", "min_gain", "rollback_margin", "jitter", "rollback_floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ConfigurationError(f"{name} must be within [0, 1], got {v!r}")
        for name in ("cooldown", "evaluation"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigurationError(f"{name} must be a non-negative number of seconds, got {v!r}")
        step = self.max_step
        if isinstance(step, bool) or not isinstance(step, int | float) or not 1.0 < step <= 10:
            raise ConfigurationError(f"max_step must be > 1 and at most 10 (a bounded step), got {self.max_step!r}")
        try:
            k_lo, k_hi, t_lo, t_hi = self.bounds
            ok = (all(isinstance(k, int) and not isinstance(k, bool) for k in (k_lo, k_hi))
                  and all(isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
                          for t in (t_lo, t_hi))
                  and 1 <= k_lo <= k_hi and 0 < t_lo <= t_hi)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigurationError(f"bounds must be (min threshold, max threshold, min timeout, max timeout): "
                                     f"whole thresholds >= 1, timeouts in seconds, finite, min <= max; got "
                                     f"{self.bounds!r}")


@dataclass(frozen=True, slots=True)
class MeasuredCost:
    """The explicit cost measured over a stretch of history (see :func:`measure_cost`).

    Attributes:
        seconds: Length of the stretch.
        calls: Calls made (decided and refused).
        cost: Calls let through while failing plus calls refused while healthy (estimated).
    """

    seconds: float
    calls: int
    cost: float

    @property
    def per_call(self) -> float:
        """Cost per call made."""
        return self.cost / self.calls if self.calls else 0.0


@dataclass(frozen=True, slots=True)
class Adjustment:
    """One earlier change, as the runner records it.

    Attributes:
        at: When it was made (epoch seconds).
        kind: ``"adjust"`` or ``"rollback"``.
        before: The settings before it.
        after: The settings it applied.
        cost_before: The measured cost over a stretch before it (``None``: not measured).
        cost_after: The measured cost over the :attr:`AdjustPolicy.evaluation` seconds after it, and no
            later (``None``: not yet measured). A fixed stretch: the change is judged on it once.
        refused_healthy: For a change made on censored advice, the healthy share both costs price refused
            calls at (:func:`measure_cost`; the decision's ``evidence["refused_healthy"]``); ``None``: the
            coarse measure.
        replayed: The cost per call of the settings before it and of the settings it applied, both replayed
            over the same :attr:`AdjustPolicy.evaluation` seconds after it (:func:`replayed_costs`);
            ``None``: not replayed (the measure decides alone). The runner gives ``(0, 0)`` for a stretch
            it can no longer replay (its per-second rows are gone): then nothing shows the change worse.
    """

    at: float
    kind: Literal["adjust", "rollback"]
    before: Settings
    after: Settings
    cost_before: MeasuredCost | None = None
    cost_after: MeasuredCost | None = None
    refused_healthy: float | None = None
    replayed: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now.

    Attributes:
        action: ``"hold"``, ``"adjust"`` or ``"rollback"``.
        settings: The settings to be in force (the current ones when holding).
        reason: One sentence, for the events table and the logs.
        evidence: The numbers behind it (plain data).
    """

    action: Action
    settings: Settings
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def refused_healthy(self) -> float | None:
        """For a change made on censored advice, the healthy share its costs before and after are measured
        with (:func:`measure_cost`; record it as :attr:`Adjustment.refused_healthy`); else ``None``."""
        h = self.evidence.get("refused_healthy") if self.action == "adjust" else None
        return float(h) if isinstance(h, int | float) and not isinstance(h, bool) else None


def refused_stretches(transitions: Sequence[Transition], start: float, end: float) -> list[tuple[float, float, float]]:
    """``(from, to, healthy share)`` for each stretch of ``[start, end]`` in which the breaker refused calls.

    The service was failing when the stretch began (the breaker opened on it) and the probe that ended it
    says how it was at the end: a probe that succeeded means it recovered somewhere in the stretch -- half
    of it is the guess, for want of knowing where; a probe that failed means it was failing throughout (no
    healthy call refused). A stretch still running at ``end``, or ended by an operator, is an even guess
    too; one the operator forced open is not the settings' doing and costs nothing.
    """
    ordered = sorted(transitions, key=lambda tr: tr.ts)
    out: list[tuple[float, float, float]] = []
    opened: float | None = None
    forced = False
    for i, tr in enumerate(ordered):
        if tr.to_state in ("open", "forced_open"):
            now_forced = tr.to_state == "forced_open"
            if opened is not None and now_forced != forced:  # the operator took over, or gave back
                out.append((opened, tr.ts, 0.0 if forced else 0.5))
                opened = None
            if opened is None:
                opened, forced = tr.ts, now_forced
            continue
        if opened is None:
            continue
        share = 0.5
        if forced:
            share = 0.0
        elif tr.to_state == "half_open":
            outcome = next((t.to_state for t in ordered[i + 1:] if t.to_state != "half_open"), None)
            share = 0.0 if outcome == "open" else 0.5
        out.append((opened, tr.ts, share))
        opened = None
    if opened is not None:
        out.append((opened, end, 0.0 if forced else 0.5))
    return [(max(a, start), min(b, end), h) for a, b, h in out if b > start and a < end]


def measure_cost(minutes: Iterable[MinuteRollup], refused_healthy: float | None = None, *,
                 transitions: Sequence[Transition] | None = None) -> MeasuredCost:
    """Estimate the explicit cost of a stretch from its per-minute rollups.

    A minute in which half or more of the decided calls failed counts as failing: its decided calls were
    let through to a failing service. The refused calls are priced by the breaker's ``transitions``
    where they are given: spread over the minute's refusing seconds, each stretch's share of them at its
    healthy share (:func:`refused_stretches`: half of a stretch that ended with a successful probe, none of
    one that ended with a failed probe). Without transitions -- coarse, a minute is one state -- the refused
    calls of a minute that is not failing were healthy calls refused, and those of a failing one (or of one
    that refused more than it decided, and whose probes failed) were not. The coarse measure misreads a
    minute that holds both a trip and its whole open period: refusing a service for a minute after it
    recovered looks free there, and a change that shortens the open period looks like a loss.

    With ``refused_healthy`` (for a change made on censored advice) a minute costs its failed calls, and
    its refused calls at the share of them that were healthy: ``refused_healthy`` in a minute that refused
    more calls than it decided (what it decided is too little, or too much the breaker's choice, to say),
    else the minute's own success share. A minute of a service that fails and recovers every few seconds
    is neither failing nor healthy, and its decided calls are mostly the probes, which a fixed open period
    can keep in one phase of the failures.

    Args:
        minutes: The stretch's rollups.
        refused_healthy: Share of the refused calls taken to be healthy where the minute cannot tell, in
            ``[0, 1]``; ``None``: as above.
        transitions: The breaker's state changes over the stretch (and from an open period before it);
            ``None``: the coarse measure.

    Returns:
        The measured cost.

    Raises:
        ConfigurationError: ``refused_healthy`` is outside ``[0, 1]``.

    .. versionchanged:: 0.1.0
        ``transitions``.
    """
    h = refused_healthy
    if h is not None and (isinstance(h, bool) or not isinstance(h, int | float) or not 0.0 <= h <= 1.0):
        raise ConfigurationError(f"refused_healthy must be within [0, 1], got {refused_healthy!r}")
    rows = sorted(minutes, key=lambda m: m.minute)
    stretches = (refused_stretches(transitions, rows[0].minute * 60.0, (rows[-1].minute + 1) * 60.0)
                 if transitions is not None and rows and refused_healthy is None else [])
    calls = 0
    cost = 0.0
    k = 0
    for m in rows:
        calls += m.calls + m.rejections
        if refused_healthy is not None:
            healthy = refused_healthy if m.rejections > m.calls else m.successes / m.calls if m.calls else 0.0
            cost += m.failures + healthy * m.rejections
            continue
        failing = 2 * m.failures >= m.calls if m.calls else m.rejections > 0
        cost += m.calls if failing else 0
        if not m.rejections:
            continue
        lo, hi = m.minute * 60.0, m.minute * 60.0 + 60.0
        while k < len(stretches) and stretches[k][1] <= lo:
            k += 1
        refusing = weighted = 0.0
        for a, b, share in stretches[k:]:
            if a >= hi:
                break
            overlap = min(b, hi) - max(a, lo)
            if overlap > 0:
                refusing += overlap
                weighted += overlap * share
        if refusing > 0:
            cost += m.rejections * weighted / refusing
        elif not failing:  # no transition explains these refusals (none given, or not recorded)
            cost += m.rejections
    seconds = 60.0 * (rows[-1].minute - rows[0].minute + 1) if rows else 0.0
    return MeasuredCost(seconds, calls, cost)


def replayed_costs(series: Series, transitions: Sequence[Transition], rejections: dict[int, int] | None,
                   before: Settings, after: Settings) -> tuple[float, float] | None:
    """The cost per call of ``before`` and of ``after``, both replayed (common random numbers) over the
    stretch ``series`` holds -- what the breaker let through there, the calls it refused filled in
    (:func:`~circuitry.analysis.replay.impute`). ``None`` for a stretch without calls."""
    full = impute(series, transitions, rejections or None)
    if full.total_calls <= 0:
        return None
    return tuple(replay(full, s).total() / full.total_calls for s in (before, after))  # type: ignore[return-value]


def _sign(a: float, b: float) -> int:
    return (b > a) - (b < a)


def _direction(a: Settings, b: Settings) -> tuple[int, int]:
    """Which way ``b`` moves the threshold and the open period from ``a`` (-1, 0 or 1 each)."""
    return _sign(a.threshold, b.threshold), _sign(a.timeout, b.timeout)


def _target(rec: Recommendation) -> Settings:
    return Settings(rec.recommended_threshold, float(rec.recommended_timeout), rec.backoff_multiplier or 1.0,
                    rec.max_timeout)


def decide(
    current: Settings,
    recommendation: Recommendation,
    *,
    now: float,
    history: Sequence[Adjustment] = (),
    recent: Sequence[Recommendation] = (),
    policy: AdjustPolicy | None = None,
) -> Decision:
    """Decide whether to hold, adjust one bounded step towards the recommendation, or roll back.

    Args:
        current: The settings in force.
        recommendation: The latest analysis' recommendation (:func:`circuitry.analysis.recommend.recommend`).
        now: The current time (epoch seconds).
        history: Earlier changes, oldest first, with their measured costs as far as known.
        recent: The recommendations of the analyses before this one, oldest first (for confirmation).
        policy: The tunables (default :class:`AdjustPolicy` ()).

    Returns:
        The decision, with a reason and evidence.
    """
    p = policy or AdjustPolicy()
    last = history[-1] if history else None
    # 1. Judge the last change once it has been in force long enough (not one of jitter alone), on the
    #    evaluation seconds after it: a fixed stretch, so every analysis after it reaches the same verdict.
    jitter_only = last is not None and replace(last.after, jitter=last.before.jitter) == last.before
    if last is not None and last.kind == "adjust" and not jitter_only and now - last.at >= p.evaluation:
        before, after = last.cost_before, last.cost_after
        # Worse measured, and worse than the old settings would have done on the same stretch: the service
        # may have got worse meanwhile (an escalation begins), and then every change made before it looked
        # bad -- the replay of both settings over the stretch after the change tells the two apart.
        r_old, r_new = last.replayed if last.replayed is not None else (0.0, math.inf)
        if (before is not None and after is not None and before.calls >= p.min_measured_calls
                and after.calls >= p.min_measured_calls
                and after.per_call > max(before.per_call * (1.0 + p.rollback_margin), p.rollback_floor)
                and after.per_call - before.per_call > 1e-9 and r_new > r_old * (1.0 + p.rollback_margin)):
            replayed = ("" if last.replayed is None else
                        f"; replayed over that stretch, the settings before it cost {r_old:.4f} per call and the "
                        f"change {r_new:.4f}")
            return Decision("rollback", last.before,
                            f"the change at {last.at:.0f} made things worse: {after.per_call:.4f} instead of "
                            f"{before.per_call:.4f} per call over the {p.evaluation:.0f} s after it (limit "
                            f"+{p.rollback_margin:.0%}, and above {p.rollback_floor:g}){replayed}; back to the "
                            "settings before it",
                            {"change_at": last.at, "cost_per_call_before": before.per_call,
                             "cost_per_call_after": after.per_call, "calls_before": before.calls,
                             "calls_after": after.calls, "replayed": list(last.replayed or ()) or None})
    def holding(reason: str, **evidence: Any) -> Decision:
        return Decision("hold", current, reason, evidence)

    def too_soon(wait: float) -> Decision | None:
        if last is not None and now - last.at < wait:
            return holding(f"last change {now - last.at:.0f} s ago (wait {wait:.0f} s)", since_last=now - last.at)
        return None

    rec = recommendation
    earlier = list(recent)[len(recent) - (p.confirmations - 1):] if p.confirmations > 1 else []
    confirmed = len(earlier) == p.confirmations - 1
    # 2. Probes locked in phase: jitter first, alone (the history cannot show the rest until they move).
    if (p.jitter > 0.0 and current.jitter == 0.0 and rec.locked_probes >= LOCKED_PROBES and confirmed
            and all(r.locked_probes >= LOCKED_PROBES for r in earlier)):
        return too_soon(p.cooldown) or Decision(
            "adjust",
            replace(current, jitter=p.jitter),
            f"the last {rec.locked_probes} probes failed, one fixed open period apart, in {p.confirmations} analyses "
            f"in a row: jitter 0 -> {p.jitter:g}, so the probes stop landing in one phase of a periodic failure (the "
            "mean open period stays)",
            {"locked_probes": rec.locked_probes, "jitter": p.jitter},
        )
    if not rec.has_recommendations:
        return holding(f"nothing recommended: {rec.rationale}")
    censored = rec.censored and rec.refused_healthy is not None
    if censored:  # no label backs it: the probes are the evidence
        if rec.probes < p.min_probes:
            return holding(f"too little evidence: a censored window with {rec.probes} probes (need {p.min_probes})",
                           probes=rec.probes)
    elif rec.failures < p.min_failures:
        return holding(f"too little evidence: {rec.failures} failures (need {p.min_failures})", failures=rec.failures)
    elif rec.confidence < p.min_confidence:
        return holding(f"pattern confidence {rec.confidence:.2f} below {p.min_confidence:.2f}",
                       confidence=rec.confidence)
    gain = rec.improvement or 0.0
    if gain < p.min_gain:
        return holding(f"replayed saving {gain:.0%} below {p.min_gain:.0%}", improvement=gain)
    target = _target(rec)
    way = _direction(current, target)
    agree = confirmed and all(r.has_recommendations and _direction(current, _target(r)) == way for r in earlier)
    if not agree:
        return holding(f"waiting for {p.confirmations} analyses in a row to advise the same change", direction=way)
    # 3. Hysteresis in time: wait after a change, longer before undoing its direction, and never retry a
    #    change that was rolled back recently.
    reverses = last is not None and last.kind == "adjust" and any(
        a * b < 0 for a, b in zip(way, _direction(last.before, last.after), strict=True))
    waiting = too_soon(2.0 * p.cooldown if reverses else p.cooldown)
    if waiting is not None:
        return waiting
    moves = (*way, _sign(current.backoff, target.backoff))
    for h in history:  # (a rollback goes from ``before`` to ``after``: the change it undid went the other way)
        undone = (*_direction(h.after, h.before), _sign(h.after.backoff, h.before.backoff))
        if h.kind == "rollback" and now - h.at < 10.0 * p.cooldown and any(
                u != 0 and u == w for u, w in zip(undone, moves, strict=True)):
            return holding("the same change was rolled back recently", rolled_back_at=h.at)
    # 4. One bounded step towards the target brought within the bounds, outside the dead band. The step
    #    limit comes last: settings outside the bounds move towards them by at most max_step a change.
    k_lo, k_hi, t_lo, t_hi = p.bounds
    k = min(max(target.threshold, k_lo), k_hi)
    k = min(max(k, math.ceil(current.threshold / p.max_step)), max(1, math.floor(current.threshold * p.max_step)))
    t = min(max(target.timeout, t_lo), t_hi)
    t = round(min(max(t, current.timeout / p.max_step), current.timeout * p.max_step), 1)
    if abs(k - current.threshold) <= 1 and abs(math.log(t / current.timeout)) < math.log(1.25) and \
            target.backoff == current.backoff:
        return holding("the advised change is inside the dead band", threshold=k, timeout=t)
    cap = max(t, min(t_hi, t * 10.0)) if target.backoff > 1.0 else None
    new = Settings(k, t, target.backoff, cap, current.jitter)
    if new == current:
        return holding("already there")
    c, e = rec.current_cost, rec.expected_cost
    basis = (f"censored window ({rec.probes} probes, {rec.refused_healthy:.0%} found the service healthy)"
             if censored else f"{rec.primary_pattern} pattern at confidence {rec.confidence:.2f}")
    evidence: dict[str, Any] = {"refused_healthy": rec.refused_healthy, "probes": rec.probes} if censored else {}
    return Decision(
        "adjust",
        new,
        f"{basis}: threshold {current.threshold} -> "
        f"{new.threshold}, open period {current.timeout:g} s -> {new.timeout:g} s"
        + (f", backoff x{new.backoff:g}" if new.backoff != current.backoff else "")
        + f" (a step towards {target.threshold}/{target.timeout:g} s; replay saves {gain:.0%})",
        {
            "pattern": rec.primary_pattern,
            "confidence": rec.confidence,
            "failures": rec.failures,
            "improvement": gain,
            "recommended": {"threshold": target.threshold, "timeout": target.timeout, "backoff": target.backoff},
            "replayed_cost_per_hour": None if c is None or e is None else {"current": c.total(),
                                                                          "recommended": e.total()},
            **evidence,
        },
    )
