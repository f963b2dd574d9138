"""Fit the confidence calibration of the pattern labels, and write it into the package.

For each label, a logistic (Platt) model ``P(right) = logistic(a + b * score + c * ln failures)`` is fitted
by Newton-Raphson (with a small ridge) on the windows of the *training* seed that received that label.
``main()`` fits on every family and writes ``circuitry/analysis/_calibration.py`` -- the constants the
library ships. ``lofo_confidences()`` is what the benchmark scores: for each family, a calibration fitted
on the training windows of the *other* families only, applied to the held-out windows of that family.

Run from the repository root::

    python -m benchmarks.patterns.calibrate          # fit on the training seed, write _calibration.py
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.patterns.data import load
from benchmarks.patterns.metrics import CLASSES, Row, ece, run_classifier, with_confidence
from circuitry.analysis.patterns import confidence

TARGET = Path(__file__).resolve().parents[2] / "circuitry" / "analysis" / "_calibration.py"
Coefs = dict[str, tuple[float, float, float]]


def _solve3(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve a 3x3 linear system by Gaussian elimination with partial pivoting."""
    m = [[*row, v] for row, v in zip(a, b, strict=True)]
    for col in range(3):
        piv = max(range(col, 3), key=lambda r: abs(m[r][col]))
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            for c in range(col, 4):
                m[r][c] -= f * m[col][c]
    x = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        x[r] = (m[r][3] - sum(m[r][c] * x[c] for c in range(r + 1, 3))) / m[r][r]
    return x


def fit_platt(xs: Sequence[tuple[float, float]], ys: Sequence[int], ridge: float = 1e-2) -> tuple[float, float, float]:
    """Logistic regression of ``ys`` on ``(1, x1, x2)`` by Newton-Raphson.

    Args:
        xs: ``(score, ln failures)`` per example.
        ys: 1 if the label was right, else 0.
        ridge: L2 penalty on all three coefficients (keeps a class that is always right finite).

    Returns:
        ``(a, b, c)``.
    """
    w = [0.0, 0.0, 0.0]
    for _ in range(100):
        g = [-ridge * wi for wi in w]
        h = [[ridge if i == j else 0.0 for j in range(3)] for i in range(3)]
        for (x1, x2), y in zip(xs, ys, strict=True):
            f = (1.0, x1, x2)
            z = max(-40.0, min(40.0, w[0] + w[1] * x1 + w[2] * x2))
            p = 1.0 / (1.0 + math.exp(-z))
            for i in range(3):
                g[i] += (y - p) * f[i]
                for j in range(3):
                    h[i][j] += p * (1 - p) * f[i] * f[j]
        step = _solve3(h, g)
        w = [wi + si for wi, si in zip(w, step, strict=True)]
        if max(abs(s) for s in step) < 1e-10:
            break
    return w[0], w[1], w[2]


def _features(r: Row) -> tuple[float, float]:
    return float(r.score or 0.0), math.log(max(1, r.failures))


def fit(rows: Sequence[Row]) -> Coefs:
    """One Platt model per label over the rows that received it."""
    out: Coefs = {}
    for c in CLASSES:
        sel = [r for r in rows if r.predicted == c and r.score is not None]
        if len(sel) < 10:  # too few to fit: the label's base rate, whatever the score
            acc = (sum(r.label == c for r in sel) + 1) / (len(sel) + 2)
            out[c] = (math.log(acc / (1 - acc)), 0.0, 0.0)
            continue
        out[c] = fit_platt([_features(r) for r in sel], [int(r.label == c) for r in sel])
    return out


def apply(rows: Sequence[Row], coefs: Coefs) -> list[float]:
    """Confidences of the rows under ``coefs`` (0 when abstaining)."""
    return [0.0 if r.predicted is None else confidence(r.predicted, float(r.score or 0.0), r.failures, coefs)
            for r in rows]


def lofo_confidences(train: Sequence[Row], test: Sequence[Row]) -> list[float]:
    """Leave-one-family-out: each test row gets a calibration fitted without its family's training rows."""
    fits: dict[str, Coefs] = {}
    out = []
    for r in test:
        if r.family not in fits:
            fits[r.family] = fit([t for t in train if t.family != r.family])
        out.append(apply([r], fits[r.family])[0])
    return out


def write(coefs: Coefs, rows: Sequence[Row], seed_note: str) -> None:
    """Write the shipped constants."""
    lines = [
        '"""Confidence calibration of the pattern labels. Written by ``python -m benchmarks.patterns.calibrate``;',
        "do not edit by hand.",
        "",
        "``confidence = logistic(a + b * score + c * ln(failures))`` per label, fitted on",
        seed_note + ".",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "CALIBRATION: Final[dict[str, tuple[float, float, float]]] = {",
    ]
    for c in CLASSES:
        sel = [r for r in rows if r.predicted == c]
        acc = sum(r.label == c for r in sel) / len(sel) if sel else math.nan
        a, b, k = coefs[c]
        lines.append(f'    "{c}": ({a:.4f}, {b:.4f}, {k:.4f}),  # n={len(sel)}, accuracy={acc:.3f}')
    lines.append("}")
    TARGET.write_text("\n".join(lines) + "\n")


def main() -> None:
    """Fit on every family of the training seed and write ``_calibration.py``."""
    t0 = time.perf_counter()
    rows = run_classifier(load("train"))
    coefs = fit(rows)
    write(coefs, rows, f"{len(rows)} windows of the training seed (both suites, every family)")
    e, _ = ece(with_confidence(rows, apply(rows, coefs)))
    print(f"fitted on {len(rows)} training windows in {time.perf_counter() - t0:.1f} s; wrote {TARGET}")
    print(f"in-sample ECE: {e:.4f}")


if __name__ == "__main__":
    main()
