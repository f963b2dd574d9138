"""Do recommendations pay? Replay services through an exact breaker: defaults vs following the advice.

Each service is a stream of calls with a known failure probability ``p(t)``; the service is *failing*
while ``p(t) >= 0.5``. The cost of a policy is counted on the calls themselves:

    cost = calls let through while the service was failing + calls refused while it was healthy

The breaker is simulated call by call with circuitry's semantics: open after ``threshold`` consecutive
failures; refuse for the open period (``timeout * backoff ** failed_probes``, capped); then one probe --
success closes, failure re-opens. Calls are instantaneous.

The engine never sees the calls. It sees what a store would hold under the policy in force: per-second
counts of the calls the breaker let through (after a store-like attribution delay), and the transitions.

Two protocols, both against the defaults (threshold 5, timeout 60 s) on the same calls:

* ``advice``  -- the analyst's loop: every 15 minutes the last 900 s are classified and ``recommend()``
  is asked; a recommendation is applied at once. The first 15 minutes run on the defaults.
* ``auto``    -- the same loop through :func:`circuitry.analysis.adjust.decide` (bounded steps,
  hysteresis, minimum evidence, rollback), fed the cost measured from the per-minute rollups before and
  after each change.

Run from the repository root::

    python -m benchmarks.patterns.replay [--per-family N] [--jobs N]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.patterns.data import store_delay
from circuitry.analysis.adjust import Adjustment, AdjustPolicy, decide, measure_cost
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.patterns import classify_series
from circuitry.analysis.recommend import Recommendation, recommend
from circuitry.analysis.replay import Settings, Transition
from circuitry.analysis.series import bucketize

DEFAULTS = Settings(5, 60.0)
WINDOW = 900.0  # the analyst's window
KEPT = 3600.0  # per-second rows the store keeps (at least max(2 * window, 3600) s)
EVERY = 900.0  # how often the advice is asked for
DURATION = 3 * 3600.0
SEED = 3
FAMILIES = (
    "outages-short", "outages-long", "outages-varied", "bursts-frequent", "noise+outages", "escalation-fast",
    "escalation-slow", "traffic-growth", "noisy", "intermittent",
)


@dataclass
class Service:
    """Calls (time-ordered) and the true failure probability."""

    family: str
    times: list[float]
    failed: list[bool]
    prob: Callable[[float], float]


@dataclass
class Tally:
    """Cost counters of one policy over one or more services."""

    failing_let_through: int = 0
    healthy_refused: int = 0
    calls: int = 0
    changes: int = 0
    settings: list[str] = field(default_factory=list)

    @property
    def cost(self) -> int:
        """Calls let through while failing plus calls refused while healthy."""
        return self.failing_let_through + self.healthy_refused

    def add(self, other: Tally) -> None:
        """Accumulate another tally."""
        self.failing_let_through += other.failing_let_through
        self.healthy_refused += other.healthy_refused
        self.calls += other.calls
        self.changes += other.changes
        self.settings.extend(other.settings)


class Breaker:
    """An exact consecutive-failure breaker with circuitry's semantics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rng = random.Random(0)  # draws only with jitter: runs without it are as they were
        self.open = False
        self.run = 0
        self.until = -math.inf
        self.reopens = 0
        self.transitions: list[Transition] = []
        self.rejected: dict[int, int] = {}

    def period(self) -> float:
        s = self.settings
        d = s.timeout * s.backoff**self.reopens
        if s.jitter:  # as the breaker does: the random part, then the cap
            d *= 1.0 + s.jitter * (2.0 * self.rng.random() - 1.0)
        return min(s.cap, d)

    def feed(self, t: float, failed: bool, tally: Tally, failing: bool,
             admitted: list[tuple[float, bool]]) -> None:
        """One call: refuse it, probe with it, or let it through; count the cost."""
        tally.calls += 1
        if self.open:
            if t < self.until:
                if not failing:
                    tally.healthy_refused += 1
                m = int(t // 60)
                self.rejected[m] = self.rejected.get(m, 0) + 1
                return
            admitted.append((t, failed))
            if failing:
                tally.failing_let_through += 1
            self.transitions.append(Transition(self.until, "open", "half_open", "recovery_timeout"))
            if failed:
                self.reopens += 1
                self.until = t + self.period()
                self.transitions.append(Transition(t, "half_open", "open", "probe_failed"))
            else:
                self.open = False
                self.run = 0
                self.reopens = 0
                self.transitions.append(Transition(t, "half_open", "closed", "probe_succeeded"))
            return
        admitted.append((t, failed))
        if failing:
            tally.failing_let_through += 1
        if failed:
            self.run += 1
            if self.run >= self.settings.threshold:
                self.open = True
                self.reopens = 0
                self.until = t + self.period()
                self.transitions.append(Transition(t, "closed", "open", "consecutive_failures"))
        else:
            self.run = 0


# ------------------------------------------------------------------------------------------ services


def _traffic(rng: random.Random, rate: Callable[[float], float], end: float) -> list[float]:
    out: list[float] = []
    for s in range(int(end)):
        r = rate(s + 0.5)
        n = max(0, round(rng.gauss(r, math.sqrt(r)))) if r > 30 else _poisson(rng, r)
        out.extend(sorted(s + rng.random() for _ in range(n)))
    return out


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, prod = math.exp(-mean), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def _outages(rng: random.Random, end: float, gap: Callable[[], float], length: Callable[[], float]
             ) -> list[tuple[float, float]]:
    out = []
    t = gap()
    while t < end:
        d = length()
        out.append((t, min(end, t + d)))
        t += d + gap()
    return out


def _piecewise(spans: list[tuple[float, float]], inside: float, outside: float) -> Callable[[float], float]:
    starts = [a for a, _ in spans]

    def prob(t: float) -> float:
        i = bisect_right(starts, t) - 1
        return inside if i >= 0 and t < spans[i][1] else outside

    return prob


def make_service(rng: random.Random, family: str) -> Service:
    """One three-hour service of ``family``."""
    base = math.exp(rng.uniform(math.log(1.0), math.log(30.0)))
    rate: Callable[[float], float] = lambda _t: base  # noqa: E731
    lu = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))  # noqa: E731
    if family == "outages-short":
        spans = _outages(rng, DURATION, lambda: rng.expovariate(1 / lu(120, 600)), lambda: rng.uniform(5, 30))
        prob = _piecewise(spans, rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.005))
    elif family == "outages-long":
        spans = _outages(rng, DURATION, lambda: rng.expovariate(1 / lu(600, 1800)), lambda: rng.uniform(60, 300))
        prob = _piecewise(spans, rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.005))
    elif family == "outages-varied":
        spans = _outages(rng, DURATION, lambda: rng.expovariate(1 / lu(300, 1200)), lambda: lu(5, 300))
        prob = _piecewise(spans, rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.005))
    elif family == "bursts-frequent":  # 2-5 s bursts every 8-15 s, for stretches of 5-20 minutes
        spans = []
        t = rng.uniform(60, 600)
        while t < DURATION:
            stretch_end = t + rng.uniform(300, 1200)
            while t < min(stretch_end, DURATION):
                d = rng.uniform(2, 5)
                spans.append((t, min(DURATION, t + d)))
                t += d + rng.uniform(6, 12)
            t = stretch_end + rng.uniform(300, 1800)
        prob = _piecewise(spans, 1.0, rng.uniform(0.0, 0.005))
    elif family == "noise+outages":
        spans = _outages(rng, DURATION, lambda: rng.expovariate(1 / lu(600, 1800)), lambda: rng.uniform(30, 180))
        prob = _piecewise(spans, rng.uniform(0.8, 1.0), rng.uniform(0.05, 0.2))
    elif family in ("escalation-fast", "escalation-slow"):
        # Healthy, then a rise to 60-95 % failures (over 30 s, or over 10-40 minutes), lasting 20-60 minutes,
        # then recovery; twice in three hours.
        top = rng.uniform(0.6, 0.95)
        p0 = rng.uniform(0.0, 0.01)
        ramp = rng.uniform(20, 40) if family == "escalation-fast" else rng.uniform(600, 2400)
        events = []
        for k in range(2):
            start = k * DURATION / 2 + rng.uniform(600, 1800)
            events.append((start, ramp, start + ramp + rng.uniform(1200, 3600)))

        def prob(t: float) -> float:
            for a, r, b in events:
                if a <= t < b:
                    return min(top, p0 + (top - p0) * min(1.0, (t - a) / r))
            return p0
    elif family == "traffic-growth":
        spans = _outages(rng, DURATION, lambda: rng.expovariate(1 / lu(600, 1800)), lambda: lu(10, 180))
        prob = _piecewise(spans, rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.01))
        base = min(base, 10.0)
        rate = lambda t: base * 10.0 ** (t / DURATION)  # noqa: E731
    elif family == "noisy":
        p = rng.uniform(0.05, 0.4)
        prob = lambda _t: p  # noqa: E731
    elif family == "intermittent":
        p = 1.0 / (lu(60, 600) * base)
        prob = lambda _t: p  # noqa: E731
    else:  # pragma: no cover
        raise ValueError(family)
    times = _traffic(rng, rate, DURATION)
    uni = rng.random
    failed = [uni() < prob(t) for t in times]
    return Service(family, times, failed, prob)


# --------------------------------------------------------------------------------------------- loops


def run_fixed(svc: Service, settings: Settings) -> Tally:
    """The whole service under fixed settings."""
    tally = Tally()
    b = Breaker(settings)
    sink: list[tuple[float, bool]] = []
    prob = svc.prob
    for t, f in zip(svc.times, svc.failed, strict=True):
        b.feed(t, f, tally, prob(t) >= 0.5, sink)
    return tally


def run_advised(svc: Service, seed: int, decide: Callable[[Settings, Recommendation, float, list[MinuteRollup],
                                                           list[Transition]], Settings] | None = None) -> Tally:
    """The analyst's loop: every 15 minutes, classify the last 900 s as stored and follow the advice."""
    tally = Tally()
    settings = DEFAULTS
    b = Breaker(settings)
    admitted: list[tuple[float, bool]] = []
    rng = random.Random(seed)
    prob = svc.prob
    times, failed = svc.times, svc.failed
    i = 0
    n = len(times)
    t_next = EVERY
    per_minute: dict[int, list[int]] = {}
    stored: list[tuple[float, bool]] = []
    while i < n:
        while i < n and times[i] < t_next:
            b.feed(times[i], failed[i], tally, prob(times[i]) >= 0.5, admitted)
            i += 1
        now = t_next
        t_next += EVERY
        lo = now - WINDOW
        kept = max(0.0, now - KEPT)
        for t, f in admitted:  # the store's per-minute rollups (kept for days)
            row = per_minute.setdefault(int(t // 60), [0, 0])
            row[0] += 1
            row[1] += f
        stored.extend((min(now, t + store_delay(rng)), f) for t, f in admitted)  # per-second rows
        admitted = []
        stored = [c for c in stored if c[0] >= kept]
        series = bucketize((c for c in stored if c[0] >= lo), start=lo, end=now)
        hour = bucketize(stored, start=kept, end=now)  # per-second rows kept an hour
        trans = [tr for tr in b.transitions if tr.ts >= kept - 3600.0]
        b.transitions = trans
        result = classify_series(series, transitions=[tr for tr in trans if tr.ts >= lo])
        rec = recommend(result, current_threshold=settings.threshold, current_timeout=settings.timeout,
                        current_backoff=settings.backoff, current_max_timeout=settings.max_timeout,
                        series=hour, transitions=[tr for tr in trans if tr.ts >= kept],
                        history=[MinuteRollup(m, c, c - f, f, b.rejected.get(m, 0))
                                 for m, (c, f) in per_minute.items()])
        new = settings
        if decide is not None:
            rollups = [MinuteRollup(m, c, c - f, f, b.rejected.get(m, 0)) for m, (c, f) in per_minute.items()]
            new = decide(settings, rec, now, rollups, trans)
        elif rec.has_recommendations:
            new = Settings(rec.recommended_threshold, rec.recommended_timeout, rec.backoff_multiplier or 1.0,
                           rec.max_timeout)
        if new != settings:
            tally.changes += 1
            tally.settings.append(f"{result.type}:{new.threshold}/{new.timeout:g}/{new.backoff:g}")
            settings = new
            b.settings = new
    return tally


class Auto:
    """The automatic adjuster's loop: :func:`circuitry.analysis.adjust.decide` with its record of changes,
    their measured costs (from the per-minute rollups) and the recent recommendations."""

    def __init__(self) -> None:
        self.changes: list[Adjustment] = []
        self.recent: list[Recommendation] = []

    def __call__(self, current: Settings, rec: Recommendation, now: float, minutes: list[MinuteRollup],
                 transitions: list[Transition]) -> Settings:
        policy = AdjustPolicy()
        if self.changes:  # the measured cost of the last change: over the evaluation stretch after it, as
            last = self.changes[-1]  # the analyst measures it (a fixed stretch: judged once)
            end = min(now, last.at + policy.evaluation)
            after = measure_cost((m for m in minutes if last.at <= m.minute * 60.0 < end), last.refused_healthy,
                                 transitions=transitions)
            self.changes[-1] = replace(last, cost_after=after)
        d = decide(current, rec, now=now, history=self.changes, recent=self.recent, policy=policy)
        self.recent = [*self.recent[-4:], rec]
        if d.action == "hold":
            return current
        before = measure_cost((m for m in minutes if now - policy.evaluation <= m.minute * 60.0 < now),
                              d.refused_healthy, transitions=transitions)
        self.changes.append(Adjustment(now, "rollback" if d.action == "rollback" else "adjust", current, d.settings,
                                       cost_before=before, refused_healthy=d.refused_healthy))
        return d.settings


def _one(args: tuple[str, int, int]) -> tuple[str, Tally, Tally, Tally]:
    family, i, seed = args
    rng = random.Random(f"replay-{seed}-{family}-{i}")
    svc = make_service(rng, family)
    return family, run_fixed(svc, DEFAULTS), run_advised(svc, seed=i), run_advised(svc, seed=i, decide=Auto())


def main(argv: Sequence[str] | None = None) -> None:
    """Run every family and print Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--per-family", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=SEED, help="3: the reported services; 1003: development")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tasks = [(f, i, args.seed) for f in FAMILIES for i in range(args.per_family)]
    default: dict[str, Tally] = {f: Tally() for f in FAMILIES}
    advised: dict[str, Tally] = {f: Tally() for f in FAMILIES}
    auto: dict[str, Tally] = {f: Tally() for f in FAMILIES}
    with ProcessPoolExecutor(args.jobs) as pool:
        for family, d, a, u in pool.map(_one, tasks):
            default[family].add(d)
            advised[family].add(a)
            auto[family].add(u)
    print(f"### Replay: defaults (5 failures, 60 s) vs following the advice, and vs the automatic adjuster\n\n"
          f"{len(tasks)} three-hour services (seed {args.seed}), {time.perf_counter() - t0:.0f} s. Cost = calls "
          "let through while the service was failing + calls refused while it was healthy.\n")
    print("| family | calls | defaults: let through while failing | refused while healthy | cost | "
          "advice: let through | refused | cost | change | auto: cost | change | advice most applied |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    tot_d, tot_a, tot_u = Tally(), Tally(), Tally()
    for f in FAMILIES:
        d, a, u = default[f], advised[f], auto[f]
        tot_d.add(d)
        tot_a.add(a)
        tot_u.add(u)
        common: dict[str, int] = {}
        for st in a.settings:
            common[st] = common.get(st, 0) + 1
        top = ", ".join(f"{k} ({v})" for k, v in sorted(common.items(), key=lambda kv: -kv[1])[:3])
        print(f"| {f} | {d.calls} | {d.failing_let_through} | {d.healthy_refused} | {d.cost} | "
              f"{a.failing_let_through} | {a.healthy_refused} | {a.cost} | {_change(a, d)} | {u.cost} | "
              f"{_change(u, d)} | {top} |")
    print(f"| **all** | {tot_d.calls} | {tot_d.failing_let_through} | {tot_d.healthy_refused} | **{tot_d.cost}** | "
          f"{tot_a.failing_let_through} | {tot_a.healthy_refused} | **{tot_a.cost}** | **{_change(tot_a, tot_d)}** | "
          f"**{tot_u.cost}** | **{_change(tot_u, tot_d)}** | {tot_a.changes} changes (auto: {tot_u.changes}) |")


def _change(x: Tally, base: Tally) -> str:
    return f"{100 * (x.cost - base.cost) / base.cost:+.0f} %" if base.cost else "+0 %"


if __name__ == "__main__":
    main()
