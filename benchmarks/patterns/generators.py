"""Synthetic call streams with a known failure pattern, for benchmarking :mod:`circuitry.analysis.patterns`.

Every generator takes a :class:`random.Random` (so a seed fixes the stream) and an *expected* number of
failures, and returns a :class:`Window`: the calls ``(timestamp, failed)`` in time order, the window bounds,
the true class, and the intervals during which the service was failing (used by the replay simulation).

Traffic is a Poisson arrival process, either at a constant rate or with a linear "diurnal" ramp (rate
multiplied by a factor between 1/4 and 4 across the window), produced by thinning.

Failure processes, per class (the ranges are the definitions of the classes used by the benchmark):

* ``steady`` -- every call fails independently with one constant probability ``p``; failures arrive at
  2 to 60 per minute (a "high-rate" variant at 12 to 60 per minute, where most gaps are under 5 s), with
  constant or ramping traffic.
* ``intermittent`` -- failures form a renewal process with Weibull gaps (shape 0.8 to 2, a hard variant
  0.6 to 0.8) counted in calls, mean gap 2 to 15 minutes; failure probability per call under 5 %.
* ``burst`` -- failures clustered in time beyond what the traffic explains: a self-exciting Hawkes process
  (branching ratio 0.7 to 0.95, exponential kernel 0.5 to 5 s), a Neyman-Scott cluster process, a two-state
  (healthy / outage) Markov-modulated process, short outages on a steady background, and hard cases: a
  single outage, and an outage in the last few percent of the window.
* ``escalating`` -- failure probability per call rising over the window: log-linear, power-law, logistic
  rise and a step change, by a factor of 5 to 40, with constant or ramping traffic.

Point-process failures (Hawkes, cluster, Weibull) are attached to the first not-yet-failed call at or
after each event time, so the failed calls stay a subset of the traffic.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

Call = tuple[float, bool]

#: Cap on the calls generated per window, to keep the benchmark fast.
MAX_CALLS = 40_000


@dataclass(frozen=True)
class Window:
    """One generated window of calls with its ground truth."""

    label: str | None
    kind: str
    calls: list[Call]
    start: float
    end: float
    failing: list[tuple[float, float]] = field(default_factory=list)

    @property
    def failures(self) -> int:
        """Number of failed calls in the window."""
        return sum(1 for _, f in self.calls if f)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def traffic(rng: random.Random, rate: float, start: float, end: float, ramp: float = 1.0) -> list[float]:
    """Poisson arrival times on ``[start, end)``.

    Args:
        rng: Random source.
        rate: Arrival rate (calls per second) at ``start``.
        start: Window start (seconds).
        end: Window end (seconds).
        ramp: Rate at ``end`` divided by rate at ``start`` (linear in between).

    Returns:
        Sorted arrival times.
    """
    peak = rate * max(1.0, ramp)
    span = end - start
    out: list[float] = []
    t = start
    expo = rng.expovariate
    uni = rng.random
    slope = (ramp - 1.0) / span if span > 0 else 0.0
    while True:
        t += expo(peak)
        if t >= end:
            return out
        if ramp == 1.0 or uni() * peak <= rate * (1.0 + slope * (t - start)):
            out.append(t)


def _mean_rate(rate: float, ramp: float) -> float:
    return rate * (1.0 + ramp) / 2.0


def _bernoulli(rng: random.Random, times: list[float], prob: Callable[[float], float]) -> list[Call]:
    uni = rng.random
    return [(t, uni() < prob(t)) for t in times]


def _attach(times: list[float], events: list[float]) -> list[Call]:
    """Mark the first not-yet-failed call at or after each event time as failed."""
    failed = [False] * len(times)
    n = len(times)
    for e in sorted(events):
        i = bisect_left(times, e)
        while i < n and failed[i]:
            i += 1
        if i < n:
            failed[i] = True
    return list(zip(times, failed, strict=True))


def _pick_traffic(rng: random.Random, duration: float, min_rate: float, max_rate: float) -> tuple[float, float]:
    """A traffic rate and ramp, capped so the window stays under MAX_CALLS calls."""
    ramp = 1.0 if rng.random() < 0.5 else _log_uniform(rng, 0.25, 4.0)
    cap = MAX_CALLS / duration / ((1.0 + ramp) / 2.0)
    hi = min(max_rate, cap)
    lo = min(min_rate, hi)
    return _log_uniform(rng, lo, hi), ramp


# --------------------------------------------------------------------------------------------- steady


def steady(rng: random.Random, expected: float, *, high_rate: bool = False, ramp: bool | None = None) -> Window:
    """Independent failures at one constant probability per call.

    Args:
        rng: Random source.
        expected: Expected number of failures.
        high_rate: Use 12-60 failures/min (most gaps under 5 s) instead of 2-60.
        ramp: Force a traffic ramp (True), constant traffic (False) or choose at random (None).

    Returns:
        The window, labelled ``steady``.
    """
    per_min = _log_uniform(rng, 12.0 if high_rate else 2.0, 60.0)
    duration = min(max(expected / per_min * 60.0, 30.0), 4 * 3600.0)
    per_sec = expected / duration
    rate, ramp_f = _pick_traffic(rng, duration, max(0.5, 2.5 * per_sec), 150.0)
    if ramp is True:
        ramp_f = _log_uniform(rng, 3.0, 5.0)
        rate = min(rate, MAX_CALLS / duration / ((1 + ramp_f) / 2))
    elif ramp is False:
        ramp_f = 1.0
    times = traffic(rng, rate, 0.0, duration, ramp_f)
    p = min(0.5, per_sec / _mean_rate(rate, ramp_f))
    kind = "steady-high-rate" if high_rate else ("steady-ramp" if ramp_f != 1.0 else "steady")
    return Window("steady", kind, _bernoulli(rng, times, lambda _t: p), 0.0, duration)


# --------------------------------------------------------------------------------------- intermittent


def intermittent(rng: random.Random, expected: float, *, hard: bool = False) -> Window:
    """Rare failures with Weibull-distributed gaps (a renewal process) in operational time.

    The gaps are counted in calls, so when traffic ramps the failures per second follow it and the
    failure probability per call stays constant (otherwise a falling traffic ramp would be a genuine
    escalation per call).

    Args:
        rng: Random source.
        expected: Expected number of failures.
        hard: Use Weibull shape 0.6-0.8 (gaps more irregular) instead of 0.8-2.

    Returns:
        The window, labelled ``intermittent``.
    """
    shape = rng.uniform(0.6, 0.8) if hard else rng.uniform(0.8, 2.0)
    max_gap = min(900.0, 8 * 3600.0 / max(expected, 1.0))
    mean_gap = _log_uniform(rng, 120.0, max(120.0, max_gap))
    duration = max(expected * mean_gap, 600.0)
    rate, ramp_f = _pick_traffic(rng, duration, 0.3, 5.0)
    rate = max(rate, 25.0 / mean_gap)  # keeps failure probability per call <= 4 %
    rate = min(rate, MAX_CALLS / duration / ((1 + ramp_f) / 2))
    times = traffic(rng, rate, 0.0, duration, ramp_f)
    calls_per_gap = mean_gap * _mean_rate(rate, ramp_f)
    scale = calls_per_gap / math.gamma(1.0 + 1.0 / shape)
    failed = [False] * len(times)
    # Start the renewal process before the window so the first gap is not special.
    x = -rng.weibullvariate(scale, shape) * rng.random()
    while True:
        x += rng.weibullvariate(scale, shape)
        i = math.ceil(x)
        if i >= len(times):
            break
        if i >= 0:
            failed[i] = True
    kind = "intermittent-hard" if hard else "intermittent"
    return Window("intermittent", kind, list(zip(times, failed, strict=True)), 0.0, duration)


# ---------------------------------------------------------------------------------------------- burst


def hawkes(rng: random.Random, expected: float) -> Window:
    """Self-exciting (Hawkes) failures with an exponential kernel, simulated by branching.

    Args:
        rng: Random source.
        expected: Expected number of failures.

    Returns:
        The window, labelled ``burst``.
    """
    branching = rng.uniform(0.7, 0.95)
    decay = rng.uniform(0.5, 5.0)
    clusters = max(1.0, expected * (1.0 - branching))
    duration = min(max(clusters * _log_uniform(rng, 60.0, 400.0), 300.0), 4 * 3600.0)
    mu = expected * (1.0 - branching) / duration
    events: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(mu)
        if t >= duration:
            break
        gen = [t]
        while gen:
            nxt: list[float] = []
            for parent in gen:
                events.append(parent)
                for _ in range(_poisson(rng, branching)):
                    nxt.append(parent + rng.expovariate(1.0 / decay))
            gen = [c for c in nxt if c < duration]
    rate, ramp_f = _pick_traffic(rng, duration, 1.0, 100.0)
    times = traffic(rng, rate, 0.0, duration, ramp_f)
    return Window("burst", "burst-hawkes", _attach(times, events), 0.0, duration)


def _poisson(rng: random.Random, mean: float) -> int:
    limit = math.exp(-mean)
    k = 0
    prod = rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def cluster(rng: random.Random, expected: float) -> Window:
    """Neyman-Scott cluster process: Poisson cluster centres, each with a Poisson number of failures.

    Args:
        rng: Random source.
        expected: Expected number of failures.

    Returns:
        The window, labelled ``burst``.
    """
    size = rng.uniform(4.0, 12.0)
    spread = rng.uniform(1.0, 8.0)
    clusters = max(1.0, expected / size)
    duration = min(max(clusters * _log_uniform(rng, 60.0, 400.0), 300.0), 4 * 3600.0)
    events: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(clusters / duration)
        if t >= duration:
            break
        for _ in range(1 + _poisson(rng, size - 1.0)):
            c = t + rng.expovariate(1.0 / spread)
            if c < duration:
                events.append(c)
    rate, ramp_f = _pick_traffic(rng, duration, 1.0, 100.0)
    times = traffic(rng, rate, 0.0, duration, ramp_f)
    return Window("burst", "burst-cluster", _attach(times, events), 0.0, duration)


def _outage_window(
    rng: random.Random,
    kind: str,
    duration: float,
    outages: list[tuple[float, float]],
    p_out: float,
    p_bg: float,
    rate: float,
    ramp_f: float,
    label: str = "burst",
) -> Window:
    times = traffic(rng, rate, 0.0, duration, ramp_f)
    starts = [a for a, _ in outages]

    def prob(t: float) -> float:
        i = bisect_left(starts, t) - 1
        if i >= 0 and t < outages[i][1]:
            return p_out
        return p_bg

    return Window(label, kind, _bernoulli(rng, times, prob), 0.0, duration, outages)


def two_state(rng: random.Random, expected: float) -> Window:
    """Two-state Markov-modulated failures (Gilbert-Elliott): healthy periods and short outages.

    Args:
        rng: Random source.
        expected: Expected number of failures.

    Returns:
        The window, labelled ``burst``; ``failing`` holds the outage intervals.
    """
    out_mean = rng.uniform(5.0, 40.0)
    healthy_mean = rng.uniform(120.0, 900.0)
    p_out = rng.uniform(0.4, 1.0)
    rate = _log_uniform(rng, 0.5, 20.0)
    per_outage = max(1.0, p_out * out_mean * rate)
    n_out = max(1.0, expected / per_outage)
    duration = min(max(n_out * (healthy_mean + out_mean), 300.0), 4 * 3600.0)
    rate = min(rate, MAX_CALLS / duration)
    p_bg = rng.uniform(0.0, 0.003)
    outages: list[tuple[float, float]] = []
    t = rng.expovariate(1.0 / healthy_mean)
    while t < duration:
        d = rng.expovariate(1.0 / out_mean)
        outages.append((t, min(duration, t + d)))
        t += d + rng.expovariate(1.0 / healthy_mean)
    return _outage_window(rng, "burst-two-state", duration, outages, p_out, p_bg, rate, 1.0)


def burst_on_background(rng: random.Random, expected: float, *, where: str = "random") -> Window:
    """Short outages on a steady background of independent failures.

    Args:
        rng: Random source.
        expected: Expected number of failures.
        where: ``"random"`` (1-3 outages anywhere), ``"single"`` (one outage in the middle third) or
            ``"end"`` (one outage in the last 2-8 % of the window).

    Returns:
        The window, labelled ``burst``; ``failing`` holds the outage intervals.
    """
    n_out = rng.randint(1, 3) if where == "random" else 1
    out_len = rng.uniform(5.0, 30.0)
    p_out = rng.uniform(0.5, 1.0)
    share = rng.uniform(0.4, 0.8)  # share of the failures that come from the outages
    rate = _log_uniform(rng, 1.0, 30.0)
    # Fewer calls if the outages alone would exceed their share of the expected count.
    rate = max(0.3, min(rate, expected * share / (n_out * p_out * out_len)))
    background = max(1.0, expected - n_out * p_out * out_len * rate)
    # Long enough that the background stays under 3 % of calls (and the outages short relative to it).
    duration = max(600.0, 20 * n_out * out_len, background / (0.03 * rate))
    if where == "end":
        duration = max(duration, out_len / 0.05)
    duration = min(duration, MAX_CALLS / rate, 4 * 3600.0)
    p_bg = min(0.03, background / (rate * duration))
    outages: list[tuple[float, float]] = []
    if where == "end":
        s = duration - out_len - rng.uniform(0.0, 0.03) * duration
        outages.append((s, s + out_len))
    elif where == "single":
        s = rng.uniform(duration / 3, 2 * duration / 3 - out_len)
        outages.append((s, s + out_len))
    else:
        slots = sorted(rng.uniform(0.0, duration - out_len) for _ in range(n_out))
        last = -1e9
        for s in slots:
            s = max(s, last + out_len)
            if s + out_len <= duration:
                outages.append((s, s + out_len))
                last = s + out_len
    kind = {"random": "burst-on-background", "single": "burst-single", "end": "burst-at-end"}[where]
    return _outage_window(rng, kind, duration, outages, p_out, p_bg, rate, 1.0)


# ----------------------------------------------------------------------------------------- escalating


def escalating(rng: random.Random, expected: float, *, shape: str = "loglinear") -> Window:
    """Failure probability per call rising over the window.

    Args:
        rng: Random source.
        expected: Expected number of failures.
        shape: ``"loglinear"``, ``"powerlaw"``, ``"logistic"`` or ``"step"``.

    Returns:
        The window, labelled ``escalating``; ``failing`` holds the interval where the failure
        probability is at least 0.5 (if any).
    """
    ratio = _log_uniform(rng, 5.0, 40.0)
    duration = _log_uniform(rng, 300.0, 3600.0)
    if shape == "loglinear":

        def rel(t: float) -> float:
            return float(ratio ** (t / duration))
    elif shape == "powerlaw":
        a = rng.uniform(1.0, 3.0)
        tau = duration / (ratio ** (1.0 / a) - 1.0)

        def rel(t: float) -> float:
            return float((1.0 + t / tau) ** a)
    elif shape == "logistic":
        centre = rng.uniform(0.3, 0.7) * duration
        width = rng.uniform(0.03, 0.12) * duration

        def rel(t: float) -> float:
            return 1.0 + (ratio - 1.0) / (1.0 + math.exp(-(t - centre) / width))
    elif shape == "step":
        ratio = _log_uniform(rng, 5.0, 20.0)
        at = rng.uniform(0.3, 0.6) * duration

        def rel(t: float) -> float:
            return ratio if t >= at else 1.0
    else:  # pragma: no cover - programming error
        raise ValueError(shape)
    # Mean of rel over the window, numerically, to hit the expected failure count.
    grid = 200
    mean_rel = sum(rel((i + 0.5) * duration / grid) for i in range(grid)) / grid
    per_sec = expected / duration
    rate, ramp_f = _pick_traffic(rng, duration, max(0.5, 2.5 * per_sec * ratio / mean_rel), 100.0)
    base = per_sec / (_mean_rate(rate, ramp_f) * mean_rel)
    if base * ratio > 0.9:
        base = 0.9 / ratio
    times = traffic(rng, rate, 0.0, duration, ramp_f)
    w = _bernoulli(rng, times, lambda t: base * rel(t))
    failing: list[tuple[float, float]] = []
    above = [t for t in (i * duration / 400 for i in range(400)) if base * rel(t) >= 0.5]
    if above:
        failing.append((above[0], duration))
    return Window("escalating", f"escalating-{shape}", w, 0.0, duration, failing)


# ------------------------------------------------------------------------------------------- the mix

#: (generator name, weight, factory) -- the benchmark mix. Weights balance the four classes.
GENERATORS: list[tuple[str, float, Callable[[random.Random, float], Window]]] = [
    ("steady", 1.0, lambda r, e: steady(r, e, ramp=False)),
    ("steady-ramp", 1.0, lambda r, e: steady(r, e, ramp=True)),
    ("steady-high-rate", 1.0, lambda r, e: steady(r, e, high_rate=True)),
    ("intermittent", 2.0, lambda r, e: intermittent(r, e)),
    ("intermittent-hard", 1.0, lambda r, e: intermittent(r, e, hard=True)),
    ("burst-hawkes", 0.6, hawkes),
    ("burst-cluster", 0.6, cluster),
    ("burst-two-state", 0.6, two_state),
    ("burst-on-background", 0.6, lambda r, e: burst_on_background(r, e)),
    ("burst-single", 0.3, lambda r, e: burst_on_background(r, e, where="single")),
    ("burst-at-end", 0.3, lambda r, e: burst_on_background(r, e, where="end")),
    ("escalating-loglinear", 0.75, lambda r, e: escalating(r, e, shape="loglinear")),
    ("escalating-powerlaw", 0.75, lambda r, e: escalating(r, e, shape="powerlaw")),
    ("escalating-logistic", 0.75, lambda r, e: escalating(r, e, shape="logistic")),
    ("escalating-step", 0.75, lambda r, e: escalating(r, e, shape="step")),
]

#: Expected failure counts drawn for each window (so every failure-count bin is populated).
EXPECTED_FAILURES = (4, 7, 12, 16, 25, 35, 60, 100, 200)

#: Kinds that are stationary and bursty (for the false-"escalating" rate).
STATIONARY_BURSTY = ("burst-hawkes", "burst-cluster", "burst-two-state", "burst-on-background", "burst-single")


def make_windows(seed: int, count: int) -> list[Window]:
    """A reproducible mix of windows.

    Args:
        seed: Master seed; window ``i`` uses ``random.Random(f"{seed}-{i}")``.
        count: Number of windows.

    Returns:
        The windows.
    """
    total = sum(w for _, w, _ in GENERATORS)
    out: list[Window] = []
    for i in range(count):
        rng = random.Random(f"{seed}-{i}")
        x = rng.random() * total
        for _, weight, factory in GENERATORS:
            x -= weight
            if x <= 0:
                break
        expected = rng.choice(EXPECTED_FAILURES) * rng.uniform(0.8, 1.25)
        out.append(factory(rng, expected))
    return out
