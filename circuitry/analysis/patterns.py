"""Classify the failures in a window of calls as burst, steady, intermittent or escalating.

This module is pure: it does no I/O, reads no clock and keeps no state. Give it every call in the analysis
window -- successes and failures, as ``(timestamp_seconds, failed)`` pairs in time order -- and it returns a
:class:`PatternResult` with the pattern, a calibrated confidence and the statistics behind the decision.

The classes, as this module defines them:

``burst``
    Failures clustered in time beyond what the call traffic explains: more pairs of failures share a short
    time bucket than independent failures at the window's failure probability would produce, given the
    number of calls in each bucket (Tarone's over-dispersion score).
``escalating``
    The failure probability *per call* rises over the window: a trend test in *operational time* (failures
    against cumulative calls, so more traffic is not more risk) that survives both an over-dispersion
    correction and declustering (a single burst is one episode, not a trend).
``steady``
    Failures independent at a roughly constant probability per call, at one failure a minute or more.
``intermittent``
    Failures neither clustered nor trending, rarer than one a minute and under 5 % of calls.
``None``
    Abstain: fewer than :data:`MIN_FAILURES` failures, too few to tell the classes apart.

The rule from the original design ("burst = failures under 5 s apart, needs 5 events") is kept as
:func:`classify_seed_heuristic` for comparison only; at 12 failures a minute independent failures already
have most gaps under 5 s, so it calls a steady stream a burst.

Cost: one pass over the calls in C-level builtins (column extraction, order check, ``compress``), then
``bisect`` per time bucket; everything else works on the failures and the buckets. 100,000 calls take a
few tens of milliseconds on CPython 3.11.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, islice
from operator import itemgetter, le, mul, sub
from typing import Final, Literal

__all__ = [
    "MIN_FAILURES",
    "PatternEvidence",
    "PatternResult",
    "PatternType",
    "burstiness",
    "classify",
    "classify_seed_heuristic",
]

PatternType = Literal["burst", "steady", "intermittent", "escalating"]

#: Fewer failures than this and :func:`classify` abstains (returns ``type=None``).
MIN_FAILURES: Final = 10

# Decision thresholds. Chosen by a coarse grid search (macro-F1 and the false-"escalating" rate) on
# 4,000 windows of an exploration seed (1000) of benchmarks/patterns/generators.py, disjoint from the
# calibration seed (1) and the evaluation seed (2); rounded, and on the conservative side where a wrong
# call is costly (escalating).
_BURST_LOG10_P: Final = -5.0  # Bonferroni-adjusted log10 p-value of the clustering test
_BURST_MIN_EXCESS: Final = 2.0  # and at least twice the pairs expected without clustering ...
_BURST_MIN_CORRELATION: Final = 0.2  # ... or a within-bucket correlation this high (dense failures)
_BURST_STRONG_EXCESS: Final = 3.0  # clustering this strong is a burst even if the window also trends
_TREND_Z: Final = 2.0  # dispersion-corrected Cochran-Armitage z in operational time
_LAPLACE_Z: Final = 1.5  # and Laplace z on declustered episodes in operational time
_INTERMITTENT_PER_SECOND: Final = 1.0 / 60.0  # at most one failure a minute ...
_INTERMITTENT_MAX_RATE: Final = 0.05  # ... and under 5 % of calls
_FINE_BUCKETS: Final = 4096  # the finest time buckets are at least 1 s and at most window/4096
_SCALES: Final = 4  # bucket widths w, 4w, 16w, 64w
_DECLUSTER_FRACTION: Final = 0.1  # merge failures closer than 10 % of the mean gap (in calls)

# Platt-style calibration: confidence = 1 / (1 + exp(-(a + b * score + c * ln(failures)))), per class.
# Fitted by logistic regression (Newton-Raphson) on the training seeds of the benchmark mix by
# ``python -m benchmarks.patterns.calibrate``; evaluated on disjoint held-out seeds by
# ``python -m benchmarks.patterns.run``.
_CALIBRATION: Final[dict[str, tuple[float, float, float]]] = {
    "burst": (1.8049, 8.1836, -0.3475),  # n=721, accuracy=0.975
    "steady": (-4.7830, 5.4636, 0.9329),  # n=877, accuracy=0.891
    "intermittent": (-10.2305, 4.3819, 3.1796),  # n=812, accuracy=0.920
    "escalating": (2.2860, 3.2833, -0.5855),  # n=680, accuracy=0.947
}


@dataclass(frozen=True, slots=True)
class PatternEvidence:
    """The statistics behind a classification. ``None`` where a statistic could not be computed.

    Attributes:
        calls: Calls in the window.
        failures: Failed calls in the window.
        window_seconds: Length of the window.
        failure_rate: Failures per call.
        failures_per_second: Failures per second of window.
        mean_gap_seconds: Mean time between consecutive failures.
        burstiness: Goh-Barabasi burstiness ``(sigma - mu) / (sigma + mu)`` of the inter-failure gaps.
        burstiness_corrected: Kim-Jo finite-size burstiness ``A_n`` of the same gaps.
        dispersion_index: Observed / expected failure pairs sharing a time bucket, at the most
            significant scale (1 for independent failures; the index of dispersion minus one, scaled).
        dispersion_z: Tarone's over-dispersion Z at that scale.
        dispersion_correlation: Tarone's estimate of the correlation of failures within a bucket there.
        dispersion_p_value: Bonferroni-adjusted p-value of the clustering test (smallest over scales).
        dispersion_bucket_seconds: Bucket width of the most significant scale.
        trend_z: Cochran-Armitage trend z in operational time, divided by the root of the
            over-dispersion factor of a log-linear fit.
        trend_p_value: One-sided p-value of ``trend_z`` (rising).
        trend_rate_ratio: Fitted failure-probability ratio, end of window over start (log-linear fit).
        laplace_z: Laplace trend z of the declustered episodes in operational time.
        laplace_p_value: One-sided p-value of ``laplace_z`` (rising).
        episodes: Number of declustered failure episodes.
        episode_p90_seconds: 90th percentile of episode durations (first to last failure), seconds.
        episode_max_seconds: Longest episode, seconds.
        background_rate: Failure probability per call outside episodes of three or more failures.
        half_rate_ratio: Failure probability in the second half of the calls over the first half.
        half_rate_p_value: Conditional binomial test of that ratio exceeding 1 (Poisson rate-ratio test).
        change_point_time: Timestamp of the maximum-likelihood single change point (Bernoulli sequence in
            operational time).
        change_point_llr: Log-likelihood ratio of the change-point model over a constant probability.
        rate_before: Failure probability per call before the change point.
        rate_after: Failure probability per call after the change point.
        score: Uncalibrated decision margin for the chosen class (input of the calibration).
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
    dispersion_z: float | None = None
    dispersion_correlation: float | None = None
    dispersion_p_value: float | None = None
    dispersion_bucket_seconds: float | None = None
    trend_z: float | None = None
    trend_p_value: float | None = None
    trend_rate_ratio: float | None = None
    laplace_z: float | None = None
    laplace_p_value: float | None = None
    episodes: int | None = None
    episode_p90_seconds: float | None = None
    episode_max_seconds: float | None = None
    background_rate: float | None = None
    half_rate_ratio: float | None = None
    half_rate_p_value: float | None = None
    change_point_time: float | None = None
    change_point_llr: float | None = None
    rate_before: float | None = None
    rate_after: float | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
class PatternResult:
    """What :func:`classify` concluded.

    Attributes:
        type: The pattern, or ``None`` when the window holds too little evidence to tell.
        confidence: Calibrated probability (0-1) that ``type`` is right; 0 when abstaining.
        evidence: The statistics behind the decision.
    """

    type: PatternType | None
    confidence: float
    evidence: PatternEvidence


# ------------------------------------------------------------------------------------------ helpers


def _normal_sf(z: float) -> float:
    """Upper tail of the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _poisson_log10_sf(count: int, mean: float) -> float:
    """log10 P(X >= count) for X ~ Poisson(mean), tight for the upper tail.

    Uses the first term of the tail times the geometric bound on the rest, which is within a factor
    ``1 / (1 - mean / (count + 1))`` of the exact value; for ``count <= mean`` it returns 0 (p ~ 1).
    """
    if count <= 0 or mean <= 0.0:
        return 0.0 if count <= 0 else -math.inf
    if count <= mean:
        return 0.0
    log_pmf = count * math.log(mean) - mean - math.lgamma(count + 1.0)
    log_tail = log_pmf - math.log1p(-mean / (count + 1.0))
    return min(0.0, log_tail / math.log(10.0))


def _chi2_upper(df: int, z: float) -> float:
    """Upper quantile of chi-square with ``df`` degrees of freedom at normal quantile ``z``.

    Wilson & Hilferty's cube-root approximation (PNAS 17, 684-688, 1931).
    """
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def _bernoulli_ll(k: int, n: int) -> float:
    """Maximised Bernoulli log-likelihood of ``k`` failures in ``n`` calls."""
    if k <= 0 or k >= n:
        return 0.0
    p = k / n
    return k * math.log(p) + (n - k) * math.log1p(-p)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values."""
    if not sorted_values:
        return 0.0
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _columns(calls: Sequence[tuple[float, bool]]) -> tuple[list[float], list[bool]]:
    """Split and validate the calls: finite timestamps in non-decreasing order."""
    ts = list(map(itemgetter(0), calls))
    flags = list(map(itemgetter(1), calls))
    if ts and not all(map(le, ts, islice(ts, 1, None))):
        for i in range(1, len(ts)):
            a, b = ts[i - 1], ts[i]
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ValueError(f"timestamps must be finite; got {a!r} and {b!r} at positions {i - 1}, {i}")
            if not a <= b:
                raise ValueError(f"calls must be in time order; timestamp {b!r} at position {i} follows {a!r}")
    if ts and not (math.isfinite(ts[0]) and math.isfinite(ts[-1])):
        raise ValueError(f"timestamps must be finite; got {ts[0]!r} .. {ts[-1]!r}")
    return ts, flags


def _window(ts: list[float], start: float | None, end: float | None) -> tuple[float, float]:
    """The window bounds, defaulting to the first and last timestamp; validated."""
    lo = ts[0] if ts else 0.0
    hi = ts[-1] if ts else 0.0
    s = lo if start is None else float(start)
    e = hi if end is None else float(end)
    if not (math.isfinite(s) and math.isfinite(e)):
        raise ValueError(f"window_start and window_end must be finite; got {start!r}, {end!r}")
    if e < s:
        raise ValueError(f"window_end ({e!r}) is before window_start ({s!r})")
    if ts and (lo < s or hi > e):
        raise ValueError(f"calls from {lo!r} to {hi!r} fall outside the window [{s!r}, {e!r}]")
    return s, e


# ------------------------------------------------------------------------------------- statistics


def burstiness(gaps: Sequence[float]) -> tuple[float | None, float | None]:
    """Burstiness of inter-event gaps, raw and corrected for the number of events.

    ``B = (sigma - mu) / (sigma + mu)`` (Goh & Barabasi, "Burstiness and memory in complex systems",
    EPL 81, 48002, 2008) is -1 for a regular sequence, 0 for a Poisson process and tends to 1 for a
    very bursty one. For ``n`` inter-event times the coefficient of variation ``r = sigma / mu`` cannot
    exceed ``sqrt(n - 1)``, so ``B`` is biased towards 0 for short sequences; Kim & Jo ("Measuring
    burstiness for finite event sequences", Phys. Rev. E 94, 032311, 2016) rescale it to
    ``A_n = (sqrt(n+1) r - sqrt(n-1)) / ((sqrt(n+1) - 2) r + sqrt(n-1))``, which spans [-1, 1] for any n.

    Args:
        gaps: Inter-event times (``n`` of them).

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
    n = m
    root_p, root_m = math.sqrt(n + 1.0), math.sqrt(n - 1.0)
    denom = (root_p - 2.0) * r + root_m
    a_n = (root_p * r - root_m) / denom if denom > 0.0 else b
    return b, max(-1.0, min(1.0, a_n))


@dataclass(frozen=True, slots=True)
class _Clustering:
    log10_p: float  # Bonferroni-adjusted
    excess: float  # observed / expected pairs
    tarone_z: float
    correlation: float  # Tarone's moment estimate of the intra-bucket correlation
    bucket_seconds: float


def _clustering(ts: list[float], fts: list[float], start: float, span: float) -> _Clustering:
    """Over-dispersion of failures per time bucket, given the calls per bucket, at four scales.

    Tarone's C(alpha) score for extra-binomial variation ("Testing the goodness of fit of the binomial
    distribution", Biometrika 66, 585-590, 1979) is ``S - N`` with ``S = sum (x_i - n_i p)^2 / (p q)``;
    its off-diagonal part is, up to the factor ``2 / (p q)``, the number of *pairs of failures that share
    a bucket* minus its expectation. We use that pair count ``Q`` directly: given ``k`` failures among
    ``N`` calls placed independently of time, ``E[Q] = C(k, 2) * sum n_i (n_i - 1) / (N (N - 1))``, and
    for sparse failures ``Q`` is close to Poisson (the birthday problem), where the normal approximation
    of Tarone's Z badly overstates significance. The p-value is the Poisson upper tail, Bonferroni-adjusted
    over the scales; Tarone's Z and his moment estimate of the intra-bucket correlation
    ``rho = (S - N) / sum n_i (n_i - 1)`` are reported too. Two effect sizes matter: the pair excess
    ``Q / E[Q]`` (large for sparse clustered failures) and ``rho`` (the excess cannot exceed ``1 / p``, so
    for dense failures -- long outages on a noisy background -- only ``rho`` shows the clustering).
    """
    n = len(ts)
    k = len(fts)
    width = max(1.0, span / _FINE_BUCKETS)
    m = max(1, math.ceil(span / width))
    # Calls per fine bucket by bisection on the (sorted) timestamps: O(m log n), no pass over the calls.
    bounds = [start + width * j for j in range(1, m)]
    edges = [bisect_left(ts, b) for b in bounds]
    counts = [b - a for a, b in zip([0, *edges], [*edges, n], strict=True)]
    fedges = [bisect_left(fts, b) for b in bounds]
    xs = [b - a for a, b in zip([0, *fedges], [*fedges, k], strict=True)]
    pairs_total = k * (k - 1) / 2.0
    p = k / n
    pq = p * (1.0 - p)
    best = _Clustering(0.0, 1.0, 0.0, 0.0, width)
    best_raw = math.inf
    for scale in range(_SCALES):
        factor = 4**scale
        if scale:
            counts = [sum(counts[j : j + 4]) for j in range(0, len(counts), 4)]
            xs = [sum(xs[j : j + 4]) for j in range(0, len(xs), 4)]
        if len(counts) < 2:
            break
        same = sum(c * (c - 1) for c in counts)
        if same <= 0 or n < 2:
            continue
        expected = pairs_total * same / (n * (n - 1.0))
        observed = sum(x * (x - 1) for x in xs if x > 1) // 2
        log10_p = _poisson_log10_sf(observed, expected)
        if log10_p < best_raw:
            best_raw = log10_p
            s = sum((x - c * p) ** 2 for x, c in zip(xs, counts, strict=True))
            z = (s / pq - n) / math.sqrt(2.0 * same) if pq > 0.0 else 0.0
            best = _Clustering(
                log10_p=min(0.0, log10_p + math.log10(_SCALES)),
                excess=observed / expected if expected > 0 else 1.0,
                tarone_z=z,
                correlation=(s / pq - n) / same if pq > 0.0 else 0.0,
                bucket_seconds=width * factor,
            )
    return best


@dataclass(frozen=True, slots=True)
class _Trend:
    z: float
    rate_ratio: float


def _trend(fidx: list[int], n: int) -> _Trend:
    """Cochran-Armitage trend test in operational time, corrected for over-dispersion.

    The calls are cut into ``m`` buckets of equal call count; bucket ``j`` has score ``s_j`` (its centre
    in cumulative-call fraction). The Cochran-Armitage statistic (Cochran, Biometrics 10, 417-451, 1954;
    Armitage, Biometrics 11, 375-386, 1955) ``sum s_j (x_j - n_j p)`` over its binomial standard error
    tests a rising failure probability per call. Because it is in operational time a traffic ramp does not
    move it. Bursts make the bucket counts over-dispersed, which inflates it; so we fit the log-linear
    (Poisson rate-ratio) model ``x_j ~ n_j exp(a + b s_j)`` and divide z by the square root of the Pearson
    dispersion factor of that fit, floored at 1 (quasi-likelihood; Williams, Applied Statistics 31,
    144-148, 1982). A smooth rise fits the log-linear model and keeps its z; one burst does not.
    """
    k = len(fidx)
    m = max(6, min(40, k // 4))
    bounds = [j * n // m for j in range(m + 1)]
    cuts = [bisect_left(fidx, b) for b in bounds]
    xs = [cuts[j + 1] - cuts[j] for j in range(m)]
    ns = [bounds[j + 1] - bounds[j] for j in range(m)]
    ss = [(j + 0.5) / m - 0.5 for j in range(m)]
    p = k / n
    s_bar = sum(c * s for c, s in zip(ns, ss, strict=True)) / n
    var = p * (1.0 - p) * sum(c * (s - s_bar) ** 2 for c, s in zip(ns, ss, strict=True))
    t = sum(x * (s - s_bar) for x, s in zip(xs, ss, strict=True))
    if var <= 0.0:
        return _Trend(0.0, 1.0)
    z = t / math.sqrt(var)
    # Log-linear fit by Newton on the slope, intercept profiled out.
    b = 0.0
    for _ in range(50):
        w = [c * math.exp(b * s) for c, s in zip(ns, ss, strict=True)]
        sw = sum(w)
        mean_s = sum(wi * s for wi, s in zip(w, ss, strict=True)) / sw
        var_s = sum(wi * (s - mean_s) ** 2 for wi, s in zip(w, ss, strict=True)) / sw
        grad = sum(x * s for x, s in zip(xs, ss, strict=True)) - k * mean_s
        if var_s <= 0.0:
            break
        step = grad / (k * var_s)
        b = max(-20.0, min(20.0, b + step))
        if abs(step) < 1e-9 or abs(b) >= 20.0:
            break
    w = [c * math.exp(b * s) for c, s in zip(ns, ss, strict=True)]
    sw = sum(w)
    chi2 = 0.0
    for x, wi, c in zip(xs, w, ns, strict=True):
        mu = k * wi / sw
        q = max(1e-9, 1.0 - mu / c) if c > 0 else 1.0
        if mu > 0.0:
            chi2 += (x - mu) ** 2 / (mu * q)
    # Correct only when the dispersion is significant (chi-square upper 5 % point, Wilson-Hilferty):
    # with few buckets the estimate is noisy, and flooring a noisy estimate at 1 would bias z down.
    df = m - 2
    phi = chi2 / df if chi2 > _chi2_upper(df, 1.645) else 1.0
    phi = max(1.0, phi)
    return _Trend(z / math.sqrt(phi), math.exp(b))


@dataclass(frozen=True, slots=True)
class _Episodes:
    starts: list[int]  # call index of each episode's first failure
    durations: list[float]  # seconds, sorted
    background_rate: float  # failures per call outside episodes of 3 or more failures


def _decluster(fidx: list[int], fts: list[float], n: int) -> _Episodes:
    """Merge failures fewer than ``0.1 * n / k`` calls apart (at least adjacent calls) into episodes.

    Declustering is the standard way to keep one cluster from counting as many events in a trend test
    (e.g. the runs declustering of extreme-value analysis; Ferro & Segers, JRSS B 65, 545-556, 2003).
    The gap is in calls, not seconds, so it adapts to both the traffic and the failure rate.
    """
    k = len(fidx)
    gap = max(1, int(_DECLUSTER_FRACTION * n / k))
    # Index of the first failure of each episode (list comprehension: this is the O(k) hot path).
    heads = [0, *[j for j, d in enumerate(map(sub, islice(fidx, 1, None), fidx), 1) if d > gap]]
    tails = [*[j - 1 for j in islice(heads, 1, None)], k - 1]
    starts = [fidx[j] for j in heads]
    durations = sorted(fts[b] - fts[a] for a, b in zip(heads, tails, strict=True))
    clustered_calls = 0
    clustered_failures = 0
    for a, b in zip(heads, tails, strict=True):
        if b - a >= 2:  # three or more failures
            clustered_calls += fidx[b] - fidx[a] + 1
            clustered_failures += b - a + 1
    rest = n - clustered_calls
    background = (k - clustered_failures) / rest if rest > 0 else 0.0
    return _Episodes(starts, durations, background)


def _laplace(positions: list[int], n: int) -> float:
    """Laplace trend test of event positions in operational time (Cox & Lewis, 1966).

    Under a constant failure probability per call the failing call indices are a uniform random subset
    of ``0 .. n-1``, so their mean has variance ``(n^2 - 1) / 12 / e * (n - e) / (n - 1)`` for ``e``
    events (finite-population correction); z > 0 means events concentrate late.
    """
    e = len(positions)
    if e < 2 or n < 2:
        return 0.0
    mean = sum(positions) / e
    var = (n * n - 1.0) / 12.0 / e * (n - e) / (n - 1.0)
    if var <= 0.0:
        return 0.0
    return (mean - (n - 1) / 2.0) / math.sqrt(var)


def _change_point(fidx: list[int], n: int) -> tuple[int, float, float, float]:
    """Maximum-likelihood single change point of a Bernoulli sequence (Hinkley & Hinkley, Biometrika 57,
    477-488, 1970).

    The likelihood only changes slope at failures, so the split is searched just before and just after
    each failure; with many failures on a grid of every ``k // 512``-th failure, then around the best.

    Returns:
        ``(split_index, llr, rate_before, rate_after)``; the change is between call ``split_index - 1``
        and ``split_index``.
    """
    k = len(fidx)
    base = _bernoulli_ll(k, n)
    best, best_at, best_k1 = -math.inf, 0, 0

    def scan(js: range) -> None:
        nonlocal best, best_at, best_k1
        for j in js:
            # Split before failure j (j failures in [0, fidx[j])) and just after it (j + 1 failures).
            for at, k1 in ((fidx[j], j), (fidx[j] + 1, j + 1)):
                if 0 < at < n:
                    ll = _bernoulli_ll(k1, at) + _bernoulli_ll(k - k1, n - at)
                    if ll > best:
                        best, best_at, best_k1 = ll, at, k1

    # With many failures, scan every stride-th failure, then refine around the best: O(k / stride + stride).
    stride = max(1, k // 512)
    scan(range(0, k, stride))
    if stride > 1:
        centre = max(0, min(k - 1, best_k1))
        scan(range(max(0, centre - stride), min(k, centre + stride + 1)))
    if best == -math.inf:
        return 0, 0.0, k / n, k / n
    return best_at, best - base, best_k1 / best_at, (k - best_k1) / (n - best_at)


def _calibrate(kind: str, score: float, failures: int) -> float:
    a, b, c = _CALIBRATION[kind]
    x = a + b * score + c * math.log(failures)
    x = max(-40.0, min(40.0, x))
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------- public


def classify(
    calls: Sequence[tuple[float, bool]],
    *,
    window_start: float | None = None,
    window_end: float | None = None,
) -> PatternResult:
    """Classify the failure pattern of a window of calls.

    Args:
        calls: Every call in the window, successes and failures, as ``(timestamp_seconds, failed)`` in
            non-decreasing time order.
        window_start: Start of the analysed window; defaults to the first timestamp.
        window_end: End of the analysed window; defaults to the last timestamp.

    Returns:
        The pattern (``None`` when abstaining), its calibrated confidence and the evidence.

    Raises:
        ValueError: If timestamps are not finite, not in time order, or outside the given window.
    """
    ts, flags = _columns(calls)
    start, end = _window(ts, window_start, window_end)
    n = len(ts)
    span = end - start
    fidx = list(compress(range(n), flags))
    k = len(fidx)
    fts = list(compress(ts, flags))
    rate = k / n if n else 0.0
    per_second = k / span if span > 0.0 else (math.inf if k else 0.0)
    basic = PatternEvidence(
        calls=n,
        failures=k,
        window_seconds=span,
        failure_rate=rate,
        failures_per_second=per_second,
    )
    if k < MIN_FAILURES:
        return PatternResult(None, 0.0, basic)

    gaps = [b - a for a, b in zip(fts, islice(fts, 1, None), strict=False)]
    mean_gap = (fts[-1] - fts[0]) / (k - 1)
    b_raw, b_corr = burstiness(gaps)
    clus = _clustering(ts, fts, start, span) if span > 0.0 else _Clustering(-math.inf, math.inf, 0.0, 1.0, 0.0)
    trend = _trend(fidx, n)
    episodes = _decluster(fidx, fts, n)
    laplace_z = _laplace(episodes.starts, n)
    half = n // 2
    k_first = bisect_left(fidx, half)
    k_second = k - k_first
    half_ratio = (k_second / (n - half)) / (k_first / half) if k_first and half else math.inf
    # Conditional test: given k failures, k_second ~ Binomial(k, (n - half) / n) under a constant rate.
    half_p = _binomial_sf(k_second, k, (n - half) / n)
    cp_at, cp_llr, before, after = _change_point(fidx, n)

    kind: PatternType
    is_cluster = clus.log10_p <= _BURST_LOG10_P and (
        clus.excess >= _BURST_MIN_EXCESS or clus.correlation >= _BURST_MIN_CORRELATION
    )
    is_trend = trend.z >= _TREND_Z and laplace_z >= _LAPLACE_Z
    # Significance of clustering, on a log scale, relative to the threshold (> 0 means significant).
    clus_margin = min(
        math.log10(max(1e-3, -clus.log10_p)) - math.log10(-_BURST_LOG10_P),
        max(
            math.log(max(clus.excess, 1e-3) / _BURST_MIN_EXCESS),
            math.log(max(clus.correlation, 1e-3) / _BURST_MIN_CORRELATION),
        ),
    )
    trend_margin = min(trend.z - _TREND_Z, laplace_z - _LAPLACE_Z)
    if is_cluster and (clus.excess >= _BURST_STRONG_EXCESS or not is_trend):
        # Strong clustering wins over a trend: a few outages that happen to fall late in the window
        # raise the failure rate of its second half without being an escalation.
        kind = "burst"
        score = clus_margin if is_trend else min(clus_margin, -trend_margin)
    elif is_trend:
        kind = "escalating"
        score = trend_margin
        if is_cluster:
            score = min(score, math.log(_BURST_STRONG_EXCESS / clus.excess))
    else:
        rare = per_second <= _INTERMITTENT_PER_SECOND and rate <= _INTERMITTENT_MAX_RATE
        kind = "intermittent" if rare else "steady"
        rate_margin = abs(math.log(max(per_second, 1e-12) / _INTERMITTENT_PER_SECOND))
        if rare:
            rate_margin = min(rate_margin, math.log(_INTERMITTENT_MAX_RATE / max(rate, 1e-12)))
        score = min(-clus_margin, -trend_margin, rate_margin)

    ep_p90 = _quantile(episodes.durations, 0.9)
    evidence = PatternEvidence(
        calls=n,
        failures=k,
        window_seconds=span,
        failure_rate=rate,
        failures_per_second=per_second,
        mean_gap_seconds=mean_gap,
        burstiness=b_raw,
        burstiness_corrected=b_corr,
        dispersion_index=clus.excess,
        dispersion_z=clus.tarone_z,
        dispersion_correlation=clus.correlation,
        dispersion_p_value=10.0**clus.log10_p,
        dispersion_bucket_seconds=clus.bucket_seconds,
        trend_z=trend.z,
        trend_p_value=_normal_sf(trend.z),
        trend_rate_ratio=trend.rate_ratio,
        laplace_z=laplace_z,
        laplace_p_value=_normal_sf(laplace_z),
        episodes=len(episodes.starts),
        episode_p90_seconds=ep_p90,
        episode_max_seconds=episodes.durations[-1],
        background_rate=episodes.background_rate,
        half_rate_ratio=half_ratio,
        half_rate_p_value=half_p,
        change_point_time=ts[cp_at] if cp_llr > 0.0 else None,
        change_point_llr=cp_llr,
        rate_before=before,
        rate_after=after,
        score=score,
    )
    return PatternResult(kind, _calibrate(kind, score, k), evidence)


def _binomial_sf(x: int, size: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(size, p); normal approximation with continuity correction."""
    mean = size * p
    sd = math.sqrt(size * p * (1.0 - p))
    if sd <= 0.0:
        return 1.0 if x <= mean else 0.0
    return _normal_sf((x - 0.5 - mean) / sd)


def classify_seed_heuristic(calls: Sequence[tuple[float, bool]]) -> PatternResult:
    """The original design's rule, kept as a baseline for the benchmark. Not for production use.

    Needs at least 5 failures; then: ``burst`` if most inter-failure gaps are under 5 s, else
    ``escalating`` if the second half of the window (by time) has more failures than the first, else
    ``intermittent`` if the mean gap is over 60 s, else ``steady``. Its confidence is the share of gaps
    supporting the decision (uncalibrated).

    Args:
        calls: ``(timestamp_seconds, failed)`` pairs in time order.

    Returns:
        The seed rule's classification.
    """
    ts, flags = _columns(calls)
    fts = list(compress(ts, flags))
    k = len(fts)
    n = len(ts)
    span = ts[-1] - ts[0] if ts else 0.0
    basic = PatternEvidence(
        calls=n,
        failures=k,
        window_seconds=span,
        failure_rate=k / n if n else 0.0,
        failures_per_second=k / span if span > 0 else 0.0,
    )
    if k < 5:
        return PatternResult(None, 0.0, basic)
    gaps = [b - a for a, b in zip(fts, islice(fts, 1, None), strict=False)]
    short = sum(1 for g in gaps if g < 5.0) / len(gaps)
    mid = ts[0] + span / 2.0
    second = sum(1 for t in fts if t >= mid)
    first = k - second
    mean_gap = sum(gaps) / len(gaps)
    if short > 0.5:
        return PatternResult("burst", short, basic)
    if second > first:
        return PatternResult("escalating", second / k, basic)
    if mean_gap > 60.0:
        return PatternResult("intermittent", 1.0 - short, basic)
    return PatternResult("steady", 1.0 - short, basic)
