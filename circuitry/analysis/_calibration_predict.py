"""Calibration of the predictions. Written by ``python -m benchmarks.patterns.predict_bench --fit``;
do not edit by hand.

``PREDICT_OPEN``: logistic coefficients (intercept, then one per ``open_features``) of
the open probability. ``PREDICT_INTERVAL``: widening of the failure-rate interval.
Fitted on 1728 training cases (seed 11, every suite-B family).
"""

from __future__ import annotations

from typing import Final

PREDICT_OPEN: Final[tuple[float, ...]] = (-0.5637, 0.5110, 0.2840, -0.4029, 0.9951)
PREDICT_INTERVAL: Final = 2.20
