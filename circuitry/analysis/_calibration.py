"""Confidence calibration of the pattern labels. Written by ``python -m benchmarks.patterns.calibrate``;
do not edit by hand.

``confidence = logistic(a + b * score + c * ln(failures))`` per label, fitted on
2273 windows of the training seed (both suites, every family).
"""

from __future__ import annotations

from typing import Final

CALIBRATION: Final[dict[str, tuple[float, float, float]]] = {
    "burst": (5.4266, 3.7005, -0.8650),  # n=390, accuracy=0.992
    "steady": (-3.7413, 4.6516, 0.8248),  # n=555, accuracy=0.847
    "intermittent": (-6.7633, 3.4134, 2.1173),  # n=393, accuracy=0.880
    "escalating": (-1.2279, 1.1295, 0.9702),  # n=444, accuracy=0.932
}
