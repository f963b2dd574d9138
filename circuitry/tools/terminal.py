"""What the command line draws: tables whose long cells wrap (never cut), a progress bar, times.

No dependency: a few dozen lines do what the CLI needs, so ``circuitry`` keeps its three runtime
dependencies. Every cell goes through :func:`~circuitry.store.records.printable` first, so a stored
name or message can never drive the terminal.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from circuitry.store.records import printable

__all__ = ["Progress", "ago", "cell", "table", "terminal_width", "when"]


def terminal_width(out: TextIO) -> int:
    """Columns to draw in: the terminal's, ``$COLUMNS``, or 120 when ``out`` is not a terminal."""
    if out.isatty():
        return max(40, shutil.get_terminal_size((120, 24)).columns)
    try:
        return max(40, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 120


def when(ts: float | None) -> str:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SS`` UTC, or ``-``."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float) -> str:
    """How long ago ``ts`` was, shortly (``42s``, ``5m``, ``3h``, ``2d``), or ``-``."""
    if ts is None:
        return "-"
    s = max(0.0, now - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


def retry_text(retry_after: float | None, unit: str) -> str | None:
    """When an open circuit probes: in so many seconds, or "now" once its open period is over (the next
    call, in any process, is the probe; the stored state stays ``open`` until then)."""
    if retry_after is None:
        return None
    return "now" if retry_after <= 0.0 else f"{retry_after:.1f}{unit}"


def cell(value: Any) -> str:
    """A value as table text: ``-`` for none, short floats, everything else in full and printable."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return printable(str(value))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], out: TextIO, *,
          wrap: Sequence[str] = ("message", "reasons", "last_error")) -> None:
    """Print ``rows`` as an aligned table of ``(key, HEADING)`` columns. Columns named in ``wrap`` take
    the width that is left and wrap onto continuation lines; nothing is ever cut."""
    if not rows:
        out.write("(none)\n")
        return
    cells = [[cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    flex = [i for i, (key, _) in enumerate(columns) if key in wrap]
    room = terminal_width(out) - 2 * (len(columns) - 1)
    fixed = sum(w for i, w in enumerate(widths) if i not in flex)
    if flex and fixed + sum(widths[i] for i in flex) > room:
        share = max(20, (room - fixed) // len(flex))
        for i in flex:
            widths[i] = min(widths[i], max(share, len(columns[i][1])))
    text = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip(),
            "  ".join("-" * w for w in widths)]
    for c in cells:
        if all(len(v) <= w for v, w in zip(c, widths, strict=True)):  # the common row: nothing to wrap
            text.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
            continue
        lines = [textwrap.wrap(v, w, break_long_words=True, break_on_hyphens=False) or [""] if i in flex else [v]
                 for i, (v, w) in enumerate(zip(c, widths, strict=True))]
        for n in range(max(len(parts) for parts in lines)):
            row = [(parts[n] if n < len(parts) else "").ljust(w) for parts, w in zip(lines, widths, strict=True)]
            text.append("  ".join(row).rstrip())
    out.write("\n".join(text) + "\n")  # one write: ten thousand rows to a pipe in one go


class Progress:
    """A one-line progress bar on a terminal (``stream``), redrawn at most 10 times a second; nothing at
    all when ``enabled`` is false (output redirected), so logs and pipes stay clean.

    Args:
        total: Steps in all (``None``: unknown — a counter is shown instead of a bar).
        label: What is being done.
        stream: Where to draw (a terminal: stderr).
        enabled: Draw at all.
    """

    def __init__(self, total: int | None, label: str, stream: TextIO, *, enabled: bool) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.enabled = enabled
        self.done = 0
        self.extra = ""
        self._drawn = 0.0
        self._started = time.monotonic()

    def advance(self, steps: int = 1, extra: str = "") -> None:
        self.done += steps
        self.extra = extra
        if self.enabled and time.monotonic() - self._drawn >= 0.1:
            self._draw()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {self.done}/{self.total} {self.extra}"
        else:
            text = f"{self.label} {self.done} {self.extra}"
        self.stream.write("\r" + text[: terminal_width(self.stream) - 1].ljust(40))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            seconds = time.monotonic() - self._started
            self.stream.write(f"  done in {seconds:.1f}s\n")
            self.stream.flush()
