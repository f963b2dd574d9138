"""Logging follows the ecosystem's rules: nothing unless the application configures logging, the
application's configuration when it does (stdlib logging, or structlog when configured), structured
fields, and adopted transitions kept quiet."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

import circuitry
import circuitry.events
from circuitry import CircuitOpenError, CircuitState, EventKind, Registry
from circuitry.instrumentation.logging import LOGGER_NAME, LoggingHook, log
from circuitry.testing import FakeClock

from .conftest import Boom


def run_script(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CIRCUITRY_DB": ":memory:", **env})
    assert proc.returncode == 0, proc.stderr
    return proc


TRIP = """
    from circuitry import CircuitOpenError, circuit

    @circuit("payment_api", failure_threshold=2, recovery_timeout=60)
    def charge():
        raise ConnectionError("down")

    for _ in range(2):
        try:
            charge()
        except ConnectionError:
            pass
    try:
        charge()
    except CircuitOpenError:
        pass
"""


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def stdlib_only() -> Iterator[None]:
    """structlog not configured (other tests' capture_logs() leave it configured)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def records(stdlib_only: None) -> Iterator[Records]:
    logger = logging.getLogger(LOGGER_NAME)
    handler = Records()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def trip(reg: Registry, name: str = "svc") -> None:
    b = reg.get(name, failure_threshold=1, recovery_timeout=30)
    b.record_failure(b.admit(), Boom("down"))


# -- nothing unless asked ----------------------------------------------------------------------------


def test_tripping_a_circuit_with_no_logging_configured_writes_nothing() -> None:
    proc = run_script(TRIP)
    assert (proc.stdout, proc.stderr) == ("", "")


def test_tripping_a_persisted_circuit_with_no_logging_configured_writes_nothing(tmp_path: Path) -> None:
    proc = run_script(TRIP, CIRCUITRY_DB=str(tmp_path / "app.db"))
    assert (proc.stdout, proc.stderr) == ("", "")


def test_a_database_circuitry_db_names_that_cannot_be_used_is_one_logged_error(tmp_path: Path) -> None:
    """CIRCUITRY_DB=<a directory>: the first protected call raised ConfigurationError (not naming
    CIRCUITRY_DB), the next ones succeeded, and nothing was stored, silently. Now no call sees it: one
    error is logged, naming CIRCUITRY_DB and the reason, and every call runs from memory alike."""
    proc = run_script("""
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from circuitry import circuit, default_registry

        @circuit("e")
        def f():
            return "ok"

        print([f() for _ in range(3)], default_registry().store)
    """, CIRCUITRY_DB=str(tmp_path))
    assert proc.stdout.split("\n")[0] == "['ok', 'ok', 'ok'] None"
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"ERROR circuitry.default_store_failed database={tmp_path} source=CIRCUITRY_DB "
                           "error_type=ConfigurationError "
                           f'reason="CIRCUITRY_DB must be a database file, but {tmp_path} is a directory" '
                           'note="circuits of this process are kept in memory only'), line


def test_structlog_imported_but_not_configured_prints_nothing() -> None:
    """structlog's defaults print to stdout: circuitry must not log through them."""
    proc = run_script("import structlog\n" + textwrap.dedent(TRIP))
    assert (proc.stdout, proc.stderr) == ("", "")


BROKEN_FUNCTIONS = """
    from circuitry import circuit

    @circuit("x", on=lambda e: 1 / 0, retry_after=lambda e: {}["no header"], failure_threshold=1)
    def f():
        raise ValueError

    try:
        f()
    except ValueError:
        pass
"""


def test_a_classifier_or_retry_after_that_raises_writes_nothing_unconfigured() -> None:
    # _report() called structlog's logger directly, whose defaults print to stdout
    proc = run_script(BROKEN_FUNCTIONS)
    assert (proc.stdout, proc.stderr) == ("", "")
    shown = run_script("import logging\nlogging.basicConfig()\n" + textwrap.dedent(BROKEN_FUNCTIONS))
    assert shown.stdout == ""
    assert [line.split(" ")[0] for line in shown.stderr.splitlines()] == [
        "ERROR:circuitry:circuitry.classifier_failed", "ERROR:circuitry:circuitry.retry_after_failed",
        "WARNING:circuitry:circuitry.circuit_opened"]


def test_importing_circuitry_imports_no_logging_or_metrics_backend() -> None:
    proc = run_script(TRIP + """
    import sys
    print(sorted(m for m in ("structlog", "prometheus_client", "opentelemetry") if m in sys.modules))
    """)
    assert proc.stdout.strip() == "[]"


def test_with_basic_config_the_opening_appears_on_stderr_with_its_fields() -> None:
    proc = run_script("import logging\nlogging.basicConfig(level=logging.INFO)\n" + textwrap.dedent(TRIP))
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if "circuitry.circuit_opened" in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("WARNING:circuitry:circuitry.circuit_opened circuit=payment_api ")
    for field in ("from_state=closed", "to_state=open", "reason=failure_threshold", "generation=1", " pid=",
                  " at="):
        assert field in lines[0]


def test_with_basic_config_at_warning_the_default_level_shows_openings_only() -> None:
    proc = run_script("import logging\nlogging.basicConfig()\n" + textwrap.dedent(TRIP) + """
    from circuitry import default_registry
    default_registry()["payment_api"].reset()
    """)
    assert "circuitry.circuit_opened" in proc.stderr
    assert "circuitry.circuit_closed" not in proc.stderr  # info: below the root's warning level


def test_the_circuitry_logger_at_critical_logs_no_transition() -> None:
    proc = run_script("import logging\nlogging.basicConfig(level=logging.DEBUG)\n"
                      "logging.getLogger('circuitry').setLevel(logging.CRITICAL)\n" + textwrap.dedent(TRIP))
    assert (proc.stdout, proc.stderr) == ("", "")


def test_the_circuitry_logger_at_critical_silences_structlog_too() -> None:
    reg = Registry(hooks=[LoggingHook()], clock=FakeClock())
    logger = logging.getLogger(LOGGER_NAME)
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with capture_logs() as logs:
            trip(reg)
    finally:
        logger.setLevel(old)
    assert logs == []


# -- through the application's configuration ---------------------------------------------------------


def test_a_transition_is_one_record_with_structured_fields(records: Records) -> None:
    clock = FakeClock(wall=1_700_000_000.25)
    reg = Registry(hooks=[LoggingHook()], clock=clock)
    trip(reg)
    [record] = records.records
    assert record.levelno == logging.WARNING and record.name == "circuitry"
    assert record.event == "circuitry.circuit_opened"  # type: ignore[attr-defined]
    fields = record.circuitry  # type: ignore[attr-defined]
    assert {k: fields[k] for k in ("circuit", "from_state", "to_state", "reason", "generation", "pid")} == {
        "circuit": "svc", "from_state": "closed", "to_state": "open", "reason": "failure_threshold",
        "generation": 1, "pid": os.getpid()}
    assert fields["open_for"] == 30 and fields["error_type"] == "tests.conftest.Boom"
    assert fields["at"] == "2023-11-14T22:13:20.250000Z"
    assert datetime.fromisoformat(fields["at"].replace("Z", "+00:00")).timestamp() == 1_700_000_000.25
    assert record.getMessage().startswith("circuitry.circuit_opened circuit=svc from_state=closed to_state=open ")
    assert 'error_message=down' in record.getMessage()


def test_levels_opened_warning_half_opened_and_closed_info(records: Records) -> None:
    clock = FakeClock()
    reg = Registry(hooks=[LoggingHook()], clock=clock)
    trip(reg)
    clock.advance(30)
    b = reg["svc"]
    b.record_success(b.admit())
    assert [(r.event, r.levelname) for r in records.records] == [  # type: ignore[attr-defined]
        ("circuitry.circuit_opened", "WARNING"), ("circuitry.circuit_half_opened", "INFO"),
        ("circuitry.circuit_closed", "INFO")]


def test_transitions_adopted_from_another_process_log_at_debug(records: Records) -> None:
    clock = FakeClock()
    reg = Registry(hooks=[LoggingHook()], clock=clock)
    b = reg.get("svc")
    b.adopt(CircuitState.OPEN, opened_at=clock.time(), open_until=clock.time() + 60, open_for=60, reason="remote")
    b.adopt(CircuitState.CLOSED, reason="restored")
    assert [(r.circuitry["reason"], r.levelno) for r in records.records] == [  # type: ignore[attr-defined]
        ("remote", logging.DEBUG), ("restored", logging.DEBUG)]


def test_adopted_transitions_can_be_left_out_entirely(records: Records) -> None:
    clock = FakeClock()
    reg = Registry(hooks=[LoggingHook(remote_level=None)], clock=clock)
    b = reg.get("svc", failure_threshold=1)
    b.adopt(CircuitState.OPEN, opened_at=clock.time(), open_until=clock.time() + 60, open_for=60, reason="remote")
    b.reset()  # a local transition is still logged
    assert [r.circuitry["reason"] for r in records.records] == ["manual"]  # type: ignore[attr-defined]


def test_rejections_and_failures_are_logged_only_when_asked(records: Records) -> None:
    reg = Registry(hooks=[LoggingHook(kinds=EventKind)], clock=FakeClock())
    trip(reg)
    with pytest.raises(CircuitOpenError):
        reg["svc"].admit()
    assert [(r.event, r.levelno) for r in records.records] == [  # type: ignore[attr-defined]
        ("circuitry.call_failed", logging.DEBUG), ("circuitry.circuit_opened", logging.WARNING),
        ("circuitry.call_rejected", logging.INFO)]
    assert records.records[2].circuitry["state"] == "open"  # type: ignore[attr-defined]


def test_configured_structlog_gets_the_lines_instead_of_stdlib(records: Records) -> None:
    reg = Registry(hooks=[LoggingHook()], clock=FakeClock())
    with capture_logs() as logs:
        trip(reg)
    assert records.records == []
    assert [(e["event"], e["log_level"], e["circuit"], e["to_state"]) for e in logs] == [
        ("circuitry.circuit_opened", "warning", "svc", "open")]


def test_a_given_logger_receives_the_lines(stdlib_only: None) -> None:
    got: list[tuple[str, str, dict[str, object]]] = []

    class Logger:
        def __getattr__(self, level: str) -> object:
            return lambda event, **kw: got.append((level, event, kw))

    reg = Registry(hooks=[LoggingHook(logger=Logger())], clock=FakeClock())
    trip(reg)
    assert [(level, event) for level, event, _ in got] == [("warning", "circuitry.circuit_opened")]


def test_a_hook_that_raises_is_logged_as_an_error(records: Records) -> None:
    class Broken:
        kinds = frozenset({EventKind.TRANSITION})

        def __call__(self, event: object) -> None:
            raise RuntimeError("hook bug")

    reg = Registry(hooks=[Broken()], clock=FakeClock())
    trip(reg)
    [record] = records.records
    assert record.levelno == logging.ERROR and record.event == "circuitry.hook_failed"  # type: ignore[attr-defined]
    assert record.circuitry["error_message"] == "hook bug"  # type: ignore[attr-defined]


# -- the helper --------------------------------------------------------------------------------------


def test_log_takes_level_names_and_numbers_and_quotes_what_needs_it(records: Records) -> None:
    log("warning", "circuitry.store_fault", path="/tmp/a b.db", fault="locked", retry=True, n=None)
    log(logging.INFO, "circuitry.store_opened", path="/tmp/x.db")
    log(25, "circuitry.custom_level")  # a level number with no name works too
    assert [r.levelno for r in records.records] == [logging.WARNING, logging.INFO, 25]
    assert records.records[0].getMessage() == (
        'circuitry.store_fault path="/tmp/a b.db" fault=locked retry=true n=null')
    assert records.records[0].circuitry == {  # type: ignore[attr-defined]
        "path": "/tmp/a b.db", "fault": "locked", "retry": True, "n": None}


def test_log_never_raises(records: Records) -> None:
    log("no-such-level", "circuitry.x")  # an unknown level name is dropped, not raised
    assert records.records == []


# -- names -------------------------------------------------------------------------------------------


def test_the_default_hook_is_the_logging_hook_and_structloghook_remains_an_alias() -> None:
    assert [type(h) for h in Registry().dispatcher.hooks] == [LoggingHook]
    assert circuitry.StructlogHook is LoggingHook
    assert circuitry.events.StructlogHook is LoggingHook
    with pytest.raises(AttributeError):
        circuitry.events.NoSuchName  # type: ignore[attr-defined]


def test_the_default_hook_keeps_calls_off_the_event_paths() -> None:
    """It listens to transitions only, so refusals and failures take the faces' inline paths."""
    dispatcher = Registry().dispatcher
    assert dispatcher.rejection == () and dispatcher.failure == ()
    assert [type(h) for h in dispatcher.transition] == [LoggingHook]
