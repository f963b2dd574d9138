"""The store's promises that were once broken (issue "The store, reshaped and made correct"): each test
here failed on the store as it was, and pins the fix. Several stores on one file stand for several
processes (each has its own connections, and sees the others' commits through ``PRAGMA data_version``);
the real multi-process cases are in ``test_store_processes.py``.
"""

from __future__ import annotations

import calendar
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from structlog.testing import capture_logs

from circuitry import CircuitOpenError, CircuitState, Registry
from circuitry._core import CircuitBreaker
from circuitry.store import SQLiteStore
from circuitry.store.records import printable
from circuitry.store.sqlite.schema import LATEST_VERSION, MIGRATIONS, applied_versions, migrate
from circuitry.testing import FakeClock
from circuitry.tools.cli import main as cli

from .conftest import Boom, eventually

WALL = time.time()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0, wall=WALL)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


@pytest.fixture
def make(db: Path, clock: FakeClock) -> Iterator[Callable[..., tuple[Registry, SQLiteStore]]]:
    made: list[SQLiteStore] = []

    def factory(path: Path = db, **options: Any) -> tuple[Registry, SQLiteStore]:
        options.setdefault("poll_interval", 0.01)
        options.setdefault("analysis_interval", 3600.0)
        store = SQLiteStore(path, clock=clock, **options)
        made.append(store)
        return Registry(clock=clock, hooks=[], store=store), store

    yield factory
    for store in made:
        store.close(timeout=2)


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def fail(b: CircuitBreaker, n: int = 1, exc: BaseException | None = None) -> None:
    for _ in range(n):
        b.record_failure(b.admit(), exc or Boom("down"))


# -- 2. one transition, one row ---------------------------------------------------------------------


def test_several_processes_tripping_together_write_one_opening(make: Any, db: Path) -> None:
    """Four processes trip the same circuit before any hears of the others: the shared state changes
    once, and so the history has one ``closed -> open`` row, written by the process that changed it."""
    pairs = [make() for _ in range(4)]
    breakers = [reg.get("svc", failure_threshold=1, recovery_timeout=60) for reg, _ in pairs]
    for _, store in pairs:
        assert store.flush()
    for b in breakers:
        fail(b)  # each trips its own breaker at once, from memory
    for _, store in pairs:
        assert store.flush()
    assert eventually(lambda: len({b.stats().opened_at for b in breakers}) == 1)
    opened = rows(db, "SELECT process, additional_data FROM circuit_breaker_events WHERE event_type = 'state_change' "
                      "AND to_state = 'open'")
    assert len(opened) == 1
    (writer, _), = opened
    (updated_by,), = rows(db, "SELECT updated_by FROM circuit_breaker_states WHERE service_name = 'svc'")
    assert writer == updated_by
    assert sum(store.health().superseded for _, store in pairs) == 3  # the others' own openings, counted


def test_a_breaker_that_trips_while_its_writer_opens_the_row_writes_one_opening(
        make: Any, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failures of two processes reach the threshold together in the writer's transaction, and this
    process's breaker counts its own last failure meanwhile and opens itself: one ``closed -> open`` row.
    (The breaker's own opening was written on top, next cycle, as a second row, ``open -> open``.)"""
    (reg_a, store_a), (reg_b, store_b) = make(), make()
    a = reg_a.get("svc", failure_threshold=5, recovery_timeout=60)
    b = reg_b.get("svc", failure_threshold=5, recovery_timeout=60)
    assert store_a.flush() and store_b.flush()
    fail(b)
    assert store_b.flush()  # the shared count: 1
    fail(a, 4)  # this breaker: 4 of 5; the sum crosses in a's next cycle
    real = CircuitBreaker.next_open_period

    def trip_meanwhile(self: CircuitBreaker) -> float:
        if self is a and a.state is CircuitState.CLOSED:
            fail(a)  # the fifth: the breaker opens itself while its writer opens the shared row
        return real(self)

    monkeypatch.setattr(CircuitBreaker, "next_open_period", trip_meanwhile)
    store_a.flush(1)  # (the trip, made from the writer's own thread here, does not wake it: no clean cycle)
    assert a.state is CircuitState.OPEN
    assert store_a.flush() and store_b.flush()
    assert eventually(lambda: b.state is CircuitState.OPEN)
    opened = rows(db, "SELECT from_state, json_extract(additional_data, '$.reason') FROM circuit_breaker_events "
                      "WHERE event_type = 'state_change' AND to_state = 'open'")
    assert opened == [("closed", "shared_failures")]
    assert rows(db, "SELECT current_state FROM circuit_breaker_states") == [("open",)]
    assert store_a.health().superseded == 1  # the breaker's own opening, counted


def test_transitions_made_while_the_store_could_not_write_are_each_written_in_order(make: Any, db: Path,
                                                                                  clock: FakeClock) -> None:
    """Several local transitions between two writes (a fault episode, or a fast clock) are not dropped:
    the write that follows records each one, in order."""
    reg, store = make()
    b = reg.get("svc", failure_threshold=1, recovery_timeout=1)
    assert store.flush()
    with store.writer.io:  # the writer cannot write for a while
        fail(b)
        clock.advance(1)
        assert b.state is CircuitState.HALF_OPEN
        b.force_open()
    assert store.flush()
    got = rows(db, "SELECT from_state, to_state, json_extract(additional_data, '$.reason') FROM circuit_breaker_events "
                   "WHERE event_type = 'state_change' ORDER BY id")
    assert got == [("closed", "open", "failure_threshold"), ("open", "half_open", "recovery_timeout"),
                   ("half_open", "forced_open", "manual")]


def test_transitions_that_undo_each_other_within_one_cycle_are_still_history(make: Any, db: Path) -> None:
    """An opening reset before the writer's next cycle leaves the row as it was, and yet both
    transitions happened: both are written."""
    reg, store = make()
    b = reg.get("svc", failure_threshold=1)
    assert store.flush()
    with store.writer.io:
        fail(b)
        b.reset()
    assert store.flush()
    got = rows(db, "SELECT from_state, to_state FROM circuit_breaker_events WHERE event_type = 'state_change' "
                   "ORDER BY id")
    assert got == [("closed", "open"), ("open", "closed")]
    assert rows(db, "SELECT current_state FROM circuit_breaker_states") == [("closed",)]


def test_failures_before_the_first_write_are_counted_once(make: Any, db: Path) -> None:
    """Failures counted before the circuit's row existed go into the row with it, and are not added
    again as evidence (they once were: three failures opened a circuit whose threshold was five)."""
    reg, store = make()  # a fresh store: its writer has not connected yet
    b = reg.get("svc", failure_threshold=5)
    fail(b, 3)
    assert store.flush()
    assert store.flush()
    assert rows(db, "SELECT current_state, failure_count FROM circuit_breaker_states") == [("closed", 3)]
    assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'state_change'") == [(0,)]
    assert b.state is CircuitState.CLOSED


# -- 7. tables of an older shape ---------------------------------------------------------------------

_OLD_SHAPE = """
CREATE TABLE circuit_breaker_states (
    service_name TEXT PRIMARY KEY, current_state TEXT NOT NULL DEFAULT 'closed', failure_count INTEGER DEFAULT 0,
    failure_threshold INTEGER DEFAULT 5, recovery_timeout INTEGER DEFAULT 60, last_failure_time TIMESTAMP,
    state_changed_at TIMESTAMP);
CREATE TABLE circuit_breaker_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, service_name TEXT NOT NULL, event_type TEXT NOT NULL, from_state TEXT,
    to_state TEXT, error_type TEXT, error_message TEXT, additional_data TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE circuit_breaker_failure_patterns (
    id INTEGER PRIMARY KEY AUTOINCREMENT, service_name TEXT NOT NULL, pattern_type TEXT,
    time_window_seconds INTEGER, failure_count INTEGER, error_rate REAL, suggested_threshold INTEGER,
    suggested_timeout INTEGER, confidence_score REAL, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE circuit_breaker_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, service_name TEXT NOT NULL, alert_type TEXT NOT NULL, severity TEXT,
    message TEXT, details TEXT, acknowledged BOOLEAN DEFAULT FALSE, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
INSERT INTO circuit_breaker_states (service_name, current_state) VALUES ('legacy', 'closed');
"""


OLD_FAILURE_AT = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(WALL - 3600))


def _old_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_SHAPE)
        conn.execute("INSERT INTO circuit_breaker_events (service_name, event_type, created_at) "
                     "VALUES ('legacy', 'failure', ?)", (OLD_FAILURE_AT,))


def test_circuit_tables_of_an_older_shape_are_upgraded_and_written(make: Any, db: Path) -> None:
    _old_database(db)
    with capture_logs() as logs:
        reg, store = make()
        b = reg.get("legacy", failure_threshold=2)
        fail(b, 2)
        assert store.flush()
    assert rows(db, "SELECT current_state FROM circuit_breaker_states WHERE service_name = 'legacy'") == [("open",)]
    assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE service_name = 'legacy' "
                    "AND event_type = 'failure'") == [(3,)]  # the old row kept, two new ones
    assert rows(db, "SELECT ts FROM circuit_breaker_events WHERE id = 1") == [
        (float(calendar.timegm(time.strptime(OLD_FAILURE_AT, "%Y-%m-%d %H:%M:%S"))),)]
    assert set(applied_versions(sqlite3.connect(db))) == {m.version for m in MIGRATIONS}
    upgraded = [e for e in logs if e["event"] == "circuitry.schema_upgraded"]
    assert len(upgraded) == 1 and "circuit_breaker_events.ts" in upgraded[0]["added"]


@pytest.mark.parametrize("dropped", ["circuit%", "circuit_breaker_%"])
def test_circuit_tables_dropped_under_a_running_store_are_made_again(db: Path, dropped: str) -> None:
    """A schema tool that drops the tables it does not know, while the application runs: every circuit
    table, or all but ``circuitry_schema`` (which still records the latest version). The store stayed
    failed (``old_schema``) until a restart, its backlog growing; it reconnects, and connecting makes
    the tables again. (The system clock: the store retries after a backoff.)"""
    store = SQLiteStore(db, poll_interval=0.01, analysis_interval=3600.0)
    try:
        _dropped_and_made_again(store, db, dropped)
    finally:
        store.close()


def _dropped_and_made_again(store: SQLiteStore, db: Path, dropped: str) -> None:
    b = Registry(hooks=[], store=store).get("svc", failure_threshold=1000)
    b.record_success(b.admit())
    assert store.flush()
    with capture_logs() as logs:  # (from before the drop: the writer's next poll may see it first)
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?",
                                         (dropped,)).fetchall():
                conn.execute(f"DROP TABLE {table}")
        finally:
            conn.close()
        fail(b, 3)
        assert store.flush(10)
    assert store.health().healthy
    assert [e["fault"] for e in logs if e["event"] == "circuitry.store_fault"] == ["old_schema"]
    assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'failure'") == [(3,)]
    conn = sqlite3.connect(db)
    try:
        assert applied_versions(conn) == {m.version for m in MIGRATIONS}
    finally:
        conn.close()


@pytest.mark.parametrize(("table", "column"), [("circuit_breaker_events", "occurrences"),
                                               ("circuit_breaker_states", "reopen_count")])
def test_a_column_dropped_under_a_running_store_is_made_again(db: Path, table: str, column: str) -> None:
    """``ALTER TABLE ... DROP COLUMN`` by hand while the application runs: every write to the table
    failed, reported as an ``io_error`` and retried for good (the per-minute counts of every circuit
    stopped with it). The fault is the schema's, and reconnecting adds the column back. (The system
    clock: the store retries after a backoff.)"""
    store = SQLiteStore(db, poll_interval=0.01, analysis_interval=3600.0)
    try:
        b = Registry(hooks=[], store=store).get("svc", failure_threshold=2, recovery_timeout=3600)
        b.record_success(b.admit())
        assert store.flush()
        with capture_logs() as logs:
            conn = sqlite3.connect(db, isolation_level=None)
            try:
                conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
            finally:
                conn.close()
            fail(b, 2)  # a failure row and a transition: writes to both tables
            assert store.flush(10)
        assert store.health().healthy
        assert [e["fault"] for e in logs if e["event"] == "circuitry.store_fault"] in ([], ["old_schema"])
        assert any(e["event"] == "circuitry.schema_upgraded" and f"{table}.{column}" in e["added"] for e in logs)
        assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'failure'") == [(2,)]
        assert rows(db, "SELECT current_state FROM circuit_breaker_states WHERE service_name = 'svc'") == [("open",)]
    finally:
        store.close()


def test_a_bug_in_the_writer_is_logged_once_an_episode(make: Any, db: Path) -> None:
    """An exception that is no database error (a bug) was logged at error level on every retry, nine
    in three seconds; once is enough: it is said again only after a cycle goes through."""
    reg, store = make()
    b = reg.get("svc", failure_threshold=10**6)
    b.record_success(b.admit())
    assert store.flush()
    with capture_logs() as logs, mock.patch.object(store.backend, "changed_states",
                                                   side_effect=RuntimeError("a bug")) as broken:
        fail(b)
        assert not store.flush(1.5)
        assert broken.call_count >= 3  # retried, with backoff
    assert sum(1 for e in logs if e["event"] == "circuitry.store_bug") == 1
    assert store.flush(10) and store.health().healthy  # and it writes again once the bug is gone
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics") == [(1,)]


def test_a_process_started_while_its_database_is_down_probes_from_memory(make: Any, db: Path,
                                                                         clock: FakeClock) -> None:
    """The database cannot be read when the process starts (a server down; here, no database at the path):
    the fault is reported during the start-up wait, before the first breaker's link was listed, so it
    never heard of it -- and once open, the circuit refused every call until the database came back,
    waiting for a probe lease no writer could take."""
    db.write_bytes(b"not a database\n" * 100)
    reg, store = make(startup_wait=5.0)
    b = reg.get("svc", failure_threshold=1, recovery_timeout=1)
    assert eventually(lambda: store.health().fault == "not_a_database")  # (reported in the start-up wait)
    fail(b)
    assert b.state is CircuitState.OPEN
    clock.advance(1)
    b.record_success(b.admit())  # the probe, decided from memory
    assert b.state is CircuitState.CLOSED


class _Stuck:
    """A database that takes the connection and never answers (a frozen server): the writer's poll blocks
    until ``go`` is set."""

    def __init__(self, store: SQLiteStore) -> None:
        self.go = threading.Event()
        self.entered = threading.Event()
        real = store.backend.changed_states

        def stuck(conn: Any, since: int) -> Any:
            self.entered.set()
            self.go.wait(30)
            return real(conn, since)

        self.patch = mock.patch.object(store.backend, "changed_states", side_effect=stuck)


def test_a_database_that_stops_answering_lets_probes_be_decided_from_memory(make: Any, db: Path,
                                                                            clock: FakeClock) -> None:
    """No error, no timeout: the writer waits on a server that never answers, so no fault is reported,
    and a circuit that opened refused every call for as long (its probe waited for a lease). A step
    that has lasted past busy_timeout is a stall: probes are decided from memory, and the stall is
    said when the step ends."""
    reg, store = make(busy_timeout=0.2)
    b = reg.get("svc", failure_threshold=1, recovery_timeout=1)
    b.record_success(b.admit())
    assert store.flush()
    stuck = _Stuck(store)
    with capture_logs() as logs, stuck.patch:
        assert stuck.entered.wait(10)  # the writer is in the database, and stays
        fail(b)
        clock.advance(1)

        def probed() -> bool:
            try:
                b.record_success(b.admit())
            except CircuitOpenError:
                return False
            return True

        assert eventually(probed)  # once the step has lasted busy_timeout (0.2 s), from memory
        assert b.state is CircuitState.CLOSED
        stuck.go.set()
        assert store.flush(10)
    assert any(e["event"] == "circuitry.store_stalled" and e["seconds"] >= 0.2 for e in logs)  # (rounded)


def test_calls_a_stuck_database_never_took_are_said_to_be_lost(make: Any, clock: FakeClock) -> None:
    """Closing while the writer waits on a database that does not answer: the calls counted since its
    last write were lost without a word (the warning counted only queued event rows: none)."""
    reg, store = make()
    b = reg.get("svc", failure_threshold=10**6)
    b.record_success(b.admit())
    assert store.flush()
    stuck = _Stuck(store)
    with capture_logs() as logs, stuck.patch:
        assert stuck.entered.wait(10)
        for _ in range(100):
            b.record_success(b.admit())
        store.close(timeout=0.2)
        stuck.go.set()
    (lost,) = [e for e in logs if e["event"] == "circuitry.store_unflushed"]
    assert lost["calls"] == 100 and lost["rows"] == 0


def test_a_new_circuit_is_sampled_every_cycle_from_its_first_call(make: Any) -> None:
    """A circuit started "cold" -- its counts sampled every five seconds -- unless a sample happened to
    see it counting. A uvicorn worker that served 200 calls and was stopped 2 s later (its SIGTERM skips
    the exit flush) had written none of them; they were written 7.5 s after the calls, instead of 2.5 s
    now. A circuit is made by its first call: it is hot from the start, until it goes quiet."""
    reg, store = make()
    reg.get("svc", failure_threshold=10**6)
    link = store.links()[0]
    assert link.hot
    assert store.flush()
    assert link in store.writer._hot


def as_nobody(command: list[str]) -> list[str]:
    """``command`` as another user than root (root writes anywhere; a read-only file is read-only only to
    others), through setpriv; as it is for any other user."""
    import os
    import shutil

    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): cannot run as another user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]


def test_a_read_only_folder_keeps_a_stored_open_circuit_open() -> None:
    """A previous run left a circuit open for ten minutes; the database's folder is now read-only to
    the process (a read-only mount, a deploy directory). Reading a WAL database needs a -shm file made
    in its folder, so the process could read nothing, and its breaker started closed: calls went to a
    service the database records as down."""
    import os
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="circuitry-ro-"))
    try:
        base.chmod(0o755)
        folder = base / "deploy"
        folder.mkdir()
        db = folder / "app.db"
        store = SQLiteStore(db)
        b = Registry(hooks=[], store=store).get("svc", failure_threshold=1, recovery_timeout=600)
        fail(b)
        assert store.flush()
        store.close()
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()  # the last connection: SQLite removes the -wal and -shm files
        assert not (folder / "app.db-wal").exists()
        db.chmod(0o644)
        script = (f"from circuitry import Registry\nfrom circuitry.store import SQLiteStore\n"
                  f"store = SQLiteStore({str(db)!r})\n"
                  "b = Registry(hooks=[], store=store).get('svc', failure_threshold=1, recovery_timeout=600)\n"
                  "print(b.state.value)\nstore.close(timeout=0.5)\n")
        command = as_nobody([sys.executable, "-c", script])
        if os.geteuid() != 0:  # (root writes anywhere: it reads as nobody, in a folder root owns)
            folder.chmod(0o555)
        got = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=base,
                             env={**os.environ, "CIRCUITRY_DB": ":memory:"})
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == ["open"]
    finally:
        (base / "deploy").chmod(0o755) if (base / "deploy").exists() else None
        shutil.rmtree(base, ignore_errors=True)


def test_writes_resume_when_a_database_read_only_at_start_is_made_writable() -> None:
    """The application starts while its database file is read-only to it (a deploy with the wrong
    owner), and the operator fixes the permissions. Writes never resumed: a connection of another
    thread, opened read-only meanwhile, kept SQLite's shared WAL index read-only for the writer's
    reconnection; at exit the rows were "lost". Now the read-only fault closes those connections too."""
    import os
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="circuitry-ro-start-"))
    try:
        db = base / "app.db"
        store = SQLiteStore(db)
        b = Registry(hooks=[], store=store).get("svc", failure_threshold=1, recovery_timeout=600)
        b.record_success(b.admit())
        assert store.flush()
        store.close()
        keep = sqlite3.connect(db)  # another process has it open: its -wal and -shm files stay, read-only too
        keep.execute("SELECT count(*) FROM circuit_breaker_states").fetchall()
        assert (base / "app.db-shm").exists()
        go = base / "writable"
        script = (
            "import pathlib, sys, time\nfrom circuitry import Registry\nfrom circuitry.store import SQLiteStore\n"
            f"store = SQLiteStore({str(db)!r}, poll_interval=0.01)\n"
            "reg = Registry(hooks=[], store=store)\n"
            "b = reg.get('svc', failure_threshold=1, recovery_timeout=600)\n"
            "b.record_failure(b.admit(), ConnectionError('down'))\n"
            "assert not store.flush(1.0) and store.health().fault == 'read_only', store.health()\n"
            "store.read.state_now('svc')  # a reader's connection, opened while the file is read-only\n"
            "print('read-only', flush=True)\n"
            f"while not pathlib.Path({str(go)!r}).exists():\n    time.sleep(0.05)\n"
            "print(store.flush(20), store.health().fault, flush=True)\nstore.close(timeout=1)\n")
        command = as_nobody([sys.executable, "-c", script])
        if os.geteuid() == 0:  # root writes anywhere: it runs as nobody, on a file nobody owns
            for path in (base, *base.iterdir()):
                os.chown(path, 65534, 65534)
        for path in base.iterdir():
            path.chmod(0o444)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=base,
                                env={**os.environ, "CIRCUITRY_DB": ":memory:"})
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "read-only", proc.stderr.read() if proc.stderr else ""
        for path in base.iterdir():
            path.chmod(0o644)
        go.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.split() == ["True", "None"], err
        assert rows(db, "SELECT current_state FROM circuit_breaker_states WHERE service_name = 'svc'") == [("open",)]
        keep.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_store_says_which_file_it_cannot_open_and_why(tmp_path: Path) -> None:
    """SQLite's "unable to open database file" names neither the file nor the reason: the store's fault
    said only that. It now names the path and what the system says (here: it is a directory)."""
    db = tmp_path / "app.db"
    store = SQLiteStore(db)
    db.mkdir()  # (after the store was made, which refuses a directory)
    try:
        with capture_logs() as logs:
            Registry(hooks=[], store=store).get("svc")
            assert not store.flush(0.5)
        faults = [e for e in logs if e["event"] == "circuitry.store_fault"]
        assert faults and faults[0]["error_message"] == f"unable to open database file {db}: it is a directory", faults
        assert store.health().fault == "unavailable"
    finally:
        store.close(timeout=0.5)


def test_a_place_the_process_cannot_write_is_named_with_the_reason() -> None:
    """A database in a folder the process cannot write: the store's fault and `circuitry migrate` said
    "unable to open database file", without the path or the reason."""
    import os
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="circuitry-unwritable-"))  # (a folder every user can reach)
    try:
        base.chmod(0o755)
        folder = base / "deploy"
        folder.mkdir()
        db = folder / "app.db"
        script = ("import logging\nlogging.basicConfig(level=logging.WARNING)\n"
                  "from circuitry import Registry\nfrom circuitry.store import SQLiteStore\n"
                  f"store = SQLiteStore({str(db)!r})\nRegistry(hooks=[], store=store).get('svc')\n"
                  "store.flush(0.5)\nprint(store.health().fault)\nstore.close(timeout=0.5)\n")
        env = {**os.environ, "CIRCUITRY_DB": ":memory:"}
        if os.geteuid() != 0:  # (root writes anywhere: it runs as nobody, in a folder root owns)
            folder.chmod(0o555)
        got = subprocess.run(as_nobody([sys.executable, "-c", script]), capture_output=True, text=True,
                             timeout=120, cwd=base, env=env)
        assert got.stdout.split() == ["read_only"], got.stderr
        assert f'"unable to open database file {db}: Permission denied (cannot create it in {folder})"' in got.stderr
        got = subprocess.run(as_nobody([sys.executable, "-m", "circuitry", "migrate", "--db", str(db)]),
                             capture_output=True, text=True, timeout=120, cwd=base, env=env)
        assert got.returncode == 2
        assert got.stderr == (f"circuitry migrate: unable to open database file {db}: Permission denied "
                              f"(cannot create it in {folder})\n")
    finally:
        (base / "deploy").chmod(0o755) if (base / "deploy").exists() else None
        shutil.rmtree(base, ignore_errors=True)


def test_migrating_makes_a_dropped_table_again(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        assert migrate(conn) == [m.version for m in MIGRATIONS]
        conn.execute("DROP TABLE circuit_breaker_alerts")
        logged: list[tuple[str, list[str]]] = []
        assert migrate(conn, log=lambda event, tables: logged.append((event, tables))) == []
        assert logged == [("circuitry.schema_repaired", ["circuit_breaker_alerts"])]
        assert conn.execute("SELECT count(*) FROM circuit_breaker_alerts").fetchone() == (0,)
        assert migrate(conn) == []  # nothing more to do
    finally:
        conn.close()


def test_the_sql_file_alone_does_not_record_a_version_it_could_not_apply(db: Path) -> None:
    """``sqlite3 db < migrations/008_….sql`` on tables of an older shape cannot add the columns; it must
    not record version 8 (then `circuitry migrate` would say "up to date"); the CLI upgrades it."""
    _old_database(db)
    sql = MIGRATIONS[0].path.read_text()
    proc = subprocess.run(["sqlite3", str(db)], input=sql, text=True, capture_output=True)
    if proc.returncode == 127:  # pragma: no cover - the sqlite3 shell is part of the image
        pytest.skip("the sqlite3 command-line shell is not installed")
    assert 8 not in applied_versions(sqlite3.connect(db))
    code = cli(["migrate", "--db", str(db)], out=open("/dev/null", "w"))  # noqa: SIM115
    assert code == 0
    assert max(applied_versions(sqlite3.connect(db))) == LATEST_VERSION
    conn = sqlite3.connect(db)
    assert migrate(conn) == []  # and now it is up to date
    conn.close()


# -- 8. a value the database cannot store -------------------------------------------------------------


def test_a_row_the_database_refuses_never_wedges_the_store(make: Any, db: Path) -> None:
    """An exception message with a lone surrogate cannot be encoded: that row is logged and skipped,
    every other row and every count is written."""
    reg, store = make(failure_rows_per_second=10_000)
    b = reg.get("svc", failure_threshold=10**6)
    with capture_logs() as logs:
        fail(b, 3)
        fail(b, 1, ValueError("bad \ud800 message"))
        fail(b, 3)
        assert store.flush()
    assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'failure'") == [(6,)]
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics") == [(7,)]
    assert store.health().refused_rows == 1
    assert sum(1 for e in logs if e["event"] == "circuitry.store_row_refused") == 1
    c = reg.get("later", failure_threshold=1)
    fail(c)
    assert store.flush()
    assert rows(db, "SELECT current_state FROM circuit_breaker_states WHERE service_name = 'later'") == [("open",)]


GARBAGE = {  # what a hand-written UPDATE may leave in a state row: SQLite keeps text in a number's column
    "open_until": "open_until = 'x', current_state = 'open'",
    "version": "version = 'v'",
    "opened_at": "opened_at = 'garbage', current_state = 'open'",
    "failure_count": "failure_count = 'many'",
    "every number": "version = 'v', opened_at = 'bad', open_until = 'x', open_for = 'long', reopen_count = 'r', "
                    "failure_count = 'f', current_state = 'open'",
    # text sorts above every number in SQLite: the next change_seq of every write became 1, below what the
    # other processes had seen, and they stopped seeing any circuit's changes
    "change_seq": "change_seq = 'x'",
}


@pytest.mark.parametrize("damage", list(GARBAGE))
def test_a_state_row_holding_text_for_numbers_is_repaired_and_raises_into_no_call(make: Any, db: Path,
                                                                                  damage: str) -> None:
    """Text where a number belongs in a circuit's stored row: every protected call of a process starting
    on it raised TypeError (adopting ``open_until - now``), and in a running process every writer cycle
    failed, so no circuit's counts were written again. The values are read as unknown and the next
    write replaces them -- or, if the version is damaged (no compare-and-set can match it), the row is
    repaired, with a version every process adopts, and that is said; counts and transitions go on being
    written."""
    reg, store = make()
    b = reg.get("svc", failure_threshold=2, recovery_timeout=5)
    other = reg.get("other", failure_threshold=10**6)
    watched = reg.get("watched", failure_threshold=1, recovery_timeout=3600)
    b.record_success(b.admit())
    assert store.flush()
    bump = "" if "change_seq" in GARBAGE[damage] else ", change_seq = change_seq + 100"
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE circuit_breaker_states SET {GARBAGE[damage]}{bump} WHERE service_name = 'svc'")
    conn.close()
    with capture_logs() as logs:
        reg2, store2 = make()  # a process starting on the damaged row
        b2 = reg2.get("svc", failure_threshold=2, recovery_timeout=5)
        fail(reg2.get("watched", failure_threshold=1, recovery_timeout=3600))  # another circuit's change ...
        assert store2.flush()
        assert eventually(lambda: store.flush() and watched.state is CircuitState.OPEN)  # ... reaches the first
        assert store2.flush() and store.flush()
        for breaker in (b, b2):  # both processes: calls are decided, and nothing but a refusal is raised
            try:
                breaker.record_success(breaker.admit())
            except CircuitOpenError:
                pass
        fail(other, 3)
        assert store.flush() and store2.flush()
    ((version, kind),) = rows(db, "SELECT version, typeof(version) FROM circuit_breaker_states "
                                  "WHERE service_name = 'svc'")
    assert kind == "integer"
    if "version = 'v'" in GARBAGE[damage]:  # no compare-and-set can match it: repaired, and said so
        assert sum(1 for e in logs if e["event"] == "circuitry.store_row_repaired") >= 1
    assert not any(e["event"] == "circuitry.store_bug" for e in logs), logs
    assert store.health().fault is None and store2.health().fault is None
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics WHERE service_name = 'other'") == [(3,)]
    fail(b2, 2)  # and the circuit is shared again: the second process opens it for the first
    assert store2.flush()
    assert eventually(lambda: store.flush() and b.state is CircuitState.OPEN)
    assert rows(db, "SELECT current_state FROM circuit_breaker_states WHERE service_name = 'svc'") == [("open",)]
    assert version >= 1
    assert rows(db, "SELECT count(*) FROM circuit_breaker_states WHERE service_name = 'svc' AND ("
                    "typeof(open_until) = 'text' OR typeof(opened_at) = 'text' OR typeof(failure_count) = 'text' "
                    "OR typeof(open_for) = 'text' OR typeof(reopen_count) = 'text')") == [(0,)]


def test_a_name_no_database_can_store_is_not_persisted_and_stops_nothing(make: Any, db: Path,
                                                                         clock: FakeClock) -> None:
    reg, store = make()
    with mock.patch("circuitry._core.validate_name", lambda name: name):  # as if it got past validation
        bad = CircuitBreaker("bad\ud800", clock=clock)
    with capture_logs() as logs:
        store.adopt(bad)
        good = reg.get("good", failure_threshold=1)
        fail(good)
        assert store.flush()
    assert bad.linked is None
    assert any(e["event"] == "circuitry.store_name_refused" for e in logs)
    assert rows(db, "SELECT service_name, current_state FROM circuit_breaker_states") == [("good", "open")]


# -- 9, 10. probe leases ------------------------------------------------------------------------------


def test_a_cancelled_probe_frees_the_circuit_at_once(make: Any, clock: FakeClock) -> None:
    """A probe cancelled (CancelledError, KeyboardInterrupt) gives its lease back at once; the next
    caller gets a probe within a writer cycle, not after probe_timeout."""
    reg, store = make()
    b = reg.get("svc", failure_threshold=1, recovery_timeout=5, probe_timeout=60)
    fail(b)
    clock.advance(5)
    assert store.flush()
    probe = b.admit()
    assert probe.lease > 0
    b.release(probe)  # cancelled
    with pytest.raises(CircuitOpenError) as refused:
        b.admit()  # the lease is on its way back; this caller's wish is noted
    assert refused.value.retry_after is not None and refused.value.retry_after <= 0.1
    assert store.flush()
    again = b.admit()  # no clock time has passed: far less than probe_timeout
    assert again.probe is not None and again.lease != probe.lease
    b.record_success(again)
    assert b.state is CircuitState.CLOSED


def _half_open_in_two(make: Any, clock: FakeClock) -> list[tuple[CircuitBreaker, SQLiteStore]]:
    """Two processes' breakers of one circuit (one probe, 5 s open period, 30 s probe timeout), tripped and
    at the end of their open period: the (breaker, store) pairs, the one whose writer took the probe lease
    first (which one does is a race between the writers)."""
    pairs = []
    for _ in range(2):
        reg, store = make()
        pairs.append((reg.get("svc", failure_threshold=1, recovery_timeout=5, probe_timeout=30), store))
    fail(pairs[0][0])
    assert eventually(lambda: pairs[1][0].state is CircuitState.OPEN)
    clock.advance(5)
    assert eventually(lambda: any(b.linked.grants for b, _ in pairs))  # type: ignore[union-attr]
    return sorted(pairs, key=lambda pair: not pair[0].linked.grants)  # type: ignore[union-attr]


def test_a_dead_probes_lease_does_not_outlive_a_wall_clock_step_back(make: Any, clock: FakeClock) -> None:
    """The wall clock steps back an hour while a dead process holds a lease: the lease, dated in the
    future now, counts as expired (it does not keep the circuit refusing for an hour)."""
    (dead, dead_store), (live, live_store) = _half_open_in_two(make, clock)
    dead.admit()  # its probe; then its process "dies": the lease is never given back
    dead_store.writer.stop(2)
    clock.set_wall(clock.time() - 3600)
    clock.advance(1)
    with pytest.raises(CircuitOpenError):
        live.admit()  # the live process's wish for a lease
    assert live_store.flush()
    assert eventually(lambda: bool(live.linked.grants))  # type: ignore[union-attr]
    assert live.admit().probe is not None


def test_a_failed_probe_keeps_its_lease_until_the_reopening_is_written(
        make: Any, clock: FakeClock, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer cycle lands between a failed probe and the write of its re-opening (the cycle took its
    circuits to write just before the probe ended): it must not give the lease back yet. The row still
    says half_open, so another process would take a lease and probe at once, and the re-opening, written
    next, would then delete that lease while its probe ran, letting a third probe in beside it (two probes
    in flight with ``half_open_max_calls=1``: seen with eight processes on a busy machine)."""
    (prober, prober_store), (other, other_store) = _half_open_in_two(make, clock)
    probe = prober.admit()
    assert probe.lease > 0
    assert prober_store.flush() and other_store.flush()

    # Every cycle of the prober's writer now finds the circuit already taken for writing (it comes again
    # next cycle).
    monkeypatch.setattr(prober_store.sharing, "sync", lambda conn, link, now: prober_store._dirty.append(link))
    prober.record_failure(probe, Boom("still down"))
    assert prober.state is CircuitState.OPEN
    assert prober_store.flush()
    assert rows(db, "SELECT current_state FROM circuit_breaker_states") == [("half_open",)]
    assert rows(db, "SELECT count(*) FROM circuit_breaker_probe_leases WHERE kind = 'held'") == [(1,)]
    for _ in range(2):  # the other wants a probe; its writer finds the lease held
        with pytest.raises(CircuitOpenError):
            other.admit()
        assert other_store.flush()
    with pytest.raises(CircuitOpenError):
        other.admit()

    monkeypatch.undo()
    assert prober_store.flush()
    assert rows(db, "SELECT current_state FROM circuit_breaker_states") == [("open",)]
    assert rows(db, "SELECT count(*) FROM circuit_breaker_probe_leases WHERE kind = 'held'") == [(0,)]
    assert eventually(lambda: other.state is CircuitState.OPEN)


# -- 11. nothing on the caller's thread ----------------------------------------------------------------


def test_no_protected_call_touches_the_database(make: Any, clock: FakeClock) -> None:
    """Every database statement runs on the store's own threads: none on the thread making protected
    calls, through every state (closed, failing, open, half-open probes, cancelled, forced)."""
    reg, store = make()
    callers: list[str] = []
    main = threading.current_thread()
    real = store.backend.connect

    class Watched:
        """The real connection, noting every statement run on the protected calls' thread."""

        def __init__(self, conn: Any) -> None:
            object.__setattr__(self, "_conn", conn)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

        def __setattr__(self, name: str, value: Any) -> None:
            setattr(self._conn, name, value)

        def execute(self, sql: str, params: Any = ()) -> Any:
            if threading.current_thread() is main:
                callers.append(sql)
            return self._conn.execute(sql, params)

        def executemany(self, sql: str, params: Any) -> Any:
            if threading.current_thread() is main:
                callers.append(sql)
            return self._conn.executemany(sql, params)

    def connect(role: Any, *, timeout: float) -> Any:
        return Watched(real(role, timeout=timeout))

    store.backend.connect = connect  # type: ignore[method-assign]
    store.writer.drop_conn()
    store.writer.warm = True  # the one no-wait read at adoption is allowed; this test is about calls
    b = reg.get("svc", failure_threshold=2, recovery_timeout=5)
    for _ in range(3):
        for _ in range(50):
            b.record_success(b.admit())
        fail(b, 2)
        for _ in range(10):
            with pytest.raises(CircuitOpenError):
                b.admit()
        clock.advance(5)
        for _ in range(3):
            try:
                p = b.admit()
            except CircuitOpenError:
                time.sleep(0.02)  # the writer takes the lease meanwhile
                continue
            b.release(p)
        b.force_open()
        b.reset()
    assert store.flush()
    assert callers == []


def _script(db: Path, body: str) -> str:
    return f"""
import os, sqlite3, sys, time
from circuitry import Registry
from circuitry.store import SQLiteStore
store = SQLiteStore({str(db)!r}, busy_timeout=60.0)
reg = Registry(hooks=[], store=store)
b = reg.get("svc", failure_threshold=1)
b.record_success(b.admit())
store.flush(10)
blocker = sqlite3.connect({str(db)!r}, isolation_level=None)
blocker.execute("BEGIN EXCLUSIVE")  # as if another process held the database for a long time
{body}
"""


def test_fork_and_exit_do_not_wait_for_a_locked_database(db: Path) -> None:
    """With the database locked by another connection and a busy_timeout of 60 s, fork() and interpreter
    exit finish long before that (the old store waited up to busy_timeout in both). The bound below is a
    liveness bound with a wide margin, not a speed claim."""
    body = """
b.record_failure(b.admit(), RuntimeError("down"))
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(f"fork {time.monotonic() - t0:.3f}", flush=True)
"""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _script(db, body)], capture_output=True, text=True, timeout=120,
                          env={"CIRCUITRY_DB": "none", "PATH": "/usr/bin:/bin"})
    whole = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    fork_seconds = float(proc.stdout.split()[-1])
    assert fork_seconds < 20 and whole < 30, (fork_seconds, whole)


# -- 12, 13, 14: forgetting, pruning, one analysis ------------------------------------------------------


def test_a_forgotten_breaker_is_forgotten_by_its_store(make: Any) -> None:
    reg, store = make()
    for i in range(20):
        reg.get(f"svc-{i}")
    assert len(store.links()) == 20
    reg.remove("svc-3")
    assert len(store.links()) == 19 and "svc-3" not in {link.name for link in store.links()}
    reg.clear()
    assert store.links() == []
    assert store.flush()


def test_patterns_and_alerts_are_pruned_with_the_events(make: Any, db: Path, clock: FakeClock) -> None:
    reg, store = make(retention=3600)
    b = reg.get("svc", failure_threshold=1)
    fail(b)
    assert store.flush()
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO circuit_breaker_failure_patterns (service_name, pattern_type, "
                         "time_window_seconds, failure_count, error_rate, confidence_score, ts) "
                         "VALUES ('svc', 'burst', 900, 20, 0.1, 0.9, ?)", [(WALL - 7200,), (WALL,)])
        conn.executemany("INSERT INTO circuit_breaker_alerts (service_name, alert_type, severity, message, ts) "
                         "VALUES ('svc', 'circuit_opened', 'error', 'old', ?)", [(WALL - 7200,), (WALL,)])
    store.writer._last_prune = 0.0  # the next cycle prunes
    assert store.flush()
    assert rows(db, "SELECT count(*) FROM circuit_breaker_failure_patterns") == [(1,)]
    assert rows(db, "SELECT message FROM circuit_breaker_alerts WHERE message = 'old'") == [("old",)]


def test_one_analysis_per_circuit_and_period_across_processes(make: Any, db: Path, clock: FakeClock) -> None:
    """Two processes with the same circuit run their periodic analysis in the same period: one pattern
    row, naming the process that ran it."""
    from circuitry.runners.analyst import Analyst

    (reg_a, store_a), (reg_b, store_b) = make(), make()
    reg_a.get("svc", failure_threshold=5)
    reg_b.get("svc", failure_threshold=5)
    assert store_a.flush() and store_b.flush()
    with sqlite3.connect(db) as conn:  # a bursty quarter of an hour, as the writers leave it
        conn.executemany("INSERT INTO circuit_breaker_seconds (service_name, second, calls, failures) "
                         "VALUES ('svc', ?, 10, ?)",
                         [(int(WALL) - 900 + s, 8 if s % 300 < 4 else 0) for s in range(900)])
    got_a = Analyst.attach(store_a).run_once(WALL)
    got_b = Analyst.attach(store_b).run_once(WALL)
    assert (len(got_a), len(got_b)) == (1, 0)
    assert rows(db, "SELECT process FROM circuit_breaker_failure_patterns") == [(store_a.process,)]


# -- 15. what reaches a terminal ------------------------------------------------------------------------


def test_terminal_escapes_never_reach_alerts_or_the_terminal(make: Any, db: Path) -> None:
    reg, store = make()
    reg.get("svc", failure_threshold=1)
    store.add_alert_callback(lambda alert: None)
    b = reg["svc"]
    fail(b, 1, RuntimeError("\x1b[2J\x1b[31mpwned\u202e"))
    assert eventually(lambda: bool(store.alerts("svc")))
    for alert in store.alerts("svc"):
        assert "\x1b" not in alert["message"] and "\u202e" not in alert["message"]
        assert "\x1b" not in (alert["details"] or "")
    out = __import__("io").StringIO()
    assert cli(["alerts", "--db", str(db)], out=out) == 0
    assert "\x1b" not in out.getvalue()
    assert printable("a\x1b[2Jb\u202ec\x85d") == "a\ufffd[2Jb\ufffdc\ufffdd"


def test_an_opening_alert_says_which_error_opened_the_circuit(make: Any) -> None:
    """The alert the store's analyst raises for an opening carries the error and the open period (it
    once carried only the states)."""
    reg, store = make()
    got: list[dict[str, Any]] = []
    store.add_alert_callback(got.append)
    b = reg.get("svc", failure_threshold=1, recovery_timeout=30)
    fail(b, 1, ConnectionError("refused"))
    assert eventually(lambda: any(a["alert_type"] == "circuit_opened" for a in got))
    details = next(a for a in got if a["alert_type"] == "circuit_opened")["details"]
    assert (details["error_type"], details["error_message"], details["open_for"]) == (
        "ConnectionError", "refused", 30.0)
    assert details["generation"] == b.generation


def test_query_is_read_only_and_cannot_create_files(make: Any, db: Path, tmp_path: Path) -> None:
    from circuitry.exceptions import StoreError

    reg, store = make()
    reg.get("svc")
    assert store.flush()
    target = tmp_path / "created-by-attach.db"
    with pytest.raises(StoreError):
        store.query(f"ATTACH DATABASE '{target}' AS x")
    assert not target.exists()
    with pytest.raises(StoreError):
        store.query("DELETE FROM circuit_breaker_states")
    with pytest.raises(StoreError):
        store.query("PRAGMA journal_mode = DELETE")
    assert store.query("SELECT count(*) AS n FROM circuit_breaker_states") == [{"n": 1}]


def test_a_database_upgraded_from_version_8_shows_the_last_hour_at_once(db: Path) -> None:
    """Version 9 added ten-minute rollups, which the status of every circuit reads; a database upgraded from
    version 8 had none until new calls came, so `circuitry status` showed no calls for up to an hour while
    `status --service` (per-minute rows) showed them. The upgrade adds up what the minutes hold."""
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0].path.read_text())
    minute = int(time.time() // 60)
    conn.executemany("INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, "
                     "failures) VALUES ('legacy', ?, '2026-01-01T00:00:00', 10, 7, 3)",
                     [(minute - k,) for k in range(3)])
    conn.commit()
    assert applied_versions(conn) == {8}
    migrate(conn)
    got = conn.execute("SELECT sum(calls), sum(successes), sum(failures) FROM circuit_breaker_metrics_10m").fetchone()
    assert got == (30, 21, 9)
    conn.execute("DROP TABLE circuitry_analysis_leases")
    migrate(conn)  # a table gone: the migrations run again, and count nothing twice
    assert conn.execute("SELECT sum(calls) FROM circuit_breaker_metrics_10m").fetchone() == (30,)
    assert "circuitry_analysis_leases" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
