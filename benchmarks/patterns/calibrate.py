"""Fit the confidence calibration of :func:`circuitry.analysis.patterns.classify` on *training* seeds.

For each predicted class, a logistic (Platt) model ``P(correct) = sigmoid(a + b * score + c * ln failures)``
is fitted by Newton-Raphson (with a tiny ridge for stability) on the windows of the training seed. The
printed constants are pasted into ``circuitry/patterns.py`` (``_CALIBRATION``); ``run.py`` then measures
calibration on the disjoint held-out seed only.

Run from the repository root::

    python -m benchmarks.patterns.calibrate
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.patterns.generators import make_windows
from benchmarks.patterns.metrics import CLASSES, TRAIN_SEED, Row, ece, run_classifier

TRAIN_WINDOWS = 4000


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


def fit_platt(xs: list[tuple[float, float]], ys: list[int], ridge: float = 1e-3) -> tuple[float, float, float]:
    """Logistic regression of ``ys`` on ``(1, x1, x2)`` by Newton-Raphson.

    Args:
        xs: ``(score, ln failures)`` per example.
        ys: 1 if the prediction was right, else 0.
        ridge: L2 penalty on the two slopes.

    Returns:
        ``(a, b, c)``.
    """
    w = [0.0, 0.0, 0.0]
    for _ in range(100):
        g = [0.0, 0.0, 0.0]
        h = [[0.0] * 3 for _ in range(3)]
        for (x1, x2), y in zip(xs, ys, strict=True):
            f = (1.0, x1, x2)
            z = max(-40.0, min(40.0, w[0] + w[1] * x1 + w[2] * x2))
            p = 1.0 / (1.0 + math.exp(-z))
            for i in range(3):
                g[i] += (y - p) * f[i]
                for j in range(3):
                    h[i][j] += p * (1 - p) * f[i] * f[j]
        for i in (1, 2):
            g[i] -= ridge * w[i]
            h[i][i] += ridge
        step = _solve3(h, g)
        w = [wi + si for wi, si in zip(w, step, strict=True)]
        if max(abs(s) for s in step) < 1e-10:
            break
    return w[0], w[1], w[2]


def main() -> None:
    """Fit and print the calibration constants."""
    t0 = time.perf_counter()
    rows: list[Row] = run_classifier(make_windows(TRAIN_SEED, TRAIN_WINDOWS))
    print(f"# {len(rows)} training windows (seed {TRAIN_SEED}) in {time.perf_counter() - t0:.1f} s")
    print("_CALIBRATION: Final[dict[str, tuple[float, float, float]]] = {")
    for c in CLASSES:
        sel = [r for r in rows if r.predicted == c and r.score is not None]
        xs = [(float(r.score or 0.0), math.log(r.failures)) for r in sel]
        ys = [int(r.label == c) for r in sel]
        a, b, k = fit_platt(xs, ys)
        print(f'    "{c}": ({a:.4f}, {b:.4f}, {k:.4f}),  # n={len(sel)}, accuracy={sum(ys) / len(ys):.3f}')
    print("}")
    e, _ = ece(rows)
    print(f"# training ECE with the constants currently in circuitry/patterns.py: {e:.4f}")


if __name__ == "__main__":
    main()
