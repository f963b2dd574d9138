"""Scoring helpers shared by ``calibrate.py`` and ``run.py``: classification rows, macro-F1, ECE, confusion."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from benchmarks.patterns.data import Item
from circuitry.analysis.patterns import PatternResult, classify_series

CLASSES = ("burst", "steady", "intermittent", "escalating")

#: Failure-count bins for the per-bin figures: (label, lowest, highest exclusive).
BINS = (("<10", 0, 10), ("10-19", 10, 20), ("20-49", 20, 50), (">=50", 50, 1 << 62))

#: Families whose windows are stationary and bursty (the false-"escalating" rate is measured on them).
STATIONARY_BURSTY = (
    "A:burst-hawkes", "A:burst-cluster", "A:burst-two-state", "A:burst-on-background", "A:burst-single",
    "B:hawkes", "B:neyman-scott", "B:on-off",
)
#: Families whose failures keep a constant pace in time (measured under falling traffic).
TIME_HOMOGENEOUS = ("B:poisson-time", "B:cron", "B:weibull")


@dataclass(frozen=True)
class Row:
    """One classified window."""

    suite: str
    family: str
    shape: str
    label: str | None
    failures: int
    predicted: str | None
    confidence: float
    score: float | None


def run_classifier(items: Iterable[Item], classifier: Callable[..., PatternResult] = classify_series) -> list[Row]:
    """Classify every scored window (windows ending mid-outage are left out, see ``data.py``)."""
    rows = []
    for it in items:
        if it.ongoing:
            continue
        r = classifier(it.series)
        rows.append(Row(it.suite, it.family, it.shape, it.label, r.evidence.failures, r.type, r.confidence,
                        r.evidence.score))
    return rows


def with_confidence(rows: Sequence[Row], conf: Sequence[float]) -> list[Row]:
    """The rows with their confidences replaced (e.g. by leave-one-family-out calibrations)."""
    return [replace(r, confidence=c) for r, c in zip(rows, conf, strict=True)]


def in_bin(rows: Sequence[Row], lo: int, hi: int) -> list[Row]:
    """Rows whose window has ``lo <= failures < hi``."""
    return [r for r in rows if lo <= r.failures < hi]


def macro_f1(rows: Sequence[Row]) -> float:
    """Macro-averaged F1 over the four classes.

    An abstention counts as a miss for the true class (it lowers recall) and as a false positive for no
    class, so abstaining never raises the score. Classes absent from both truth and prediction are skipped.
    """
    scores = []
    for c in CLASSES:
        tp = sum(1 for r in rows if r.label == c and r.predicted == c)
        fp = sum(1 for r in rows if r.label != c and r.predicted == c)
        fn = sum(1 for r in rows if r.label == c and r.predicted != c)
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else math.nan


def accuracy(rows: Sequence[Row]) -> float:
    """Share of rows predicted right."""
    return sum(1 for r in rows if r.predicted == r.label) / len(rows) if rows else math.nan


def abstention(rows: Sequence[Row]) -> float:
    """Share of rows with no prediction."""
    return sum(1 for r in rows if r.predicted is None) / len(rows) if rows else math.nan


def ece(rows: Sequence[Row], bins: int = 10) -> tuple[float, list[tuple[float, float, int]]]:
    """Expected calibration error over the rows with a prediction, equal-width confidence bins.

    Returns:
        ``(ece, [(mean confidence, accuracy, count) per non-empty bin])``.
    """
    preds = [r for r in rows if r.predicted is not None]
    if not preds:
        return math.nan, []
    table = []
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [r for r in preds if lo <= r.confidence < hi or (b == bins - 1 and r.confidence == 1.0)]
        if not sel:
            continue
        conf = sum(r.confidence for r in sel) / len(sel)
        acc = sum(1 for r in sel if r.predicted == r.label) / len(sel)
        total += len(sel) / len(preds) * abs(acc - conf)
        table.append((conf, acc, len(sel)))
    return total, table


def format_confusion(rows: Sequence[Row]) -> str:
    """The confusion matrix as a Markdown table (rows: truth, columns: prediction)."""
    c = Counter((r.label, r.predicted) for r in rows)
    cols: list[str | None] = [*CLASSES, None]
    lines = ["| true \\ predicted | " + " | ".join(x or "abstain" for x in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for t in CLASSES:
        lines.append(f"| {t} | " + " | ".join(str(c[(t, p)]) for p in cols) + " |")
    return "\n".join(lines)
