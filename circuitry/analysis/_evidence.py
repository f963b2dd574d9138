"""The two tests behind the pattern labels, on per-second buckets: clustering and a sustained rise.

Clustering (:func:`clustering`)
    At time scales ``w = g, 2g, 4g, ...`` the window is cut into bins of width ``w`` and the bins into
    blocks of four. Inside each block we count the pairs of failures that share a bin and compare the
    count with its exact mean and variance under two null hypotheses, *conditional on the block's
    failure count*: failures are a random subset of the block's calls (the traffic explains where they
    fall), and failures fall uniformly in time (a time-homogeneous process explains it). Conditioning on
    the block removes anything slower than the block -- a trend, a traffic ramp, a step -- so what is
    left is clustering at the bin's scale. Both nulls must be rejected (an intersection-union test), so
    failures that follow batched traffic, and time-homogeneous failures under changing traffic, are not
    clustered. The pair count is Tarone's C(alpha) score for extra-binomial variation (Biometrika 66,
    585-590, 1979) restricted to its off-diagonal part; its tail is taken from a moment-matched gamma.

Sustained rise (:func:`rise`)
    The calls are cut into groups of equal call count (operational time: more traffic is not more risk)
    and the failure probability per group is fitted non-decreasing (isotonic regression); twice the
    log-likelihood ratio against a constant, divided by the over-dispersion left around the monotone fit,
    is referred to its chi-bar-square null, and a Cochran-Armitage linear trend score is tried beside it
    (more power for smooth rises). The same is done for failures *per second* in equal time groups. A
    rise counts only if both are significant: failures per call and per minute must both go up, so a
    time-homogeneous failure process under falling traffic (more failures per call, not per minute) is
    not a rise, nor is traffic growth at a constant failure probability.

(Over 500 lines: each statistic above is a few short functions with its reference; they share the
same bucket arrays and null-distribution helpers, and the labels in :mod:`~circuitry.analysis.patterns`
read them all.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from circuitry.analysis._stats import chi2_sf, chibar_sf, clamp, gamma_log10_sf, isotonic, normal_sf

__all__ = [
    "Drop", "Episode", "Grid", "Groups", "Rise", "Scale", "clustering", "drop", "episode", "grid", "op_groups", "rise",
]

_MAX_BINS = 4096  # finest bins per window; coarser bins for windows longer than this many buckets
_BLOCK = 4  # bins per conditioning block


@dataclass(frozen=True, slots=True)
class Grid:
    """Calls and failures on a regular grid of ``width``-second bins over the window."""

    width: float
    calls: list[int]
    failures: list[int]
    seconds: list[float]  # each bin's duration inside the window
    start: float


def grid(index: tuple[int, ...], calls: tuple[int, ...], failures: tuple[int, ...], bucket: float,
         start: float, end: float, refusing: Sequence[tuple[float, float]] = ()) -> Grid:
    """Re-bin a series' buckets onto a regular grid starting at the window start.

    The grid width is the bucket width, doubled until the window has at most ``_MAX_BINS`` bins. A bin's
    time exposure leaves out the time the breaker in force refused calls (``refusing``): no failure can be
    seen then, so a time-homogeneous failure process shows fewer failures in those bins.
    """
    span = max(end - start, bucket)
    width = bucket
    while span / width > _MAX_BINS:
        width *= 2.0
    m = max(1, math.ceil(span / width - 1e-9))
    n = [0] * m
    x = [0] * m
    for i, c, f in zip(index, calls, failures, strict=True):
        j = min(m - 1, max(0, int((i * bucket + 0.5 * bucket - start) // width)))
        n[j] += c
        x[j] += f
    secs = [width] * m
    secs[-1] = max(1e-9, span - width * (m - 1))
    for a, b in refusing:
        j0 = max(0, int((a - start) // width))
        j1 = min(m - 1, int((b - start) // width))
        for j in range(j0, j1 + 1):
            lo = start + j * width
            secs[j] -= max(0.0, min(b, lo + width) - max(a, lo))
    floor = 0.01 * width  # a bin refused throughout still holds its probes
    secs = [max(floor, v) for v in secs]
    return Grid(width, n, x, secs, start)


@dataclass(frozen=True, slots=True)
class Scale:
    """The clustering test at one time scale."""

    seconds: float  # bin width
    pairs: int  # observed pairs of failures sharing a bin
    expected_calls: float  # expected pairs if failures were a random subset of each block's calls
    expected_time: float  # expected pairs if failures fell uniformly in time within each block
    log10_p_calls: float
    log10_p_time: float
    correlation: float  # Tarone's moment estimate of the within-bin correlation of failures
    failures: int
    largest_block_surplus: float  # the one block contributing most surplus pairs (calls null)

    @property
    def excess_per_failure(self) -> float:
        """Twice the surplus pairs per failure, under the null that explains them best.

        This is the Fano factor of the bin counts minus one (variance over mean, minus the mean's own
        share): about ``m - 1`` for clusters of ``m`` failures, whatever the density of the clusters --
        unlike :attr:`excess`, which shrinks as overlapping clusters fill every bin.
        """
        e = max(self.expected_calls, self.expected_time)
        return 2.0 * (self.pairs - e) / self.failures if self.failures else 0.0

    @property
    def robust_excess_per_failure(self) -> float:
        """:attr:`excess_per_failure` without the block contributing most: one step, one outage or the
        ramp of an escalation puts its whole surplus in one block, clustering spread over the window
        does not."""
        e = max(self.expected_calls, self.expected_time)
        surplus = self.pairs - e - max(0.0, self.largest_block_surplus)
        return 2.0 * surplus / self.failures if self.failures else 0.0

    @property
    def robust_fano(self) -> float:
        """Variance of bin counts over their mean (>= 1), leaving out the block with the most surplus.

        One step or one outage puts all its surplus in one block; clustering spread over the window
        does not. This is the over-dispersion a trend test at this scale must allow for.
        """
        if not self.failures:
            return 1.0
        surplus = self.pairs - self.expected_calls - max(0.0, self.largest_block_surplus)
        return 1.0 + max(0.0, 2.0 * surplus / self.failures)

    @property
    def log10_p(self) -> float:
        """The intersection-union p-value: the less significant of the two nulls."""
        return max(self.log10_p_calls, self.log10_p_time)

    @property
    def excess(self) -> float:
        """Observed over expected pairs, under the null that explains them best."""
        e = max(self.expected_calls, self.expected_time)
        return self.pairs / e if e > 0.0 else (math.inf if self.pairs else 1.0)


def _block_moments(ns: list[int], xs: list[int], ds: list[float]) -> tuple[int, float, float, float, float, float]:
    """Observed pairs, and mean/variance of the pair count under both nulls, for one block."""
    k = sum(xs)
    q = sum(v * (v - 1) for v in xs) // 2
    if k < 2:
        return q, 0.0, 0.0, 0.0, 0.0, 0.0
    n = sum(ns)
    pairs = k * (k - 1) / 2.0
    triples = k * (k - 1) * (k - 2)
    disjoint = pairs * (k - 2) * (k - 3) / 2.0
    # Hypergeometric: failures a random k-subset of the block's n calls.
    f2 = sum(c * (c - 1) for c in ns)
    h2 = f2 / (n * (n - 1.0))
    h3 = sum(c * (c - 1) * (c - 2) for c in ns) / (n * (n - 1.0) * (n - 2.0)) if n >= 3 else 0.0
    if n >= 4:
        f4 = sum(c * (c - 1) * (c - 2) * (c - 3) for c in ns)
        s22 = sum((c * (c - 1)) ** 2 for c in ns)
        h22 = (f2 * f2 - s22 + f4) / (n * (n - 1.0) * (n - 2.0) * (n - 3.0))
    else:
        h22 = 0.0
    e_c = pairs * h2
    v_c = max(0.0, pairs * h2 * (1.0 - h2) + triples * (h3 - h2 * h2) + disjoint * (h22 - h2 * h2))
    # Multinomial: each failure independently in a bin with probability proportional to its duration.
    total = sum(ds)
    s2 = sum((d / total) ** 2 for d in ds)
    s3 = sum((d / total) ** 3 for d in ds)
    e_t = pairs * s2
    v_t = max(0.0, pairs * s2 * (1.0 - s2) + triples * (s3 - s2 * s2))
    # Denominator of Tarone's correlation estimate: sum over bins of C(n_j, 2) * p * (1 - p).
    p = k / n
    rho_den = f2 / 2.0 * p * (1.0 - p)
    return q, e_c, v_c, e_t, v_t, rho_den


def clustering(g: Grid, span: float, *, whole: bool = False) -> list[Scale]:
    """The clustering test at every scale whose blocks fit at least twice into the window.

    With ``whole``, the block is the whole window instead (no conditioning): the test then also sees
    variation slower than any block -- waves of failures that come and go over minutes, but also steps
    and trends, which the caller must tell apart (a monotone fit explains a trend, not a wave).
    """
    n, x, d = g.calls, g.failures, g.seconds
    width = g.width
    out: list[Scale] = []
    block = _BLOCK
    if whole:
        while width < 16.0 and len(n) >= 16:  # start at 16 s: shorter scales are the local test's
            n = [n[i] + (n[i + 1] if i + 1 < len(n) else 0) for i in range(0, len(n), 2)]
            x = [x[i] + (x[i + 1] if i + 1 < len(x) else 0) for i in range(0, len(x), 2)]
            d = [d[i] + (d[i + 1] if i + 1 < len(d) else 0.0) for i in range(0, len(d), 2)]
            width *= 2.0
    def more() -> bool:
        if whole:
            return len(n) >= 8 and width * 8 <= span + 1e-9
        return len(n) >= 2 * _BLOCK and _BLOCK * width <= span / 2.0

    while more():
        block = len(n) if whole else _BLOCK
        q = 0
        e_c = v_c = e_t = v_t = rho_den = 0.0
        top = 0.0
        for b in range(0, len(n), block):
            bq, a, b_, c, d_, r = _block_moments(n[b : b + block], x[b : b + block], d[b : b + block])
            top = max(top, bq - a)
            q += bq
            e_c += a
            v_c += b_
            e_t += c
            v_t += d_
            rho_den += r
        out.append(
            Scale(
                seconds=width,
                pairs=q,
                expected_calls=e_c,
                expected_time=e_t,
                log10_p_calls=gamma_log10_sf(q, e_c, v_c),
                log10_p_time=gamma_log10_sf(q, e_t, v_t),
                correlation=(q - e_c) / rho_den if rho_den > 0.0 else 0.0,
                failures=sum(x),
                largest_block_surplus=top,
            )
        )
        # Next scale: merge neighbouring bins.
        n = [n[i] + (n[i + 1] if i + 1 < len(n) else 0) for i in range(0, len(n), 2)]
        x = [x[i] + (x[i + 1] if i + 1 < len(x) else 0) for i in range(0, len(x), 2)]
        d = [d[i] + (d[i + 1] if i + 1 < len(d) else 0.0) for i in range(0, len(d), 2)]
        width *= 2.0
    return out


@dataclass(frozen=True, slots=True)
class Trend:
    """A monotone-rise test on one axis (operational or calendar time)."""

    log10_p: float
    ratio: float  # fitted rate, last fifth of the axis over the first fifth
    dispersion: float  # over-dispersion factor around the monotone fit (>= 1)
    z_linear: float  # Cochran-Armitage (or Poisson) linear trend z, dispersion-corrected
    fitted: list[float]  # the monotone fit per group


def _trend(xs: list[int], ns: list[float], binomial: bool, extra: float = 1.0) -> Trend:
    """Monotone and linear rise of ``xs`` against exposure ``ns`` over ordered groups.

    ``extra`` is an over-dispersion factor known from elsewhere (clustering at the groups' scale); the
    larger of it and the one estimated around the monotone fit is used.
    """
    m = len(xs)
    k = sum(xs)
    total = sum(ns)
    if m < 3 or k == 0 or total <= 0.0:
        return Trend(0.0, 1.0, 1.0, 0.0, [k / total if total else 0.0] * m)
    p = k / total
    if binomial and p >= 1.0:
        return Trend(0.0, 1.0, 1.0, 0.0, [1.0] * m)
    raw = [x / c if c > 0 else p for x, c in zip(xs, ns, strict=True)]
    fit = isotonic(raw, ns)
    llr = 0.0
    chi2 = 0.0
    for x, c, f in zip(xs, ns, fit, strict=True):
        if c <= 0:
            continue
        if x > 0:
            llr += x * math.log(f / p)
        if binomial:
            if c - x > 0:
                llr += (c - x) * math.log((1.0 - f) / (1.0 - p))
            fv = clamp(f, 0.5 / c, 1.0 - 0.5 / c)
            chi2 += (x - c * fv) ** 2 / (c * fv * (1.0 - fv))
        else:
            fv = max(f, 0.5 / c)
            chi2 += (x - c * fv) ** 2 / (c * fv)
    levels = len(set(fit))
    df = max(1, m - levels)
    # Correct for over-dispersion only when it is significant: with few groups the estimate is noisy.
    phi = max(extra, chi2 / df) if chi2_sf(chi2, df) < 0.05 else max(1.0, extra)
    p_iso = chibar_sf(2.0 * llr / phi, m)
    # Linear score test with centred scores 0..1 (the groups are equal in calls or in time).
    s = [(j + 0.5) / m for j in range(m)]
    s_bar = sum(c * v for c, v in zip(ns, s, strict=True)) / total
    var = sum(c * (v - s_bar) ** 2 for c, v in zip(ns, s, strict=True)) * p * ((1.0 - p) if binomial else 1.0)
    score = sum((x - c * p) * (v - s_bar) for x, c, v in zip(xs, ns, s, strict=True))
    z = score / math.sqrt(var * phi) if var > 0.0 else 0.0
    p_lin = normal_sf(z)
    # Best single step up between groups (more power for an abrupt change than either test above).
    kx = nx = 0.0
    best = 0.0
    for x, c in zip(xs[:-1], ns[:-1], strict=True):
        kx += x
        nx += c
        if nx <= 0 or total - nx <= 0 or kx / nx >= (k - kx) / (total - nx):
            continue
        if binomial:
            ll = _bernoulli_ll(kx, nx) + _bernoulli_ll(k - kx, total - nx) - _bernoulli_ll(k, total)
        else:
            ll = _poisson_ll(kx, nx) + _poisson_ll(k - kx, total - nx) - _poisson_ll(k, total)
        best = max(best, ll)
    p_step = min(1.0, chi2_sf(2.0 * best / phi, 1) * (m - 1))
    log10_p = math.log10(max(1e-300, min(1.0, 2.0 * min(p_lin, p_step), 3.0 * p_iso)))
    fifth = max(1, m // 5)
    head = sum(f * c for f, c in zip(fit[:fifth], ns[:fifth], strict=True)) / max(1e-12, sum(ns[:fifth]))
    tail = sum(f * c for f, c in zip(fit[-fifth:], ns[-fifth:], strict=True)) / max(1e-12, sum(ns[-fifth:]))
    ratio = tail / head if head > 0.0 else (math.inf if tail > 0.0 else 1.0)
    return Trend(log10_p, ratio, phi, z, fit)


@dataclass(frozen=True, slots=True)
class Rise:
    """The sustained-rise test on both axes, and the best single step in operational time."""

    per_call: Trend
    per_second: Trend
    step_at: float  # time of the most likely single change in failure probability
    rate_before: float
    rate_after: float
    step_llr: float
    top_from: float  # start of the first group at the monotone fit's final level

    @property
    def log10_p(self) -> float:
        """The intersection-union p-value: the less significant axis."""
        return max(self.per_call.log10_p, self.per_second.log10_p)


def _poisson_ll(k: float, t: float) -> float:
    """Maximised Poisson log-likelihood of ``k`` events in exposure ``t`` (up to a constant)."""
    return k * math.log(k / t) - k if k > 0 and t > 0 else 0.0


def _bernoulli_ll(k: float, n: float) -> float:
    if k <= 0 or k >= n:
        return 0.0
    p = k / n
    return k * math.log(p) + (n - k) * math.log1p(-p)


@dataclass(frozen=True, slots=True)
class Groups:
    """Consecutive buckets cut into groups of about equal call count (operational time)."""

    failures: list[int]
    calls: list[float]
    starts: list[float]  # time of each group's first bucket


def op_groups(index: tuple[int, ...], calls: tuple[int, ...], failures: tuple[int, ...], bucket: float,
              groups: int) -> Groups:
    """Cut the buckets into at most ``groups`` groups of about ``total / groups`` calls (whole buckets)."""
    total = sum(calls)
    cum = list(accumulate(calls))
    fcum = list(accumulate(failures))
    xs: list[int] = []
    ns: list[float] = []
    times: list[float] = []
    j0 = 0
    for j in range(1, groups + 1):
        target = total * j / groups
        lo, hi = j0, len(cum) - 1
        while lo < hi:  # first bucket whose cumulative count reaches the target
            mid = (lo + hi) // 2
            if cum[mid] >= target - 1e-9:
                hi = mid
            else:
                lo = mid + 1
        j1 = lo
        if j1 < j0:
            continue
        c = cum[j1] - (cum[j0 - 1] if j0 else 0)
        if c <= 0:
            continue
        xs.append(fcum[j1] - (fcum[j0 - 1] if j0 else 0))
        ns.append(float(c))
        times.append(index[j0] * bucket)
        j0 = j1 + 1
        if j0 >= len(cum):
            break
    return Groups(xs, ns, times)


def rise(index: tuple[int, ...], calls: tuple[int, ...], failures: tuple[int, ...], bucket: float,
         g: Grid, ops: Groups, scales: list[Scale]) -> Rise:
    """The rise test on operational-time groups ``ops`` and as many equal-time groups of grid ``g``.

    The over-dispersion that clustering causes at the groups' time scale (:attr:`Scale.robust_fano` of
    the nearest scale) widens both tests.
    """
    total = sum(calls)
    k = sum(failures)
    xs, ns, times = ops.failures, ops.calls, ops.starts
    groups = len(xs)
    span = sum(g.seconds)
    extra = 1.0
    if scales and groups:
        target = span / groups
        near = min(scales, key=lambda sc: abs(math.log(sc.seconds / target)))
        extra = near.robust_fano
    per_call = _trend(xs, ns, binomial=True, extra=extra)
    # Calendar time: equal-duration groups of the grid.
    m = len(g.calls)
    per = max(1, m // groups)
    cx = [sum(g.failures[i : i + per]) for i in range(0, m, per)]
    cd = [sum(g.seconds[i : i + per]) for i in range(0, m, per)]
    per_second = _trend(cx, cd, binomial=False, extra=extra)
    # Best single change point between operational-time groups (Hinkley & Hinkley, Biometrika 57, 1970).
    best, at, before, after = 0.0, 0, k / total if total else 0.0, k / total if total else 0.0
    base = _bernoulli_ll(k, total)
    kx = 0.0
    nx = 0.0
    for j in range(len(xs) - 1):
        kx += xs[j]
        nx += ns[j]
        ll = _bernoulli_ll(kx, nx) + _bernoulli_ll(k - kx, total - nx) - base
        if ll > best:
            best, at, before, after = ll, j + 1, kx / nx, (k - kx) / (total - nx)
    step_at = times[at] if at < len(times) else (times[-1] if times else 0.0)
    fit = per_call.fitted
    top = next((j for j, f in enumerate(fit) if f >= fit[-1] - 1e-12), 0) if fit else 0
    top_from = times[top] if top < len(times) else index[0] * bucket
    return Rise(per_call, per_second, step_at, before, after, best, top_from)


@dataclass(frozen=True, slots=True)
class Drop:
    """The most likely single fall in failure probability after a given time."""

    log10_p: float  # Bonferroni-adjusted over the candidate split points
    at: float
    rate_before: float
    rate_after: float


def drop(index: tuple[int, ...], calls: tuple[int, ...], failures: tuple[int, ...], bucket: float,
         since: float) -> Drop:
    """Search the buckets from ``since`` on for a fall in the failure probability (an episode ending).

    Candidate splits are the ends of failing buckets; the likelihood-ratio statistic of the best one is
    referred to chi-square with one degree of freedom, times the number of candidates.
    """
    lo = next((j for j, i in enumerate(index) if i * bucket >= since), len(index))
    n_tot = sum(calls[lo:])
    k_tot = sum(failures[lo:])
    none = Drop(0.0, since, k_tot / n_tot if n_tot else 0.0, k_tot / n_tot if n_tot else 0.0)
    if k_tot < 2 or n_tot <= k_tot:
        return none
    base = _bernoulli_ll(k_tot, n_tot)
    best, best_at, rb, ra = 0.0, since, 0.0, 0.0
    kx = nx = 0
    candidates = 0
    for j in range(lo, len(index) - 1):
        kx += failures[j]
        nx += calls[j]
        if not failures[j]:
            continue
        candidates += 1
        before, after = kx / nx, (k_tot - kx) / (n_tot - nx)
        if after >= before:
            continue
        ll = _bernoulli_ll(kx, nx) + _bernoulli_ll(k_tot - kx, n_tot - nx) - base
        if ll > best:
            best, best_at, rb, ra = ll, (index[j] + 1) * bucket, before, after
    if best <= 0.0:
        return none
    log10_p = min(0.0, math.log10(max(1e-300, chi2_sf(2.0 * best, 1))) + math.log10(max(1, candidates)))
    return Drop(log10_p, best_at, rb, ra)


@dataclass(frozen=True, slots=True)
class Episode:
    """The most likely single episode: a stretch of operational-time groups with a raised failure rate
    that is over before the window ends (an "epidemic" change, up then down)."""

    log10_p: float  # Bonferroni-adjusted over the candidate stretches
    start: float
    end: float
    rate_inside: float
    rate_outside: float
    rate_after: float


def episode(ops: Groups, g: Grid) -> Episode:
    """Search every stretch of groups that ends before the last group for a raised failure probability.

    The likelihood-ratio statistic of a two-level Bernoulli model (inside / outside the stretch) is
    referred to chi-square with two degrees of freedom (two change points), times the number of stretches
    tried; the best stretch must also hold more failures *per second* than the rest of the window (the
    smaller of the two statistics decides). An episode that has not ended by the last group is a rise.
    """
    xs, ns = ops.failures, ops.calls
    m = len(xs)
    k = sum(xs)
    total = sum(ns)
    none = Episode(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if m < 3 or k < 2 or total <= k:
        return none
    cx = [0.0, *accumulate(xs)]
    cn = [0.0, *accumulate(ns)]
    base = _bernoulli_ll(k, total)
    best = 0.0
    arg = (0, 0)
    for a in range(m - 1):
        for b in range(a + 1, m):  # stretch [a, b), at least one group after it
            kin, nin = cx[b] - cx[a], cn[b] - cn[a]
            kout, nout = k - kin, total - nin
            if kin * nout <= kout * nin:
                continue
            ll = _bernoulli_ll(kin, nin) + _bernoulli_ll(kout, nout) - base
            if ll > best:
                best, arg = ll, (a, b)
    if best <= 0.0:
        return none
    a, b = arg
    kin, nin = cx[b] - cx[a], cn[b] - cn[a]
    start, end = ops.starts[a], ops.starts[b]
    # The same stretch in calendar time: failures per second inside against outside. Both must be
    # raised (intersection-union), or falling traffic alone would make a stretch of "more failures per call".
    t0 = g.start
    fin = tin = 0.0
    for j, (x, d) in enumerate(zip(g.failures, g.seconds, strict=True)):
        mid = t0 + (j + 0.5) * g.width
        if start <= mid < end:
            fin += x
            tin += d
    fout, tout = k - fin, sum(g.seconds) - tin
    ll_t = 0.0
    if tin > 0 and tout > 0 and fin / tin > fout / tout:
        rate = k / (tin + tout)
        ll_t = (fin * math.log(fin / tin / rate) if fin else 0.0) + (
            fout * math.log(fout / tout / rate) if fout else 0.0)
    tries = math.log10(m * (m - 1) / 2)
    log10_p = min(0.0, math.log10(max(1e-300, chi2_sf(2.0 * min(best, ll_t), 2))) + tries)
    after = (cx[m] - cx[b]) / (cn[m] - cn[b])
    return Episode(log10_p, start, end, kin / nin, (k - kin) / (total - nin), after)
