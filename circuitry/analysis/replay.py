"""Replay breaker settings over per-second counts and price the result: the basis of every recommendation.

Pure and deterministic (a seeded random source; no clock). :func:`replay` runs a consecutive-failure
breaker -- open after ``threshold`` failures in a row, stay open ``timeout`` seconds (times ``backoff``
after each failed probe, up to a cap), then let one probe through -- over a
:class:`~circuitry.analysis.series.Series` and counts what it would have cost:

* **calls let through to a failing service**: calls the breaker let through while the service was failing
  -- at least half the calls around that second failed (:func:`failing_buckets`);
* **healthy calls refused**: calls the breaker refused while the service was healthy.

A failing service is one to keep calls away from, whether a given call would have succeeded or not; a
healthy one (even at 30 % failures) is one to keep calling.

Inside a second the order of calls is unknown (the store keeps counts), so the replay places a second's
failures among its calls in a random order -- exactly as many as were counted, where they are few (or
the successes are); at higher counts it treats the calls as independent at the second's failure share
-- and carries the run of failures across seconds. It averages a few seeded runs, with open periods
varied by +-50 % between them: where a probe lands relative to the end of an outage is luck.

What the breaker in force refused is not in the series: its open periods are holes. :func:`impute` fills
them from the transitions, as documented there, so that settings with a shorter open period are not
credited with serving calls nobody saw.

(Over 500 lines: the breaker simulation (exact and drawn seconds), the imputation of refused seconds and the
closed-form costs price the same settings and must agree, so they stay in one module.)

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from circuitry.analysis.series import Series
from circuitry.exceptions import ConfigurationError

__all__ = [
    "Cost", "Settings", "Transition", "baseline_cost", "failing_buckets", "impute", "refusing", "replay",
    "replay_halves", "replay_parts",
]

_RUNS: Final = 6  # seeded replay runs averaged
_EXACT: Final = 64  # a second with at most this many failures (or successes) is replayed with its counts exactly
_IMPUTE_LOOKBACK: Final = 60.0  # seconds of traffic before an opening that estimate the refused traffic


@dataclass(frozen=True, slots=True)
class Settings:
    """Breaker settings a replay prices.

    Attributes:
        threshold: Consecutive failures that open the circuit (>= 1).
        timeout: Seconds open before a probe (> 0).
        backoff: Multiplier of the open period after each failed probe (``1.0``: fixed).
        max_timeout: Cap on the grown open period (default ``10 * timeout`` with backoff or jitter).
        jitter: Random part of each open period, as the breaker's ``jitter`` (``0 <= x <= 1``). The
            replay prices no difference: it draws every open period at random (+-50 %) whatever it is.

    .. versionadded:: 0.1.0
    """

    threshold: int
    timeout: float
    backoff: float = 1.0
    max_timeout: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise ConfigurationError(f"threshold must be an int >= 1, got {self.threshold!r}")
        for name in ("timeout", "backoff"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigurationError(f"{name} must be a positive finite number, got {v!r}")
        if self.backoff < 1.0:
            raise ConfigurationError(f"backoff must be >= 1, got {self.backoff!r}")
        if self.max_timeout is not None and not (math.isfinite(self.max_timeout) and
                                                 self.max_timeout >= self.timeout):
            raise ConfigurationError(f"max_timeout must be >= timeout, got {self.max_timeout!r}")
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, int | float) or not 0.0 <= j <= 1.0:
            raise ConfigurationError(f"jitter must be within [0, 1], got {j!r}")

    @property
    def cap(self) -> float:
        """The longest open period (as the breaker's ``recovery_cap``)."""
        if self.max_timeout is not None:
            return self.max_timeout
        return self.timeout * 10.0 if self.backoff > 1.0 or self.jitter > 0.0 else self.timeout


@dataclass(frozen=True, slots=True)
class Cost:
    """What a replay of some settings cost over a window.

    Attributes:
        seconds: Length of the window replayed.
        calls: Calls in it (seen or imputed).
        failed_let_through: Calls the breaker let through while the service was failing.
        healthy_refused: Calls the breaker refused while the service was healthy.
        trips: Openings from closed.

    .. versionadded:: 0.1.0
    """

    seconds: float
    calls: float
    failed_let_through: float
    healthy_refused: float
    trips: float

    def total(self, failed_weight: float = 1.0, refused_weight: float = 1.0) -> float:
        """The weighted cost: ``failed_weight * failed_let_through + refused_weight * healthy_refused``."""
        return failed_weight * self.failed_let_through + refused_weight * self.healthy_refused

    def per_hour(self) -> Cost:
        """The same cost scaled to one hour."""
        f = 3600.0 / self.seconds if self.seconds > 0 else 0.0
        return Cost(3600.0, self.calls * f, self.failed_let_through * f, self.healthy_refused * f, self.trips * f)


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change of the breaker in force, as the store records it.

    Attributes:
        ts: When (epoch seconds).
        from_state: ``"closed"``, ``"open"``, ``"half_open"``, ``"forced_open"`` or ``"disabled"``.
        to_state: Likewise.
        reason: Why (free text, e.g. ``"consecutive_failures"``, ``"probe_failed"``).

    .. versionadded:: 0.1.0
    """

    ts: float
    from_state: str
    to_state: str
    reason: str = ""


def _geometric_run(uni: float, p: float, limit: int) -> int:
    """A run of failures (failures before the first success) at failure probability ``p``, capped."""
    if p <= 0.0:
        return 0
    if p >= 1.0:
        return limit
    return min(limit, int(math.log(max(uni, 1e-300)) / math.log(p)))


class _Sim:
    """One seeded replay run over a series: counts the calls admitted and refused in each bucket."""

    __slots__ = ("admitted", "cap", "k", "open_until", "refused", "reopen_timeout", "rng", "run", "settings",
                 "state", "timeout", "trips")

    def __init__(self, settings: Settings, seed: int) -> None:
        self.settings = settings
        self.k = settings.threshold
        self.timeout = settings.timeout
        self.cap = settings.cap
        self.rng = random.Random(seed)
        self.state = 0  # 0 closed, 1 open
        self.run = 0
        self.open_until = -math.inf
        self.reopen_timeout = settings.timeout
        self.admitted = 0
        self.refused = 0
        self.trips = 0

    def _trip(self, at: float) -> None:
        self.state = 1
        self.trips += 1
        self.reopen_timeout = self.timeout
        self.open_until = at + self.timeout * self._jitter()

    def _jitter(self) -> float:
        # Open periods vary +-50 % between runs: when a probe lands relative to the end of an outage is
        # luck, and one lucky landing in the window must not decide the timeout.
        return 0.5 + self.rng.random()

    def _closed(self, n: int, p: float, t0: float, width: float) -> int:
        """Let ``n`` calls at failure probability ``p`` through the closed breaker; returns the calls left
        when it tripped (0 when it did not)."""
        rng = self.rng
        k = self.k
        if p <= 0.0:
            self.run = 0
            self.admitted += n
            return 0
        if p >= 1.0:
            need = k - self.run
            if n < need:
                self.run += n
                self.admitted += n
                return 0
            self.admitted += need
            self._trip(t0 + width * (need - 0.5) / n)
            return n - need
        lead = _geometric_run(rng.random(), p, n)
        if self.run + lead >= k:
            need = k - self.run
            self.admitted += need
            self._trip(t0 + width * (need - 0.5) / n)
            return n - need
        rest = n - lead - 1  # calls after the first success
        if rest <= 0:
            self.run = 0 if lead < n else self.run + lead
            self.admitted += n
            return 0
        # Runs of k failures starting after a success: about rest * (1 - p) * p^k of them.
        lam = rest * (1.0 - p) * p**k
        if lam > 0.0 and rng.random() < -math.expm1(-lam):
            used = min(n, lead + 1 + int(rng.random() * rest) + k)
            self.admitted += used
            self._trip(t0 + width * (used - 0.5) / n)
            return n - used
        self.admitted += n
        # The run still going at the end of the second, below k (a truncated geometric).
        u = rng.random() * (1.0 - p**k) if k < 1000 else rng.random()
        self.run = min(k - 1, rest, _geometric_run(1.0 - u, p, k - 1))
        return 0

    def _closed_exact(self, n: int, x: int, t0: float, width: float) -> int:
        """:meth:`_closed` for ``x`` failures among ``n`` calls exactly, in an order drawn at random
        (what the store knows of a second: its counts). Drawn by the positions of the fewer of the two
        kinds, so it costs ``min(x, n - x)``."""
        k = self.k
        if x <= n - x:
            fails = sorted(self.rng.sample(range(n), x))
            # maximal runs of consecutive failing positions, as (first position, length)
            runs: list[tuple[int, int]] = []
            for pos in fails:
                if runs and runs[-1][0] + runs[-1][1] == pos:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                else:
                    runs.append((pos, 1))
        else:
            oks = sorted(self.rng.sample(range(n), n - x))
            runs = []
            prev = -1
            for pos in (*oks, n):
                if pos - prev > 1:
                    runs.append((prev + 1, pos - prev - 1))
                prev = pos
        carried = self.run
        for first, length in runs:
            before = carried if first == 0 else 0  # only a run from the first call continues the last second's
            if before + length >= k:
                used = first + k - before  # calls up to and including the k-th failure in a row
                self.admitted += used
                self._trip(t0 + width * (used - 0.5) / n)
                return n - used
        last = runs[-1] if runs else None
        if last is not None and last[0] + last[1] == n:
            self.run = (carried if last[0] == 0 else 0) + last[1]
        else:
            self.run = 0
        self.admitted += n
        return 0

    def second(self, t0: float, width: float, n: int, x: int) -> None:
        """Replay one bucket of ``n`` calls, ``x`` failing, starting at ``t0``.

        With few failures or few successes in it (at most :data:`_EXACT` of the fewer kind) the
        second's calls are placed in a random order with exactly its counts: drawn as independent
        calls at its failure share instead, a second with one failure in five makes runs of two and
        more as often as the share allows, and a breaker at low traffic trips on failures that never
        came in a row. With more of both, the share is drawn from (as exact, for such counts)."""
        p = x / n
        total = n
        exact = x if min(x, n - x) <= _EXACT else -1  # the failures left among n calls, while known
        while n > 0:
            if self.state == 1:
                if self.open_until >= t0 + width:
                    self.refused += n
                    return
                # Calls before the open period ends are refused; the next one is the probe.
                skip = min(n - 1, int(max(0.0, (self.open_until - t0) / width) * total))
                self.refused += skip
                n -= skip
                at = t0 + width * (total - n + 0.5) / total
                n -= 1
                self.admitted += 1
                failed = self.rng.random() < p
                if exact >= 0:  # the failures left among the calls after the probe, as many as the share
                    exact = min(n, int(p * n + self.rng.random()))
                if failed:  # the probe failed: open again, longer with backoff
                    self.reopen_timeout = min(self.cap, self.reopen_timeout * self.settings.backoff)
                    self.open_until = at + self.reopen_timeout * self._jitter()
                    continue
                self.state = 0
                self.run = 0
                self.reopen_timeout = self.timeout
            if n <= 0:
                return
            n = self._closed_exact(n, exact, t0, width) if exact >= 0 else self._closed(n, p, t0, width)


def failing_buckets(series: Series, min_calls: int = 20) -> list[bool]:
    """Whether the service was failing in each bucket: at least half the calls of the nearest buckets
    (widened on both sides until they hold ``min_calls`` calls) failed.

    Per-second shares are too noisy at low traffic and too coarse if averaged over minutes at high traffic;
    the neighbourhood adapts to the traffic.

    Args:
        series: Calls and failures per bucket.
        min_calls: Calls the neighbourhood must hold.

    Returns:
        One flag per bucket.
    """
    calls, fails = series.calls, series.failures
    m = len(calls)
    out: list[bool] = []
    for j in range(m):
        lo = hi = j
        n, x = calls[j], fails[j]
        while n < min_calls and (lo > 0 or hi < m - 1):
            if lo > 0:
                lo -= 1
                n += calls[lo]
                x += fails[lo]
            if hi < m - 1 and n < min_calls:
                hi += 1
                n += calls[hi]
                x += fails[hi]
        out.append(2 * x >= n)
    return out


def replay(series: Series, settings: Settings, *, failing: Sequence[bool] | None = None, runs: int = _RUNS,
           seed: int = 0) -> Cost:
    """Price ``settings`` over ``series``: the mean of ``runs`` seeded replays.

    The cost follows the service's state in each bucket (:func:`failing_buckets`): every call let through
    while it was failing, and every call refused while it was healthy.

    Args:
        series: Calls and failures per bucket (after :func:`impute`, if the breaker in force was open).
        settings: The settings to price.
        failing: Whether the service was failing in each bucket (computed if not given).
        runs: Seeded runs averaged.
        seed: Base seed (the same seed gives the same answer: comparisons use common random numbers).

    Returns:
        The cost over the series' window.

    .. versionadded:: 0.1.0
    """
    return replay_halves(series, settings, failing=failing, runs=runs, seed=seed)[0]


def replay_halves(series: Series, settings: Settings, *, failing: Sequence[bool] | None = None,
                  runs: int = _RUNS, seed: int = 0) -> tuple[Cost, Cost, Cost]:
    """Like :func:`replay`, and the same cost split between the first and second half of the window.

    Returns:
        ``(whole, first half, second half)``.

    .. versionadded:: 0.1.0
    """
    mid = (series.start + series.end) / 2.0
    whole, (first, second) = replay_parts(series, settings, ((series.start, mid), (mid, series.end)),
                                          failing=failing, runs=runs, seed=seed)
    return whole, first, second


def replay_parts(series: Series, settings: Settings, parts: Sequence[tuple[float, float]], *,
                 failing: Sequence[bool] | None = None, runs: int = _RUNS, seed: int = 0
                 ) -> tuple[Cost, list[Cost]]:
    """Like :func:`replay`, and the same runs' cost within each of ``parts``.

    Args:
        series: As for :func:`replay`.
        settings: The settings to price.
        parts: ``(from, to)`` stretches of the window; a bucket counts in each stretch its start falls in
            (``from <= t < to``), so stretches may overlap.
        failing: As for :func:`replay`.
        runs: As for :func:`replay`.
        seed: As for :func:`replay`.

    Returns:
        The whole window's cost and one cost per part (its calls estimated from the window's by time).

    .. versionadded:: 0.1.0
    """
    w = series.width
    flags = failing_buckets(series) if failing is None else failing
    member = [tuple(k for k, (a, b) in enumerate(parts) if a <= i * w < b) for i in series.index]
    let = [0.0] * len(parts)
    refused = [0.0] * len(parts)
    let_all = refused_all = trips = 0.0
    for r in range(runs):
        sim = _Sim(settings, seed * 1000 + r)
        for i, n, x, bad, into in zip(series.index, series.calls, series.failures, flags, member, strict=True):
            a0, r0 = sim.admitted, sim.refused
            sim.second(i * w, w, n, x)
            if bad:
                d = sim.admitted - a0
                let_all += d
                for k in into:
                    let[k] += d
            else:
                d = sim.refused - r0
                refused_all += d
                for k in into:
                    refused[k] += d
        trips += sim.trips
    calls = float(series.total_calls)
    span = series.span
    out = []
    for k, (a, b) in enumerate(parts):
        length = max(0.0, min(b, series.end) - max(a, series.start))
        out.append(Cost(length, calls * length / span if span > 0 else 0.0, let[k] / runs, refused[k] / runs, 0.0))
    return Cost(span, calls, let_all / runs, refused_all / runs, trips / runs), out


def refusing(transitions: Sequence[Transition], start: float, end: float) -> list[tuple[float, float]]:
    """The stretches of ``[start, end]`` in which the breaker refused every call: from each opening to the
    next half-open, close or disable (a circuit still open at ``end`` refuses until ``end``).

    Args:
        transitions: The breaker's state changes.
        start: Window start.
        end: Window end.

    Returns:
        Sorted, clipped ``(from, to)`` intervals.

    .. versionadded:: 0.1.0
    """
    out: list[tuple[float, float]] = []
    opened: float | None = None
    for tr in sorted(transitions, key=lambda tr: tr.ts):
        if tr.to_state in ("open", "forced_open"):
            if opened is None:
                opened = tr.ts
        elif opened is not None:
            out.append((opened, tr.ts))
            opened = None
    if opened is not None:
        out.append((opened, end))
    return [(max(a, start), min(b, end)) for a, b in out if b > start and a < end]


def _open_periods(transitions: Sequence[Transition], start: float, end: float, *,
                  forced: bool = False) -> list[tuple[float, float, bool]]:
    """``(from, to, still_failing_at_end)`` for every stretch the breaker in force refused calls.

    Stretches an operator forced open are left out unless ``forced``: their refusals were no setting's
    doing, and nothing sampled the service then, so they say nothing of it (filled in as failing, as an
    opening's are, a 4 s forced open of a healthy service read as a burst and drew advice). An opening
    the operator then took over ends where the operator took over, still failing."""
    out: list[tuple[float, float, bool]] = []
    ordered = sorted(transitions, key=lambda tr: tr.ts)
    opened: float | None = None
    for tr in ordered:
        to = tr.to_state
        if to == "forced_open" and not forced:
            if opened is not None:
                out.append((opened, tr.ts, True))
                opened = None
        elif to in ("open", "forced_open"):
            if opened is None:
                opened = tr.ts
        elif to == "half_open":
            continue
        elif opened is not None:  # closed or disabled: the probe succeeded, or someone reset it
            out.append((opened, tr.ts, False))
            opened = None
    if opened is not None:
        out.append((opened, end, True))
    return [(max(a, start), min(b, end), f) for a, b, f in out if b > start and a < end]


def impute(series: Series, transitions: Sequence[Transition],
           rejections: Mapping[int, int] | None = None, *, confirm: float = 0.0) -> Series:
    """Fill the seconds the breaker in force refused with the calls it probably refused.

    For each stretch from an opening to the next close: the refused traffic is what the store counted as
    rejected in each minute (``rejections``), spread over the minute's refusing seconds -- or, without
    those counts, the mean traffic of the minute before the opening. The service is taken to be failing
    at the failed probes' share of all probes (counting the trip as one more failure; at least one half)
    until the middle of the last stretch between a failed probe and the probe that succeeded, and after
    that at the failure share of the calls let through in the minute after the circuit closed -- unless
    those fail half the time or more: a probe that succeeds at 60 % failures is luck, not recovery, and
    the whole stretch is then failing. Seconds with recorded calls (probes)
    keep them and get the rest of the second's traffic added.

    Args:
        series: What the store recorded (decided calls only).
        transitions: The breaker's state changes in and around the window.
        rejections: Refused calls per minute (``epoch_seconds // 60`` -> count), from the rollups.
        confirm: Seconds of the window that must follow a close for it to count as a recovery. A probe
            that succeeded less than ``confirm`` seconds before the window ends is unconfirmed: the stretch
            before it is taken to be failing to its end, as if the circuit had not closed (``0``: every
            close counts, the behaviour before this argument existed).

    Returns:
        The series with the refused seconds filled in (integer counts, rounded).

    .. versionadded:: 0.1.0
    """
    periods = _open_periods(transitions, series.start, series.end)
    if not periods:
        return series
    w = series.width
    probes = sorted(tr.ts for tr in transitions if tr.to_state == "open" and tr.from_state == "half_open")
    successes = sorted(tr.ts for tr in transitions if tr.from_state == "half_open" and tr.to_state == "closed")
    counts = dict(zip(series.index, zip(series.calls, series.failures, strict=True), strict=True))
    total_n = series.total_calls
    total_x = series.total_failures
    background = total_x / total_n if total_n else 0.0
    idx = list(series.index)
    refusing: dict[int, int] = {}  # minute -> refusing seconds in it, to spread the rejections over
    for a, b, _ in periods:
        for i in range(math.floor(a / w) + 1, math.ceil(b / w)):
            m = int(i * w // 60)
            refusing[m] = refusing.get(m, 0) + 1
    for a, b, failing_to_end in periods:
        lo = bisect_left(idx, math.floor((a - _IMPUTE_LOOKBACK) / w))
        hi = bisect_left(idx, math.floor(a / w) + 1)
        n_before = sum(series.calls[lo:hi])
        secs = max(w, min(_IMPUTE_LOOKBACK, a - series.start))
        traffic = n_before / secs * w
        # The probes sampled the service while it was refused: failed ones say it was failing. With the
        # failures that tripped it (one more piece of evidence), their share is the failing level.
        failed_probes = sum(1 for t in probes if a <= t <= b)
        good_probes = sum(1 for t in successes if a <= t <= b)
        p_fail = max(0.5, (failed_probes + 1) / (failed_probes + good_probes + 1))
        # After the circuit closed: the calls it let through in the next minute say whether the service
        # had recovered (a probe succeeding at 60 % failures is luck, not recovery).
        lo2 = bisect_left(idx, math.floor(b / w))
        hi2 = bisect_left(idx, math.floor((b + _IMPUTE_LOOKBACK) / w) + 1)
        n_after = sum(series.calls[lo2:hi2])
        x_after = sum(series.failures[lo2:hi2])
        p_after = x_after / n_after if n_after else background
        last_failed = max((t for t in probes if a <= t < b), default=a)
        unconfirmed = not failing_to_end and series.end - b < confirm
        if failing_to_end or p_after >= 0.5 or unconfirmed:
            # Still failing after it closed (or never closed): failing throughout, at the higher of the
            # two levels seen.
            recovered = b
            p_fail = max(p_fail, p_after) if not (failing_to_end or unconfirmed) else p_fail
        else:
            recovered = last_failed + (b - last_failed) / 2.0
        carry = 0.0
        for i in range(math.floor(a / w) + 1, math.ceil(b / w)):
            m = int(i * w // 60)
            if rejections is not None and m in rejections:
                carry += rejections[m] / max(1, refusing.get(m, 1))
            else:
                carry += traffic
            n_i = int(carry)
            carry -= n_i
            p = p_fail if i * w < recovered else p_after
            seen_n, seen_x = counts.get(i, (0, 0))
            if n_i <= 0:
                continue
            counts[i] = (seen_n + n_i, min(seen_n + n_i, seen_x + math.floor(n_i * p + 0.5)))
    keep = sorted(counts)
    return Series(series.start, series.end, w, tuple(keep), tuple(counts[i][0] for i in keep),
                  tuple(counts[i][1] for i in keep))


def baseline_cost(settings: Settings, rate: float, p: float, seconds: float = 3600.0) -> Cost:
    """The expected cost of ``settings`` on a service whose calls (``rate`` a second) fail independently
    with probability ``p`` -- a healthy service at its normal failure rate, or a failing one at 90 %.

    In closed form, so that rare but expensive events -- one false trip that refuses ten minutes of
    traffic -- count at their expected rate instead of whatever a short replay happened to draw. The
    breaker cycles: closed until ``threshold`` calls fail in a row, ``(1 - p^k) / ((1 - p) p^k)`` calls on
    average, a share ``p`` of them failing; then open for the timeout, longer (with backoff) while probes
    keep failing, refusing calls that would have succeeded with probability ``1 - p``.

    Args:
        settings: The settings to price.
        rate: Calls per second.
        p: Failure probability per call.
        seconds: Length of the period priced.

    Returns:
        The expected cost over ``seconds``.

    .. versionadded:: 0.1.0
    """
    if rate <= 0.0:
        return Cost(seconds, 0.0, 0.0, 0.0, 0.0)
    p = min(max(p, 0.0), 1.0)
    calls = rate * seconds
    if p <= 0.0:
        return Cost(seconds, calls, 0.0, 0.0, 0.0)
    # Open time per trip, and failed probes: attempt j fails with probability p^j.
    open_time = 0.0
    period = settings.timeout
    stay = 1.0
    for _ in range(200):
        open_time += stay * period
        stay *= p
        if stay < 1e-12:
            break
        period = min(settings.cap, period * settings.backoff)
    failing = p >= 0.5  # the service's state: calls let through count while failing, refusals while healthy
    if p >= 1.0:  # never closes again: refuses everything, lets one probe per period through
        probes = seconds / settings.cap
        return Cost(seconds, calls, probes, 0.0, 0.0)
    probes = 1.0 / (1.0 - p)  # attempts until one succeeds
    pk = p**settings.threshold
    closed_calls = (1.0 - pk) / ((1.0 - p) * pk) if pk > 1e-300 else math.inf
    if math.isinf(closed_calls):
        return Cost(seconds, calls, calls if failing else 0.0, 0.0, 0.0)
    cycle = closed_calls / rate + open_time
    cycles = seconds / cycle
    let = cycles * (closed_calls + probes)
    refused = cycles * max(0.0, rate * open_time - probes)
    return Cost(seconds, calls, let if failing else 0.0, 0.0 if failing else refused, cycles)
