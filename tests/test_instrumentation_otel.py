"""OpenTelemetry: span events and status on the current span, observable metrics, all through the SDK's
in-memory exporter and reader."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

from circuitry import CircuitOpenError, CircuitState, EventKind, Registry, circuit
from circuitry.instrumentation import otel
from circuitry.testing import FakeClock, isolated_registry

from .conftest import Boom


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


@pytest.fixture
def reg(clock: FakeClock) -> Iterator[Registry]:
    with isolated_registry(clock=clock) as r:
        yield r


@pytest.fixture
def tracing(reg: Registry) -> Iterator[otel.OtelInstrumentation]:
    inst = otel.install(reg, metrics=False)
    yield inst
    inst.close()


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


def test_a_refusal_is_a_span_event_and_an_error_status(reg: Registry, tracer: trace.Tracer,
                                                        exporter: InMemorySpanExporter,
                                                        tracing: otel.OtelInstrumentation) -> None:
    b = reg.get("payments", failure_threshold=1, recovery_timeout=12)
    b.record_failure(b.admit(), Boom())
    with tracer.start_as_current_span("request"):
        with pytest.raises(CircuitOpenError):
            b.admit()
    span = only_span(exporter)
    [(name, attrs)] = events(span)
    assert name == "circuitry.call_rejected"
    assert attrs == {"circuitry.circuit": "payments", "circuitry.state": "open", "circuitry.reason": "open",
                     "circuitry.retry_after": 12.0, "circuitry.generation": 1}
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "call refused by circuit 'payments' (open); retry after 12.000s"
    assert dict(span.attributes or {}) == {"circuitry.circuit": "payments", "circuitry.state": "open",
                                           "circuitry.reason": "open", "circuitry.retry_after": 12.0}


def test_a_forced_open_refusal_says_until_reset(reg: Registry, tracer: trace.Tracer,
                                                exporter: InMemorySpanExporter,
                                                tracing: otel.OtelInstrumentation) -> None:
    b = reg.get("payments")
    b.force_open()
    with tracer.start_as_current_span("request"), pytest.raises(CircuitOpenError):
        b.admit()
    span = only_span(exporter)
    assert span.status.description is not None and span.status.description.endswith("until it is reset")
    assert "circuitry.retry_after" not in events(span)[0][1]


def test_set_status_false_leaves_the_status_alone(reg: Registry, tracer: trace.Tracer,
                                                  exporter: InMemorySpanExporter) -> None:
    inst = otel.install(reg, metrics=False, set_status=False)
    b = reg.get("payments")
    b.force_open()
    with tracer.start_as_current_span("request"), pytest.raises(CircuitOpenError):
        b.admit()
    inst.close()
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert [name for name, _ in events(span)] == ["circuitry.call_rejected"]


def test_a_counted_failure_and_the_transition_it_causes(reg: Registry, tracer: trace.Tracer,
                                                        exporter: InMemorySpanExporter,
                                                        tracing: otel.OtelInstrumentation) -> None:
    b = reg.get("payments", failure_threshold=2, recovery_timeout=30)
    with tracer.start_as_current_span("request"):
        b.record_failure(b.admit(), Boom("first"))
        b.record_failure(b.admit(), Boom("second"))
    span = only_span(exporter)
    got = events(span)
    assert [name for name, _ in got] == ["circuitry.call_failed", "circuitry.call_failed", "circuitry.circuit_opened"]
    assert got[0][1] == {"circuitry.circuit": "payments", "circuitry.state": "closed", "circuitry.generation": 0,
                         "circuitry.error_type": "tests.conftest.Boom"}
    assert got[2][1] == {"circuitry.circuit": "payments", "circuitry.state": "open", "circuitry.generation": 1,
                         "circuitry.from_state": "closed", "circuitry.reason": "failure_threshold",
                         "circuitry.open_for": 30.0, "circuitry.error_type": "tests.conftest.Boom"}
    assert span.status.status_code is StatusCode.UNSET  # a failure is the caller's to judge


def test_the_event_time_is_the_breakers_wall_clock(reg: Registry, tracer: trace.Tracer, clock: FakeClock,
                                                   exporter: InMemorySpanExporter,
                                                   tracing: otel.OtelInstrumentation) -> None:
    b = reg.get("payments", failure_threshold=1)
    with tracer.start_as_current_span("request"):
        b.record_failure(b.admit(), Boom())
    assert [e.timestamp for e in only_span(exporter).events] == [int(clock.time() * 1e9)] * 2


def test_a_decorated_async_call_records_on_its_tasks_span(reg: Registry, tracer: trace.Tracer,
                                                          exporter: InMemorySpanExporter,
                                                          tracing: otel.OtelInstrumentation) -> None:
    @circuit("inventory", failure_threshold=1, recovery_timeout=60)
    async def stock() -> int:
        raise Boom()

    async def request(name: str) -> None:
        with tracer.start_as_current_span(name):
            try:
                await stock()
            except (Boom, CircuitOpenError):
                pass

    async def main() -> None:
        await request("first")
        await asyncio.gather(request("second"), request("third"))

    asyncio.run(main())
    by_name = {s.name: [n for n, _ in events(s)] for s in exporter.get_finished_spans()}
    assert by_name == {"first": ["circuitry.call_failed", "circuitry.circuit_opened"],
                       "second": ["circuitry.call_rejected"], "third": ["circuitry.call_rejected"]}


def test_nothing_is_recorded_without_a_recording_span(reg: Registry, exporter: InMemorySpanExporter,
                                                      tracing: otel.OtelInstrumentation) -> None:
    sampled_out = TracerProvider(sampler=ALWAYS_OFF)
    sampled_out.add_span_processor(SimpleSpanProcessor(exporter))
    b = reg.get("payments", failure_threshold=1)
    with sampled_out.get_tracer("t").start_as_current_span("request") as span:
        assert not span.is_recording()
        b.record_failure(b.admit(), Boom())
        with pytest.raises(CircuitOpenError):
            b.admit()
    with pytest.raises(CircuitOpenError):
        b.admit()  # no span at all
    assert exporter.get_finished_spans() == ()


def test_a_refusal_while_every_probe_is_taken_says_so(reg: Registry, tracer: trace.Tracer, clock: FakeClock,
                                                      exporter: InMemorySpanExporter,
                                                      tracing: otel.OtelInstrumentation) -> None:
    b = reg.get("payments", failure_threshold=1, recovery_timeout=5)
    b.record_failure(b.admit(), Boom())
    clock.advance(5)
    b.admit()  # the one probe
    with tracer.start_as_current_span("request"), pytest.raises(CircuitOpenError):
        b.admit()
    span = only_span(exporter)
    assert span.status.description is not None
    assert span.status.description.startswith("call refused by circuit 'payments' (half_open, every probe taken)")
    assert events(span)[0][1]["circuitry.reason"] == "probes_taken"


def test_kinds_limit_what_the_hook_listens_to(reg: Registry) -> None:
    hook = otel.TracingHook(kinds={EventKind.TRANSITION})
    reg.add_hook(hook)
    assert reg.dispatcher.rejection == () and reg.dispatcher.failure == ()
    assert hook in reg.dispatcher.transition
    reg.remove_hook(hook)


def test_close_removes_the_tracing_hook(reg: Registry, tracing: otel.OtelInstrumentation) -> None:
    assert tracing.tracing in reg.dispatcher.rejection
    tracing.close()
    assert tracing.tracing not in reg.dispatcher.hooks


# -- metrics -----------------------------------------------------------------------------------------


def points(reader: InMemoryMetricReader) -> dict[str, dict[tuple[tuple[str, Any], ...], float]]:
    data = reader.get_metrics_data()
    out: dict[str, dict[tuple[tuple[str, Any], ...], float]] = {}
    if data is None:  # no instrument reported anything
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = {tuple(sorted((p.attributes or {}).items())): p.value  # type: ignore[union-attr]
                               for p in m.data.data_points}
    return out


def key(**attrs: str) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((f"circuitry.{k}", v) for k, v in attrs.items()))


def test_metrics_are_read_from_the_breakers_at_collection(reg: Registry, clock: FakeClock) -> None:
    reader = InMemoryMetricReader()
    inst = otel.install(reg, meter_provider=MeterProvider(metric_readers=[reader]), tracing=False)
    b = reg.get("payments", failure_threshold=2, recovery_timeout=10)
    for _ in range(3):
        b.record_success(b.admit())
    b.record_failure(b.admit(), Boom())
    b.record_failure(b.admit(), Boom())
    with pytest.raises(CircuitOpenError):
        b.admit()
    got = points(reader)
    assert got["circuitry.calls"][key(circuit="payments", outcome="success")] == 3
    assert got["circuitry.calls"][key(circuit="payments", outcome="failure")] == 2
    assert got["circuitry.calls"][key(circuit="payments", outcome="rejected")] == 1
    assert got["circuitry.state"][key(circuit="payments", state="open")] == 1
    assert got["circuitry.state"][key(circuit="payments", state="closed")] == 0
    assert got["circuitry.retry_after"][key(circuit="payments")] == 10
    assert got["circuitry.transitions"] == {
        key(circuit="payments", from_state="closed", to_state="open", reason="failure_threshold"): 1}
    clock.advance(10)
    b.record_success(b.admit())
    got = points(reader)
    assert got["circuitry.calls"][key(circuit="payments", outcome="success")] == 4
    assert got["circuitry.open.count"] == {key(circuit="payments"): 1}
    assert got["circuitry.open.time"] == {key(circuit="payments"): 10}
    assert got["circuitry.probes_in_flight"] == {key(circuit="payments"): 0}
    assert got["circuitry.would_reject"] == {key(circuit="payments"): 0}
    assert reg.dispatcher.failure == () and reg.dispatcher.rejection == ()  # nothing per call
    inst.close()
    assert points(reader).get("circuitry.calls", {}) == {}  # closed: the instruments report nothing


def test_remote_transitions_are_counted_with_their_reason(reg: Registry, clock: FakeClock) -> None:
    reader = InMemoryMetricReader()
    inst = otel.install(reg, meter_provider=MeterProvider(metric_readers=[reader]), tracing=False)
    reg.get("payments").adopt(CircuitState.FORCED_OPEN, reason="restored")
    assert points(reader)["circuitry.transitions"] == {
        key(circuit="payments", from_state="closed", to_state="forced_open", reason="restored"): 1}
    inst.close()


def test_the_listening_check_agrees_with_the_public_api(tracer: trace.Tracer) -> None:
    from circuitry.events import ContextListening

    check = otel.TracingHook().listening
    assert isinstance(check, ContextListening)  # this OpenTelemetry keeps its context where we read it

    def agree() -> bool:
        answer = trace.get_current_span().is_recording()
        assert check() == answer
        return answer

    assert not agree()  # no span
    with TracerProvider(sampler=ALWAYS_OFF).get_tracer("t").start_as_current_span("out"):
        assert not agree()  # sampled out
    with tracer.start_as_current_span("in") as span:
        assert agree()
        span.end()
        assert not agree()  # ended, still current


def test_an_ended_span_gets_no_event(reg: Registry, tracer: trace.Tracer, exporter: InMemorySpanExporter,
                                    tracing: otel.OtelInstrumentation) -> None:
    b = reg.get("ended", failure_threshold=1)
    with tracer.start_as_current_span("request") as span:
        span.end()
        b.record_failure(b.admit(), Boom())
        with pytest.raises(CircuitOpenError):
            b.admit()
    assert [e.name for e in only_span(exporter).events] == []
