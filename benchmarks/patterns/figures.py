"""Draw the failure timelines of ``docs/explanation/patterns.md``: one SVG per label, from seeded streams.

Each picture is fifteen minutes of one circuit (two hours for the intermittent one): grey bars are the
calls per 90th of the window, red bars the failures among them (drawn on their own scale), and the title
is what ``classify_series()`` says about it.

Run from the repository root::

    python -m benchmarks.patterns.figures      # writes docs/explanation/img/*.svg
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from circuitry.analysis.patterns import classify_series
from circuitry.analysis.series import Series, bucketize

OUT = Path(__file__).resolve().parents[2] / "docs" / "explanation" / "img"
END = 900.0
W, H = 720, 200
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 34, 28


def _stream(seed: int, rate: Callable[[float], float], prob: Callable[[float], float],
            events: list[float] | None = None, end: float = END) -> Series:
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    peak = max(rate(x * end / 100) for x in range(101))
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            break
        if rng.random() * peak <= rate(t):
            times.append(t)
    if events is None:
        calls = [(x, rng.random() < prob(x)) for x in times]
    else:  # time-based failures: the first call at or after each event fails
        failed = [False] * len(times)
        j = 0
        for e in sorted(events):
            while j < len(times) and times[j] < e:
                j += 1
            if j < len(times):
                failed[j] = True
        calls = list(zip(times, failed, strict=True))
    return bucketize(calls, start=0.0, end=end)


def examples() -> dict[str, tuple[str, Series]]:
    """The pictured streams: name -> (caption, series)."""
    outages = [(120.0, 140.0), (430.0, 445.0), (700.0, 730.0)]
    rng = random.Random(7)
    cron = [60.0 * k + rng.uniform(-3, 3) for k in range(1, 15)] + [30.0 + 60.0 * k for k in range(14)]
    return {
        "burst": ("outages on a quiet background", _stream(
            1, lambda _t: 8.0, lambda t: 0.9 if any(a <= t < b for a, b in outages) else 0.003)),
        "steady": ("5 % of calls fail, independently", _stream(2, lambda _t: 8.0, lambda _t: 0.05)),
        "intermittent": ("a failure every four minutes or so, over two hours", _stream(
            3, lambda _t: 2.0, lambda _t: 1.0 / 480.0, end=7200.0)),
        "escalating": ("the failure share rises from 1 % to 20 % and stays up", _stream(
            4, lambda _t: 8.0, lambda t: 0.01 * 20.0 ** (t / END))),
        "not-escalating": ("traffic falls tenfold; failures keep their pace in time (a cron job)", _stream(
            5, lambda t: 20.0 * 10.0 ** (-t / END), lambda _t: 0.0, events=cron)),
        "abstain": ("a handful of failures: too few to tell", _stream(6, lambda _t: 5.0, lambda _t: 0.0013)),
    }


def svg(title: str, caption: str, s: Series) -> str:
    """One timeline as SVG text."""
    bins = 90
    width = s.span / bins
    calls = [0] * bins
    fails = [0] * bins
    for i, n, x in zip(s.index, s.calls, s.failures, strict=True):
        j = min(bins - 1, int((i * s.width - s.start) // width))
        calls[j] += n
        fails[j] += x
    cmax = max(calls) or 1
    fmax = max(fails) or 1
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    bw = pw / bins
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{PAD_L}" y="16" font-weight="bold">{title}</text>',
           f'<text x="{PAD_L}" y="29" fill="#555">{caption}</text>']
    for j in range(bins):
        x = PAD_L + j * bw
        hc = ph * calls[j] / cmax
        out.append(f'<rect x="{x:.1f}" y="{PAD_T + ph - hc:.1f}" width="{bw:.2f}" height="{hc:.1f}" fill="#d9d9d9"/>')
        if fails[j]:
            hf = ph * fails[j] / fmax
            out.append(f'<rect x="{x + bw * 0.15:.1f}" y="{PAD_T + ph - hf:.1f}" width="{bw * 0.7:.2f}" '
                       f'height="{hf:.1f}" fill="#c0392b"/>')
    out.append(f'<line x1="{PAD_L}" y1="{PAD_T + ph}" x2="{W - PAD_R}" y2="{PAD_T + ph}" stroke="#333"/>')
    minutes = s.span / 60.0
    step = 5 if minutes <= 20 else 30
    for m in range(0, int(minutes) + 1, step):
        x = PAD_L + pw * m / minutes
        out.append(f'<text x="{x:.1f}" y="{H - 10}" text-anchor="middle" fill="#333">{m} min</text>')
    out.append(f'<text x="4" y="{PAD_T + 10}" fill="#888">calls</text>')
    out.append(f'<text x="4" y="{PAD_T + 24}" fill="#c0392b">failures</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    """Classify each example and write its picture."""
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (caption, s) in examples().items():
        r = classify_series(s)
        label = r.type or "abstain"
        title = f"{label} (confidence {r.confidence:.2f}, {r.evidence.failures} failures in {s.total_calls} calls)"
        if r.type is None:
            title = f"no label: abstain ({r.evidence.failures} failures in {s.total_calls} calls)"
        (OUT / f"{name}.svg").write_text(svg(title, caption, s))
        print(f"{name}: {title}")


if __name__ == "__main__":
    main()
