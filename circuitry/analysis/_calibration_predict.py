"""Calibration of the predictions. Written by ``python -m benchmarks.patterns.predict_bench --fit``;
do not edit by hand.

``PREDICT_OPEN``: logistic coefficients (intercept, then one per ``open_features``) of
the open probability. ``PREDICT_INTERVAL``: widening of the failure-rate interval.
Fitted on 1728 training cases (seed 11, every suite-B family).
"""

from __future__ import annotations

from typing import Final

PREDICT_OPEN: Final[tuple[float, ...]] = (-1.7957, 0.3709, 1.0181, -0.2806, 2.0615)
PREDICT_INTERVAL: Final = 2.20
