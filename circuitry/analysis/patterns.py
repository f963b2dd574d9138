"""Classify the failures of an analysis window as burst, steady, intermittent or escalating -- or abstain.

Pure: no I/O, no clock, no state. The input is a :class:`~circuitry.analysis.series.Series` -- calls and
failures per second, exactly what the store keeps -- and the output a :class:`PatternResult`: the label,
a calibrated confidence, and the statistics behind it. :func:`classify` accepts raw ``(timestamp, failed)``
calls as a convenience and counts them per second first, so raw calls and stored rows are classified the
same way.

The labels, as this module defines them (the tests are in :mod:`circuitry.analysis._evidence`):

``burst``
    Failures come in clusters that the traffic does not explain: more failures share a short stretch of
    time (one second to a few minutes) than if they were spread over the calls -- or over time -- at the
    rate of the surrounding minutes. Outages that start and end, retry storms, self-exciting failures.
``escalating``
    The failure probability per call rises over the window and stays up, *and* failures per minute rise
    too. Failures that keep a constant pace in time while traffic falls (a cron job failing every five
    minutes in the evening lull) fail a growing share of the calls but are not escalating; nor is traffic
    growth at a constant failure probability.
``steady``
    Neither clustered nor rising, at one failure a minute or more, or on more than 5 % of calls.
``intermittent``
    Neither clustered nor rising, rarer than one failure a minute and on at most 5 % of calls.
``None``
    Abstain: fewer than :data:`MIN_FAILURES` failures, or a window shorter than :data:`MIN_SPAN` (no time
    structure to read: whether failures cluster is judged against the minutes around them) -- or a
    censored window: the breaker refused calls for most of it while its probes kept finding the service
    healthy again (:attr:`circuitry.analysis.censored.Censoring.alternating`), so the calls it let through
    are not a sample of the service. ``evidence.censored`` is then true, with what the probes saw.

The confidence is a calibrated probability that the label is right: a logistic function of the decision
margin and the number of failures, fitted per label by ``benchmarks/patterns/calibrate.py`` on labelled
windows (the constants live in :mod:`circuitry.analysis._calibration`, written by that script).

Cost: counting 100,000 raw calls per second takes about 15 ms; the tests work on at most a few thousand
bins whatever the traffic, a few milliseconds.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from operator import mul
from typing import Final, Literal

from circuitry.analysis import _calibration
from circuitry.analysis._evidence import Drop, Rise, Scale, clustering, drop, episode, grid, op_groups, rise
from circuitry.analysis._stats import clamp, logistic
from circuitry.analysis.censored import censoring
from circuitry.analysis.episodes import find_episodes
from circuitry.analysis.replay import Transition, refusing
from circuitry.analysis.series import Series, bucketize

__all__ = [
    "MIN_FAILURES",
    "MIN_SPAN",
    "PATTERN_TYPES",
    "Calibration",
    "PatternEvidence",
    "PatternResult",
    "PatternType",
    "burstiness",
    "classify",
    "classify_seed_heuristic",
    "classify_series",
    "confidence",
]

PatternType = Literal["burst", "steady", "intermittent", "escalating"]
#: Every label, in a fixed order.
PATTERN_TYPES: Final[tuple[PatternType, ...]] = ("burst", "steady", "intermittent", "escalating")
#: Per label, ``(a, b, c)`` of ``confidence = logistic(a + b * score + c * ln(failures))``.
Calibration = Mapping[str, tuple[float, float, float]]

#: Fewer failures than this and the classifier abstains (returns ``type=None``).
MIN_FAILURES: Final = 10
#: A window shorter than this (seconds) and the classifier abstains: a burst or a rise is told from the
#: minutes around it, and every call of a few seconds looks alike (it said "steady, 1.00" of 20 calls in one
#: second, and of a window of no length at all).
MIN_SPAN: Final = 60.0

# Decision thresholds: significance levels and effect sizes with a meaning, not fitted constants.
_BURST_LOG10_P: Final = -3.0  # clustering: both nulls rejected at 1e-3 (Bonferroni over the scales)
_BURST_MIN_EXCESS: Final = 2.0  # ... with at least twice the pairs either null expects,
_BURST_MIN_CORRELATION: Final = 0.2  # ... or a within-bin correlation this high (dense failures),
_BURST_MIN_FANO: Final = 1.0  # ... or count variance at least twice chance (overlapping clusters),
_WAVE_MIN_FANO: Final = 3.0  # waves over the whole window: count variance at least four times chance
_FANO_MAX_SCALE: Final = 128.0  # ... at scales up to this many seconds (beyond, a trend inside a block)
_RISE_LOG10_P: Final = -1.3  # rise: per call and per second both significant at 0.05
_DROP_LOG10_P: Final = -3.0  # an episode that ended: a significant fall after the top of the rise
_DROP_MIN_RATIO: Final = 3.0  # ... to a third or less
_EPISODE_LOG10_P: Final = -3.0  # one long episode (up, then down again) at 1e-3 over every stretch tried
_EPISODE_MIN_RATIO: Final = 3.0  # ... failing at least three times as often as outside it and after it
_RISE_MIN_RATIO: Final = 2.0  # fitted failure probability per call, last fifth over first fifth
_RISE_MIN_TIME_RATIO: Final = 1.5  # and failures per second likewise,
_RISE_MIN_LASTED: Final = 0.05  # and the raised rate has lasted this share of the window (not a late blip)
_MONOTONE_DISPERSION: Final = 2.0  # clustered *and* rising: a rise if the monotone fit leaves little over
_INTERMITTENT_PER_SECOND: Final = 1.0 / 60.0
_INTERMITTENT_MAX_RATE: Final = 0.05


@dataclass(frozen=True, slots=True)
class PatternEvidence:
    """The statistics behind a classification; ``None`` where a statistic was not computed.

    Attributes:
        calls: Calls in the window.
        failures: Failures in the window.
        window_seconds: Length of the window.
        failure_rate: Failures per call.
        failures_per_second: Failures per second of window.
        mean_gap_seconds: Mean time between failures (first to last failure over ``failures - 1``).
        burstiness: Goh-Barabasi burstiness of the gaps between failing seconds (see :func:`burstiness`).
        burstiness_corrected: Kim-Jo finite-size burstiness of the same gaps.
        dispersion_index: Observed over expected pairs of failures sharing a bin, at the scale that decided
            (the larger of the two nulls' expectations).
        dispersion_correlation: Tarone's estimate of the within-bin correlation of failures there.
        dispersion_p_value: The clustering test's p-value there (the less significant null, Bonferroni
            adjusted over the scales).
        dispersion_bucket_seconds: That scale's bin width.
        trend_z: Cochran-Armitage linear trend z of failures per call (dispersion-corrected).
        trend_p_value: The rise test's p-value (the less significant of per call and per second).
        trend_rate_ratio: Fitted failure probability per call, last fifth of the calls over the first fifth.
        time_rate_ratio: Fitted failures per second, last fifth of the window over the first fifth.
        trend_dispersion: Over-dispersion left around the monotone fit per call (1 when none).
        episodes: Failure episodes (see :mod:`circuitry.analysis.episodes`).
        episode_p90_seconds: 90th percentile of the episodes' durations.
        episode_max_seconds: Longest episode.
        background_rate: Failure probability per call outside the episodes.
        change_point_time: Time of the most likely single change in the failure probability.
        change_point_llr: Its log-likelihood ratio over a constant probability.
        rate_before: Failure probability per call before it.
        rate_after: Failure probability per call after it.
        score: Decision margin of the chosen label (the calibration's input).
        refused_share: Share of the window the breaker refused every call (``None``: no transitions given).
        probes: Probes in the window, and ``probe_successes`` of them closed the circuit.
        probe_successes: See ``probes``.
        censored: The window was censored and the classifier abstained for that reason (see
            :mod:`circuitry.analysis.censored`).
    """

    calls: int
    failures: int
    window_seconds: float
    failure_rate: float
    failures_per_second: float
    mean_gap_seconds: float | None = None
    burstiness: float | None = None
    burstiness_corrected: float | None = None
    dispersion_index: float | None = None
    dispersion_correlation: float | None = None
    dispersion_p_value: float | None = None
    dispersion_bucket_seconds: float | None = None
    trend_z: float | None = None
    trend_p_value: float | None = None
    trend_rate_ratio: float | None = None
    time_rate_ratio: float | None = None
    trend_dispersion: float | None = None
    episodes: int | None = None
    episode_p90_seconds: float | None = None
    episode_max_seconds: float | None = None
    background_rate: float | None = None
    change_point_time: float | None = None
    change_point_llr: float | None = None
    rate_before: float | None = None
    rate_after: float | None = None
    score: float | None = None
    refused_share: float | None = None
    probes: int | None = None
    probe_successes: int | None = None
    censored: bool = False


@dataclass(frozen=True, slots=True)
class PatternResult:
    """What the classifier concluded.

    Attributes:
        type: The label, or ``None`` when the window holds too little evidence.
        confidence: Calibrated probability (0-1) that ``type`` is right; 0 when abstaining.
        evidence: The statistics behind the decision.
    """

    type: PatternType | None
    confidence: float
    evidence: PatternEvidence


# ------------------------------------------------------------------------------------------- helpers


def burstiness(gaps: Sequence[float]) -> tuple[float | None, float | None]:
    """Burstiness of inter-event gaps, raw and corrected for the number of events.

    ``B = (sigma - mu) / (sigma + mu)`` (Goh & Barabasi, EPL 81, 48002, 2008) is -1 for a regular
    sequence, 0 for a Poisson process and tends to 1 for a very bursty one; Kim & Jo's ``A_n`` (Phys. Rev.
    E 94, 032311, 2016) rescales it to span [-1, 1] for any number of gaps.

    Args:
        gaps: Inter-event times.

    Returns:
        ``(B, A_n)``, or ``(None, None)`` with fewer than two gaps or a zero mean gap.
    """
    m = len(gaps)
    if m < 2:
        return None, None
    mu = sum(gaps) / m
    if mu <= 0.0:
        return None, None
    sigma = math.sqrt(max(0.0, math.fsum(map(mul, gaps, gaps)) / m - mu * mu))
    b = (sigma - mu) / (sigma + mu)
    r = sigma / mu
    root_p, root_m = math.sqrt(m + 1.0), math.sqrt(m - 1.0)
    denom = (root_p - 2.0) * r + root_m
    a_n = (root_p * r - root_m) / denom if denom > 0.0 else b
    return b, max(-1.0, min(1.0, a_n))


def confidence(kind: str, score: float, failures: int, calibration: Calibration | None = None) -> float:
    """The calibrated confidence of a label with decision margin ``score`` at ``failures`` failures.

    Args:
        kind: The label.
        score: Its decision margin (``PatternEvidence.score``).
        failures: Failures in the window (>= 1).
        calibration: Coefficients per label; default: the shipped ones.

    Returns:
        A probability.
    """
    a, b, c = (calibration or _calibration.CALIBRATION)[kind]
    return logistic(a + b * score + c * math.log(max(1, failures)))


def _log_margin(value: float, threshold: float) -> float:
    return math.log(max(value, 1e-6) / threshold)


def _clus_margin(s: Scale, n_scales: int, *, robust: bool = False) -> float:
    """> 0 when scale ``s`` passes the clustering gates; the smaller of significance and effect margins.

    ``robust`` leaves the block with the most surplus out of the Fano criterion, so that one ramp or
    step (all its surplus in one block) does not count as clustering.
    """
    log10_p = min(0.0, s.log10_p + math.log10(max(1, n_scales)))
    sig = math.log10(max(1e-3, -log10_p)) - math.log10(-_BURST_LOG10_P)
    effect = max(_log_margin(s.excess, _BURST_MIN_EXCESS), _log_margin(s.correlation, _BURST_MIN_CORRELATION))
    if s.seconds <= _FANO_MAX_SCALE:
        fano = s.robust_excess_per_failure if robust else s.excess_per_failure
        effect = max(effect, _log_margin(fano, _BURST_MIN_FANO))
    return min(sig, effect)


def _wave_margin(s: Scale, n_scales: int) -> float:
    """> 0 when the whole-window test at scale ``s`` finds waves: significant, and a Fano factor >= 4."""
    log10_p = min(0.0, s.log10_p + math.log10(max(1, n_scales)))
    sig = math.log10(max(1e-3, -log10_p)) - math.log10(-_BURST_LOG10_P)
    return min(sig, _log_margin(s.excess_per_failure, _WAVE_MIN_FANO))


def _rise_margin(r: Rise, end: float, span: float) -> float:
    sig = math.log10(max(1e-3, -r.log10_p)) - math.log10(-_RISE_LOG10_P)
    return min(
        sig,
        _log_margin(r.per_call.ratio, _RISE_MIN_RATIO),
        _log_margin(r.per_second.ratio, _RISE_MIN_TIME_RATIO),
        _log_margin(max(0.0, end - r.step_at) / max(span, 1e-9), _RISE_MIN_LASTED),
    )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ------------------------------------------------------------------------------------------- public


def classify_series(series: Series, *, transitions: Sequence[Transition] = (),
                    calibration: Calibration | None = None) -> PatternResult:
    """Classify the failure pattern of a window of per-second counts.

    Args:
        series: Calls and failures per bucket over the window (``series.start`` to ``series.end``).
        transitions: The state changes of the breaker that decided these calls. While it was open it
            refused every call, so no failure could be seen: that time does not count as time in which
            failures "kept their pace" (without it, an escalation the breaker keeps refusing looks flat
            per minute).
        calibration: Confidence calibration per label; default: the shipped one.

    Returns:
        The label (``None`` when abstaining), its calibrated confidence and the evidence.

    .. versionadded:: 0.1.0
    """
    n = series.total_calls
    k = series.total_failures
    span = series.span
    rate = k / n if n else 0.0
    per_second = k / span if span > 0.0 else (math.inf if k else 0.0)
    cens = censoring(series, transitions) if transitions else None
    refused_share = None if cens is None else cens.refused_share
    probes = None if cens is None else cens.probes
    probe_successes = None if cens is None else cens.probe_successes
    basic = PatternEvidence(calls=n, failures=k, window_seconds=span, failure_rate=rate,
                            failures_per_second=per_second, refused_share=refused_share, probes=probes,
                            probe_successes=probe_successes)
    if cens is not None and cens.alternating:
        return PatternResult(None, 0.0, replace(basic, censored=True))
    if k < MIN_FAILURES or not span >= MIN_SPAN:
        return PatternResult(None, 0.0, basic)

    w = series.width
    fsec = [i * w for i, f in zip(series.index, series.failures, strict=True) if f]
    first_failure, last_failure = fsec[0], fsec[-1] + w
    gaps = [b - a for a, b in zip(fsec, islice(fsec, 1, None), strict=False)]
    b_raw, b_corr = burstiness(gaps)
    shut = refusing(transitions, series.start, series.end) if transitions else []
    g = grid(series.index, series.calls, series.failures, w, series.start, series.end, shut)
    scales = clustering(g, max(span, w))
    margins = [_clus_margin(s, len(scales)) for s in scales]
    best = max(range(len(scales)), key=margins.__getitem__) if scales else -1
    clus_margin = margins[best] if scales else -math.inf
    ops = op_groups(series.index, series.calls, series.failures, w, int(clamp(k // 4, 8, 32)))
    r = rise(series.index, series.calls, series.failures, w, g, ops, scales)
    rise_margin = _rise_margin(r, series.end, span)
    ep = episode(ops, g)
    episode_margin = min(
        math.log10(max(1e-3, -ep.log10_p)) - math.log10(-_EPISODE_LOG10_P),
        _log_margin(ep.rate_inside / max(ep.rate_outside, 1e-12), _EPISODE_MIN_RATIO),
        _log_margin(ep.rate_inside / max(ep.rate_after, 1e-12), _EPISODE_MIN_RATIO),
    )
    clus_margin = max(clus_margin, episode_margin)
    # Waves: over-dispersion over the whole window at 16 s and more, with no block to condition on.
    waves = clustering(g, max(span, w), whole=True)
    wave_margin = max((_wave_margin(x, len(waves)) for x in waves), default=-math.inf)
    is_cluster = clus_margin > 0.0
    is_rise = rise_margin > 0.0
    fell: Drop | None = None
    if is_rise:
        # Failures after the rise must not be clustered themselves: a late cluster of failures also
        # "rises", but it is a burst. An escalation raises the rate of roughly independent failures.
        after = series.window(r.step_at, series.end)
        if after.total_failures >= MIN_FAILURES:
            g2 = grid(after.index, after.calls, after.failures, w, after.start, after.end, shut)
            sc2 = clustering(g2, max(after.span, w))
            late = max((_clus_margin(x, len(sc2), robust=True) for x in sc2), default=-math.inf)
            if late > 0.0:
                is_rise = False
                is_cluster = True
                clus_margin = max(clus_margin, min(late, rise_margin))
    if is_rise:
        fell = drop(series.index, series.calls, series.failures, w, r.top_from)
        drop_margin = min(math.log10(max(1e-3, -fell.log10_p)) - math.log10(-_DROP_LOG10_P),
                          _log_margin(fell.rate_before / max(fell.rate_after, 1e-12), _DROP_MIN_RATIO))
        if drop_margin > 0.0:
            # It rose and came down again inside the window: an episode, not an escalation.
            is_rise = False
            is_cluster = True
            clus_margin = max(clus_margin, min(drop_margin, rise_margin))

    if wave_margin > 0.0 and not is_cluster and not (is_rise and r.per_call.dispersion <= _MONOTONE_DISPERSION):
        # Failures come and go in waves that no monotone trend explains.
        is_rise = False
        is_cluster = True
        clus_margin = wave_margin

    kind: PatternType
    if is_rise and (not is_cluster or r.per_call.dispersion <= _MONOTONE_DISPERSION):
        # A step up or a ramp that the monotone fit explains leaves little clustering of its own.
        kind = "escalating"
        score = rise_margin if not is_cluster else min(rise_margin, math.log(_MONOTONE_DISPERSION /
                                                                             max(1.0, r.per_call.dispersion)))
    elif is_cluster:
        kind = "burst"
        score = clus_margin if not is_rise else min(clus_margin, math.log(r.per_call.dispersion /
                                                                          _MONOTONE_DISPERSION))
    else:
        rare = per_second <= _INTERMITTENT_PER_SECOND and rate <= _INTERMITTENT_MAX_RATE
        kind = "intermittent" if rare else "steady"
        rate_margin = abs(math.log(max(per_second, 1e-12) / _INTERMITTENT_PER_SECOND))
        if rare:
            rate_margin = min(rate_margin, math.log(_INTERMITTENT_MAX_RATE / max(rate, 1e-12)))
        elif rate > _INTERMITTENT_MAX_RATE:
            rate_margin = max(rate_margin, math.log(rate / _INTERMITTENT_MAX_RATE))
        score = min(-clus_margin, -rise_margin, rate_margin)

    eps = find_episodes(series)
    durations = sorted(e.seconds for e in eps.episodes)
    s_best = scales[best] if scales else None
    evidence = PatternEvidence(
        calls=n,
        failures=k,
        window_seconds=span,
        failure_rate=rate,
        failures_per_second=per_second,
        mean_gap_seconds=(last_failure - first_failure) / (k - 1),
        burstiness=b_raw,
        burstiness_corrected=b_corr,
        dispersion_index=s_best.excess if s_best else None,
        dispersion_correlation=s_best.correlation if s_best else None,
        dispersion_p_value=min(1.0, 10.0 ** s_best.log10_p * len(scales)) if s_best else None,
        dispersion_bucket_seconds=s_best.seconds if s_best else None,
        trend_z=r.per_call.z_linear,
        trend_p_value=10.0**r.log10_p,
        trend_rate_ratio=r.per_call.ratio,
        time_rate_ratio=r.per_second.ratio,
        trend_dispersion=r.per_call.dispersion,
        episodes=len(durations),
        episode_p90_seconds=_quantile(durations, 0.9) if durations else None,
        episode_max_seconds=durations[-1] if durations else None,
        background_rate=eps.background_rate,
        change_point_time=r.step_at if r.step_llr > 0.0 else None,
        change_point_llr=r.step_llr,
        rate_before=r.rate_before,
        rate_after=r.rate_after,
        score=score,
        refused_share=refused_share,
        probes=probes,
        probe_successes=probe_successes,
    )
    return PatternResult(kind, confidence(kind, score, k, calibration), evidence)


def classify(
    calls: Iterable[tuple[float, bool]],
    *,
    window_start: float | None = None,
    window_end: float | None = None,
    calibration: Calibration | None = None,
) -> PatternResult:
    """Classify raw calls: count them per second (:func:`~circuitry.analysis.series.bucketize`), then
    :func:`classify_series`. Stored per-second rows and raw calls therefore get the same answer.

    Args:
        calls: Every call in the window, successes and failures, as ``(timestamp_seconds, failed)`` with
            ``failed`` a ``bool``; any iterable, read once, in any order.
        window_start: Start of the window; defaults to the start of the first call's second.
        window_end: End of the window; defaults to the end of the last call's second.
        calibration: Confidence calibration per label; default: the shipped one.

    Returns:
        The label (``None`` when abstaining), its calibrated confidence and the evidence.

    Raises:
        ConfigurationError: A flag is not a bool, a timestamp is not finite, or a call falls outside the
            given window (``ConfigurationError`` is a ``ValueError``).
    """
    return classify_series(bucketize(calls, start=window_start, end=window_end), calibration=calibration)


def classify_seed_heuristic(calls: Iterable[tuple[float, bool]] | Series) -> PatternResult:
    """The original design's rule, kept as a baseline for the benchmark. Not for production use.

    Needs 5 failures; then ``burst`` if most gaps between failures are under 5 s, else ``escalating`` if the
    second half of the window has more failures than the first, else ``intermittent`` if the mean gap is
    over 60 s, else ``steady``. Its confidence is the share of gaps supporting the decision (uncalibrated).

    Args:
        calls: ``(timestamp_seconds, failed)`` pairs (``failed`` a ``bool``), any iterable, read once; or a
            :class:`~circuitry.analysis.series.Series` (failures are then placed mid-second).

    Returns:
        The rule's classification.
    """
    s = calls if isinstance(calls, Series) else bucketize(calls)
    w = s.width
    fts = [i * w + w / 2 for i, f in zip(s.index, s.failures, strict=True) for _ in range(f)]
    k = len(fts)
    n = s.total_calls
    span = s.span
    basic = PatternEvidence(calls=n, failures=k, window_seconds=span, failure_rate=k / n if n else 0.0,
                            failures_per_second=k / span if span > 0 else 0.0)
    if k < 5:
        return PatternResult(None, 0.0, basic)
    gaps = [b - a for a, b in zip(fts, islice(fts, 1, None), strict=False)]
    short = sum(1 for g in gaps if g < 5.0) / len(gaps)
    second = sum(1 for t in fts if t >= s.start + span / 2.0)
    if short > 0.5:
        return PatternResult("burst", short, basic)
    if second > k - second:
        return PatternResult("escalating", second / k, basic)
    if sum(gaps) / len(gaps) > 60.0:
        return PatternResult("intermittent", 1.0 - short, basic)
    return PatternResult("steady", 1.0 - short, basic)
