"""Small numerical tools for the analysis modules: tails of common distributions, isotonic regression.

Standard library only, so the analysis runs wherever circuitry does. Each function cites the
approximation it uses; none is more precise than the decisions built on it need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

__all__ = [
    "chi2_sf",
    "chibar_sf",
    "clamp",
    "gamma_log10_sf",
    "isotonic",
    "log10_normal_sf",
    "logistic",
    "normal_sf",
]


def clamp(x: float, lo: float, hi: float) -> float:
    """``x`` limited to ``[lo, hi]``."""
    return lo if x < lo else hi if x > hi else x


def logistic(x: float) -> float:
    """``1 / (1 + exp(-x))``, without overflow."""
    x = clamp(x, -40.0, 40.0)
    return 1.0 / (1.0 + math.exp(-x))


def normal_sf(z: float) -> float:
    """Upper tail of the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def log10_normal_sf(z: float) -> float:
    """``log10`` of the upper normal tail, accurate far into the tail (Mills' ratio beyond z = 30)."""
    if z < 30.0:
        return math.log10(max(normal_sf(z), 1e-300))
    return (-0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi))) / math.log(10.0)


def chi2_sf(x: float, df: int) -> float:
    """Upper tail of chi-square with an integer number of degrees of freedom (exact series).

    For even ``df`` the tail is a Poisson sum; for odd ``df`` an erfc plus a finite series
    (Abramowitz & Stegun 26.4.4-26.4.5).
    """
    if df <= 0:
        return 0.0 if x > 0.0 else 1.0
    if x <= 0.0:
        return 1.0
    half = x / 2.0
    if df % 2 == 0:
        term = math.exp(-half)
        total = term
        for k in range(1, df // 2):
            term *= half / k
            total += term
        return min(1.0, total)
    root = math.sqrt(x)
    total = math.erfc(root / math.sqrt(2.0))
    if df > 1:
        term = math.sqrt(2.0 / math.pi) * root * math.exp(-half)
        total += term
        for k in range(3, df, 2):
            term *= x / k
            total += term
    return min(1.0, total)


@lru_cache(maxsize=64)
def _level_probabilities(m: int) -> tuple[float, ...]:
    """P(the isotonic fit of ``m`` equal-weight i.i.d. values has ``l`` levels), ``l = 1..m``.

    These are ``|s(m, l)| / m!`` with ``s`` the Stirling numbers of the first kind (Barlow, Bartholomew,
    Bremner & Brunk, *Statistical Inference under Order Restrictions*, 1972, section 3.3).
    """
    row = [1]  # |s(0, 0)|
    for n in range(m):
        nxt = [0] * (len(row) + 1)
        for k, v in enumerate(row):
            nxt[k] += n * v
            nxt[k + 1] += v
        row = nxt
    total = math.factorial(m)
    return tuple(v / total for v in row[1:])


def chibar_sf(stat: float, m: int) -> float:
    """Tail of the chi-bar-square statistic ``2 * LLR`` of a monotone fit of ``m`` groups against a constant.

    ``P(T >= t) = sum_l P(l levels) * P(chi2_{l-1} >= t)``, with the equal-weight level probabilities
    (the groups are cut to roughly equal information, so the weights are close to equal).

    Args:
        stat: Twice the log-likelihood ratio.
        m: Number of groups.

    Returns:
        The p-value.
    """
    if stat <= 0.0:
        return 1.0
    probs = _level_probabilities(max(1, min(m, 60)))
    return min(1.0, sum(p * chi2_sf(stat, level) for level, p in enumerate(probs) if level > 0))


def gamma_log10_sf(observed: float, mean: float, var: float) -> float:
    """``log10 P(X >= observed)`` for a non-negative count with the given mean and variance.

    ``X`` is approximated by a gamma distribution with the same two moments and its tail by the
    Wilson-Hilferty cube-root transformation (Wilson & Hilferty, PNAS 17, 684-688, 1931). Unlike a normal
    approximation it keeps the right skew of a sparse count (a pair count with a mean of 0.5).
    """
    if mean <= 0.0:
        return -math.inf if observed > 0.0 else 0.0
    if observed <= mean:
        return 0.0
    var = max(var, 1e-12 * mean)
    shape = mean * mean / var
    c = 1.0 / (9.0 * shape)
    z = ((observed / mean) ** (1.0 / 3.0) - (1.0 - c)) / math.sqrt(c)
    return min(0.0, log10_normal_sf(z))


def isotonic(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Weighted least-squares non-decreasing fit (pool-adjacent-violators), O(n).

    For binomial proportions (weights = calls) and Poisson rates (weights = exposure) this is also the
    maximum-likelihood non-decreasing fit.
    """
    levels: list[float] = []
    wsum: list[float] = []
    sizes: list[int] = []
    for v, w in zip(values, weights, strict=True):
        levels.append(v)
        wsum.append(w)
        sizes.append(1)
        while len(levels) > 1 and levels[-2] > levels[-1]:
            w2 = wsum[-2] + wsum[-1]
            merged = (levels[-2] * wsum[-2] + levels[-1] * wsum[-1]) / w2 if w2 > 0 else levels[-1]
            levels[-2:] = [merged]
            wsum[-2:] = [w2]
            sizes[-2:] = [sizes[-2] + sizes[-1]]
    out: list[float] = []
    for v, size in zip(levels, sizes, strict=True):
        out.extend([v] * size)
    return out
