"""Which implementation of the hot-path types circuitry uses: C or pure Python — chosen here, once.

``circuitry/_speedups.c`` (built by ``pip install`` where a C compiler exists) implements
:class:`~circuitry._fastpath.Gate`, :class:`~circuitry._fastpath.WithBase` and
:func:`~circuitry._fastpath.protect` as self-contained C types. They are used only if the module
imports *and* passes a short self-check; on any error the pure-Python ones are used, as when the
extension was not built. ``CIRCUITRY_NO_SPEEDUPS=1`` (read at import) chooses pure Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from circuitry import _fastpath

__all__ = ["NO_RESULT", "SPEEDUPS", "Gate", "WithBase", "protect"]


def _load() -> Any:
    if os.environ.get("CIRCUITRY_NO_SPEEDUPS"):
        return None
    try:
        import circuitry._speedups as _speedups  # the accelerator alone, not the package's face

        # the self-check: a gate admits, counts a success and a failure, and refuses while open
        class Probe(_speedups.Gate):
            breakers: ClassVar[dict[str, Any]] = {}

            def _trip(self, token: int, exc: BaseException) -> None:
                self._fast = -2

        gate = Probe("check", lambda: 0.0, LookupError)
        gate._fail_types, gate._thr1, gate._open_until = ValueError, 1, 1.0
        gate._fast = gate._gen = 0
        Probe.breakers["check"] = gate
        call = _speedups.protect(Probe, "check", lambda: gate, int)
        if call("7") != 7:
            return None
        gate.exit(gate.enter(), ValueError())
        try:
            call("x")  # int("x"): ValueError, the second failure
        except ValueError:
            pass
        try:
            call()
        except LookupError:
            pass
        return _speedups if gate._tally() == (1, 2, 0, 1, 0) else None
    except Exception:  # not built, built for another interpreter, or broken: pure Python is correct too
        return None


_speedups = _load()

#: Whether the C accelerator is in use.
SPEEDUPS: bool = _speedups is not None

NO_RESULT: Any = _fastpath.NO_RESULT if _speedups is None else _speedups.NO_RESULT
protect: Callable[[Any, str, Callable[[], Any], Callable[..., Any]], Callable[..., Any]] = (
    _fastpath.protect if _speedups is None else _speedups.protect)
if TYPE_CHECKING or _speedups is None:
    Gate = _fastpath.Gate
    WithBase = _fastpath.WithBase
else:
    Gate = _speedups.Gate
    WithBase = _speedups.WithBase
