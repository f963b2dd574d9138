"""Periodic failures against a fixed open period: how much of a healthy service a breaker serves, with
and without ``jitter``. Prints Markdown.

A service fails for a fixed stretch of every cycle (a job every minute that takes the database away for
10 s, say) and is healthy the rest of the time; a client calls it at a steady rate through a breaker with
the default settings (5 failures, 60 s open). The breaker opens in the failing stretch. When the open
period is a multiple of the cycle, its probe lands in the same phase of the next cycle, fails, and the
circuit re-opens for another period that ends in the same phase again: it never closes, although the
service is healthy most of the time. A random part in each open period (``jitter``) moves the probe off
that phase. Every run is seeded and uses a fake clock: the figures are exact for this code.

Run from the repository root::

    python benchmarks/phase_lock.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuitry import CircuitBreaker, CircuitOpenError
from circuitry.testing import FakeClock

#: (name, cycle seconds, failing seconds at the start of each cycle, calls per second)
SCENARIOS = (
    ("a job every minute, 10 s failing", 60.0, 10.0, 10),
    ("a job every 2 minutes, 20 s failing", 120.0, 20.0, 10),
    ("blips: 5.4 s failing in every 10 s", 10.0, 5.4, 20),
    ("blips: 3 s failing in every 10 s", 10.0, 3.0, 20),
)
JITTERS = (0.0, 0.2, 0.5)
HOUR = 3600.0
#: Where in the cycle each run starts (seconds), one seed each.
OFFSETS = (0.0, 3.3, 7.1)


class Down(Exception):
    pass


def served(cycle: float, failing: float, rate: int, jitter: float, timeout: float, seed: int,
           offset: float) -> tuple[int, int, int]:
    """One hour: healthy calls, healthy calls served, calls let through while failing."""
    clock = FakeClock()
    breaker = CircuitBreaker("svc", clock=clock, rng=random.Random(seed), recovery_timeout=timeout,
                             jitter=jitter)
    healthy = ok = let_through = 0
    step = 1.0 / rate
    for i in range(int(HOUR * rate)):
        if i:
            clock.advance(step)
        up = (i * step + offset) % cycle >= failing
        healthy += up
        try:
            permit = breaker.admit()
        except CircuitOpenError:
            continue
        if up:
            breaker.record_success(permit)
            ok += 1
        else:
            breaker.record_failure(permit, Down())
            let_through += 1
    return healthy, ok, let_through


def main() -> None:
    print("### Periodic failures, one hour, defaults (5 failures, 60 s open)\n")
    print("Share of the healthy calls served (calls let through while failing), three runs each:\n")
    print("| service | " + " | ".join(f"jitter {j:g}" for j in JITTERS) + " | 5 s open, no jitter |")
    print("|---|" + "---|" * (len(JITTERS) + 1))
    for name, cycle, failing, rate in SCENARIOS:
        cells = []
        for jitter, timeout in [*((j, 60.0) for j in JITTERS), (0.0, 5.0)]:
            runs = [served(cycle, failing, rate, jitter, timeout, seed, off) for seed, off in enumerate(OFFSETS, 1)]
            healthy = sum(r[0] for r in runs)
            share = sum(r[1] for r in runs) / healthy
            let = sum(r[2] for r in runs) / len(runs)
            cells.append(f"{100 * share:.1f} % ({let:.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
