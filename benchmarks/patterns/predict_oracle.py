"""How much better than EWMA a trip forecast can be on these cases: a parameter oracle. Prints Markdown.

``predict_bench.py`` scores ``predict()`` against persistence and EWMA. This script adds a forecaster
that no deployment has: it knows each case's generator parameters (the family, the traffic function,
the failure rates, cluster sizes, outage lengths, escalation shape -- everything ``families.draw``
decides before it draws the calls) and nothing of the case's own calls. For each case it draws
``--runs`` fresh realisations with those parameters, replays each through the same exact breaker
(5 failures, 60 s), and gives the share that trip in the 5 minutes after ``now`` (shrunk as
``(trips + 1/2) / (runs + 1)``).

It knows what no history can tell (the future traffic, an escalation's schedule) and is blind to
what every history tells (a Hawkes cascade going on right now, an outage in progress), so its score is
no bound in either direction; it measures how much of the trip risk a perfect model of the stream's
kind explains. Its Brier score also carries the noise of ``--runs`` draws (about ``p (1 - p) / runs``
per case), which makes it slightly worse than the oracle it estimates.

How the realisations share the parameters: ``families.make_stream`` draws the parameters from its
random source first, then the events and the calls. A realisation runs the same draws with the same
seed, and reseeds the source the moment the first event or call is drawn (the first call of one of
``families``' event and traffic generators, or of ``expovariate``). A realisation whose draws break its
class rule (an on-off window whose drawn outages are too short to see) is left out; the count of
realisations used is printed.

Run from the repository root::

    python -m benchmarks.patterns.predict_oracle [--per-cell N] [--train-per-cell N] [--score dev|test]
        [--score-per-cell N] [--runs N] [--jobs N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.patterns import families
from benchmarks.patterns import predict_bench as pb
from benchmarks.patterns.data import CACHE
from benchmarks.patterns.replay import Breaker, Tally

_GENERATORS = ("arrivals", "hawkes_times", "neyman_scott_times", "renewal_times")


class _Reseeding(random.Random):
    """A random source that switches to the seed ``alt`` at the first draw of events or calls, once armed."""

    def __init__(self, seed: str) -> None:
        super().__init__(seed)
        self.alt: str | None = None
        self.switched = False

    def realise(self) -> None:
        if self.alt is not None and not self.switched:
            self.switched = True
            self.seed(self.alt)

    def expovariate(self, lambd: float = 1.0) -> float:
        self.realise()
        return super().expovariate(lambd)


def _wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(rng: random.Random, *args: Any, **kwargs: Any) -> Any:
        if isinstance(rng, _Reseeding):
            rng.realise()
        return fn(rng, *args, **kwargs)

    wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapped


def _hook() -> None:
    """Make ``families``' generators reseed a :class:`_Reseeding` source on entry (once per process)."""
    for name in _GENERATORS:
        fn = getattr(families, name)
        if not hasattr(fn, "__wrapped__"):
            setattr(families, name, _wrap(fn))


def _draw(seed: str, family: str, shape: str, alt: str | None, attempt: int | None) -> Any:
    """``families.draw``'s loop. Without ``alt``: the index of the attempt that succeeded. With it: that
    attempt redrawn from the same parameters with fresh events and calls (``None`` if it breaks its rule)."""
    rng = _Reseeding(seed)
    scale = pb.DURATION / pb.WINDOW
    for k in range(10_000):
        target = rng.choice(families.TARGETS) * rng.uniform(0.8, 1.25) * scale
        if alt is not None and k == attempt:
            rng.alt = alt
        s = families.make_stream(rng, family, shape, target, pb.DURATION)
        ok = s is not None and s.label is not None
        if alt is not None and k == attempt:
            return s if ok else None
        if ok:
            return k
    raise ValueError(f"no {family} stream under {shape} traffic met its class rule in 10,000 draws")


def _trips(s: families.Stream) -> bool:
    b = Breaker(pb.DEFAULTS)
    tally = Tally()
    admitted: list[tuple[float, bool]] = []
    end = pb.NOW + pb.HORIZON
    for t, f in s.calls():
        if t >= end:
            break
        b.feed(t, f, tally, False, admitted)
    return any(tr.from_state == "closed" and tr.to_state == "open" and pb.NOW < tr.ts <= end
               for tr in b.transitions)


def _oracle(args: tuple[int, str, str, int, int]) -> tuple[int, int] | None:
    """``(realisations that tripped, realisations drawn)`` of one case; ``None`` where ``build`` has no case."""
    _hook()
    seed, fam, shape, i, runs = args
    name = f"P-{seed}-{fam}-{shape}-{i}"  # the seed predict_bench's case is drawn from
    if (fam, shape) in families.IMPOSSIBLE:
        return None
    try:
        attempt = _draw(name, fam, shape, None, None)
    except ValueError:
        return None
    hits = drawn = 0
    for r in range(runs):
        s = _draw(name, fam, shape, f"oracle-{r}-{name}", attempt)
        if s is not None:
            drawn += 1
            hits += _trips(s)
    return hits, drawn


def oracle(seed_name: str, per_cell: int, runs: int, jobs: int | None) -> list[tuple[int, int]]:
    """The oracle's counts for the cases of :func:`predict_bench.build`, in its order (cached)."""
    seed = pb.SEEDS[seed_name]
    code = hashlib.sha256((pb._fingerprint() + Path(__file__).read_text()).encode()).hexdigest()[:12]
    path = CACHE / f"oracle-{seed_name}-{seed}-{per_cell}-{runs}-{code}.pickle"  # the code, this script's too
    if path.exists():
        with path.open("rb") as fh:
            cached: list[tuple[int, int]] = pickle.load(fh)
            return cached
    tasks = [(*t, runs) for t in pb.case_tasks(seed, per_cell)]
    with ProcessPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        out = [o for o in pool.map(_oracle, tasks, chunksize=2) if o is not None]
    CACHE.mkdir(exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(out, fh)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Score the oracle beside ``predict()`` and the baselines, per family and per traffic shape."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--per-cell", type=int, default=8)
    ap.add_argument("--train-per-cell", type=int, default=32, help="as predict_bench's")
    ap.add_argument("--score", choices=("test", "dev"), default="test")
    ap.add_argument("--score-per-cell", type=int, default=None)
    ap.add_argument("--runs", type=int, default=40, help="realisations per case")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    per_cell = args.score_per_cell or args.per_cell
    train = pb.build("train", args.train_per_cell, args.jobs)
    test = pb.build(args.score, per_cell, args.jobs)
    counts = oracle(args.score, per_cell, args.runs, args.jobs)
    if len(counts) != len(test):
        raise SystemExit(f"the oracle has {len(counts)} cases, predict_bench {len(test)}: not the same cases")
    p_oracle = [(h + 0.5) / (n + 1.0) for h, n in counts]
    ours, _, base_o, _ = pb.held_out(train, test)
    drawn = sum(n for _, n in counts)
    print(f"### Trips within 5 minutes: `predict()` beside a parameter oracle\n\n{len(test)} cases "
          f"({args.score} seed {pb.SEEDS[args.score]}); the oracle drew {drawn:,} realisations "
          f"({drawn / len(test):.1f} per case of {args.runs}); {time.perf_counter() - t0:.0f} s. "
          "Gain: how much lower the Brier score is than the better of persistence and EWMA.\n")
    head = ("| {} | cases | trips | Brier: oracle | predict | persistence | EWMA | oracle's gain | "
            "predict's gain |\n|---|---|---|---|---|---|---|---|---|")

    def row(name: str, ks: list[int]) -> None:
        ys = [test[k].opened for k in ks]
        b_or = pb.brier([p_oracle[k] for k in ks], ys)
        b_o = pb.brier([ours[k] for k in ks], ys)
        b_p = pb.brier([float(test[k].slots_opened[-1]) for k in ks], ys)
        b_e = pb.brier([base_o[k] for k in ks], ys)
        best = min(b_p, b_e)

        def gain(b: float) -> str:
            return f"{100 * (best - b) / best:.0f} %" if best > 0 else "-"

        print(f"| {name} | {len(ks)} | {sum(ys)} | {b_or:.4f} | {b_o:.4f} | {b_p:.4f} | {b_e:.4f} | "
              f"{gain(b_or)} | {gain(b_o)} |")

    groups: dict[str, list[int]] = defaultdict(list)
    shapes: dict[str, list[int]] = defaultdict(list)
    for k, c in enumerate(test):
        groups[c.family].append(k)
        shapes[c.shape].append(k)
    print(head.format("family"))
    for f in sorted(groups):
        row(f, groups[f])
    row("**all**", list(range(len(test))))
    print("\n" + head.format("shape"))
    for sh in sorted(shapes):
        row(sh, shapes[sh])


if __name__ == "__main__":
    main()
