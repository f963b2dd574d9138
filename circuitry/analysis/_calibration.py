"""Confidence calibration of the pattern labels. Written by ``python -m benchmarks.patterns.calibrate``;
do not edit by hand.

``confidence = logistic(a + b * score + c * ln(failures))`` per label, fitted on
2273 windows of the training seed (both suites, every family).
"""

from __future__ import annotations

from typing import Final

CALIBRATION: Final[dict[str, tuple[float, float, float]]] = {
    "burst": (5.4352, 3.6843, -0.8642),  # n=390, accuracy=0.992
    "steady": (-3.7470, 4.6006, 0.7979),  # n=570, accuracy=0.833
    "intermittent": (-7.1453, 3.7619, 2.1268),  # n=404, accuracy=0.861
    "escalating": (-2.1662, -1.7610, 1.6937),  # n=418, accuracy=0.947
}
