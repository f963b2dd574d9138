"""Labelled windows for the benchmark, as the analyst sees them: per-second buckets of the calls.

Every window goes the way a deployment's calls go: generated calls -> a store-like attribution delay
(each call lands in the store 0-25 ms late, one in a hundred up to 250 ms late, as under load) ->
:func:`circuitry.analysis.series.bucketize` -> a :class:`~circuitry.analysis.series.Series`. Nothing
downstream sees a raw call.

Windows come from two suites:

* ``A`` -- ``generators.py``, written together with the first classifier (15 generator kinds);
* ``B`` -- ``families.py``, written independently afterwards (11 families x 6 traffic shapes).

A *family* is one generator kind (``A:burst-hawkes``, ``B:hawkes``...). Scoring is leave-one-family-out:
whatever is fitted (the confidence calibration) is fitted without the family it is scored on.

A burst window whose ground-truth outage is still going on at the window's end (suite A's two-state and
outage generators can end a window mid-outage) is marked ``ongoing`` and left out of the scores: by the
documented definitions it is the onset of an escalation as much as a burst. Suite B ends every outage
before the last 5 % of the window.

Seeds: ``dev`` (used while designing the classifier), ``train`` (calibration fits), ``test`` (every
reported figure). Built windows are cached under ``benchmarks/patterns/.cache/`` (delete it to rebuild).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.patterns import families, generators
from circuitry.analysis.series import Series, bucketize

CACHE = Path(__file__).resolve().parent / ".cache"
SEEDS = {"dev": 1000, "train": 1, "test": 2}
#: Windows per seed: suite A's mix, and suite B's windows per (family, shape) cell.
A_WINDOWS = 1500
B_PER_CELL = 12


@dataclass(frozen=True)
class Item:
    """One labelled window, bucketized."""

    suite: str
    family: str  # "A:<kind>" or "B:<family>"
    shape: str  # traffic shape ("A:constant", "A:ramp-up"... for suite A, measured)
    label: str | None
    failures: int
    series: Series
    ongoing: bool = False  # a ground-truth outage still going on at the window's end (not scored)


def store_delay(rng: random.Random) -> float:
    """How late the store attributes a call: 0-25 ms, one call in a hundred up to 250 ms."""
    return rng.uniform(0.0, 0.25) if rng.random() < 0.01 else rng.uniform(0.0, 0.025)


def delayed(calls: Iterator[tuple[float, bool]], rng: random.Random, end: float) -> Iterator[tuple[float, bool]]:
    """The calls with each timestamp delayed as the store would (clipped to the window end)."""
    for t, f in calls:
        yield min(end, t + store_delay(rng)), f


def _shape_a(times: list[float], start: float, end: float) -> str:
    span = end - start
    first = sum(1 for t in times if t < start + 0.2 * span)
    last = sum(1 for t in times if t >= end - 0.2 * span)
    if first and last / first > 1.5:
        return "A:ramp-up"
    if last and first / last > 1.5:
        return "A:ramp-down"
    return "A:constant"


def _build_a(args: tuple[int, int]) -> Item:
    seed, i = args
    (w,) = _one_a(seed, i)
    rng = random.Random(f"delay-A-{seed}-{i}")
    series = bucketize(delayed(iter(w.calls), rng, w.end), start=w.start, end=w.end)
    times = [t for t, _ in w.calls]
    ongoing = w.label == "burst" and any(b >= w.end - 1.0 for _, b in w.failing)
    return Item("A", f"A:{w.kind}", _shape_a(times, w.start, w.end), w.label, w.failures, series, ongoing)


def _one_a(seed: int, i: int) -> list[generators.Window]:
    # make_windows(seed, n)[i] without building the first i windows: same per-window seeding.
    rng = random.Random(f"{seed}-{i}")
    total = sum(wt for _, wt, _ in generators.GENERATORS)
    x = rng.random() * total
    factory = generators.GENERATORS[-1][2]
    for _, weight, fac in generators.GENERATORS:
        x -= weight
        if x <= 0:
            factory = fac
            break
    expected = rng.choice(generators.EXPECTED_FAILURES) * rng.uniform(0.8, 1.25)
    return [factory(rng, expected)]


def _build_b(args: tuple[int, str, str, int]) -> Item:
    seed, fam, shape, i = args
    s = families.draw(f"B-{seed}-{fam}-{shape}-{i}", fam, shape)
    rng = random.Random(f"delay-B-{seed}-{fam}-{shape}-{i}")
    series = bucketize(delayed(s.calls(), rng, s.end), start=s.start, end=s.end)
    return Item("B", f"B:{fam}", shape, s.label, s.failures, series)


def cells_b() -> list[tuple[str, str]]:
    """Suite B's (family, shape) cells."""
    return [(f, s) for f in families.FAMILIES for s in families.SHAPES if (f, s) not in families.IMPOSSIBLE]


def _fingerprint() -> str:
    """A digest of the code that builds the windows: a cache built by other generators is not reused."""
    here = Path(__file__).resolve()
    digest = hashlib.sha256()
    for name in ("data.py", "generators.py", "families.py"):
        digest.update((here.parent / name).read_bytes())
    digest.update((here.parents[2] / "circuitry" / "analysis" / "series.py").read_bytes())
    return digest.hexdigest()[:12]


def load(seed_name: str, *, jobs: int | None = None, b_per_cell: int = B_PER_CELL) -> list[Item]:
    """Every window of one seed, both suites; built once and cached.

    Args:
        seed_name: ``"dev"``, ``"train"`` or ``"test"``.
        jobs: Worker processes for building (default: the CPU count).
        b_per_cell: Suite B windows per (family, shape) cell. The first ``B_PER_CELL`` are the same
            windows whatever the number: more of them only add windows.

    Returns:
        The items, suite A first.
    """
    seed = SEEDS[seed_name]
    path = CACHE / f"{seed_name}-{seed}-A{A_WINDOWS}-B{b_per_cell}-{_fingerprint()}.pickle"
    if path.exists():
        with path.open("rb") as fh:
            items: list[Item] = pickle.load(fh)
        return items
    jobs = jobs or os.cpu_count() or 1
    tasks_b = [(seed, f, s, i) for f, s in cells_b() for i in range(b_per_cell)]
    with ProcessPoolExecutor(jobs) as pool:
        a = list(pool.map(_build_a, [(seed, i) for i in range(A_WINDOWS)], chunksize=16))
        b = list(pool.map(_build_b, tasks_b, chunksize=4))
    items = a + b
    CACHE.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(items, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return items


def failure_bin(failures: int) -> str:
    """The report's failure-count bin."""
    if failures < 10:
        return "<10"
    if failures < 20:
        return "10-19"
    if failures < 50:
        return "20-49"
    return ">=50"


def log_failures(failures: int) -> float:
    """``ln`` of the failure count (0 for none)."""
    return math.log(failures) if failures > 0 else 0.0
