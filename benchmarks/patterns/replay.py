"""Replay held-out service streams through a consecutive-failure breaker: defaults vs ``recommend()``.

Each service is a two-hour stream. Its first hour is the *training* window: it is classified with
:func:`circuitry.analysis.patterns.classify` and :func:`circuitry.analysis.recommend.recommend` turns
the result into settings
(starting from the defaults). The second hour is replayed twice through a simulated breaker -- with the
defaults (threshold 5, timeout 60 s) and with the recommended settings -- and we count:

* **calls to failing service**: calls that reached the service while it was failing (inside a ground-truth
  outage, or where an escalating service fails at least half of its calls) and failed;
* **false trips**: closed -> open transitions while the service was healthy (for an escalating service:
  while it fails under 10 % of calls; trips while it is *degraded* -- 10 % to 50 % -- are counted apart);
* **time to open**: seconds from the start of each failing period to the breaker being open (a failing
  period the breaker never opened in counts its whole length);
* **healthy calls rejected**: calls the open breaker turned away while the service was healthy (the cost
  of a long timeout).

The breaker: opens after ``threshold`` consecutive failures; rejects calls for ``timeout`` seconds; then the
next call is a probe -- success closes, failure re-opens (timeout times ``backoff`` if a backoff multiplier is
recommended, capped at 900 s; reset on close).

Service kinds: ``outages`` (rare background failures, outages of 30-180 s), ``outages-noisy`` (outages on a
2-10 % background), ``noisy`` (independent failures at 5-30 %, no outage), ``escalating`` (failure probability
rising log-linearly to >= 0.9 over the two hours), ``intermittent`` (a failure every 2-15 minutes).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.patterns.generators import Call, traffic
from circuitry.analysis.patterns import classify
from circuitry.analysis.recommend import recommend

DEFAULT_THRESHOLD = 5
DEFAULT_TIMEOUT = 60.0
HOUR = 3600.0
REPLAY_SEED = 3
KINDS = ("outages", "outages-noisy", "noisy", "escalating", "intermittent")


@dataclass(frozen=True)
class Service:
    """A two-hour stream with its failing (and, for escalation, degraded) intervals."""

    kind: str
    calls: list[Call]
    failing: list[tuple[float, float]]
    degraded: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Outcome:
    """Replay counters for one policy."""

    calls_to_failing: int = 0
    false_trips: int = 0
    degraded_trips: int = 0
    healthy_rejected: int = 0
    failing_periods: int = 0
    never_opened: int = 0
    time_to_open_total: float = 0.0
    trips: int = 0

    def add(self, other: Outcome) -> None:
        """Accumulate another outcome into this one."""
        for f in self.__dataclass_fields__:
            setattr(self, f, getattr(self, f) + getattr(other, f))


def _outages(
    rng: random.Random, end: float, healthy_mean: float, out_lo: float, out_hi: float
) -> list[tuple[float, float]]:
    out = []
    t = rng.expovariate(1.0 / healthy_mean)
    while t < end:
        d = rng.uniform(out_lo, out_hi)
        out.append((t, min(end, t + d)))
        t += d + rng.expovariate(1.0 / healthy_mean)
    return out


def make_service(rng: random.Random, kind: str) -> Service:
    """A two-hour service stream of the given kind.

    Args:
        rng: Random source.
        kind: One of :data:`KINDS`.

    Returns:
        The service.
    """
    end = 2 * HOUR
    rate = math.exp(rng.uniform(math.log(1.0), math.log(8.0)))
    times = traffic(rng, rate, 0.0, end)
    failing: list[tuple[float, float]] = []
    uni = rng.random
    if kind in ("outages", "outages-noisy"):
        p_bg = rng.uniform(0.0, 0.005) if kind == "outages" else rng.uniform(0.02, 0.10)
        failing = _outages(rng, end, rng.uniform(300.0, 900.0), 30.0, 180.0)
        p_out = rng.uniform(0.8, 1.0)
        starts = [a for a, _ in failing]
        calls = []
        for t in times:
            i = bisect_right(starts, t) - 1
            p = p_out if i >= 0 and t < failing[i][1] else p_bg
            calls.append((t, uni() < p))
    elif kind == "noisy":
        p = rng.uniform(0.05, 0.30)
        calls = [(t, uni() < p) for t in times]
    elif kind == "escalating":
        p0 = rng.uniform(0.002, 0.01)
        ratio = 0.95 / p0
        calls = [(t, uni() < p0 * ratio ** (t / end)) for t in times]
        t_tenth = end * math.log(0.1 / p0) / math.log(ratio)
        t_half = end * math.log(0.5 / p0) / math.log(ratio)
        failing = [(t_half, end)]
        return Service(kind, calls, failing, [(t_tenth, t_half)])
    elif kind == "intermittent":
        gap = rng.uniform(120.0, 900.0)
        p = 1.0 / (gap * rate)
        calls = [(t, uni() < p) for t in times]
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    return Service(kind, calls, failing)


def simulate(
    calls: Sequence[Call],
    failing: Sequence[tuple[float, float]],
    degraded: Sequence[tuple[float, float]] = (),
    *,
    threshold: int,
    timeout: float,
    backoff: float | None = None,
    max_timeout: float = 900.0,
) -> Outcome:
    """Run a consecutive-failure breaker over the calls.

    Args:
        calls: ``(timestamp, failed-if-it-reaches-the-service)`` in time order.
        failing: Ground-truth failing intervals ``[start, end)``, sorted.
        degraded: Intervals where the service is degrading but not yet failing (trips there are
            counted apart, neither false nor true).
        threshold: Consecutive failures that open the breaker.
        timeout: Seconds open before a probe.
        backoff: Timeout multiplier after a failed probe (``None``: fixed).
        max_timeout: Cap on the grown timeout.

    Returns:
        The counters.
    """
    starts = [a for a, _ in failing]

    def failing_at(t: float) -> int:
        i = bisect_right(starts, t) - 1
        return i if i >= 0 and t < failing[i][1] else -1

    out = Outcome(failing_periods=len(failing))
    opened_in: dict[int, float] = {}
    is_open = False
    open_until = 0.0
    current = timeout
    run = 0
    for t, failed in calls:
        f = failing_at(t)
        if is_open:
            if f >= 0 and f not in opened_in:
                opened_in[f] = t  # already open when the failing period began
            if t < open_until:
                if f < 0 and not any(a <= t < b for a, b in degraded):
                    out.healthy_rejected += 1
                continue
            # Probe.
            if failed:
                if f >= 0:
                    out.calls_to_failing += 1
                if backoff is not None:
                    current = min(max_timeout, current * backoff)
                open_until = t + current
                continue
            is_open = False
            current = timeout
            run = 0
            continue
        if failed:
            if f >= 0:
                out.calls_to_failing += 1
            run += 1
            if run >= threshold:
                is_open = True
                open_until = t + current
                out.trips += 1
                if f < 0:
                    if any(a <= t < b for a, b in degraded):
                        out.degraded_trips += 1
                    else:
                        out.false_trips += 1
                elif f not in opened_in:
                    opened_in[f] = t
        else:
            run = 0
    for i, (a, b) in enumerate(failing):
        if i in opened_in:
            out.time_to_open_total += max(0.0, opened_in[i] - a)
        else:
            out.never_opened += 1
            out.time_to_open_total += b - a
    return out


@dataclass(frozen=True)
class ReplayResult:
    """Totals per service kind for the two policies."""

    default: dict[str, Outcome]
    recommended: dict[str, Outcome]
    settings: dict[str, list[tuple[str | None, int, float, float | None]]]
    services: int


def run_replay(per_kind: int = 30, seed: int = REPLAY_SEED) -> ReplayResult:
    """Replay ``per_kind`` services of each kind.

    Args:
        per_kind: Services per kind.
        seed: Master seed (held out: disjoint from the classifier's training seed).

    Returns:
        The totals.
    """
    default: dict[str, Outcome] = {k: Outcome() for k in KINDS}
    recommended: dict[str, Outcome] = {k: Outcome() for k in KINDS}
    settings: dict[str, list[tuple[str | None, int, float, float | None]]] = {k: [] for k in KINDS}
    for kind in KINDS:
        for i in range(per_kind):
            rng = random.Random(f"replay-{seed}-{kind}-{i}")
            svc = make_service(rng, kind)
            cut = bisect_right([t for t, _ in svc.calls], HOUR)
            train, test = svc.calls[:cut], svc.calls[cut:]
            result = classify(train, window_start=0.0, window_end=HOUR)
            rec = recommend(result, current_threshold=DEFAULT_THRESHOLD, current_timeout=DEFAULT_TIMEOUT, calls=train)
            settings[kind].append(
                (result.type, rec.recommended_threshold, rec.recommended_timeout, rec.backoff_multiplier)
            )
            test_failing = [(max(a, HOUR), b) for a, b in svc.failing if b > HOUR]
            test_degraded = [(max(a, HOUR), b) for a, b in svc.degraded if b > HOUR]
            default[kind].add(
                simulate(test, test_failing, test_degraded, threshold=DEFAULT_THRESHOLD, timeout=DEFAULT_TIMEOUT)
            )
            recommended[kind].add(
                simulate(
                    test,
                    test_failing,
                    test_degraded,
                    threshold=rec.recommended_threshold,
                    timeout=rec.recommended_timeout,
                    backoff=rec.backoff_multiplier,
                )
            )
    return ReplayResult(default, recommended, settings, per_kind * len(KINDS))
