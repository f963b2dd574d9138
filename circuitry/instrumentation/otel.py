"""OpenTelemetry: circuitry's metrics through the OTel meter, and what it decided on the current span
(``pip install circuitry-breaker[otel]``; circuitry talks to the OTel API only, the SDK is the application's).

.. code-block:: python

    from circuitry.instrumentation import otel

    otel.install()      # metrics for the process-wide registry's circuits, and span events

**Tracing** (:class:`TracingHook`): on the span current where the call is made, circuitry adds an
event when it refuses a call (``circuitry.call_rejected``), counts a failure (``circuitry.call_failed``)
or moves a circuit (``circuitry.circuit_opened`` and friends), with attributes ``circuitry.circuit``,
``circuitry.state``, ``circuitry.reason`` and, for refusals, ``circuitry.retry_after`` (seconds). A
refused call's span also gets those as span attributes and an error status that says which circuit
refused it and for how long. Nothing is done when the current span is not recording (no SDK, or
sampled out).

**Metrics** (:class:`OtelMetrics`): observable instruments read when the SDK collects — nothing is
counted per call:

==============================  ================  =====================================================
``circuitry.calls``             counter           calls by ``circuitry.outcome`` (success, failure,
                                                  ignored, rejected, cancelled)
``circuitry.would_reject``      counter           calls a metrics-only circuit would have refused
``circuitry.transitions``       counter           transitions by ``circuitry.from_state``,
                                                  ``circuitry.to_state``, ``circuitry.reason``
``circuitry.open.count``        counter           completed open periods (opening to closing)
``circuitry.open.time``         counter (s)       their total length
``circuitry.state``             gauge             1 for the current ``circuitry.state``, 0 for the others
``circuitry.retry_after``       gauge (s)         seconds until the circuit may admit a call
``circuitry.probes_in_flight``  gauge             half-open probes running now
==============================  ================  =====================================================

Each carries ``circuitry.circuit``. With several worker processes each reports its own circuits (see
:mod:`circuitry.instrumentation.prometheus` for what that means).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, cast

from circuitry._meta import version
from circuitry.events import ContextListening, Event, EventKind
from circuitry.instrumentation.sources import RegistrySource, Source

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from circuitry._registry import Registry

__all__ = ["OtelInstrumentation", "OtelMetrics", "TracingHook", "install"]

_ALL: Final = frozenset(EventKind)
_MISSING: Final[Any] = object()


def _require() -> None:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("circuitry's OpenTelemetry support needs opentelemetry-api: "
                          "pip install 'circuitry-breaker[otel]'") from exc


class TracingHook:
    """An event hook that records circuitry's decisions on the current span.

    Args:
        kinds: The event kinds to record (default: rejections, failures and transitions).
        set_status: Give a refused call's span an error status explaining the refusal (default).
            Turn it off if your code answers refusals with a fallback and does not count them as
            errors.
        registry: Where to look up a refused circuit's ``retry_after`` (default: the process-wide
            registry at call time).

    Add it with ``registry.add_hook(TracingHook())`` (or :func:`install`). It runs on the thread, or in
    the task, that made the call, so "current span" is the caller's span.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_registry", "_span", "kinds", "listening", "set_status")

    def __init__(self, kinds: Iterable[EventKind] = _ALL, *, set_status: bool = True,
                 registry: Registry | None = None) -> None:
        _require()
        from opentelemetry.trace import get_current_span

        self.kinds = frozenset(kinds)
        self.set_status = set_status
        self._registry = registry
        self._span = get_current_span
        #: Whether the current span records: only then does a refusal or a counted failure build an
        #: event (a breaker asks before it leaves its inline path for one).
        self.listening: Callable[[], bool] = _span_listening()

    def __call__(self, event: Event) -> None:
        if not self.listening():  # no SDK, or sampled out: the cheap, common case
            return
        span = self._span()
        attrs: dict[str, Any] = {"circuitry.circuit": event.circuit, "circuitry.state": event.to_state.value,
                                 "circuitry.generation": event.generation}
        if event.reason is not None:
            attrs["circuitry.reason"] = event.reason
        kind = event.kind
        if kind is EventKind.TRANSITION:
            if event.from_state is not None:
                attrs["circuitry.from_state"] = event.from_state.value
            if event.open_for is not None:
                attrs["circuitry.open_for"] = event.open_for
            if event.error_type is not None:
                attrs["circuitry.error_type"] = event.error_type
        elif kind is EventKind.FAILURE:
            if event.error_type is not None:
                attrs["circuitry.error_type"] = event.error_type
        else:
            retry_after = self._retry_after(event)
            if retry_after is not None:
                attrs["circuitry.retry_after"] = retry_after
            if event.shadow:
                attrs["circuitry.shadow"] = True
            else:
                span.set_attributes({k: v for k, v in attrs.items() if k != "circuitry.generation"})
                if self.set_status:
                    from opentelemetry.trace import Status, StatusCode

                    wait = "until it is reset" if retry_after is None else f"retry after {retry_after:.3f}s"
                    why = ", every probe taken" if event.reason == "probes_taken" else ""
                    span.set_status(Status(StatusCode.ERROR, f"call refused by circuit {event.circuit!r} "
                                                             f"({event.to_state.value}{why}); {wait}"))
        span.add_event(event.name, attrs, _ns(event.at))

    def _retry_after(self, event: Event) -> float | None:
        value = getattr(event, "retry_after", _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        # Events do not carry retry_after yet: read it from the breaker (only for recording spans).
        if self._registry is None:
            from circuitry._registry import default_registry

            registry = default_registry()
        else:
            registry = self._registry
        breaker = registry.breakers.get(event.circuit)
        if breaker is None:
            return None
        until = breaker.snapshot().open_until  # set while open; half-open (probes taken): unknown here
        return None if until is None else max(0.0, until - breaker.clock.time())

    def __repr__(self) -> str:
        return f"TracingHook(kinds={sorted(k.value for k in self.kinds)})"


@functools.cache
def _span_listening() -> Callable[[], bool]:
    """"Does the current span record?" as a :class:`~circuitry.events.ContextListening` over the
    OpenTelemetry context variable, which the C accelerator answers without a Python call; the public
    API where this OpenTelemetry keeps its context elsewhere (another runtime context, a changed key),
    which a check against the public API at first use detects."""
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, get_current_span

    def public() -> bool:
        return bool(get_current_span().is_recording())

    var = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    key = getattr(getattr(trace, "propagation", None), "_SPAN_KEY", None)
    if not isinstance(var, ContextVar) or not isinstance(key, str):
        return public
    check = ContextListening(var, key, NonRecordingSpan)

    class _Recording(NonRecordingSpan):
        def is_recording(self) -> bool:
            return True

    agree = check() == public()
    for span in (_Recording(trace.INVALID_SPAN_CONTEXT), NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)):
        token = context.attach(trace.set_span_in_context(span))
        try:
            agree = agree and check() == public() == span.is_recording()
        finally:
            context.detach(token)
    # (mypy does not see a NamedTuple's __call__ as making it callable)
    return cast("Callable[[], bool]", check) if agree else public


def _ns(at: float) -> int:
    return int(at * 1e9)


class OtelMetrics:
    """Observable OpenTelemetry instruments over one or more :class:`~circuitry.instrumentation.sources.Source`\\ s.

    Args:
        *sources: Where the numbers come from; a :class:`~circuitry.Registry` is wrapped in a
            :class:`~circuitry.instrumentation.sources.RegistrySource`.
        meter_provider: The provider to get the ``circuitry`` meter from (default: the global one).

    .. versionadded:: 0.1.0
    """

    def __init__(self, *sources: Source | Registry, meter_provider: MeterProvider | None = None) -> None:
        _require()
        from opentelemetry.metrics import get_meter

        self._sources: list[Source] = []
        self._owned: list[RegistrySource] = []
        for source in sources:
            self.add_source(source)
        meter = get_meter("circuitry", version(), meter_provider=meter_provider)
        meter.create_observable_counter("circuitry.calls", [self._calls], unit="{call}",
                                        description="Calls through the circuit, by outcome.")
        meter.create_observable_counter("circuitry.would_reject", [self._would_reject], unit="{call}",
                                        description="Calls a metrics-only circuit would have refused.")
        meter.create_observable_counter("circuitry.transitions", [self._transitions], unit="{transition}",
                                        description="State transitions, by reason.")
        meter.create_observable_counter("circuitry.open.count", [self._open_count], unit="{period}",
                                        description="Completed open periods (from opening until closed).")
        meter.create_observable_counter("circuitry.open.time", [self._open_time], unit="s",
                                        description="Total length of the completed open periods.")
        meter.create_observable_gauge("circuitry.state", [self._state],
                                      description="1 for the circuit's current state, 0 for the others.")
        meter.create_observable_gauge("circuitry.retry_after", [self._retry_after], unit="s",
                                      description="Seconds until the circuit may admit a call.")
        meter.create_observable_gauge("circuitry.probes_in_flight", [self._probes], unit="{call}",
                                      description="Half-open probes running now.")

    def add_source(self, source: Source | Registry) -> None:
        """Read ``source`` too, from the next collection on."""
        if not isinstance(source, Source):
            from circuitry._registry import Registry

            if not isinstance(source, Registry):
                from circuitry.exceptions import ConfigurationError

                raise ConfigurationError(f"a source must be a Source or a Registry, got {source!r}")
            source = RegistrySource(source)
            self._owned.append(source)
        self._sources = [*self._sources, source]

    def close(self) -> None:
        """Remove the hooks of the sources made here; the instruments report nothing more."""
        for source in self._owned:
            source.close()
        self._owned = []
        self._sources = []

    # -- callbacks (the SDK's collecting thread) ----------------------------------------------------

    def _calls(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for source in self._sources:
            for c in source.circuits():
                for outcome, n in c.outcomes():
                    yield Observation(n, {"circuitry.circuit": c.circuit, "circuitry.outcome": outcome})

    def _would_reject(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for source in self._sources:
            for c in source.circuits():
                yield Observation(c.would_reject, {"circuitry.circuit": c.circuit})

    def _transitions(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for source in self._sources:
            for t in source.transitions():
                yield Observation(t.count, {"circuitry.circuit": t.circuit, "circuitry.from_state": t.from_state.value,
                                            "circuitry.to_state": t.to_state.value, "circuitry.reason": t.reason})

    def _open_count(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for source in self._sources:
            for d in source.open_durations():
                yield Observation(d.count, {"circuitry.circuit": d.circuit})

    def _open_time(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for source in self._sources:
            for d in source.open_durations():
                yield Observation(d.sum, {"circuitry.circuit": d.circuit})

    def _state(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        from circuitry._state import CircuitState

        for source in self._sources:
            for c in source.circuits():
                for s in CircuitState:
                    yield Observation(1 if s is c.state else 0, {"circuitry.circuit": c.circuit,
                                                                 "circuitry.state": s.value})

    def _retry_after(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for source in self._sources:
            for c in source.circuits():
                if c.retry_after is not None:
                    yield Observation(c.retry_after, {"circuitry.circuit": c.circuit})

    def _probes(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for source in self._sources:
            for c in source.circuits():
                yield Observation(c.probes_in_flight, {"circuitry.circuit": c.circuit})

    def __repr__(self) -> str:
        return f"<OtelMetrics {len(self._sources)} sources>"



class OtelInstrumentation:
    """What :func:`install` set up; :meth:`close` removes the hook and stops the metrics."""

    def __init__(self, registry: Registry, metrics: OtelMetrics | None, tracing: TracingHook | None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.tracing = tracing

    def close(self) -> None:
        if self.tracing is not None:
            self.registry.remove_hook(self.tracing)
        if self.metrics is not None:
            self.metrics.close()


def install(registry: Registry | None = None, *, meter_provider: MeterProvider | None = None,
            metrics: bool = True, tracing: bool = True, set_status: bool = True) -> OtelInstrumentation:
    """Report ``registry``'s circuits (default: the process-wide registry) to OpenTelemetry.

    Args:
        registry: The circuitry registry.
        meter_provider: Where the metrics go (default: the global meter provider).
        metrics: Create the observable instruments (:class:`OtelMetrics`).
        tracing: Add a :class:`TracingHook` to the registry.
        set_status: The tracing hook's ``set_status``.

    .. versionadded:: 0.1.0
    """
    from circuitry._registry import default_registry

    reg = default_registry() if registry is None else registry
    hook = TracingHook(set_status=set_status, registry=reg) if tracing else None
    meters = OtelMetrics(reg, meter_provider=meter_provider) if metrics else None
    if hook is not None:
        reg.add_hook(hook)
    return OtelInstrumentation(reg, meters, hook)
