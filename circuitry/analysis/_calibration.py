"""Confidence calibration of the pattern labels. Written by ``python -m benchmarks.patterns.calibrate``;
do not edit by hand.

``confidence = logistic(a + b * score + c * ln(failures))`` per label.
"""

from __future__ import annotations

from typing import Final

CALIBRATION: Final[dict[str, tuple[float, float, float]]] = {
    "burst": (0.0, 3.0, 0.0),
    "steady": (0.0, 3.0, 0.0),
    "intermittent": (0.0, 3.0, 0.0),
    "escalating": (0.0, 3.0, 0.0),
}
