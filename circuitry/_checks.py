"""Argument checks shared by every layer: a value of the right type and range, or a
:class:`~circuitry.ConfigurationError` naming the argument. Strict on purpose: ``0``, negatives, NaN,
infinities, booleans (``True`` is an ``int`` in Python), strings and absurd sizes are refused instead of
being coerced (``threshold or DEFAULT`` turns a deliberate 0 into 5).
"""

from __future__ import annotations

import math
from typing import Any

from circuitry._clock import SYSTEM_CLOCK, Clock
from circuitry.exceptions import ConfigurationError

__all__ = ["check_clock", "check_int", "check_number", "check_rng"]


def check_clock(clock: object) -> Clock:
    """``clock`` (``None``: the system's), or a ConfigurationError naming ``clock``."""
    if clock is None:
        return SYSTEM_CLOCK
    if not (callable(getattr(clock, "monotonic", None)) and callable(getattr(clock, "time", None))):
        raise ConfigurationError(f"clock must have monotonic() and time() methods, got {clock!r}")
    return clock  # type: ignore[return-value]


def check_rng(rng: Any) -> Any:
    """``rng`` (``None`` stays ``None``), or a ConfigurationError naming ``rng``: it needs ``random()``."""
    if rng is not None and not callable(getattr(rng, "random", None)):
        raise ConfigurationError(f"rng must have a random() method (a random.Random), got {rng!r}")
    return rng


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]`` (booleans refused), or a ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not lo <= value <= hi:
        raise ConfigurationError(f"{name} must be between {lo} and {hi}, got {value!r}")
    return value


def check_number(name: str, value: object, *, lo: float, hi: float, lo_open: bool = True) -> float:
    """``value`` as a finite float in ``(lo, hi]`` (or ``[lo, hi]``), or a ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float (10**400): as unusable as infinity
        raise ConfigurationError(f"{name} must be finite, got an int of {len(str(abs(value)))} digits") from None
    if math.isnan(v) or math.isinf(v):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        bracket = "(" if lo_open else "["
        raise ConfigurationError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {value!r}")
    return v
