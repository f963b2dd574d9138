"""Recommend breaker settings that a replay of the recent history shows to cost less than the current ones.

Pure: no I/O, no clock. :func:`recommend` replays candidate settings over the analysed window's
per-second counts (:func:`circuitry.analysis.replay.replay`, with the breaker's own open periods filled in
by :func:`~circuitry.analysis.replay.impute`) and prices each with an explicit cost:

    cost = failed_weight * (failed calls let through) + refused_weight * (healthy calls refused)

(both weights 1 by default: a failed call sent to a failing service and a good call turned away count the
same). It recommends the cheapest candidate only if it beats the current settings by at least
:data:`MIN_GAIN` of their cost -- never something its own replay prices higher -- and says by how much, per
hour: :attr:`Recommendation.current_cost` and :attr:`Recommendation.expected_cost`. An open period that a
probe closed less than a minute before the window ends is not taken as a recovery (a probe that succeeds
at 70 % failures is luck, and nothing after it says otherwise yet): the stretch before it counts as failing.

The pattern decides what is replayed and how the advice reads, not the advice itself:

``escalating``
    The failure rate has risen and stays up, so the past before the rise says little about the next
    minutes: only the window after the change point is replayed.
``burst``, ``steady``, ``intermittent``
    The whole window is replayed; the rationale names the episodes or the failure share behind it.
    Steady or intermittent failures that still rise (by a third or more, significantly) get the
    escalation's rules: no higher threshold, and no more cost if the service fails outright next.
``None`` (abstain) or a confidence below ``confidence_floor``
    Nothing is recommended: too few failures to learn from -- unless the window is *censored*
    (:mod:`circuitry.analysis.censored`): the breaker refused calls for most of it while its probes kept
    finding the service healthy. Then the open periods are filled with the failing and healthy spells the
    probes and closed stretches imply, and the replay prices what the open period costs (the advice is
    then a shorter open period, if any); its confidence is 0 -- no label backs it -- so the automatic
    adjuster does not act on it.

Candidates: thresholds 1-20, open periods of 5 s to 10 min, fixed or doubling after each failed probe
(backoff, capped at ten times the open period), searched one setting at a time from the current ones.

(Over 500 lines: most of it is one function, :func:`recommend`, whose pricing rules share the
replayed costs it caches; the cost model itself is in :mod:`circuitry.analysis.replay`.)

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from circuitry.analysis.censored import LOCKED_PROBES, Censoring, censoring, fill_alternating, locked_probes
from circuitry.analysis.episodes import find_episodes
from circuitry.analysis.history import (
    MIN_INCIDENT_SHARE,
    PRESUMED_NORMAL,
    MinuteRollup,
    degraded_share,
    incident_length,
    incident_share,
)
from circuitry.analysis.history import normal_failure_rate as _normal_rate
from circuitry.analysis.patterns import MIN_FAILURES, MIN_SPAN, PatternResult, PatternType
from circuitry.analysis.replay import (
    Cost,
    Settings,
    Transition,
    baseline_cost,
    failing_buckets,
    impute,
    replay_parts,
)
from circuitry.analysis.series import Series, bucketize
from circuitry.exceptions import ConfigurationError

__all__ = [
    "MAX_THRESHOLD",
    "MAX_TIMEOUT",
    "MIN_GAIN",
    "MIN_TIMEOUT",
    "Recommendation",
    "recommend",
    "safe_threshold",
]

#: Largest threshold ever recommended.
MAX_THRESHOLD: Final = 20
#: Shortest timeout ever recommended (seconds).
MIN_TIMEOUT: Final = 5.0
#: Longest timeout ever recommended (seconds).
MAX_TIMEOUT: Final = 600.0
#: A candidate must cost at least this share less than the current settings in the replay.
MIN_GAIN: Final = 0.15

_THRESHOLDS: Final = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
_TIMEOUTS: Final = (5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BACKOFFS: Final = (1.0, 2.0)
_MIN_SAVED: Final = 3.0  # ... and save at least this many weighted calls over the replayed window,
_MIN_SAVED_PER_HOUR: Final = 5.0  # ... and this many per hour of it,
_MIN_SAVED_SHARE: Final = 0.01  # ... and one call in a hundred: smaller gains are not worth being wrong about
_BASELINE_TOLERANCE: Final = 0.05  # and cost at most 5 % more than the current ones on a healthy hour
_MIN_NORMAL: Final = 0.001  # no service is assumed never to fail between incidents
_FAILING: Final = 0.9  # the failure share of a service that has failed outright
_INCIDENT: Final = 0.75  # the failure share of the incidents priced into every replay (none seen)
_INCIDENT_SECONDS: Final = 300.0  # ... and their length
_DEGRADED: Final = 0.25  # the failure share of the degraded stretches priced into every replay
_ESCALATION_MIN_GAIN: Final = 0.3  # an escalation's advice must save this share
_ESCALATION_MIN_SHARE: Final = 0.1  # replay after the change point only if it covers this share
_RISE_P: Final = 0.05  # steady failures rising at the label's significance (too little to be labelled) ...
_RISE_Z: Final = 2.326  # ... or per call alone at this z (0.01, one-sided) get the escalation's rules,
_RISE_RATIO: Final = 1.3  # ... when the failure share per call rose by this factor over the window
_CONFIRM: Final = 60.0  # a close with less than this many seconds of window after it is not yet a recovery


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Suggested breaker settings, why, and what the replay expects them to change.

    Attributes:
        recommended_threshold: Consecutive failures before opening (the current one when
            ``has_recommendations`` is false).
        recommended_timeout: Seconds to stay open before a probe.
        backoff_multiplier: Factor to grow the open period by after each failed probe, or ``None`` for a
            fixed open period.
        confidence: Confidence of the pattern the recommendation rests on (0-1).
        primary_pattern: That pattern, or ``None`` if the classification abstained.
        rationale: Human-readable reasoning, with the numbers used.
        has_recommendations: Whether anything differs from the current settings.
        current_threshold: The threshold in force.
        current_timeout: The timeout in force.
        failures: Failures in the analysed window.
        max_timeout: Cap on the grown open period when ``backoff_multiplier`` is set.
        current_cost: The replayed cost of the current settings, per hour (``None``: no replay).
        expected_cost: The replayed cost of the recommended settings, per hour.
        replayed_seconds: Seconds of history the replay covered.
        censored: The window was censored (the breaker refused calls for most of it while the service kept
            recovering): the advice rests on the probes, not on a label.
        locked_probes: Probes that failed in a row at the end of the history, each one fixed open period
            after the one before (0 when fewer than
            :data:`~circuitry.analysis.censored.LOCKED_PROBES`, when the periods varied, when the window
            is escalating, or when a probe that succeeded in the window was followed by failures at once:
            a service failing through has no healthy phase to miss). A fixed period can
            keep its probe in the failing part of a periodic failure; the rationale then suggests ``jitter``
            (see :func:`~circuitry.analysis.censored.locked_probes`).
        probes: For censored advice: the probes in the window, the evidence it rests on.
        refused_healthy: For censored advice: the share of the probes that found the service healthy --
            the share of the refused time it was healthy, which an adjustment made on the advice prices
            refused calls at (:func:`~circuitry.analysis.adjust.measure_cost`).
    """

    recommended_threshold: int
    recommended_timeout: float
    backoff_multiplier: float | None
    confidence: float
    primary_pattern: PatternType | None
    rationale: str
    has_recommendations: bool
    current_threshold: int
    current_timeout: float
    failures: int
    max_timeout: float | None = None
    current_cost: Cost | None = None
    expected_cost: Cost | None = None
    replayed_seconds: float = 0.0
    censored: bool = False
    locked_probes: int = 0
    probes: int = 0
    refused_healthy: float | None = None

    @property
    def improvement(self) -> float | None:
        """Share of the current cost the recommendation saves in the replay (``None``: no replay)."""
        if self.current_cost is None or self.expected_cost is None:
            return None
        cur = self.current_cost.total()
        return (cur - self.expected_cost.total()) / cur if cur > 0 else 0.0

    def effect(self) -> str:
        """The expected effect in words and numbers (per hour, from the replay)."""
        c, e = self.current_cost, self.expected_cost
        if c is None or e is None:
            return "no replay"
        return (
            f"replaying the last {_fmt_seconds(self.replayed_seconds)} s: failed calls let through "
            f"{c.failed_let_through:.0f} -> {e.failed_let_through:.0f} per hour, healthy calls refused "
            f"{c.healthy_refused:.0f} -> {e.healthy_refused:.0f} per hour"
        )

    def as_seed_dict(self) -> dict[str, object]:
        """The recommendation in the original design's ``get_recommendations()`` shape.

        Returns:
            A dict with exactly the keys ``has_recommendations``, ``message``, ``current_threshold``,
            ``recommended_threshold``, ``current_timeout``, ``recommended_timeout``, ``confidence`` and
            ``primary_pattern``; the message states the expected effect in numbers.
        """
        if self.has_recommendations:
            factor = self.backoff_multiplier
            backoff = "" if not factor else (", doubling after each failed probe" if factor == 2 else
                                             f", growing {factor:g} times longer after each failed probe")
            basis = f"{self.primary_pattern} pattern" if self.primary_pattern else "censored history"
            message = (
                f"Based on {self.failures} recent failures ({basis}), consider "
                f"adjusting threshold to {self.recommended_threshold} and timeout to "
                f"{_fmt_seconds(self.recommended_timeout)} seconds{backoff} ({self.effect()})"
            )
        else:
            message = f"No change recommended: {self.rationale}"
        return {
            "has_recommendations": self.has_recommendations,
            "message": message,
            "current_threshold": self.current_threshold,
            "recommended_threshold": self.recommended_threshold,
            "current_timeout": self.current_timeout,
            "recommended_timeout": self.recommended_timeout,
            "confidence": self.confidence,
            "primary_pattern": self.primary_pattern,
        }

    def as_dict(self) -> dict[str, Any]:
        """Everything, as plain data: the seed's keys plus backoff, cap, rationale and the replayed costs."""
        out: dict[str, Any] = dict(self.as_seed_dict())
        out.update(
            backoff_multiplier=self.backoff_multiplier,
            max_timeout=self.max_timeout,
            rationale=self.rationale,
            failures=self.failures,
            replayed_seconds=self.replayed_seconds,
            improvement=self.improvement,
            censored=self.censored,
            locked_probes=self.locked_probes,
            probes=self.probes,
            refused_healthy=self.refused_healthy,
        )
        for name, cost in (("current_cost_per_hour", self.current_cost),
                           ("expected_cost_per_hour", self.expected_cost)):
            out[name] = None if cost is None else {
                "failed_let_through": round(cost.failed_let_through, 3),
                "healthy_refused": round(cost.healthy_refused, 3),
                "trips": round(cost.trips, 3),
                "total": round(cost.total(), 3),
            }
        return out


def _fmt_seconds(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def safe_threshold(p: float, calls_per_hour: float, trips_per_hour: float = 0.01) -> int:
    """Smallest run length ``k`` that independent failures rarely reach.

    With failure probability ``p`` per call, about ``calls_per_hour * (1 - p) * p^k`` runs of ``k``
    failures start per hour. Returns the smallest ``k >= 1`` for which that is at most
    ``trips_per_hour``, capped at :data:`MAX_THRESHOLD`.

    Args:
        p: Failure probability per call.
        calls_per_hour: Traffic.
        trips_per_hour: Tolerated rate of random trips.

    Returns:
        The threshold.
    """
    if p <= 0.0 or calls_per_hour <= 0.0:
        return 1
    if p >= 1.0:
        return MAX_THRESHOLD
    budget = trips_per_hour / (calls_per_hour * (1.0 - p))
    if budget >= 1.0:
        return 1
    return max(1, min(MAX_THRESHOLD, math.ceil(math.log(budget) / math.log(p) - 1e-9)))


def _check_number(name: str, v: object, lo: float, *, lo_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigurationError(f"{name} must be a finite number, got {v!r}")
    if v <= lo if lo_open else v < lo:
        raise ConfigurationError(f"{name} must be a finite number {'>' if lo_open else '>='} {lo:g}, got {v!r}")
    return float(v)


def recommend(
    result: PatternResult,
    *,
    current_threshold: int,
    current_timeout: float,
    calls: Iterable[tuple[float, bool]] | None = None,
    series: Series | None = None,
    transitions: Sequence[Transition] = (),
    current_backoff: float = 1.0,
    current_max_timeout: float | None = None,
    failed_weight: float = 1.0,
    refused_weight: float = 1.0,
    confidence_floor: float = 0.6,
    normal_failure_rate: float | None = None,
    history: Sequence[MinuteRollup] = (),
) -> Recommendation:
    """Recommend breaker settings for a classified window, proven by replaying it.

    Args:
        result: The window's classification (:func:`circuitry.analysis.patterns.classify_series`).
        current_threshold: Consecutive failures that open the breaker now (>= 1).
        current_timeout: Seconds the breaker now stays open (> 0).
        calls: The window's raw calls, as an alternative to ``series`` (counted per second).
        series: The window's per-second counts (what the store keeps). Without ``series`` or ``calls``
            nothing can be replayed and nothing is recommended.
        transitions: The breaker's state changes in the window, to fill in what it refused while open.
        current_backoff: The backoff factor in force (1: fixed open period).
        current_max_timeout: The cap on the open period in force.
        failed_weight: Cost of one failed call let through.
        refused_weight: Cost of one healthy call refused.
        confidence_floor: Below this pattern confidence nothing is recommended.
        normal_failure_rate: The service's failure share between incidents, from long history
            (:func:`circuitry.analysis.history.normal_failure_rate`). No candidate may cost more than the
            current settings on an hour of such normal traffic. ``None``: estimated from the window
            itself (outside its failure episodes), which is blind when the whole window is an incident.
        history: Per-minute rollups of the circuit (days of them, if kept): what it refused while open
            (to fill in the open periods of the window) and, unless ``normal_failure_rate`` is given, its
            failure share in normal times.

    Returns:
        The recommendation; ``has_recommendations`` is false (and the recommended settings equal the
        current ones) when the pattern is unknown or uncertain, nothing was replayable, or no candidate
        saves at least :data:`MIN_GAIN` of the current cost.

    Raises:
        ConfigurationError: An argument is invalid (a ``ValueError``).
    """
    if isinstance(current_threshold, bool) or not isinstance(current_threshold, int) or current_threshold < 1:
        raise ConfigurationError(f"current_threshold must be an int >= 1, got {current_threshold!r}")
    current_timeout = _check_number("current_timeout", current_timeout, 0.0)
    current_backoff = _check_number("current_backoff", current_backoff, 1.0, lo_open=False)
    failed_weight = _check_number("failed_weight", failed_weight, 0.0, lo_open=False)
    refused_weight = _check_number("refused_weight", refused_weight, 0.0, lo_open=False)
    if (isinstance(confidence_floor, bool) or not isinstance(confidence_floor, int | float)
            or not 0.0 <= confidence_floor <= 1.0):
        raise ConfigurationError(f"confidence_floor must be a number within [0, 1], got {confidence_floor!r}")
    bad_minute = next((m for m in history if not isinstance(m, MinuteRollup)), None)
    if bad_minute is not None:
        raise ConfigurationError(f"history must hold MinuteRollup objects, got {bad_minute!r}")
    ev = result.evidence
    kind = result.type
    censored = kind is None and ev.censored
    # Failed probes one fixed period apart are a phase lock only where the failures may come in a cycle:
    # not in a rising failure rate, nor where a probe got through and the calls after it failed at once.
    # (Without a successful probe the window cannot tell a lock from a long outage: the note is a condition.)
    locked, period = locked_probes(transitions)
    seen: Censoring | None = None  # what the probes saw, measured once (the censored reading reuses it)
    if locked < LOCKED_PROBES or kind == "escalating":
        locked = 0
    else:
        if series is None and calls is not None:
            series = bucketize(calls)
        if series is not None:
            seen = censoring(series, transitions)
            locked = 0 if seen.failing_through else locked
    lock_note = (
        f"; the last {locked} probes failed, each {_fmt_seconds(period)} s after the one before: if the "
        "failures come in a cycle, a fixed open period keeps its probe in their phase -- a random part "
        "(jitter=0.2) moves it" if locked else ""
    )

    def unchanged(reason: str, cur: Cost | None = None, seconds: float = 0.0) -> Recommendation:
        return Recommendation(
            recommended_threshold=current_threshold,
            recommended_timeout=current_timeout,
            backoff_multiplier=current_backoff if current_backoff > 1.0 else None,
            confidence=result.confidence,
            primary_pattern=kind,
            rationale=reason + lock_note,
            has_recommendations=False,
            current_threshold=current_threshold,
            current_timeout=current_timeout,
            failures=ev.failures,
            max_timeout=current_max_timeout,
            current_cost=cur,
            expected_cost=cur,
            replayed_seconds=seconds,
            censored=censored,
            locked_probes=locked,
        )

    if kind is None and not censored:
        if ev.failures >= MIN_FAILURES and ev.window_seconds < MIN_SPAN:
            return unchanged(f"too little history to classify ({ev.window_seconds:.0f} s of the {MIN_SPAN:.0f} a "
                             "label needs)")
        return unchanged(f"too few failures to classify ({ev.failures})")
    if not censored and result.confidence < confidence_floor:
        return unchanged(
            f"{kind} pattern at confidence {result.confidence:.2f} is below the floor {confidence_floor:.2f}"
        )
    what = f"{kind} pattern" if kind else "censored window"
    probes, refused_healthy = 0, None
    if series is None:
        if calls is None:
            return unchanged(f"{what}, but no history to replay")
        series = bucketize(calls)
    rejected = {m.minute: m.rejections for m in history if m.rejections}
    # A probe that succeeded less than a minute before the end shows no recovery yet (at 70 % failures
    # one in three succeeds): the open stretch before it stays failing, as if it had not closed.
    horizon = impute(series, transitions, rejected or None, confirm=_CONFIRM)
    if censored:
        # The open periods hid a service that keeps coming back: fill them with the spells the probes and
        # the closed stretches imply, not with one failure share (see circuitry.analysis.censored).
        cz = seen if seen is not None else censoring(series, transitions)
        spells = cz.spells()
        if spells is None:
            return unchanged(f"censored window (the breaker refused calls {ev.refused_share or 0.0:.0%} of it), "
                             "but the replayed history does not show the service recovering between failures")
        if spells[0] >= current_timeout:
            # The reading says the failures come and go faster than the breaker looks; spells longer than
            # its open period it does see (a long outage after short ones): nothing to correct.
            return unchanged(f"censored window (the breaker refused calls {ev.refused_share or 0.0:.0%} of it), "
                             f"but the failing spells the probes imply (about {spells[0]:.0f} s) are longer than the "
                             f"open period ({_fmt_seconds(current_timeout)} s): the breaker sees them")
        horizon = fill_alternating(horizon, transitions, *spells)
        probes, refused_healthy = cz.probes, cz.probe_success_share
        what = (
            f"the breaker refused calls {ev.refused_share or 0.0:.0%} of the window, yet {cz.probe_successes} of "
            f"{cz.probes} probes succeeded and the circuit then let calls through for a median "
            f"{cz.healthy_seconds or 0.0:.1f} s before failures came back: the service alternates, failing about "
            f"{spells[0]:.1f} s and healthy about {spells[1]:.1f} s at a time, faster than the breaker looks"
        )
    if normal_failure_rate is None and history:
        normal_failure_rate = _normal_rate(history)
    note = ""
    if kind == "escalating" and ev.change_point_time is not None:
        share = (horizon.end - ev.change_point_time) / horizon.span if horizon.span > 0 else 0.0
        if _ESCALATION_MIN_SHARE <= share < 1.0:
            horizon = horizon.window(ev.change_point_time, horizon.end)
            note = f" (since the rise at t={ev.change_point_time:.0f})"


    # Do no harm in normal times: the advice must also suit the service between incidents, priced in
    # closed form at the background failure rate (an upper estimate of it) and the window's traffic.
    current = Settings(current_threshold, current_timeout, current_backoff, current_max_timeout)
    # Traffic with what the breaker refused filled in: the open breaker hid it from the series.
    full = impute(series, transitions, rejected or None, confirm=_CONFIRM)
    rate = full.total_calls / full.span if full.span > 0 else 0.0
    p_bg = _background(series, result) if normal_failure_rate is None else float(normal_failure_rate)
    p_bg = max(_MIN_NORMAL, PRESUMED_NORMAL if p_bg >= 0.5 else p_bg)
    healthy_now = baseline_cost(current, rate, p_bg).total(failed_weight, refused_weight)
    limit = healthy_now * (1.0 + _BASELINE_TOLERANCE) + 1.0

    # An escalation is getting worse: the advice must also hold if the service fails outright next -- at
    # the failing share after the rise, or at 90 % -- and must not tolerate more failures in a row.
    escalating = kind == "escalating"
    # Failures read as steady may still be rising, too slightly or too hidden for the label: by a third or
    # more over the window (less than the label's doubling), and significantly -- per call and per second,
    # as for the label, or per call alone at 0.01 (one-sided), as 30 % -> 70 % is behind a breaker that
    # refused most of the window, where the per-second test sees little (the breaker trips as fast in
    # every closed stretch). The same two rules hold for them. (Not for bursts: there the trend test reads
    # where the episodes fell.)
    rising = escalating or (kind in ("steady", "intermittent") and (ev.trend_rate_ratio or 0.0) >= _RISE_RATIO and (
        (ev.trend_p_value is not None and ev.trend_p_value < _RISE_P) or (ev.trend_z or 0.0) >= _RISE_Z))
    fail_levels = sorted({_FAILING, min(0.95, max(0.5, ev.rate_after or 0.0))})

    def failing_cost(s: Settings, p: float) -> float:
        return baseline_cost(s, rate, p, horizon.span).total(failed_weight, refused_weight)

    failing_now = {p: failing_cost(current, p) for p in fail_levels}

    # A longer open period trades probes during an incident for refusals after it ends; only a history
    # that shows an incident ending (at least a minute before the end of the replay) says what that costs.
    seen_end = any(2 * e.failures >= e.calls and e.end <= horizon.end - 60.0 for e in find_episodes(horizon).episodes)

    def harmless(s: Settings) -> bool:
        if baseline_cost(s, rate, p_bg).total(failed_weight, refused_weight) > limit:
            return False
        if not seen_end and (s.timeout > current.timeout or s.backoff > current.backoff):
            return False
        if rising:
            if s.threshold > current.threshold:
                return False
            return all(failing_cost(s, p) <= failing_now[p] * (1.0 + _BASELINE_TOLERANCE) + 1.0 for p in fail_levels)
        return True

    # Incidents to come: the share of time the history spent failing (at least MIN_INCIDENT_SHARE) of an
    # incident at 75 % failures is added to every replay, so advice fitted to calm minutes stays sane.
    share = incident_share(history) if history else MIN_INCIDENT_SHARE
    # Likewise the time it spends degraded (a quarter of calls failing, still worth calling): advice
    # fitted to an outage must not make the breaker trip on every noisy minute.
    share_degraded = degraded_share(history) if history else MIN_INCIDENT_SHARE

    # How long incidents last here (the history's median), 5 minutes without one on record; and how hard
    # they fail (the window's episodes, if they fail half their calls or more; else 75 %).
    typical = (incident_length(history) if history else None) or _INCIDENT_SECONDS
    eps = [e for e in find_episodes(horizon).episodes if 2 * e.failures >= e.calls]
    level = sum(e.failures for e in eps) / sum(e.calls for e in eps) if eps else _INCIDENT
    level = min(0.99, level)

    def incident_cost(s: Settings) -> float:
        """An incident of typical length and failure share, then the open time left when it ends."""
        during = baseline_cost(s, rate, level, typical).total(failed_weight, refused_weight)
        _, residual = _incident_tail(s, typical / 2.0, level)
        return during + refused_weight * rate * residual

    cache: dict[Settings, Cost] = {}
    # A window that ends inside an incident never shows its end, which is where a long open period costs:
    # price the incident going on as long again, then recovering (see _ongoing).
    ongoing = _ongoing(horizon)

    flags = failing_buckets(horizon)

    # The stretches advice must hold on by themselves: each half of the replayed history and, when the
    # history is longer, the analysed window -- the present, which a longer past must not outvote (a rise
    # over an hour, read from its last minutes, is "steady" at 75 % failures: settings that suited the
    # calmer first half would send three times as many calls to the failing service now).
    mid = (horizon.start + horizon.end) / 2.0
    parts = [(horizon.start, mid), (mid, horizon.end)]
    if ev.window_seconds and horizon.end - ev.window_seconds > horizon.start + 0.25 * horizon.span:
        parts.append((horizon.end - ev.window_seconds, horizon.end))
    part_costs: dict[Settings, tuple[float, ...]] = {}

    def cache_total(s: Settings) -> float:
        if s not in cache:
            whole, each = replay_parts(horizon, s, parts, failing=flags)
            cache[s] = whole
            part_costs[s] = tuple(c.total(failed_weight, refused_weight) for c in each)
        return cache[s].total(failed_weight, refused_weight)

    def price(s: Settings) -> float:
        total = cache_total(s)
        total += share * horizon.span / typical * incident_cost(s)
        total += share_degraded * baseline_cost(s, rate, _DEGRADED, horizon.span).total(failed_weight, refused_weight)
        if ongoing is not None:
            failed, residual = _incident_tail(s, *ongoing)
            total += failed_weight * failed + refused_weight * rate * residual
        return total

    # The evidence must come from the window itself: a candidate qualifies only if its replay of the
    # window saves at least MIN_GAIN of the current settings' (and a few calls). Among those, the one with
    # the lowest cost once incidents and degraded spells to come are priced in wins -- the priced-in terms
    # guard against harm, they never justify a change on their own.
    replayed_now = cache_total(current)
    # An escalation is a regime in flux: what wins on its first minutes must win clearly.
    gain = _ESCALATION_MIN_GAIN if escalating else MIN_GAIN
    floor = max(_MIN_SAVED, _MIN_SAVED_PER_HOUR * horizon.span / 3600.0, _MIN_SAVED_SHARE * horizon.total_calls)
    bar = min(replayed_now * (1.0 - gain), replayed_now - floor)
    search = current  # the coordinate search follows the full price
    search_cost = price(current)
    best, best_cost = current, search_cost
    for step in ("threshold", "timeout", "threshold"):
        options: list[Settings]
        if step == "threshold":
            options = [Settings(k, search.timeout, search.backoff, search.max_timeout) for k in _THRESHOLDS]
        else:
            options = [Settings(search.threshold, t, b, t * 10.0 if b > 1.0 else None)
                       for t in _TIMEOUTS for b in _BACKOFFS]
        for cand in options:
            if not harmless(cand):
                continue
            c = price(cand)
            if c < search_cost - 1e-9:
                search, search_cost = cand, c
            # ... and it must hold in each half of the window on its own (advice that wins on one event
            # and loses on the rest is fitted to that event), and in the analysed window (see parts).
            steady_win = all(h <= h0 + 1e-9 for h, h0 in zip(part_costs[cand], part_costs[current], strict=True))
            if c < best_cost - 1e-9 and cache_total(cand) <= bar and steady_win:
                best, best_cost = cand, c
    cur_cost = cache[current]
    per_hour = cur_cost.per_hour()
    if best == current:
        return unchanged(
            f"{what}; no setting saves {MIN_GAIN:.0%} of the replayed cost of the current ones "
            f"({per_hour.failed_let_through:.0f} failed calls let through and {per_hour.healthy_refused:.0f} "
            f"healthy calls refused per hour{note})",
            per_hour,
            horizon.span,
        )
    exp = cache[best].per_hour()
    why = f"{what}: {_changes(best, current)}" if kind is None else _why(kind, result, best, current)
    return Recommendation(
        recommended_threshold=best.threshold,
        recommended_timeout=best.timeout,
        backoff_multiplier=best.backoff if best.backoff > 1.0 else None,
        confidence=result.confidence,
        primary_pattern=kind,
        rationale=f"{why}; replayed{note}: {exp.total():.0f} instead of {per_hour.total():.0f} weighted calls "
        f"per hour{lock_note}",
        has_recommendations=True,
        current_threshold=current_threshold,
        current_timeout=current_timeout,
        failures=ev.failures,
        max_timeout=best.max_timeout if best.backoff > 1.0 else None,
        current_cost=per_hour,
        expected_cost=exp,
        replayed_seconds=horizon.span,
        censored=censored,
        locked_probes=locked,
        probes=probes,
        refused_healthy=refused_healthy,
    )


def _ongoing(series: Series) -> tuple[float, float] | None:
    """``(seconds it has lasted, its failure share)`` if the window ends inside an incident, else ``None``.

    An incident is going on when the last minute fails at least half its calls; it started where the
    failure share, walking back a minute at a time, last fell below one half.
    """
    end = series.end
    elapsed = 0.0
    n_tot = x_tot = 0
    for back in range(1, 1 + int(series.span // 60.0)):
        sub = series.window(end - 60.0 * back, end - 60.0 * (back - 1))
        n, x = sub.total_calls, sub.total_failures
        if n == 0 or x < 0.5 * n:
            break
        elapsed = 60.0 * back
        n_tot += n
        x_tot += x
    return (elapsed, x_tot / n_tot) if elapsed > 0.0 else None


def _incident_tail(s: Settings, elapsed: float, p: float) -> tuple[float, float]:
    """Failed calls let through while an incident that has lasted ``elapsed`` seconds at failure share
    ``p`` lasts as long again, and the expected open time left when it ends (half the period in force).

    Each probe fails with probability ``p``; one that succeeds closes the circuit, which then lets calls
    through until ``threshold`` fail in a row: ``(1 - p^k) / ((1 - p) p^k)`` calls on average, every one of
    them a call to a failing service.
    """
    t = 0.0
    period = s.timeout
    probes = 0
    while t < 2.0 * elapsed:
        if t >= elapsed:
            probes += 1
        t += period
        period = min(s.cap, period * s.backoff)
    p = min(max(p, 1e-9), 1.0 - 1e-9)
    pk = p**s.threshold
    # p^k underflows to 0 for a threshold in the hundreds: then the circuit never trips again
    until_trip = 1e6 if pk < 1e-300 else min(1e6, (1.0 - pk) / ((1.0 - p) * pk))
    per_probe = 1.0 + (1.0 - p) * until_trip  # the probe, and the calls let through if it succeeds
    return probes * per_probe, period / 2.0


def _background(series: Series, result: PatternResult) -> float:
    """An upper estimate (about 90 %) of the failure probability between incidents."""
    eps = find_episodes(series)
    n = series.total_calls - sum(e.calls for e in eps.episodes)
    x = series.total_failures - sum(e.failures for e in eps.episodes)
    if result.type == "escalating" and result.evidence.rate_before is not None:
        p = result.evidence.rate_before  # before the rise
        n = int(series.total_calls / 2)
        x = int(p * n)
    if n <= 0:
        return 0.0
    p = x / n
    return min(1.0, p + 1.28 * math.sqrt(max(p * (1.0 - p), 1.0 / n) / n))


def _changes(best: Settings, current: Settings) -> str:
    parts = []
    if best.threshold < current.threshold:
        parts.append(f"open after {best.threshold} failures in a row instead of {current.threshold}")
    elif best.threshold > current.threshold:
        parts.append(f"tolerate {best.threshold} failures in a row instead of {current.threshold}")
    if best.timeout != current.timeout:
        parts.append(f"probe after {_fmt_seconds(best.timeout)} s instead of {_fmt_seconds(current.timeout)} s")
    if best.backoff > 1.0 >= current.backoff:
        parts.append(f"double the open period after each failed probe, up to {_fmt_seconds(best.cap)} s")
    return ", ".join(parts)


def _why(kind: PatternType, result: PatternResult, best: Settings, current: Settings) -> str:
    ev = result.evidence
    if kind == "burst":
        what = (f"failures come in episodes ({ev.episodes or 0} in the window, the longest "
                f"{ev.episode_max_seconds or 0:.0f} s)")
    elif kind == "escalating":
        what = f"the failure rate per call rose {ev.trend_rate_ratio or 0:.1f}x and stays up"
    elif kind == "steady":
        what = f"independent failures on {ev.failure_rate:.1%} of calls"
    else:
        what = f"isolated failures ({ev.failures_per_second * 60:.2f} a minute)"
    return f"{what}: {_changes(best, current)}"
