"""Calibration of the predictions. Written by ``python -m benchmarks.patterns.predict_bench --fit``;
do not edit by hand.

``PREDICT_OPEN``: logistic coefficients (intercept, then one per ``open_features``) of
the open probability. ``PREDICT_INTERVAL``: widening of the failure-rate interval.
Fitted on 432 training cases (seed 11, every suite-B family).
"""

from __future__ import annotations

from typing import Final

PREDICT_OPEN: Final[tuple[float, ...]] = (-1.5458, 0.5454, 1.4851, -0.0396)
PREDICT_INTERVAL: Final = 1.90
