"""OpenTelemetry: a refused call's span says which circuit refused it, and for how long.

Run it: ``python examples/observability/tracing.py`` (needs ``pip install 'circuitry-breaker[otel]'
opentelemetry-sdk``). It prints each finished span's status and events.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from circuitry import CircuitOpenError, circuit
from circuitry.instrumentation import otel

exporter = InMemorySpanExporter()  # a real application exports with OTLP instead
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("checkout")

otel.install()  # span events for refusals, failures and transitions; metrics through the global meter


@circuit("payments", failure_threshold=2, recovery_timeout=60, on=TimeoutError)
def charge(amount: int) -> str:
    raise TimeoutError("payment gateway timed out")


def checkout(order: int) -> None:
    with tracer.start_as_current_span(f"checkout {order}"):
        try:
            charge(10)
        except TimeoutError:
            pass
        except CircuitOpenError:
            pass  # the span already says why: see its status and events


for order in range(3):
    checkout(order)
for span in exporter.get_finished_spans():
    print(span.name, span.status.status_code.name, span.status.description or "")
    for event in span.events:
        attrs = dict(event.attributes or {})
        retry = attrs.get("circuitry.retry_after")
        wait = "" if retry is None else f"retry after {retry:.0f}s"
        print("   ", event.name, attrs.get("circuitry.reason", ""), wait)
