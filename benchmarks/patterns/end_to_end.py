"""The labels end to end: calls -> breaker -> SQLite store -> the analyst's read -> label. Prints Markdown.

``run.py`` scores the classifier on per-second counts built the way the store builds them. This script
checks that claim on the real path: a sample of the same held-out test windows (every family of both
suites) is replayed call by call through a :class:`~circuitry.CircuitBreaker` whose registry has a real
:class:`~circuitry.store.SQLiteStore`, on a fake clock stepped second by second (the writer samples the
breaker's counters at every step, as it does every second in a deployment); then
:meth:`circuitry.runners.analyst.Analyst.analyse` reads the stored rows and labels the window. The same
windows are labelled directly by ``classify_series()``; both are scored against the truth with the
shipped calibration (``run.py`` reports the leave-one-family-out one).

The breaker is given a threshold it never reaches, so the store sees every call, as the direct
classification does. A stored second holds only counts, so the calls of a bucket are replayed at
random instants inside it.

Run from the repository root (about 5 minutes)::

    python -m benchmarks.patterns.end_to_end [--per-family N] [--jobs N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.patterns.data import Item, load
from benchmarks.patterns.metrics import BINS, Row, ece, in_bin, macro_f1
from circuitry.analysis.patterns import classify_series

SPACING = 10_000_000  # seconds between two windows on the store's clock (the clock only moves forward)


class Boom(Exception):
    pass


def _replay(batch: list[tuple[int, Item]]) -> list[tuple[Row, Row]]:
    from circuitry import Registry
    from circuitry.runners.analyst import Analyst
    from circuitry.store import SQLiteStore
    from circuitry.testing import FakeClock

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock(start=1000.0, wall=float(SPACING))
        store = SQLiteStore(Path(tmp) / "e2e.db", clock=clock, analysis_interval=86_400.0, metrics_interval=3600.0,
                            second_retention=30 * 86400.0)  # windows of suite A span up to 7 hours
        registry = Registry(clock=clock, hooks=[], store=store)
        analyst = Analyst.attach(store)
        for k, item in batch:
            s = item.series
            base = (k + 1) * SPACING - s.start  # window start lands on (k + 1) * SPACING
            clock.set_wall(base + s.start)
            breaker = registry.get(f"w{k}", failure_threshold=10**9, recovery_timeout=60.0)
            rng = random.Random(k)
            for i, n, x in zip(s.index, s.calls, s.failures, strict=True):
                t0 = base + i * s.width
                if t0 + s.width <= clock.time():
                    continue
                flags = [True] * x + [False] * (n - x)
                rng.shuffle(flags)
                clock.set_wall(max(clock.time(), t0))
                for failed in flags:
                    token = breaker.admit()
                    if failed:
                        breaker.record_failure(token, Boom())
                    else:
                        breaker.record_success(token)
                store.flush()  # the writer samples this second's counts under this second
            clock.set_wall(base + s.end)
            store.flush()
            analyst.window = s.end - s.start  # the analyst reads the window the generator made
            got = analyst.analyse(breaker, base + s.end).pattern
            direct = classify_series(s)
            out.append((Row(item.suite, item.family, item.shape, item.label, got.evidence.failures, got.type,
                            got.confidence, got.evidence.score),
                        Row(item.suite, item.family, item.shape, item.label, direct.evidence.failures, direct.type,
                            direct.confidence, direct.evidence.score)))
            registry.remove(f"w{k}")
        store.close(timeout=5.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-family", type=int, default=8, help="windows per generator family (>= 10 failures)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    items = [it for it in load("test") if not it.ongoing]
    by_family: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_family[it.family].append(it)
    rng = random.Random(2)
    chosen: list[Item] = []
    for family in sorted(by_family):
        pool = by_family[family]
        many = [it for it in pool if it.failures >= 10]
        few = [it for it in pool if it.failures < 10]
        chosen += rng.sample(many, min(args.per_family, len(many))) + rng.sample(few, min(1, len(few)))
    numbered = list(enumerate(chosen))
    batches = [numbered[j::args.jobs] for j in range(args.jobs)]
    with ProcessPoolExecutor(args.jobs) as pool:
        pairs = [p for part in pool.map(_replay, batches) for p in part]
    stored = [p[0] for p in pairs]
    direct = [p[1] for p in pairs]
    agree = sum(a.predicted == b.predicted for a, b in pairs)
    same_counts = sum(a.failures == b.failures for a, b in pairs)
    print("### Labels end to end: calls -> breaker -> SQLite store -> analyst\n")
    print(f"{len(pairs)} held-out test windows ({args.per_family} per family with >= 10 failures, one with fewer), "
          f"{sum(it.series.total_calls for it in chosen):,} calls replayed, {time.perf_counter() - t0:.0f} s.\n")
    print(f"- the stored window holds the same number of failures as the generated one: {same_counts}/{len(pairs)}")
    print(f"- same label through the store as directly: **{agree}/{len(pairs)}**\n")
    print("| failures in window | windows | macro-F1 through the store | directly | difference |")
    print("|---|---|---|---|---|")
    for name, lo, hi in BINS:
        a, b = in_bin(stored, lo, hi), in_bin(direct, lo, hi)
        if not a or name.startswith("<"):
            continue
        fa, fb = macro_f1(a), macro_f1(b)
        print(f"| {name} | {len(a)} | {fa:.3f} | {fb:.3f} | {fa - fb:+.3f} |")
    labelled_a = [r for r in stored if r.predicted is not None]
    labelled_b = [r for r in direct if r.predicted is not None]
    ea, eb = ece(labelled_a)[0], ece(labelled_b)[0]
    few_a = [r for r in stored if r.failures < 10]
    print(f"\n- ECE (shipped calibration): through the store {ea:.3f}, directly {eb:.3f} ({ea - eb:+.3f})")
    print(f"- abstained below 10 failures through the store: {sum(r.predicted is None for r in few_a)}/{len(few_a)}")
    for a, b in pairs:
        if a.predicted != b.predicted:
            print(f"- differs: {a.family} ({a.shape}, {a.failures} failures): store {a.predicted}, "
                  f"direct {b.predicted}")


if __name__ == "__main__":
    main()
