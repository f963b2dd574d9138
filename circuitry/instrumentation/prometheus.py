"""Prometheus: circuitry's metrics as a ``prometheus_client`` collector (``pip install circuitry-breaker[prometheus]``).

.. code-block:: python

    from circuitry.instrumentation import prometheus

    prometheus.install()        # the process-wide registry's circuits, on prometheus_client.REGISTRY

Everything is read when Prometheus scrapes — from each breaker's exact counters and state — so
protected calls do no work for metrics at all; transitions, which are rare, are tallied by a hook.

Metrics (label ``circuit`` on each):

================================================  ========  ===================================================
``circuitry_state{circuitry_state=...}``          stateset  1 for the current state, 0 for the others
``circuitry_state_code``                          gauge     -1 disabled, 0 closed, 1 half_open, 2 open,
                                                            3 forced_open
``circuitry_calls_total{outcome=...}``            counter   calls by outcome: success, failure, ignored,
                                                            rejected, cancelled
``circuitry_would_reject_total``                  counter   calls a metrics-only circuit would have refused
``circuitry_transitions_total{from_state,         counter   transitions since :func:`install`; reason
to_state,reason}``                                          ``remote``/``restored``: adopted from another
                                                            process or a previous run
``circuitry_open_duration_seconds``               histogram completed open periods (opening to closing)
``circuitry_last_opened_timestamp_seconds``       gauge     when the circuit last opened (absent if closed)
``circuitry_retry_after_seconds``                 gauge     seconds until it may admit a call
``circuitry_probes_in_flight``                    gauge     half-open probes running now
``circuitry_call_duration_seconds``               histogram latency of timed calls (``measure_latency=True``
                                                            or ``slow_call_duration``); this process's
                                                            only: not with ``shared=True``
================================================  ========  ===================================================

**Several worker processes** (gunicorn, uvicorn ``--workers``): a scrape reaches whichever worker
accepts it, so each worker must report *every* worker's numbers. ``prometheus.install(shared=True)``
reads the shared store (:class:`~circuitry.instrumentation.sources.StoreSource`): calls by outcome from
the per-minute rows every process adds to, state from the shared rows, transitions from the history
(one row per shared transition) — so one scrape of any worker reports what all of them counted, and
two workers scraped at once agree. Counters count from the start of the current UTC day (``period=``)
and begin again from zero at the next, which ``rate()``/``increase()`` treat as a counter reset; they
lag the calls by the store's ``metrics_interval`` (a second). ``prometheus_client``'s own multiprocess
mode does not help here: it aggregates only its own metric classes, not custom collectors.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from circuitry._state import CircuitState
from circuitry.instrumentation.sources import RegistrySource, Source

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from circuitry._registry import Registry

__all__ = ["STATE_CODES", "PrometheusCollector", "install"]

#: The value of ``circuitry_state_code`` for each state (higher: fewer calls get through).
STATE_CODES: Final = {
    CircuitState.DISABLED: -1, CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2,
    CircuitState.FORCED_OPEN: 3,
}
_STATES: Final = tuple(s.value for s in CircuitState)


def _require() -> Any:
    try:
        import prometheus_client.metrics_core
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("circuitry's Prometheus metrics need prometheus_client: "
                          "pip install 'circuitry-breaker[prometheus]'") from exc
    return prometheus_client.metrics_core


class PrometheusCollector:
    """A ``prometheus_client`` collector over one or more :class:`~circuitry.instrumentation.sources.Source`\\ s.

    Args:
        *sources: Where the numbers come from; a :class:`~circuitry.Registry` is wrapped in a
            :class:`~circuitry.instrumentation.sources.RegistrySource`. Sources must not report the
            same circuit name twice.
        prefix: The metric name prefix.

    Register it with ``prometheus_client.REGISTRY.register(collector)`` (what :func:`install` does).

    .. versionadded:: 0.1.0
    """

    def __init__(self, *sources: Source | Registry, prefix: str = "circuitry") -> None:
        _require()
        self._sources: list[Source] = []
        self._owned: list[RegistrySource] = []
        self.prefix = prefix
        for source in sources:
            self.add_source(source)

    def add_source(self, source: Source | Registry) -> None:
        """Read ``source`` too, from the next scrape on."""
        if not isinstance(source, Source):
            from circuitry._registry import Registry

            if not isinstance(source, Registry):
                from circuitry.exceptions import ConfigurationError

                raise ConfigurationError(f"a source must be a Source or a Registry, got {source!r}")
            source = RegistrySource(source)
            self._owned.append(source)
        self._sources = [*self._sources, source]

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(self._sources)

    def close(self) -> None:
        """Remove the hooks of the sources this collector made (from registries it was given)."""
        for source in self._owned:
            source.close()
        self._owned = []

    def describe(self) -> Iterator[Metric]:
        """The metric families, empty (so registering the collector reads nothing)."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """Read every source now."""
        fam = self._families()
        state_set, state_code, calls, would_reject, transitions, durations, opened, retry, probes, latency = fam
        for source in self._sources:
            for c in source.circuits():
                labels = [c.circuit]
                state_set.add_metric(labels, {s: s == c.state.value for s in _STATES})
                state_code.add_metric(labels, STATE_CODES.get(c.state, 0))
                for outcome, n in c.outcomes():
                    calls.add_metric([c.circuit, outcome], n)
                would_reject.add_metric(labels, c.would_reject)
                if c.opened_at is not None:
                    opened.add_metric(labels, c.opened_at)
                if c.retry_after is not None:
                    retry.add_metric(labels, c.retry_after)
                probes.add_metric(labels, c.probes_in_flight)
                if c.latency is not None:
                    latency.add_metric(labels, _buckets(c.latency.buckets), c.latency.sum)
            for t in source.transitions():
                transitions.add_metric([t.circuit, t.from_state.value, t.to_state.value, t.reason], t.count)
            for d in source.open_durations():
                durations.add_metric([d.circuit], _buckets(d.buckets), d.sum)
        return iter(fam)

    def _families(self) -> tuple[Any, ...]:
        mc = _require()
        p = self.prefix
        return (
            mc.StateSetMetricFamily(f"{p}_state", "The circuit's state.", labels=["circuit"]),
            mc.GaugeMetricFamily(f"{p}_state_code",
                                 "The circuit's state: -1 disabled, 0 closed, 1 half_open, 2 open, 3 forced_open.",
                                 labels=["circuit"]),
            mc.CounterMetricFamily(f"{p}_calls", "Calls through the circuit, by outcome.",
                                   labels=["circuit", "outcome"]),
            mc.CounterMetricFamily(f"{p}_would_reject", "Calls a metrics-only circuit would have refused.",
                                   labels=["circuit"]),
            mc.CounterMetricFamily(f"{p}_transitions", "State transitions, by reason (remote/restored: adopted "
                                   "from another process or a previous run).",
                                   labels=["circuit", "from_state", "to_state", "reason"]),
            mc.HistogramMetricFamily(f"{p}_open_duration_seconds",
                                     "Completed open periods: from opening until closed again.",
                                     labels=["circuit"], unit="seconds"),
            mc.GaugeMetricFamily(f"{p}_last_opened_timestamp_seconds",
                                 "When the circuit last opened (Unix time); absent while closed.",
                                 labels=["circuit"], unit="seconds"),
            mc.GaugeMetricFamily(f"{p}_retry_after_seconds",
                                 "Seconds until the circuit may admit a call (absent when forced open).",
                                 labels=["circuit"], unit="seconds"),
            mc.GaugeMetricFamily(f"{p}_probes_in_flight", "Half-open probes running now.", labels=["circuit"]),
            mc.HistogramMetricFamily(f"{p}_call_duration_seconds", "Duration of timed calls.",
                                     labels=["circuit"], unit="seconds"),
        )

    def __repr__(self) -> str:
        return f"<PrometheusCollector {len(self._sources)} sources>"


def _buckets(buckets: Iterable[tuple[float, int]]) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(bound) else repr(float(bound)), float(n)) for bound, n in buckets]


def install(registry: Registry | None = None, *, collector_registry: CollectorRegistry | None = None,
            shared: bool = False, **source_options: Any) -> PrometheusCollector:
    """Expose ``registry``'s circuits (default: the process-wide registry) to Prometheus.

    Args:
        registry: The circuitry registry to read.
        collector_registry: The ``prometheus_client`` registry to register with (default:
            ``prometheus_client.REGISTRY``, which ``prometheus_client.start_http_server()`` and
            ``make_asgi_app()`` serve).
        shared: Report what every process sharing the registry's store counted
            (:class:`~circuitry.instrumentation.sources.StoreSource`), not only this one: for
            multi-process servers.
        **source_options: With ``shared``: :class:`~circuitry.instrumentation.sources.StoreSource`'s
            options (``period=``, ``since=``).

    .. versionchanged:: 0.2.0
       ``shared``.

    Returns:
        The collector; ``collector_registry.unregister(collector)`` and ``collector.close()`` undo this.

    .. versionadded:: 0.1.0
    """
    from circuitry._registry import default_registry

    reg = default_registry() if registry is None else registry
    if shared:
        from circuitry.instrumentation.sources import StoreSource

        collector = PrometheusCollector(StoreSource.of(reg, **source_options))
    elif source_options:
        from circuitry.exceptions import ConfigurationError

        raise ConfigurationError(f"source options need shared=True: {sorted(source_options)}")
    else:
        collector = PrometheusCollector(reg)
    if collector_registry is None:
        from prometheus_client import REGISTRY

        collector_registry = REGISTRY
    try:
        collector_registry.register(collector)
    except Exception:
        collector.close()
        raise
    return collector
