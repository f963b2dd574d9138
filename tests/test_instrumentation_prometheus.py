"""The Prometheus collector: everything read at scrape time from the breakers, transitions tallied by a
hook, no per-call work."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from circuitry import CircuitOpenError, CircuitState, ConfigurationError, Registry
from circuitry.instrumentation import prometheus
from circuitry.instrumentation.sources import (
    CircuitSample,
    DurationSample,
    LatencySample,
    RegistrySource,
    TransitionSample,
)
from circuitry.testing import FakeClock

from .conftest import Boom, Other


@pytest.fixture
def reg(clock: FakeClock) -> Registry:
    return Registry(clock=clock, hooks=[])


@pytest.fixture
def prom(reg: Registry) -> Iterator[CollectorRegistry]:
    cr = CollectorRegistry()
    collector = prometheus.install(reg, collector_registry=cr)
    yield cr
    cr.unregister(collector)
    collector.close()


def value(cr: CollectorRegistry, name: str, **labels: str) -> float | None:
    return cr.get_sample_value(name, labels)


def test_calls_by_outcome_are_exact_counts_read_at_scrape(reg: Registry, prom: CollectorRegistry) -> None:
    b = reg.get("svc", failure_threshold=100, on=Boom)
    for _ in range(3):
        b.record_success(b.admit())
    for _ in range(2):
        b.exit(b.enter(), Boom())
    b.exit(b.enter(), Other())
    b.release(b.admit())
    for n, outcome in ((3, "success"), (2, "failure"), (1, "ignored"), (1, "cancelled"), (0, "rejected")):
        assert value(prom, "circuitry_calls_total", circuit="svc", outcome=outcome) == n
    b.force_open()
    for _ in range(4):
        with pytest.raises(CircuitOpenError):
            b.admit()
    assert value(prom, "circuitry_calls_total", circuit="svc", outcome="rejected") == 4


def test_installing_adds_no_hook_on_the_per_call_paths(reg: Registry, prom: CollectorRegistry) -> None:
    """Failures and rejections are read from counters: only transitions (rare) reach a hook, so the
    faces keep their inline failure count and refusal."""
    assert reg.dispatcher.failure == () and reg.dispatcher.rejection == ()
    assert len(reg.dispatcher.transition) == 1


@pytest.mark.parametrize(("action", "state", "code"), [
    (None, "closed", 0), ("trip", "open", 2), ("force_open", "forced_open", 3),
    ("force_closed", "disabled", -1), ("half_open", "half_open", 1)])
def test_state_as_a_state_set_and_a_code(reg: Registry, prom: CollectorRegistry, clock: FakeClock,
                                         action: str | None, state: str, code: int) -> None:
    b = reg.get("svc", failure_threshold=1, recovery_timeout=10)
    if action in ("trip", "half_open"):
        b.record_failure(b.admit(), Boom())
        if action == "half_open":
            clock.advance(10)
    elif action is not None:
        getattr(b, action)()
    assert value(prom, "circuitry_state_code", circuit="svc") == code
    for s in CircuitState:
        assert value(prom, "circuitry_state", circuit="svc", circuitry_state=s.value) == (s.value == state)


def test_transitions_by_reason_and_open_duration(reg: Registry, prom: CollectorRegistry, clock: FakeClock) -> None:
    b = reg.get("svc", failure_threshold=1, recovery_timeout=20)
    b.record_failure(b.admit(), Boom())
    assert value(prom, "circuitry_last_opened_timestamp_seconds", circuit="svc") == clock.time()
    assert value(prom, "circuitry_retry_after_seconds", circuit="svc") == 20
    clock.advance(20)
    b.record_failure(b.admit(), Boom())  # the probe fails: open again
    clock.advance(20)
    b.record_success(b.admit())  # the second probe closes it, 40 s after it opened
    t = "circuitry_transitions_total"
    assert value(prom, t, circuit="svc", from_state="closed", to_state="open", reason="failure_threshold") == 1
    assert value(prom, t, circuit="svc", from_state="open", to_state="half_open", reason="recovery_timeout") == 2
    assert value(prom, t, circuit="svc", from_state="half_open", to_state="open", reason="probe_failed") == 1
    assert value(prom, t, circuit="svc", from_state="half_open", to_state="closed", reason="probe_succeeded") == 1
    assert value(prom, "circuitry_open_duration_seconds_count", circuit="svc") == 1
    assert value(prom, "circuitry_open_duration_seconds_sum", circuit="svc") == 40
    assert value(prom, "circuitry_open_duration_seconds_bucket", circuit="svc", le="30.0") == 0
    assert value(prom, "circuitry_open_duration_seconds_bucket", circuit="svc", le="60.0") == 1
    assert value(prom, "circuitry_open_duration_seconds_bucket", circuit="svc", le="+Inf") == 1
    assert value(prom, "circuitry_last_opened_timestamp_seconds", circuit="svc") is None  # closed


def test_transitions_adopted_from_another_process_are_labelled_remote(reg: Registry, prom: CollectorRegistry,
                                                                      clock: FakeClock) -> None:
    b = reg.get("svc")
    b.adopt(CircuitState.OPEN, opened_at=clock.time(), open_until=clock.time() + 5, open_for=5, reason="remote")
    assert value(prom, "circuitry_transitions_total", circuit="svc", from_state="closed", to_state="open",
                 reason="remote") == 1


def test_probes_in_flight(reg: Registry, prom: CollectorRegistry, clock: FakeClock) -> None:
    b = reg.get("svc", failure_threshold=1, recovery_timeout=5, half_open_max_calls=2)
    b.record_failure(b.admit(), Boom())
    clock.advance(5)
    probe = b.admit()
    assert value(prom, "circuitry_probes_in_flight", circuit="svc") == 1
    b.record_failure(probe, Boom())
    assert value(prom, "circuitry_probes_in_flight", circuit="svc") == 0


def test_metrics_only_circuits_count_would_reject(reg: Registry, prom: CollectorRegistry) -> None:
    b = reg.get("svc", failure_threshold=1)
    b.set_metrics_only()
    b.record_failure(b.admit(), Boom())
    b.record_success(b.admit())  # would have been refused
    assert value(prom, "circuitry_would_reject_total", circuit="svc") == 1


def test_both_expositions_parse(reg: Registry, prom: CollectorRegistry) -> None:
    b = reg.get('we"ird\\name', failure_threshold=1)
    b.record_failure(b.admit(), Boom())
    names = {f.name for f in text_string_to_metric_families(generate_latest(prom).decode())}
    assert {"circuitry_state", "circuitry_calls", "circuitry_transitions"} <= names
    text = generate_openmetrics(prom).decode()
    assert "# TYPE circuitry_state stateset" in text and text.endswith("# EOF\n")


class FakeSource:
    """A second kind of source (as a store-backed one will be), with a latency histogram."""

    def circuits(self) -> list[CircuitSample]:
        latency = LatencySample(3, 0.6, ((0.1, 1), (0.5, 2), (math.inf, 3)))
        return [CircuitSample("remote_svc", CircuitState.OPEN, 5, 4, 3, 2, 1, opened_at=100.0, retry_after=None,
                              latency=latency)]

    def transitions(self) -> list[TransitionSample]:
        return [TransitionSample("remote_svc", CircuitState.CLOSED, CircuitState.OPEN, "failure_rate", 7)]

    def open_durations(self) -> list[DurationSample]:
        return [DurationSample("remote_svc", 2, 3.5, ((1.0, 0), (5.0, 2), (math.inf, 2)))]


def test_a_second_source_plugs_into_the_same_collector(reg: Registry) -> None:
    reg.get("local_svc")
    cr = CollectorRegistry()
    collector = prometheus.PrometheusCollector(reg, FakeSource())
    cr.register(collector)
    assert value(cr, "circuitry_state_code", circuit="local_svc") == 0
    assert value(cr, "circuitry_state_code", circuit="remote_svc") == 2
    assert value(cr, "circuitry_calls_total", circuit="remote_svc", outcome="cancelled") == 1
    assert value(cr, "circuitry_transitions_total", circuit="remote_svc", from_state="closed", to_state="open",
                 reason="failure_rate") == 7
    assert value(cr, "circuitry_retry_after_seconds", circuit="remote_svc") is None
    assert value(cr, "circuitry_call_duration_seconds_bucket", circuit="remote_svc", le="0.5") == 2
    assert value(cr, "circuitry_call_duration_seconds_count", circuit="remote_svc") == 3
    assert value(cr, "circuitry_call_duration_seconds_sum", circuit="remote_svc") == pytest.approx(0.6)
    assert value(cr, "circuitry_open_duration_seconds_bucket", circuit="remote_svc", le="5.0") == 2
    assert value(cr, "circuitry_call_duration_seconds_count", circuit="local_svc") is None  # not timed
    collector.close()


def test_a_timed_circuit_has_its_call_latency_histogram(reg: Registry, prom: CollectorRegistry,
                                                        clock: FakeClock) -> None:
    # The family was documented and always empty: the registry's source gave no latency.
    b = reg.get("timed_svc", measure_latency=True, on=Boom)
    for seconds, exc in ((0.003, None), (0.2, None), (0.2, Boom()), (30.0, None)):
        token = b.enter()
        clock.advance(seconds)
        b.exit(token, exc)
    reg.get("plain_svc").exit(reg.get("plain_svc").enter())
    assert value(prom, "circuitry_call_duration_seconds_count", circuit="timed_svc") == 4
    assert value(prom, "circuitry_call_duration_seconds_sum", circuit="timed_svc") == pytest.approx(30.403)
    for le, n in (("0.005", 1), ("0.1", 1), ("0.25", 3), ("10.0", 3), ("+Inf", 4)):
        assert value(prom, "circuitry_call_duration_seconds_bucket", circuit="timed_svc", le=le) == n
    assert value(prom, "circuitry_call_duration_seconds_count", circuit="plain_svc") is None  # not timed


def test_registering_reads_nothing_and_a_second_install_is_refused(reg: Registry) -> None:
    cr = CollectorRegistry()
    reads: list[int] = []

    class Counting(FakeSource):
        def circuits(self) -> list[CircuitSample]:
            reads.append(1)
            return super().circuits()

    cr.register(prometheus.PrometheusCollector(Counting()))
    assert reads == []  # describe() names the metrics without reading any source
    with pytest.raises(ValueError, match="Duplicated"):
        prometheus.install(reg, collector_registry=cr)
    assert reg.dispatcher.transition == ()  # the failed install removed its hook


def test_close_removes_the_hook(reg: Registry) -> None:
    collector = prometheus.PrometheusCollector(reg)
    assert len(reg.dispatcher.transition) == 1
    collector.close()
    assert reg.dispatcher.transition == ()


def test_bad_sources_and_buckets_are_configuration_errors(reg: Registry) -> None:
    with pytest.raises(ConfigurationError, match="source"):
        prometheus.PrometheusCollector(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="open_duration_buckets"):
        RegistrySource(reg, open_duration_buckets=[0, 1])
    with pytest.raises(ConfigurationError, match="open_duration_buckets"):
        RegistrySource(reg, open_duration_buckets=[])


def test_install_defaults_to_the_process_wide_registry() -> None:
    from circuitry.testing import isolated_registry

    with isolated_registry(clock=FakeClock()) as default:
        cr = CollectorRegistry()
        collector = prometheus.install(collector_registry=cr)
        default.get("from_default")
        assert value(cr, "circuitry_state_code", circuit="from_default") == 0
        collector.close()
