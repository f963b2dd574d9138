"""A circuit's timeline as an SVG made on the server: calls per interval (bars; refused calls on top,
lighter), the failure rate (a line, right axis), the states the circuit was in (background bands) and
each transition (a marked vertical line whose tooltip says what and why). No JavaScript, no library:
the browser draws it, and every text in it is escaped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from circuitry.store.readmodel import ReadModel

__all__ = ["WINDOWS", "Bin", "Timeline", "load", "render"]

#: Window name -> (seconds, bin seconds). 15 minutes are read per second; longer windows per minute.
WINDOWS: Final[Mapping[str, tuple[int, int]]] = {
    "15m": (900, 15), "1h": (3600, 60), "6h": (21600, 300), "24h": (86400, 900), "7d": (604800, 7200)}
_BAND: Final = {"open": "#e5484d", "forced_open": "#8e1b1f", "half_open": "#f5a524", "disabled": "#8b8d98"}
_STATE_TEXT: Final = {"open": "open", "forced_open": "forced open", "half_open": "half-open",
                      "disabled": "forced closed", "closed": "closed"}


@dataclass(frozen=True, slots=True)
class Bin:
    start: float
    calls: int  # calls that reached the service (successes and counted failures)
    failures: int
    refused: int


@dataclass(frozen=True, slots=True)
class Timeline:
    name: str
    since: float
    until: float
    bin_seconds: int
    bins: tuple[Bin, ...]
    transitions: tuple[Mapping[str, Any], ...]
    state_at_start: str

    def segments(self) -> list[tuple[float, float, str]]:
        """``(start, end, state)`` spans covering the window."""
        out, state, start = [], self.state_at_start, self.since
        for t in self.transitions:
            ts = min(max(float(t["ts"]), self.since), self.until)
            if ts > start:
                out.append((start, ts, state))
            state, start = str(t["to_state"]), ts
        if self.until > start:
            out.append((start, self.until, state))
        return out


def load(reader: ReadModel, name: str, window: str, *, now: float | None = None,
         current_state: str = "closed") -> Timeline:
    """Read ``name``'s timeline for ``window`` (a key of :data:`WINDOWS`) from the read model."""
    seconds, step = WINDOWS[window]
    until = time.time() if now is None else now
    since = until - seconds
    first = math.floor(since / step) * step
    counts: dict[float, list[int]] = {}
    if seconds <= 900:
        for second, calls, failures in reader.series(name, since, until):
            b = counts.setdefault(math.floor(second / step) * step, [0, 0, 0])
            b[0] += calls
            b[1] += failures
    else:
        for m in reader.metrics(name, since, until):
            b = counts.setdefault(math.floor(m["minute"] * 60 / step) * step, [0, 0, 0])
            b[0] += int(m["successes"] or 0) + int(m["failures"] or 0)
            b[1] += int(m["failures"] or 0)
            b[2] += int(m["rejections"] or 0)
    bins = []
    t = first
    while t < until:
        c = counts.get(t, [0, 0, 0])
        bins.append(Bin(t, c[0], c[1], c[2]))
        t += step
    transitions = tuple(reader.transitions(name, since, until))
    start_state = str(transitions[0]["from_state"] or "closed") if transitions else current_state
    for t_ in transitions:
        data = t_.get("additional_data")
        if isinstance(data, str):
            try:
                parsed = json.loads(data)
                t_["reason"] = parsed.get("reason") if isinstance(parsed, dict) else None
            except ValueError:
                t_["reason"] = None
    return Timeline(name, since, until, step, tuple(bins), transitions, start_state)


def _clock(ts: float, seconds: float) -> str:
    fmt = "%H:%M:%S" if seconds <= 900 else "%H:%M" if seconds <= 86400 else "%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(ts))


def render(tl: Timeline, *, width: int = 960, height: int = 280) -> str:
    """The SVG text (inline in a page, or served as ``image/svg+xml``)."""
    left, right, top, bottom = 56, 56, 16, 44
    pw, ph = width - left - right, height - top - bottom
    span = max(1e-9, tl.until - tl.since)

    def x(ts: float) -> float:
        return left + (min(max(ts, tl.since), tl.until) - tl.since) / span * pw

    peak = max([b.calls + b.refused for b in tl.bins] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {width} {height}" '
           f'width="100%" role="img" aria-label="{escape(f"Timeline of {tl.name}")}">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#ffffff" stroke="#d0d3da"/>']
    for start, end, state in tl.segments():
        color = _BAND.get(state)
        if color is None:
            continue
        title = f"{_STATE_TEXT.get(state, state)} from {_clock(start, span)} to {_clock(end, span)} UTC"
        out.append(f'<rect class="band band-{escape(state)}" x="{x(start):.1f}" y="{top}" '
                   f'width="{max(1.0, x(end) - x(start)):.1f}" height="{ph}" fill="{color}" fill-opacity="0.16">'
                   f"<title>{escape(title)}</title></rect>")
    bw = max(1.0, pw / max(1, len(tl.bins)) - 1.0)
    for b in tl.bins:
        if not b.calls and not b.refused:
            continue
        h_calls = b.calls / peak * ph
        h_ref = b.refused / peak * ph
        bx = x(b.start)
        tip = (f"{_clock(b.start, span)} UTC: {b.calls} calls, {b.failures} failed"
               + (f", {b.refused} refused" if b.refused else ""))
        out.append(f'<g class="bin"><title>{escape(tip)}</title>'
                   f'<rect x="{bx:.1f}" y="{top + ph - h_calls:.1f}" width="{bw:.1f}" height="{h_calls:.1f}" '
                   f'fill="#7c9fd8"/>'
                   + (f'<rect x="{bx:.1f}" y="{top + ph - h_calls - h_ref:.1f}" width="{bw:.1f}" '
                      f'height="{h_ref:.1f}" fill="#e5484d" fill-opacity="0.45"/>' if b.refused else "")
                   + "</g>")
    path, dots, pen = [], [], False
    for b in tl.bins:
        if b.calls <= 0:
            pen = False
            continue
        cx = x(b.start) + bw / 2
        cy = top + ph - (b.failures / b.calls) * ph
        path.append(f"{'L' if pen else 'M'}{cx:.1f},{cy:.1f}")
        dots.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5"/>')
        pen = True
    if path:
        out.append(f'<path class="failure-rate" d="{" ".join(path)}" fill="none" stroke="#c62a2f" stroke-width="2"/>'
                   f'<g class="failure-points" fill="#c62a2f">{"".join(dots)}</g>')
    for t in tl.transitions:
        tx = x(float(t["ts"]))
        to = str(t["to_state"])
        reason = t.get("reason")
        tip = (f"{_clock(float(t['ts']), 1)} UTC: {t['from_state'] or 'closed'} → {to}"
               + (f" ({reason})" if reason else ""))
        out.append(f'<g class="transition"><title>{escape(tip)}</title>'
                   f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + ph}" stroke="{_BAND.get(to, "#2f7d32")}" '
                   f'stroke-width="1.5" stroke-dasharray="4 3"/>'
                   f'<path d="M{tx - 5:.1f},{top} L{tx + 5:.1f},{top} L{tx:.1f},{top + 8} Z" '
                   f'fill="{_BAND.get(to, "#2f7d32")}"/></g>')
    axis = 'font-size="11" fill="#4a4d57"'
    out.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" {axis}>{peak}</text>'
               f'<text x="{left - 6}" y="{top + ph}" text-anchor="end" {axis}>0</text>'
               f'<text x="{left + pw + 6}" y="{top + 10}" {axis}>100%</text>'
               f'<text x="{left + pw + 6}" y="{top + ph / 2 + 4:.1f}" {axis}>50%</text>'
               f'<text x="{left + pw + 6}" y="{top + ph}" {axis}>0%</text>')
    for i in range(6):
        ts = tl.since + span * i / 5
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        out.append(f'<text x="{x(ts):.1f}" y="{top + ph + 16}" text-anchor="{anchor}" {axis}>'
                   f"{escape(_clock(ts, span))}</text>")
    out.append(f'<text x="{left}" y="{height - 6}" {axis}>bars: calls per {tl.bin_seconds}s (refused on top) · '
               "line: failure rate · bands: open, half-open, forced · dashed: transitions (UTC)</text>")
    out.append("</svg>")
    return "".join(out)


def summary(tl: Timeline) -> Sequence[str]:
    """The timeline in words, for screen readers and the page's text."""
    calls = sum(b.calls for b in tl.bins)
    failures = sum(b.failures for b in tl.bins)
    refused = sum(b.refused for b in tl.bins)
    return [f"{calls} calls, {failures} failed, {refused} refused", f"{len(tl.transitions)} transition(s)"]
