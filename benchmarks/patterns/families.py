"""A second, independently written family of failure-stream generators ("suite B").

``generators.py`` (suite A) was written together with the first classifier and shares its ideas. This
module was written afterwards from the issue that reported the classifier's failures, before the
classifier was reworked, and shares no code with suite A: its traffic is generated second by second
(Poisson counts per second, uniform times inside the second), its self-exciting failures by Ogata's
thinning, and its classes are defined by the rules below (the documentation's definitions), not by the
processes that happen to generate them.

Traffic shapes (:data:`SHAPES`):

* ``constant``   -- a constant rate, 0.5 to 50 calls/s;
* ``diurnal``    -- a sinusoid of amplitude 50-80 % whose period is 1-3 windows (a slice of a daily cycle);
* ``ramp-up``    -- rising x10 over the window (exponentially);
* ``ramp-down``  -- falling x10 over the window;
* ``high``       -- 2,000 calls/s (windows of 5-10 minutes, so a window stays around a million calls);
* ``sparse``     -- one call every 10 s.

Failure processes (:data:`FAMILIES`), each with the class it produces:

* ``bernoulli``     -- every call fails independently with one probability            -> steady / intermittent
* ``poisson-time``  -- failures at a constant rate *in time*, each taking the next call   -> steady / intermittent
* ``cron``          -- failures at fixed intervals (+-10 % jitter), in time              -> steady / intermittent
* ``weibull``       -- a renewal process in time with Weibull gaps, shape 0.9-3          -> steady / intermittent
* ``hawkes``        -- self-exciting failures (exponential kernel, 0.5-60 s), Ogata      -> burst
* ``neyman-scott``  -- Poisson cluster centres, 3-15 failures each, spread 0.5-30 s      -> burst
* ``on-off``        -- outages (5 s to 3 min, 70-100 % failing) on a 0-5 % background     -> burst
* ``esc-loglinear`` -- failure probability per call rising exponentially, x3 to x50     -> escalating
* ``esc-logistic``  -- rising along a logistic curve centred at 30-80 % of the window    -> escalating
* ``esc-step``      -- a step up by x3 to x30 at 10-90 % of the window                    -> escalating
* ``esc-drift``     -- a slow linear rise by x3 to x6                                   -> escalating

Class rules (with margins, so no window sits on a boundary; parameters are redrawn until they hold):

* steady: failures at >= 2 a minute or on >= 10 % of calls; intermittent: <= 0.5 a minute and <= 2.5 %
  of calls (the classifier's boundary is 1 a minute and 5 %);
* escalating: the failure probability per call in the last tenth of the window is >= 3 times that of the
  first fifth, *and* failures per minute rise >= 2 times over the same span: a falling traffic cannot
  make a failure process "escalate" by itself;
* burst: every outage ends before the last 5 % of the window; each holds >= 3 failing calls and together
  they hold >= 40 % of the failures (amended during development: without it, a window of 5 % background
  noise with two unseen 5-second outages at one call a second was labelled "burst").

Every generator takes a :class:`random.Random` and a target failure count, and returns a
:class:`Stream`. Time-based failures attach to the first not-yet-failed call at or after their time,
within 60 s (later ones are lost: no call, no failure).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

Rate = Callable[[float], float]

SHAPES = ("constant", "diurnal", "ramp-up", "ramp-down", "high", "sparse")
FAMILIES = (
    "bernoulli", "poisson-time", "cron", "weibull", "hawkes", "neyman-scott", "on-off",
    "esc-loglinear", "esc-logistic", "esc-step", "esc-drift",
)
LABEL_OF = {
    "hawkes": "burst", "neyman-scott": "burst", "on-off": "burst",
    "esc-loglinear": "escalating", "esc-logistic": "escalating", "esc-step": "escalating",
    "esc-drift": "escalating",
}
#: Most calls a window may hold outside the ``high`` shape (a lower rate is used instead).
MAX_CALLS = 150_000
_ATTACH_WITHIN = 60.0


@dataclass
class Stream:
    """One generated window: calls as two parallel lists, ground truth beside them."""

    family: str
    shape: str
    label: str | None
    times: list[float]
    failed: list[bool]
    start: float
    end: float
    failing: list[tuple[float, float]] = field(default_factory=list)

    @property
    def failures(self) -> int:
        """Failed calls."""
        return sum(self.failed)

    def calls(self) -> zip[tuple[float, bool]]:
        """The calls as ``(timestamp, failed)`` pairs, lazily."""
        return zip(self.times, self.failed, strict=True)


# ---------------------------------------------------------------------------------------------- traffic


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0.0:
        return 0
    if mean > 40.0:  # normal approximation: plenty for traffic counts
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, prod = math.exp(-mean), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def rate_function(rng: random.Random, shape: str, duration: float, base: float) -> Rate:
    """The traffic intensity (calls/s) of ``shape`` over ``[0, duration)`` with typical rate ``base``."""
    if shape in ("constant", "high", "sparse"):
        return lambda _t: base
    if shape == "diurnal":
        amp = rng.uniform(0.5, 0.8)
        period = duration * rng.uniform(1.0, 3.0)
        phase = rng.uniform(0.0, 2 * math.pi)
        return lambda t: base * (1.0 + amp * math.sin(2 * math.pi * t / period + phase))
    if shape == "ramp-up":
        return lambda t: base * 10.0 ** (t / duration - 0.5)
    if shape == "ramp-down":
        return lambda t: base * 10.0 ** (0.5 - t / duration)
    raise ValueError(shape)


def arrivals(rng: random.Random, rate: Rate, duration: float) -> list[float]:
    """Call times: a Poisson count per second at the second's mid-point rate, uniform inside it."""
    out: list[float] = []
    uni = rng.random
    for s in range(math.ceil(duration)):
        width = min(1.0, duration - s)
        n = _poisson(rng, rate(s + width / 2) * width)
        if n:
            out.extend(sorted(s + width * uni() for _ in range(n)))
    return out


def _mean_rate(rate: Rate, a: float, b: float, steps: int = 64) -> float:
    return sum(rate(a + (b - a) * (i + 0.5) / steps) for i in range(steps)) / steps


# --------------------------------------------------------------------------------------------- failures


def attach(times: list[float], events: list[float]) -> list[bool]:
    """Mark the first free call at or after each event time (within 60 s) as failed."""
    failed = [False] * len(times)
    n = len(times)
    for e in sorted(events):
        i = bisect_left(times, e)
        while i < n and failed[i]:
            i += 1
        if i < n and times[i] - e <= _ATTACH_WITHIN:
            failed[i] = True
    return failed


def per_call(rng: random.Random, times: list[float], prob: Callable[[float], float]) -> list[bool]:
    """Each call fails with ``prob(time)``."""
    uni = rng.random
    return [uni() < prob(t) for t in times]


def hawkes_times(rng: random.Random, mu: float, branching: float, tau: float, duration: float) -> list[float]:
    """A Hawkes process with kernel ``branching / tau * exp(-t / tau)``, by Ogata's thinning (1981).

    Between events the intensity only decays, so its value just after the last event bounds it until
    the next: propose from that bound, accept with the ratio of the true intensity to it.
    """
    events: list[float] = []
    t = 0.0
    excite = 0.0  # sum of kernel values at time t, excluding mu
    while True:
        bound = mu + excite
        dt = rng.expovariate(bound)
        t_new = t + dt
        if t_new >= duration:
            return events
        excite *= math.exp(-dt / tau)
        t = t_new
        if rng.random() * bound <= mu + excite:
            events.append(t)
            excite += branching / tau


def neyman_scott_times(rng: random.Random, centres_per_s: float, size: float, spread: float,
                       duration: float) -> list[float]:
    """Poisson cluster centres; each cluster ``1 + Poisson(size - 1)`` points, ``|N(0, spread)|`` after it."""
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(centres_per_s)
        if t >= duration:
            return sorted(x for x in out if x < duration)
        out.extend(t + abs(rng.gauss(0.0, spread)) for _ in range(1 + _poisson(rng, size - 1.0)))


def renewal_times(rng: random.Random, gap: Callable[[], float], duration: float) -> list[float]:
    """A renewal process in time, started in equilibrium-ish (a random phase of the first gap)."""
    out: list[float] = []
    t = -gap() * rng.random()
    while True:
        t += gap()
        if t >= duration:
            return out
        if t >= 0.0:
            out.append(t)


# --------------------------------------------------------------------------------------------- windows


def _duration(rng: random.Random, shape: str) -> float:
    if shape == "high":
        return rng.uniform(300.0, 600.0)
    return 900.0 if rng.random() < 0.5 else math.exp(rng.uniform(math.log(1800.0), math.log(4 * 3600.0)))


def _base_rate(rng: random.Random, shape: str, duration: float) -> float:
    if shape == "high":
        return 2000.0
    if shape == "sparse":
        return 0.1
    base = math.exp(rng.uniform(math.log(0.5), math.log(50.0)))
    return min(base, MAX_CALLS / duration / (3.2 if shape.startswith("ramp") else 1.5))


def _rate_class(per_min: float, per_call: float) -> str | None:
    if per_min >= 2.0 or per_call >= 0.10:
        return "steady"
    if per_min <= 0.5 and per_call <= 0.025:
        return "intermittent"
    return None


def make_stream(rng: random.Random, family: str, shape: str, target: float,
                duration: float | None = None) -> Stream | None:
    """One window of ``family`` under traffic ``shape`` with about ``target`` failures.

    Args:
        rng: Random source.
        family: One of :data:`FAMILIES`.
        shape: One of :data:`SHAPES`.
        target: Expected number of failures.
        duration: Window length (default: drawn for the shape; the prediction benchmark fixes it).

    Returns:
        The stream, or ``None`` when the drawn parameters break the class rules (draw again).
    """
    duration = _duration(rng, shape) if duration is None else duration
    base = _base_rate(rng, shape, duration)
    rate = rate_function(rng, shape, duration, base)
    mean_rate = _mean_rate(rate, 0.0, duration)
    calls = mean_rate * duration
    label: str | None = LABEL_OF.get(family)
    failing: list[tuple[float, float]] = []

    if family in ("bernoulli", "poisson-time", "cron", "weibull"):
        per_s = target / duration
        if family == "bernoulli":
            p = target / calls
            if p > 0.6:
                return None
            label = _rate_class(per_s * 60.0, p)
            times = arrivals(rng, rate, duration)
            return Stream(family, shape, label, times, per_call(rng, times, lambda _t: p), 0.0, duration)
        # In time: the rate per call follows 1 / traffic; judge it where traffic is lowest.
        lowest = min(rate(duration * (i + 0.5) / 32) for i in range(32))
        if per_s / lowest > 0.6:
            return None
        label = _rate_class(per_s * 60.0, per_s / lowest)
        if family == "poisson-time":
            events = renewal_times(rng, lambda: rng.expovariate(per_s), duration)
        elif family == "cron":
            period = 1.0 / per_s
            events = renewal_times(rng, lambda: period * rng.uniform(0.9, 1.1), duration)
        else:
            shape_k = rng.uniform(0.9, 3.0)
            scale = 1.0 / per_s / math.gamma(1.0 + 1.0 / shape_k)
            events = renewal_times(rng, lambda: rng.weibullvariate(scale, shape_k), duration)
        times = arrivals(rng, rate, duration)
        return Stream(family, shape, label, times, attach(times, events), 0.0, duration)

    if family == "hawkes":
        branching = rng.uniform(0.5, 0.9)
        tau = math.exp(rng.uniform(math.log(0.5), math.log(60.0)))
        mu = target * (1.0 - branching) / duration
        events = hawkes_times(rng, mu, branching, tau, duration)
        times = arrivals(rng, rate, duration)
        return Stream(family, shape, label, times, attach(times, events), 0.0, duration)

    if family == "neyman-scott":
        size = rng.uniform(3.0, 15.0)
        spread = math.exp(rng.uniform(math.log(0.5), math.log(30.0)))
        events = neyman_scott_times(rng, max(target / size, 1.0) / duration, size, spread, duration)
        times = arrivals(rng, rate, duration)
        return Stream(family, shape, label, times, attach(times, events), 0.0, duration)

    if family == "on-off":
        p_out = rng.uniform(0.7, 1.0)
        p_bg = 0.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.05)
        median = math.exp(rng.uniform(math.log(5.0), math.log(180.0)))
        # Outage time needed for about ``target`` failures (minus what the background gives).
        need = max(target - p_bg * calls, 0.3 * target) / (p_out * mean_rate)
        n_out = max(1, round(need / median))
        healthy = max(duration / n_out - median, 30.0)
        t = rng.expovariate(1.0 / healthy)
        while t < 0.95 * duration:
            d = median * math.exp(rng.gauss(0.0, 0.5))
            if t + d > 0.95 * duration:
                break
            failing.append((t, t + d))
            t += d + rng.expovariate(1.0 / healthy)
        if not failing:
            return None
        # Visible outages: each holds >= 3 failing calls and together >= 40 % of the failures,
        # otherwise the window is background noise with outages nobody could see.
        outage_calls = [p_out * (b - a) * _mean_rate(rate, a, b, 8) for a, b in failing]
        background = p_bg * (calls - sum(c / p_out for c in outage_calls))
        if min(outage_calls) < 3.0 or sum(outage_calls) < 0.4 * (sum(outage_calls) + background):
            return None
        starts = [a for a, _ in failing]

        def prob(x: float) -> float:
            i = bisect_left(starts, x) - 1
            return p_out if i >= 0 and x < failing[i][1] else p_bg

        times = arrivals(rng, rate, duration)
        return Stream(family, shape, label, times, per_call(rng, times, prob), 0.0, duration, failing)

    # Escalating: p(t) = p0 * rel(t), rel from 1 to ``ratio``.
    ratio = math.exp(rng.uniform(math.log(3.0), math.log(6.0 if family == "esc-drift" else 50.0)))
    if family == "esc-step":
        ratio = min(ratio, 30.0)
    if family == "esc-loglinear":
        def rel(x: float) -> float:
            return float(ratio ** (x / duration))
    elif family == "esc-logistic":
        mid = rng.uniform(0.3, 0.8) * duration
        steep = rng.uniform(6.0, 20.0) / duration

        def rel(x: float) -> float:
            return 1.0 + (ratio - 1.0) / (1.0 + math.exp(-steep * (x - mid)))
    elif family == "esc-step":
        at = rng.uniform(0.1, 0.9) * duration

        def rel(x: float) -> float:
            return ratio if x >= at else 1.0
    else:
        def rel(x: float) -> float:
            return 1.0 + (ratio - 1.0) * x / duration

    expected_rel = sum(rel(duration * (i + 0.5) / 256) * rate(duration * (i + 0.5) / 256) for i in range(256))
    p0 = target / (expected_rel / 256 * duration)
    if p0 * max(rel(duration), rel(duration * 0.999)) > 1.0:
        return None

    def span_stats(a: float, b: float) -> tuple[float, float]:
        xs = [a + (b - a) * (i + 0.5) / 64 for i in range(64)]
        per_s = sum(p0 * rel(x) * rate(x) for x in xs) / 64
        traffic = sum(rate(x) for x in xs) / 64
        return per_s / traffic, per_s

    p_start, f_start = span_stats(0.0, 0.2 * duration)
    p_end, f_end = span_stats(0.9 * duration, duration)
    if p_end < 3.0 * p_start or f_end < 2.0 * f_start:
        return None
    times = arrivals(rng, rate, duration)
    failed = per_call(rng, times, lambda x: min(1.0, p0 * rel(x)))
    half = [x for x in (duration * i / 512 for i in range(513)) if p0 * rel(x) >= 0.5]
    if half:
        failing.append((half[0], duration))
    return Stream(family, shape, label, times, failed, 0.0, duration, failing)


#: Target failure counts; every failure-count bin of the report gets windows.
TARGETS = (5.0, 8.0, 12.0, 16.0, 25.0, 35.0, 50.0, 80.0, 150.0, 300.0)

#: Combinations the class rules exclude: a drift of x3-x6 per call cannot outgrow traffic falling x10,
#: so failures per minute fall and the window is not "escalating" by definition.
IMPOSSIBLE = frozenset({("esc-drift", "ramp-down")})


def draw(seed: str, family: str, shape: str, duration: float | None = None, target_scale: float = 1.0) -> Stream:
    """The stream for one ``(seed, family, shape)``: deterministic, redrawn until the class rules hold.

    Raises:
        ValueError: The combination is in :data:`IMPOSSIBLE`, or 10,000 draws all broke the rules.
    """
    if (family, shape) in IMPOSSIBLE:
        raise ValueError(f"{family} under {shape} traffic breaks its class rule")
    rng = random.Random(seed)
    for _ in range(10_000):
        target = rng.choice(TARGETS) * rng.uniform(0.8, 1.25) * target_scale
        s = make_stream(rng, family, shape, target, duration)
        if s is not None and s.label is not None:
            return s
    raise ValueError(f"no {family} stream under {shape} traffic met its class rule in 10,000 draws")
