"""What the running analyst concludes in a deployment: worker processes, one SQLite store, injected faults.

The other pattern benchmarks call the engine directly. This one runs it the way users do: four worker
processes call one protected function through ``circuit("region")``, every process has its own
registry and :class:`~circuitry.store.SQLiteStore` on one shared file, and the analyst threads inside
them do the rest -- claim each period, read the per-second rows the writers left, store patterns, and
(with ``auto_apply=True``) adjust the breaker's settings, which every worker then follows. Nothing
of the engine is called by this script; it reads the tables afterwards.

Time runs ``--speed`` times faster than real (default 10) for the registries and stores -- the breakers'
open periods, the rows' timestamps, the analyst's periods -- so twenty minutes of a service take two;
the writers sample the counters every 0.05 s of real time (half a second of service time), so the
per-second rows stay per-second. The injected faults are defined in service time:

* ``steady-20``    -- every call fails with probability 0.2;                          truth: steady
* ``batched-5``    -- calls arrive in batches (~100 every ~20 s), 5 % fail at random;   truth: steady
* ``outage-32s``   -- 1 % background, a 32 s outage every 5 minutes;                   truth: burst
* ``blips``        -- the first 5.4 s of every 10 s fail (54 % of calls);              truth: burst
* ``escalation``   -- healthy for 8 minutes, then 0 -> 60 % over 30 s, and it stays;  truth: escalating

``blips`` and ``escalation`` run twice, without and with ``auto_apply``, on the same schedule: a
recommendation or an adjustment that made things worse shows there as fewer calls served, or more calls
sent to a failing service (p >= 0.5), than the defaults (threshold 5, 60 s).

Run from the repository root (about 15 minutes)::

    python -m benchmarks.patterns.deployment [--speed 10] [--minutes 20] [--only NAME ...] [--threshold 5 --open 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

WORKERS = 4
RATE = 60.0  # calls per real second per worker (a batch scenario sends the same on average)
TRUTH = {"steady-20": "steady", "batched-5": "steady", "outage-32s": "burst", "blips": "burst",
         "escalation": "escalating"}


class FastClock:
    """Wall and monotonic time running ``speed`` times faster than real, the same in every process."""

    def __init__(self, anchor: float, speed: float) -> None:
        self.anchor, self.speed = anchor, speed

    def time(self) -> float:
        return self.anchor + self.speed * (time.time() - self.anchor)

    def monotonic(self) -> float:
        return self.speed * time.monotonic()


def failure_probability(scenario: str, t: float) -> float:
    """The injected failure probability ``t`` service-seconds into the run."""
    if scenario == "steady-20":
        return 0.2
    if scenario == "batched-5":
        return 0.05
    if scenario == "outage-32s":
        return 1.0 if (t % 300.0) >= 120.0 and (t % 300.0) < 152.0 else 0.01
    if scenario == "blips":
        return 1.0 if t % 10.0 < 5.4 else 0.0
    if scenario == "escalation":
        return 0.0 if t < 480.0 else min(0.6, 0.6 * (t - 480.0) / 30.0)
    raise ValueError(scenario)


class Boom(Exception):
    pass


def worker(db: str, scenario: str, anchor: float, speed: float, minutes: float, auto: bool,
           index: int, settings: tuple[int, float] = (5, 60.0)) -> dict[str, Any]:
    from circuitry import CircuitOpenError, Registry, circuit
    from circuitry.store import SQLiteStore

    clock = FastClock(anchor, speed)
    store = SQLiteStore(db, clock=clock, auto_apply=auto, metrics_interval=0.05, analysis_interval=60.0)
    registry = Registry(clock=clock, store=store)
    registry.get("region", failure_threshold=settings[0], recovery_timeout=settings[1])
    rng = random.Random(index * 7919 + sum(map(ord, scenario)))
    counts: Counter[str] = Counter()
    start = anchor
    end = start + 60.0 * minutes
    batched = scenario == "batched-5"
    next_batch = start
    pace = 1.0 / RATE
    face = circuit("region", registry=registry)
    while True:
        now = clock.time()
        if now >= end:
            break
        if batched:
            if now < next_batch:
                time.sleep(min(0.01, (next_batch - now) / speed))
                continue
            n = rng.randint(70, 130)  # ~100 calls every ~20 service-seconds, all at once
            next_batch = now + rng.uniform(15.0, 25.0)
        else:
            n = 1
        for _ in range(n):
            p = failure_probability(scenario, clock.time() - start)
            failing = p >= 0.5
            try:
                with face:
                    if rng.random() < p:
                        raise Boom
                counts["served"] += 1
            except CircuitOpenError:
                counts["refused_while_failing" if failing else "refused_while_healthy"] += 1
                continue
            except Boom:
                counts["failed"] += 1
            if failing:
                counts["let_through_while_failing"] += 1
            counts["calls_decided"] += 1
        if not batched:
            time.sleep(pace)
    policy = registry.get("region").policy
    store.close(timeout=5.0)
    return {"counts": dict(counts), "threshold": policy.failure_threshold, "timeout": policy.recovery_timeout,
            "jitter": policy.jitter}


def run(scenario: str, *, auto: bool, speed: float, minutes: float,
        settings: tuple[int, float] = (5, 60.0)) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "deploy.db")
        anchor = time.time() + 2.0  # the workers start together
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
            futures = [pool.submit(worker, db, scenario, anchor, speed, minutes, auto, i, settings)
                       for i in range(WORKERS)]
            results = [f.result() for f in futures]
        with sqlite3.connect(db) as conn:
            patterns = conn.execute(
                "SELECT ts, pattern_type, confidence_score, suggested_threshold, suggested_timeout, evidence "
                "FROM circuit_breaker_failure_patterns WHERE service_name = 'region' ORDER BY ts").fetchall()
            adjustments = conn.execute(
                "SELECT ts, error_message FROM circuit_breaker_events WHERE event_type = 'adjustment' "
                "ORDER BY ts").fetchall()
            analysts = conn.execute(
                "SELECT count(DISTINCT process) FROM circuit_breaker_failure_patterns").fetchone()[0]
    total: Counter[str] = Counter()
    for r in results:
        total.update(r["counts"])
    full = anchor + 900.0  # labels from full 15-minute windows only
    labels = Counter(p[1] or "abstained" for p in patterns if p[0] >= full)  # NULL: abstained (censored)
    advice: Counter[str] = Counter()
    locked = 0  # analyses whose rationale suggests jitter: probes failing one fixed period apart
    for p in patterns:
        rec = json.loads(p[5]).get("recommendation", {}) if p[5] else {}
        if rec.get("has_recommendations"):
            advice[f"{rec['recommended_threshold']}/{rec['recommended_timeout']:g}s"] += 1
        locked += bool(rec.get("locked_probes"))
    return {"scenario": scenario, "auto": auto, "counts": total, "labels": labels, "advice": advice,
            "locked": locked,
            "adjustments": [(round(a[0] - anchor), a[1]) for a in adjustments],
            "final": sorted({(r["threshold"], r["timeout"], r["jitter"]) for r in results}), "analysts": analysts,
            "patterns": len(patterns)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", type=float, default=10.0)
    ap.add_argument("--minutes", type=float, default=20.0, help="service minutes per run")
    ap.add_argument("--only", nargs="*", choices=sorted(TRUTH))
    ap.add_argument("--threshold", type=int, default=5, help="the workers' failure_threshold at the start")
    ap.add_argument("--open", type=float, default=60.0, help="the workers' recovery_timeout (s) at the start")
    args = ap.parse_args()
    plan = [(s, False) for s in TRUTH] + [("blips", True), ("escalation", True)]
    if args.only:
        plan = [(s, a) for s, a in plan if s in args.only]
    t0 = time.perf_counter()
    settings = (args.threshold, args.open)
    rows = [run(s, auto=a, speed=args.speed, minutes=args.minutes, settings=settings) for s, a in plan]
    print(f"### The running analyst, {WORKERS} worker processes on one SQLite file\n")
    print(f"{args.minutes:g} service minutes per run at x{args.speed:g}, settings {args.threshold}/{args.open:g}s "
          f"at the start; {time.perf_counter() - t0:.0f} s in all; labels from the analyses of full 15-minute "
          "windows.\n")
    print("| scenario | auto_apply | truth | labels stored (full windows) | right | advice given (threshold/open) | "
          "served | let through while failing | refused while healthy | settings at the end | adjustments |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, labels = r["counts"], r["labels"]
        n = sum(labels.values())
        right = labels.get(TRUTH[r["scenario"]], 0)
        calls = c["calls_decided"] + c["refused_while_failing"] + c["refused_while_healthy"]
        print(f"| {r['scenario']} | {'on' if r['auto'] else 'off'} | {TRUTH[r['scenario']]} | "
              f"{', '.join(f'{k} {v}' for k, v in labels.most_common()) or '-'} | {right}/{n} | "
              f"{', '.join(f'{k} x{v}' for k, v in r['advice'].most_common(3)) or 'none'} | "
              f"{c['served']}/{calls} ({100.0 * c['served'] / max(calls, 1):.1f} %) | "
              f"{c['let_through_while_failing']} | {c['refused_while_healthy']} | "
              f"{', '.join(f'{k}/{t:g}s' + (f' jitter {j:g}' if j else '') for k, t, j in r['final'])} | "
              f"{len(r['adjustments'])} |")
    for r in rows:
        for at, message in r["adjustments"]:
            print(f"- {r['scenario']} (auto): at {at} s: {message}")
    for r in rows:
        if r["locked"]:
            print(f"- {r['scenario']} ({'auto' if r['auto'] else 'no auto'}): {r['locked']} of {r['patterns']} "
                  "analyses found the probes failing one fixed open period apart and suggested jitter")


if __name__ == "__main__":
    main()
