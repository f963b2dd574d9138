"""Read a history the breaker censored: what its open periods hid, from its probes and transitions.

While a breaker is open it refuses every call, so the store holds only what it let through: the probes,
and the calls of the short stretches it stayed closed. When it was open for most of a window those calls
are not a sample of the service -- they are the moments the breaker chose to look -- and a label computed
from them says more about the breaker than about the service. :func:`censoring` measures how much of a
window was refused and what the probes and closed stretches saw; :attr:`Censoring.alternating` says when
that evidence shows the service *alternating* faster than the breaker looks:

* the breaker refused calls for at least half the window (:data:`CENSORED_SHARE`);
* a probe succeeded and the circuit then tripped again (the service came back, then the failures), and
* the calls those closed stretches let through before their tripping run of failing seconds failed
  less than one time in ten (:data:`CLEAN_SHARE`): the service was healthy when the breaker looked,
  not failing at a rate a lucky probe got through.

Then :func:`fill_alternating` fills the open periods with failing and healthy spells of the lengths the
evidence implies (instead of one failure share for the whole stretch, which is right for an outage and
wrong here), so a replay prices what the open periods refused while the service was healthy.

The opposite case, a breaker whose probes never find the service healthy because they land in the
same phase of a periodic failure every time, is :func:`locked_probes`.

Pure: no I/O, no clock; :func:`fill_alternating` draws spell lengths from a seeded source.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import median
from typing import Final

from circuitry.analysis.replay import Transition, refusing
from circuitry.analysis.series import Series

__all__ = ["CENSORED_SHARE", "CLEAN_SHARE", "LOCKED_PROBES", "Censoring", "censoring", "fill_alternating",
           "locked_probes"]

#: The breaker refused calls for at least this share of the window: its history is censored.
CENSORED_SHARE: Final = 0.5
#: Calls let through between a successful probe and the tripping failures fail less than this share: the
#: service was healthy there.
CLEAN_SHARE: Final = 0.1
#: Failed probes in a row, one fixed open period apart, from which a history counts as locked in phase.
LOCKED_PROBES: Final = 3
_MIN_RECOVERIES: Final = 1  # a successful probe after which the failures came back
_MIN_CLEAN_CALLS: Final = 10  # calls those stretches let through before their tripping failures


@dataclass(frozen=True, slots=True)
class Censoring:
    """What a window's transitions and the calls between them say about the time the breaker refused.

    Attributes:
        refused_share: Share of the window the breaker refused every call (open, or forced open).
        probes: Probes in the window (half-open to closed or to open).
        probe_successes: Those that closed the circuit.
        recoveries: Closed stretches that began with a successful probe and ended with a new trip.
        healthy_seconds: Median time those stretches let calls through before their tripping failures.
        clean_calls: Calls they let through before their tripping failures.
        clean_failures: Failures among those calls.
    """

    refused_share: float
    probes: int
    probe_successes: int
    recoveries: int
    healthy_seconds: float | None
    clean_calls: int
    clean_failures: int

    @property
    def probe_success_share(self) -> float | None:
        """Share of the probes that succeeded (``None`` without probes)."""
        return self.probe_successes / self.probes if self.probes else None

    @property
    def recovering(self) -> bool:
        """A probe found the service healthy and the failures came back later, and the calls let through in
        between were healthy ones -- in the typical closed stretch, not only pooled over all of them: where
        failures came back at once after most successful probes (a median healthy time of 0 s), those
        probes were luck at a high failure share, not recoveries."""
        return (self.recoveries >= _MIN_RECOVERIES and self.clean_calls >= _MIN_CLEAN_CALLS
                and self.clean_failures < CLEAN_SHARE * self.clean_calls
                and self.healthy_seconds is not None and self.healthy_seconds > 0.0)

    @property
    def failing_through(self) -> bool:
        """A probe found the service healthy, and the calls let through after it failed at once: the
        service has no healthy phase for the breaker's probes to miss (an escalation, an outage that a
        lucky probe interrupted)."""
        return self.probe_successes > 0 and not self.recovering

    @property
    def alternating(self) -> bool:
        """The breaker was open for most of the window while the service kept coming back healthy: its
        failures come and go faster than the open period, and the admitted calls are not a sample."""
        return self.refused_share >= CENSORED_SHARE and self.recovering

    def spells(self) -> tuple[float, float] | None:
        """``(failing, healthy)`` mean spell lengths in seconds implied by the evidence, or ``None``.

        A successful probe lands at a uniform point of a healthy spell, so a spell lasts about twice what
        the closed stretches saw of it; the probes found the service healthy a share ``q`` of the time,
        so the failing spells last ``(1 - q) / q`` times as long as the healthy ones.
        """
        q = self.probe_success_share
        if not self.recovering or self.healthy_seconds is None or not q:
            return None
        healthy = max(1.0, 2.0 * self.healthy_seconds)
        return healthy * (1.0 - q) / q, healthy


def censoring(series: Series, transitions: Sequence[Transition]) -> Censoring:
    """Measure how much of ``series``' window the breaker refused, and what its probes and closed
    stretches saw.

    Args:
        series: The calls the breaker let through, per bucket.
        transitions: Its state changes (those outside the window are ignored).

    Returns:
        The measurements.
    """
    start, end, w = series.start, series.end, series.width
    span = end - start
    shut = refusing(transitions, start, end)
    refused = sum(b - a for a, b in shut) / span if span > 0 else 0.0
    ordered = sorted((tr for tr in transitions if start <= tr.ts <= end), key=lambda tr: tr.ts)
    probes = successes = recoveries = 0
    clean_n = clean_x = 0
    healthy: list[float] = []
    idx = series.index
    for j, tr in enumerate(ordered):
        if tr.from_state != "half_open" or tr.to_state not in ("closed", "open"):
            continue
        probes += 1
        if tr.to_state != "closed":
            continue
        successes += 1
        trip = next((t for t in ordered[j + 1:] if t.to_state in ("open", "forced_open")), None)
        if trip is None or trip.from_state != "closed":
            continue
        # The stretch's buckets, without the tripping run: the trailing buckets that hold failures.
        lo = bisect_right(idx, math.floor(tr.ts / w))  # after the probe's own bucket
        hi = bisect_left(idx, math.floor(trip.ts / w) + 1)
        while hi > lo and series.failures[hi - 1] > 0:
            hi -= 1
        recoveries += 1
        clean_n += sum(series.calls[lo:hi])
        clean_x += sum(series.failures[lo:hi])
        last_clean = (idx[hi - 1] + 1) * w if hi > lo else tr.ts
        healthy.append(max(0.0, min(trip.ts, last_clean) - tr.ts))
    return Censoring(refused, probes, successes, recoveries, median(healthy) if healthy else None, clean_n, clean_x)


def fill_alternating(series: Series, transitions: Sequence[Transition], failing: float, healthy: float,
                     *, seed: int = 0) -> Series:
    """Fill the open periods of an imputed series with alternating failing and healthy spells.

    ``series`` must already hold the refused calls (:func:`circuitry.analysis.replay.impute`); only the
    failures of the seconds the breaker refused are redrawn. Each open period starts failing (it opened on
    failures), for a spell of up to ``failing`` seconds, then alternates healthy and failing spells whose
    lengths are drawn uniformly between half and one and a half times their means.

    Args:
        series: The imputed series.
        transitions: The breaker's state changes.
        failing: Mean failing spell (seconds, > 0).
        healthy: Mean healthy spell (seconds, > 0).
        seed: Seed of the spell lengths (the same seed gives the same series).

    Returns:
        The series with the failures of its refused seconds redrawn.
    """
    w = series.width
    rng = random.Random(seed)
    counts = dict(zip(series.index, zip(series.calls, series.failures, strict=True), strict=True))
    for a, b in refusing(transitions, series.start, series.end):
        spells: list[tuple[float, float]] = []  # failing spells
        t = a
        length = failing * rng.random()  # the rest of the spell that tripped it
        bad = True
        while t < b:
            if bad:
                spells.append((t, t + length))
            t += length
            bad = not bad
            length = (healthy if not bad else failing) * (0.5 + rng.random())
        for i in range(math.floor(a / w) + 1, math.ceil(b / w)):
            if i not in counts:
                continue
            lo_t, hi_t = i * w, (i + 1) * w
            share = sum(max(0.0, min(hi_t, s1) - max(lo_t, s0)) for s0, s1 in spells) / w
            n, _ = counts[i]
            counts[i] = (n, min(n, math.floor(n * share + 0.5)))
    keep = sorted(counts)
    return Series(series.start, series.end, w, tuple(keep), tuple(counts[i][0] for i in keep),
                  tuple(counts[i][1] for i in keep))


def locked_probes(transitions: Sequence[Transition]) -> tuple[int, float]:
    """How many probes failed in a row at the end of ``transitions``, each one fixed open period after the
    one before, and that period.

    A circuit whose open period is a multiple of the cycle of a periodic failure (a job every minute, a
    60 s open period) probes in the same phase every time: if that phase fails, the circuit never closes
    on a service that is healthy most of the time (``benchmarks/phase_lock.py``). Counted: the re-openings
    (half-open -> open) since the circuit last opened from closed, while it has not closed since, when the
    times between consecutive openings differ by at most 1 s or 2 % -- a fixed period with traffic dense
    enough to probe at once. Varying periods (``jitter``, backoff, sparse calls) count nothing.

    Args:
        transitions: The breaker's state changes.

    Returns:
        ``(failed probes, mean open period)``, or ``(0, 0.0)``.

    .. versionadded:: 0.1.0
    """
    opens: list[float] = []
    for tr in sorted(transitions, key=lambda t: t.ts):
        if tr.to_state == "open":
            opens = [*opens, tr.ts] if tr.from_state == "half_open" and opens else [tr.ts]
        elif tr.to_state != "half_open":
            opens = []
    if len(opens) < 2:
        return 0, 0.0
    gaps = [b - a for a, b in pairwise(opens)]
    if max(gaps) - min(gaps) > max(1.0, 0.02 * min(gaps)):
        return 0, 0.0
    return len(gaps), sum(gaps) / len(gaps)
