"""Multi-process Prometheus: StoreSource reads the shared store, so a scrape of any worker reports what
every worker counted — tested with real worker processes sharing one SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from circuitry import CircuitState, ConfigurationError, Registry
from circuitry.instrumentation import prometheus
from circuitry.instrumentation.sources import StoreSource
from circuitry.store import SQLiteStore
from circuitry.testing import FakeClock

from .conftest import Boom


def two_processes(path: Path, clock: FakeClock) -> tuple[Registry, Registry, SQLiteStore, SQLiteStore]:
    """Two stores on one file, as two worker processes would have (each its own writer and process name)."""
    a = SQLiteStore(path, clock=clock, poll_interval=0.01, analysis_interval=3600)
    b = SQLiteStore(path, clock=clock, poll_interval=0.01, analysis_interval=3600)
    b.process = a.process + "-b"
    b.sharing.process = b.process
    return Registry(hooks=[], store=a, clock=clock), Registry(hooks=[], store=b, clock=clock), a, b


def test_counts_are_every_process_s_and_transitions_are_counted_once(tmp_path: Path, clock: FakeClock) -> None:
    reg_a, reg_b, a, b = two_processes(tmp_path / "app.db", clock)
    x, y = reg_a.get("pay", failure_threshold=100, on=Boom), reg_b.get("pay", failure_threshold=100, on=Boom)
    for _ in range(3):
        x.record_success(x.admit())
    for _ in range(4):
        y.record_success(y.admit())
    y.exit(y.enter(), Boom())
    y.exit(y.enter(), KeyError())
    assert a.flush() and b.flush()
    source = StoreSource(tmp_path / "app.db", clock=clock.time)
    (sample,) = source.circuits()
    assert (sample.circuit, sample.successes, sample.failures, sample.ignored) == ("pay", 7, 1, 1)
    assert sample.state is CircuitState.CLOSED and sample.retry_after == 0.0
    x.force_open()  # one process moves the shared circuit; the other adopts it
    assert a.flush() and b.flush()
    deadline = time.monotonic() + 10
    while y.state is not CircuitState.FORCED_OPEN and time.monotonic() < deadline:
        time.sleep(0.01)
    assert y.state is CircuitState.FORCED_OPEN
    (sample,) = source.circuits()
    assert sample.state is CircuitState.FORCED_OPEN and sample.retry_after is None
    (t,) = source.transitions()
    assert (t.from_state, t.to_state, t.reason, t.count) == (CircuitState.CLOSED, CircuitState.FORCED_OPEN,
                                                             "manual", 1)
    clock.advance(90)
    y.reset()
    assert a.flush() and b.flush()
    assert {(t.to_state, t.reason) for t in source.transitions()} == {(CircuitState.FORCED_OPEN, "manual"),
                                                                     (CircuitState.CLOSED, "manual")}
    (d,) = source.open_durations()  # (as a collection reads them: after transitions())
    assert d.count == 1 and d.sum == pytest.approx(90.0)
    a.close()
    b.close()


def test_counters_begin_at_the_period_start_every_worker_agrees_on(tmp_path: Path, clock: FakeClock) -> None:
    store = SQLiteStore(tmp_path / "app.db", clock=clock, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store, clock=clock)
    br = reg.get("svc")
    for _ in range(5):
        br.record_success(br.admit())
    assert store.flush()
    day = StoreSource(store, clock=clock.time)
    assert day.start(clock.time()) == (clock.time() // 86400) * 86400
    assert day.circuits()[0].successes == 5
    clock.advance(86400)  # a new day: the counters begin again (a counter reset to Prometheus)
    assert day.circuits()[0].successes == 0
    assert StoreSource(store, since=0.0, clock=clock.time).circuits()[0].successes == 5  # a fixed start
    store.close()
    with pytest.raises(ConfigurationError):
        StoreSource(store, period=1.0)
    with pytest.raises(ConfigurationError, match="in memory"):
        StoreSource.of(Registry(hooks=[]))


def test_install_shared_exports_the_store_s_numbers(tmp_path: Path, clock: FakeClock) -> None:
    store = SQLiteStore(tmp_path / "app.db", clock=clock, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store, clock=clock)
    br = reg.get("svc", failure_threshold=1)
    br.record_success(br.admit())
    br.record_failure(br.admit(), Boom())
    assert store.flush()
    cr = CollectorRegistry()
    collector = prometheus.install(reg, collector_registry=cr, shared=True, clock=clock.time)
    assert isinstance(collector.sources[0], StoreSource)
    assert cr.get_sample_value("circuitry_calls_total", {"circuit": "svc", "outcome": "success"}) == 1
    assert cr.get_sample_value("circuitry_calls_total", {"circuit": "svc", "outcome": "failure"}) == 1
    assert cr.get_sample_value("circuitry_state_code", {"circuit": "svc"}) == 2
    assert cr.get_sample_value("circuitry_transitions_total", {"circuit": "svc", "from_state": "closed",
                                                               "to_state": "open",
                                                               "reason": "failure_threshold"}) == 1
    with pytest.raises(ConfigurationError, match="shared=True"):
        prometheus.install(reg, collector_registry=CollectorRegistry(), period=3600)
    store.close()


WORKER = textwrap.dedent("""
    import os, sys, time
    from prometheus_client import CollectorRegistry, generate_latest
    from circuitry import Registry
    from circuitry.instrumentation import prometheus
    from circuitry.store import SQLiteStore

    db, me, workers, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = SQLiteStore(db, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store)
    b = reg.get("checkout", failure_threshold=1000, on=ConnectionError)
    for _ in range(10 * (me + 1)):
        b.record_success(b.admit())
    for _ in range(me + 1):
        b.exit(b.enter(), ConnectionError())
    assert store.flush(10)
    open(os.path.join(ready, str(me)), "w").close()
    while len(os.listdir(ready)) < workers:  # every worker has written its counts
        time.sleep(0.01)
    cr = CollectorRegistry()
    prometheus.install(reg, collector_registry=cr, shared=True)
    sys.stdout.write(generate_latest(cr).decode())
    store.close()
""")


def test_one_scrape_of_any_worker_reports_every_worker(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ready = tmp_path / "ready"
    ready.mkdir()
    workers = 3
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "app.db"), str(i), str(workers),
                               str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "CIRCUITRY_DB": ":memory:"}) for i in range(workers)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    scrapes = []
    for out, _ in outs:
        values = {}
        for family in text_string_to_metric_families(out):
            for s in family.samples:
                if s.name == "circuitry_calls_total" and s.labels["circuit"] == "checkout":
                    values[s.labels["outcome"]] = s.value
        scrapes.append(values)
    expected_ok = sum(10 * (i + 1) for i in range(workers))
    expected_failed = sum(i + 1 for i in range(workers))
    for values in scrapes:  # every worker reports all three workers' calls
        assert values["success"] == expected_ok and values["failure"] == expected_failed
    assert scrapes[0] == scrapes[1] == scrapes[2]
