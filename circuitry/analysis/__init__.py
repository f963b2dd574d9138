"""The analysis layer: pure functions over a circuit's history (no I/O, no clock of their own).

* :func:`analyse` -- the one entry point: pattern, recommendation and prediction for a circuit now;
* :mod:`~circuitry.analysis.series` -- per-second counts (:class:`Series`, :func:`bucketize`);
* :mod:`~circuitry.analysis.patterns` -- burst / steady / intermittent / escalating, or abstain;
* :mod:`~circuitry.analysis.recommend` and :mod:`~circuitry.analysis.replay` -- settings proven by replay;
* :mod:`~circuitry.analysis.predict` -- the probability of a trip and the failure share ahead;
* :mod:`~circuitry.analysis.adjust` -- the automatic-adjustment decision;
* :mod:`~circuitry.analysis.alerts` -- alert rules.

The names below are imported on first use, so importing one submodule (the store imports the alert
rules) does not load the whole engine. (``predict``, ``recommend`` and ``replay`` are modules here; their
functions of the same names live in them.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from circuitry.analysis.adjust import Adjustment, AdjustPolicy, Decision, MeasuredCost, decide, measure_cost
    from circuitry.analysis.engine import Analysis, analyse
    from circuitry.analysis.history import MinuteRollup
    from circuitry.analysis.patterns import PatternResult, classify, classify_series
    from circuitry.analysis.predict import Prediction
    from circuitry.analysis.recommend import Recommendation
    from circuitry.analysis.replay import Cost, Settings, Transition
    from circuitry.analysis.series import Series, bucketize

_WHERE = {
    "AdjustPolicy": "adjust", "Adjustment": "adjust", "Decision": "adjust", "MeasuredCost": "adjust",
    "decide": "adjust", "measure_cost": "adjust", "Analysis": "engine", "analyse": "engine",
    "MinuteRollup": "history", "PatternResult": "patterns", "classify": "patterns", "classify_series": "patterns",
    "Prediction": "predict", "Recommendation": "recommend",
    "Cost": "replay", "Settings": "replay", "Transition": "replay", "Series": "series",
    "bucketize": "series",
}

__all__ = [
    "AdjustPolicy",
    "Adjustment",
    "Analysis",
    "Cost",
    "Decision",
    "MeasuredCost",
    "MinuteRollup",
    "PatternResult",
    "Prediction",
    "Recommendation",
    "Series",
    "Settings",
    "Transition",
    "analyse",
    "bucketize",
    "classify",
    "classify_series",
    "decide",
    "measure_cost",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'circuitry.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"circuitry.analysis.{module}"), name)
