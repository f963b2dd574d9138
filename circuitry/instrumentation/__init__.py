"""Instrumentation: what operators see — logs, Prometheus metrics, OpenTelemetry metrics and traces.

One module per backend, each importing its library only when used:

- :mod:`circuitry.instrumentation.logging` — stdlib :mod:`logging` (structlog when the application
  configured it); the default hook, :class:`~circuitry.instrumentation.logging.LoggingHook`.
- :mod:`circuitry.instrumentation.prometheus` — a ``prometheus_client`` collector (``circuitry-breaker[prometheus]``).
- :mod:`circuitry.instrumentation.otel` — OpenTelemetry metrics and span events (``circuitry-breaker[otel]``).

Metrics are read from a :class:`~circuitry.instrumentation.sources.Source` when they are collected,
never counted per call: the hot path pays nothing for them.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from circuitry.instrumentation.logging import LoggingHook, log

__all__ = ["LoggingHook", "log"]
