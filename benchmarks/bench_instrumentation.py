"""What instrumentation costs on the hot paths: circuitry with no hooks, with instrumentation installed
(the default logging hook, the Prometheus collector, OpenTelemetry metrics and the tracing hook), and
with a recording span current, against the fastest peer — in one process, with ``bench_core``'s cells.

Run from the repository root (needs ``pip install -e '.[dev,bench]'``)::

    python benchmarks/bench_instrumentation.py            # 5 repeats, about 2 minutes on 2 cores
    python benchmarks/bench_instrumentation.py --quick    # smoke run

Configurations (each a separate registry, every cell of ``bench_core`` for it):

- ``none``: ``Registry(hooks=[])``, as in ``bench_core``.
- ``idle``: the default hook (``LoggingHook``, transitions), ``prometheus.install()`` on a
  ``CollectorRegistry`` and ``OtelMetrics`` on an SDK ``MeterProvider`` — metrics installed, not scraped.
- ``tracing``: ``idle`` plus ``TracingHook`` (rejections, failures, transitions) with no span current —
  as for a request that was sampled out, or when no SDK is set up.
- ``tracing (sampled out)`` (second phase): the same while a non-recording span is current, as a
  sampler leaves a request it drops.
- ``tracing+span`` (third phase): the same registry while a recording SDK span is current, so every
  refusal and counted failure adds a span event.

The first phase times the peers, ``none``, ``idle`` and ``tracing``; the second attaches a sampled-out
span and the third a recording span as the current context (peers are unaffected: they have no
tracing), each timing the peers, ``none`` and the tracing registry. Ratios are circuitry's overhead
over the fastest peer's, as in ``bench_core``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from benchmarks import bench_core as bc
from circuitry import Registry
from circuitry.instrumentation import otel, prometheus
from circuitry.instrumentation.logging import LoggingHook

PEER_BUILDERS = (bc.add_pybreaker, bc.add_circuitbreaker, bc.add_purgatory, bc.add_aiobreaker)


def instrumented(tracing: bool) -> Registry:
    reg = Registry(hooks=[LoggingHook()])
    prometheus.install(reg, collector_registry=CollectorRegistry())
    otel.install(reg, meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]), tracing=tracing)
    return reg


def build(loop: asyncio.AbstractEventLoop, configs: dict[str, Registry]) -> list[bc.Cell]:
    cells: list[bc.Cell] = []

    def add(path: str, lib: str, body: str, is_async: bool = False, **kw: Any) -> None:
        if path not in dict.fromkeys(p for p, *_ in bc.PATHS[: bc.MAIN_PATHS]) and lib != "bare":
            return
        opts = {k: kw.pop(k) for k in ("comparable", "reset", "check") if k in kw}
        cells.append(bc.Cell(path, lib, body, {"work": bc.work, **kw}, is_async, **opts))

    bare = [c for c in bc.build_cells(loop) if c.lib == "bare"]  # the baselines only
    cells += [c for c in bare if c.path in {p for p, *_ in bc.PATHS[: bc.MAIN_PATHS]}]
    for lib, reg in configs.items():
        bc.add_circuitry(add, reg, lib, loop)
    for builder in PEER_BUILDERS:
        builder(add, loop)
    return cells


def table(cells: list[bc.Cell], configs: list[str]) -> list[str]:
    best = {(c.path, c.lib): min(c.samples) for c in cells}
    comparable = {(c.path, c.lib): c.comparable for c in cells}
    head = ["path", "fastest peer", *[f"{lib} (ratio)" for lib in configs]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, label, _, _ in bc.PATHS[: bc.MAIN_PATHS]:
        base = best[path, "bare"]
        peers = {lib: best[path, lib] - base for lib in bc.PEERS
                 if (path, lib) in best and comparable[path, lib]}
        fastest = min(peers, key=peers.__getitem__)
        row = [label, f"{fastest} ({peers[fastest]:,.0f} ns)"]
        for lib in configs:
            ours = best[path, lib] - base
            ratio = ours / peers[fastest]
            row.append(f"{ours:,.0f} ns ({ratio:.2f}x{'' if ratio <= bc.TARGET else ' **over**'})")
        out.append("| " + " | ".join(row) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("-n", type=int, default=None)
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    n_base = args.n or (20_000 if args.quick else 200_000)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    t0 = time.perf_counter()

    lines = ["## Instrumentation: overhead per call (ns) and ratio to the fastest peer", "",
             *[f"- {m}" for m in bc.machine()]]
    bad: list[str] = []

    def phase(title: str, configs: dict[str, Registry], span: trace.Span | None = None) -> None:
        """Time the peers and ``configs`` while ``span`` is the current span (none if ``None``)."""
        token = None if span is None else otel_context.attach(trace.set_span_in_context(span))
        try:
            cells = build(loop, configs)
            print(title, file=sys.stderr)
            bc.run_all(cells, repeats, n_base, loop)
        finally:
            if token is not None:
                otel_context.detach(token)
        lines.extend(["", f"{title}:", "", *table(cells, list(configs))])
        bad.extend(f"{c.lib}:{c.path}" for c in cells if c.check is not None and not c.check())

    phase("Phase 1, no span current",
          {"none": Registry(hooks=[]), "idle": instrumented(tracing=False), "tracing": instrumented(tracing=True)})
    phase("Phase 2, a sampled-out (non-recording) span current",
          {"none": Registry(hooks=[]), "tracing (sampled out)": instrumented(tracing=True)},
          trace.NonRecordingSpan(trace.SpanContext(0x1F, 0x2F, is_remote=True)))  # as a sampler leaves it
    span = TracerProvider().get_tracer("bench").start_span("request")  # no processor: records, never exported
    phase("Phase 3, a recording span current (each refusal/failure adds a span event)",
          {"none": Registry(hooks=[]), "tracing+span": instrumented(tracing=True)}, span)
    span.end()
    lines += ["", f"{repeats} repeats, N = {n_base:,}, {time.perf_counter() - t0:.0f} s; minimum over the repeats."]
    if bad:
        lines.append(f"**WARNING: breakers not in the assumed state: {', '.join(bad)}**")
    print("\n".join(lines))
    loop.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
