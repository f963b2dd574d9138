"""Benchmark :func:`circuitry.analysis.patterns.classify` against the seed heuristic, and replay recommendations.

Run from the repository root (either form)::

    python -m benchmarks.patterns.run
    python benchmarks/patterns/run.py [--windows N] [--replay-per-kind N]

Everything is measured on *held-out* seeds (``metrics.TEST_SEED``, ``replay.REPLAY_SEED``); the decision
thresholds and the calibration constants were fitted on ``metrics.TRAIN_SEED`` (see ``calibrate.py``).
Prints Markdown.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.patterns.generators import STATIONARY_BURSTY, Window, make_windows, traffic
from benchmarks.patterns.metrics import (
    BINS,
    CLASSES,
    TEST_SEED,
    Row,
    abstention,
    ece,
    format_confusion,
    in_bin,
    macro_f1,
    run_classifier,
)
from benchmarks.patterns.replay import DEFAULT_THRESHOLD, DEFAULT_TIMEOUT, KINDS, run_replay
from circuitry.analysis.patterns import classify, classify_seed_heuristic

TEST_WINDOWS = 6000


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _false_escalating(rows: list[Row]) -> tuple[float, int]:
    sel = [r for r in rows if r.kind in STATIONARY_BURSTY]
    return (sum(1 for r in sel if r.predicted == "escalating") / len(sel) if sel else 0.0), len(sel)


def timing_window(background: float = 0.01, seed: int = 7) -> list[tuple[float, bool]]:
    """A 15-minute window of about 100,000 calls: steady ``background`` failures plus two 20 s outages."""
    rng = random.Random(seed)
    times = traffic(rng, 100_000 / 900.0, 0.0, 900.0)
    calls = []
    for t in times:
        p = 0.8 if (200.0 <= t < 220.0 or 640.0 <= t < 660.0) else background
        calls.append((t, rng.random() < p))
    return calls


def measure_timing(background: float = 0.01, repeats: int = 30) -> tuple[int, float, float]:
    """Median and maximum wall time (ms) of classify() on :func:`timing_window`."""
    calls = timing_window(background)
    classify(calls, window_start=0.0, window_end=900.0)  # warm up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        classify(calls, window_start=0.0, window_end=900.0)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return len(calls), statistics.median(samples), max(samples)


def report_classifier(name: str, rows: list[Row]) -> None:
    """Print the per-bin table of one classifier."""
    print(f"\n### {name}\n")
    print("| failures in window | windows | macro-F1 | abstained |")
    print("|---|---|---|---|")
    for label, lo, hi in BINS:
        sel = in_bin(rows, lo, hi)
        f1 = macro_f1(sel) if lo >= 10 else float("nan")
        f1s = "--" if lo < 10 else f"{f1:.3f}"
        print(f"| {label} | {len(sel)} | {f1s} | {_pct(abstention(sel))} |")
    ten = [r for r in rows if r.failures >= 10]
    print(f"| >=10 (all) | {len(ten)} | {macro_f1(ten):.3f} | {_pct(abstention(ten))} |")
    e, table = ece(rows)
    fe, n_fe = _false_escalating(rows)
    print(f"\n- ECE (10 bins, held-out, {sum(c for _, _, c in table)} predictions): **{e:.4f}**")
    print(f"- false 'escalating' on stationary bursty streams ({n_fe} windows): **{_pct(fe)}**")
    print("\nConfusion matrix, windows with >= 10 failures:\n")
    print(format_confusion(ten))
    print(
        "\nReliability (mean confidence -> accuracy, count): "
        + ", ".join(f"{c:.2f}->{a:.2f} ({n})" for c, a, n in table)
    )


def report_kinds(rows: list[Row], seed_rows: list[Row]) -> None:
    """Accuracy per generator kind, windows with >= 10 failures."""
    print("\n### Accuracy per generator (windows with >= 10 failures)\n")
    print("| generator | class | windows | classify | seed heuristic |")
    print("|---|---|---|---|---|")
    kinds = sorted({r.kind for r in rows}, key=lambda k: (CLASSES.index(k.split("-")[0]), k))
    for k in kinds:
        sel = [r for r in rows if r.kind == k and r.failures >= 10]
        ssel = [r for r in seed_rows if r.kind == k and r.failures >= 10]
        if not sel:
            continue
        acc = sum(1 for r in sel if r.predicted == r.label) / len(sel)
        sacc = sum(1 for r in ssel if r.predicted == r.label) / len(ssel)
        print(f"| {k} | {sel[0].label} | {len(sel)} | {_pct(acc)} | {_pct(sacc)} |")


def report_replay(per_kind: int) -> None:
    """Print the replay table."""
    t0 = time.perf_counter()
    res = run_replay(per_kind)
    print(
        f"\n### Replay: defaults (threshold {DEFAULT_THRESHOLD}, timeout {DEFAULT_TIMEOUT:.0f} s) vs recommended "
        f"({res.services} held-out two-hour services, second hour replayed; {time.perf_counter() - t0:.1f} s)\n"
    )
    print(
        "| service | policy | calls to failing service | false trips while healthy | trips while degraded |"
        " mean time to open (s) | never opened | healthy calls rejected |"
    )
    print("|---|---|---|---|---|---|---|---|")
    totals = {"default": [0, 0, 0], "recommended": [0, 0, 0]}
    for k in KINDS:
        for name, out in (("default", res.default[k]), ("recommended", res.recommended[k])):
            periods = out.failing_periods
            tto = f"{out.time_to_open_total / periods:.1f}" if periods else "--"
            never = f"{out.never_opened}/{periods}" if periods else "--"
            print(
                f"| {k} | {name} | {out.calls_to_failing} | {out.false_trips} | {out.degraded_trips} | {tto} | "
                f"{never} | {out.healthy_rejected} |"
            )
            totals[name][0] += out.calls_to_failing
            totals[name][1] += out.false_trips
            totals[name][2] += out.healthy_rejected
    for name, (c, f, h) in totals.items():
        print(f"| **all** | {name} | **{c}** | **{f}** | | | | {h} |")
    print("\nRecommended settings (pattern of the training hour, threshold, timeout, backoff), most common:\n")
    for k in KINDS:
        counts: dict[tuple[str | None, int, float, float | None], int] = {}
        for s in res.settings[k]:
            key = (s[0], s[1], round(s[2], -1) if s[2] >= 10 else s[2], s[3])
            counts[key] = counts.get(key, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
        print(f"- {k}: " + "; ".join(f"{p} t={t} {to:g}s x{b or 1:g} ({n})" for (p, t, to, b), n in top))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--windows", type=int, default=TEST_WINDOWS, help="held-out windows (default %(default)s)")
    ap.add_argument("--replay-per-kind", type=int, default=40, help="replayed services per kind")
    args = ap.parse_args(argv)

    print(f"## circuitry.analysis.patterns benchmark\n\nMachine: {platform.machine()}, "
          f"CPython {platform.python_version()}")
    t0 = time.perf_counter()
    windows: list[Window] = make_windows(TEST_SEED, args.windows)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = run_classifier(windows)
    cls = time.perf_counter() - t0
    seed_rows = run_classifier(windows, classify_seed_heuristic, windowed=False)
    print(
        f"\n{len(windows)} held-out windows (seed {TEST_SEED}): generated in {gen:.1f} s, classified in "
        f"{cls:.1f} s ({1000 * cls / len(windows):.2f} ms/window, "
        f"mean {statistics.mean(len(w.calls) for w in windows):.0f} calls/window)"
    )
    for bg in (0.01, 0.5):
        n, med, worst = measure_timing(bg)
        print(
            f"\n**Timing**: classify() on a 15-minute window of {n} calls ({bg:.0%} failing + two outages): "
            f"median {med:.1f} ms, max {worst:.1f} ms (30 runs)"
        )
    report_classifier("classify()", rows)
    report_classifier("Seed heuristic (classify_seed_heuristic)", seed_rows)
    report_kinds(rows, seed_rows)
    report_replay(args.replay_per_kind)


if __name__ == "__main__":
    main()
