"""The SQLite store in one process: persistence, restart, sharing between stores on one file (each
store is what one process would have), leases, evidence, retention, and every fault it must survive.

Several stores on one file behave like several processes: each has its own connections, and
``PRAGMA data_version`` changes for commits made by the others. The real multi-process tests are
in ``test_store_processes.py``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from circuitry import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Event,
    EventKind,
    Registry,
    SchemaVersionError,
    circuit,
)
from circuitry.store import SQLiteStore
from circuitry.store.sharing import Sharing
from circuitry.store.sqlite.schema import LATEST_VERSION, migrate
from circuitry.testing import FakeClock

from .conftest import Boom, Other, eventually

WALL = time.time()




@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0, wall=WALL)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "circuits.db"


@pytest.fixture
def make(db: Path, clock: FakeClock) -> Iterator[Callable[..., tuple[Registry, SQLiteStore]]]:
    made: list[SQLiteStore] = []

    def factory(path: Path = db, **options: Any) -> tuple[Registry, SQLiteStore]:
        options.setdefault("poll_interval", 0.01)
        store = SQLiteStore(path, clock=clock, **options)
        made.append(store)
        return Registry(clock=clock, hooks=[], store=store), store

    yield factory
    for store in made:
        store.close(timeout=2)


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


#: What two failures (``ValueError("down")``) that open ``svc`` leave in its history.
FAILED_TWICE_THEN_OPENED = [("failure", None, "closed", "ValueError", "down")] * 2 + [
    ("state_change", "closed", "open", "ValueError", "down")]


def svc_history(db: Path) -> list[tuple[Any, ...]]:
    """``svc``'s history rows: event type, from and to state, error type and message."""
    return rows(db, "SELECT event_type, from_state, to_state, error_type, error_message "
                    "FROM circuit_breaker_events WHERE service_name = 'svc' ORDER BY id")


def fails_twice_and_opens(reg: Registry, store: Any, db: Path) -> None:
    """``svc`` (threshold 2) fails twice; its history then reads :data:`FAILED_TWICE_THEN_OPENED`."""
    fail(reg.get("svc", failure_threshold=2), 2, ValueError("down"))
    assert store.flush()
    assert svc_history(db) == FAILED_TWICE_THEN_OPENED


def fail(b: Any, n: int = 1, exc: BaseException | None = None) -> None:
    for _ in range(n):
        b.record_failure(b.admit(), exc or Boom("down"))


def test_nothing_is_opened_until_a_breaker_exists(db: Path, clock: FakeClock) -> None:
    store = SQLiteStore(db, clock=clock)
    Registry(store=store, hooks=[])
    assert not db.exists()
    store.close()


def test_failures_and_transitions_become_event_rows(make: Any, db: Path) -> None:
    reg, store = make()
    b = reg.get("svc", failure_threshold=2)
    fail(b, 2, ValueError("x" * 5000))
    assert store.flush()
    events = rows(db, "SELECT event_type, from_state, to_state, error_type, length(error_message), additional_data "
                      "FROM circuit_breaker_events WHERE service_name = 'svc' ORDER BY id")
    assert [e[0] for e in events] == ["failure", "failure", "state_change"]
    assert events[0][3] == "ValueError" and events[0][4] == 500  # truncated, never a traceback
    assert events[2][1:3] == ("closed", "open")
    assert '"reason": "failure_threshold"' in events[2][5]
    state = rows(db, "SELECT current_state, failure_threshold, recovery_timeout, last_failure_time IS NOT NULL "
                     "FROM circuit_breaker_states")
    assert state == [("open", 2, 60, 1)]


def test_the_writer_running_during_a_failure_hook_keeps_the_transition_and_its_cause(make: Any, db: Path) -> None:
    """The writer may run while a failure hook does (a hook that logs does I/O; on a busy machine the
    writer's cycle lands there): the store already holds the transition that failure caused, so the
    history reads as always -- the failures as counted while closed, then the opening with its cause.
    (docs/tutorial.md once printed the failures as ``open`` and the opening without its error.)"""
    reg, store = make()

    class WriterRunsMeanwhile:
        kinds = frozenset({EventKind.FAILURE})

        def __call__(self, event: Event) -> None:
            if event.to_state is CircuitState.OPEN:  # the failure that opened the circuit
                assert store.flush(10)

    reg.add_hook(WriterRunsMeanwhile())
    fails_twice_and_opens(reg, store, db)


def test_the_writer_running_as_the_breaker_lock_is_released_keeps_the_transition(
        make: Any, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with no hook at all: the writer's cycle lands right after the breaker's lock is released
    (a thread switch), before the breaker emits anything."""
    reg, store = make()
    emit = CircuitBreaker._emit

    def writer_first(self: CircuitBreaker, events: list[Event]) -> None:
        if any(e.to_state is CircuitState.OPEN for e in events):
            assert store.flush(10)
        emit(self, events)

    monkeypatch.setattr(CircuitBreaker, "_emit", writer_first)
    fails_twice_and_opens(reg, store, db)


def test_the_writer_running_before_the_breaker_trips_leaves_the_opening_to_it(
        make: Any, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The breaker counts the failure that reaches its threshold, then opens (``_trip``); a writer cycle
    in between sees this process's failures reach the threshold. It leaves the opening to the breaker,
    whose transition carries the cause (it used to open the circuit as ``shared_failures``, without it)."""
    reg, store = make()
    trip = CircuitBreaker._trip

    def writer_first(self: CircuitBreaker, token: int, exc: BaseException) -> None:
        assert store.flush(10)
        trip(self, token, exc)

    monkeypatch.setattr(CircuitBreaker, "_trip", writer_first)

    @circuit("svc", registry=reg, failure_threshold=2)
    def down() -> None:
        raise ValueError("down")

    reg.get("svc")
    assert store.flush()  # its row is written: failures from now on are evidence added to the shared count
    for _ in range(2):
        with pytest.raises(ValueError):
            down()
    assert reg.get("svc").state is CircuitState.OPEN
    assert store.flush()
    events = svc_history(db)
    assert events == FAILED_TWICE_THEN_OPENED


def test_a_transition_made_while_the_writer_inserts_the_row_keeps_its_cause(
        make: Any, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer inserts a new circuit's row from a snapshot (closed); the breaker opens meanwhile. That
    transition is written by the next cycle, with its cause (the insert used to drop it from the queue).
    docs/tutorial.md's ``python app.py`` printed its opening without its error so, on a busy machine."""
    reg, store = make()
    take = Sharing._take
    made: list[CircuitBreaker] = []
    ready = threading.Event()

    def breaker_opens_meanwhile(self: Sharing, link: Any, frm: str | None, state: str, generation: int) -> Any:
        ready.wait(10)  # the writer may insert the row as soon as the breaker exists: wait until it is named
        b = made[0]
        if state == "closed" and b.state is CircuitState.CLOSED:  # inserting the closed row
            fail(b, 2, ValueError("down"))
        return take(self, link, frm, state, generation)

    monkeypatch.setattr(Sharing, "_take", breaker_opens_meanwhile)  # before the breaker: its row is not written yet
    made.append(reg.get("svc", failure_threshold=2))
    ready.set()
    b = made[0]
    assert store.flush()
    assert b.state is CircuitState.OPEN
    assert [e for e in svc_history(db) if e[0] == "state_change"] == FAILED_TWICE_THEN_OPENED[-1:]


def test_counts_sampled_after_waiting_for_the_lock_are_filed_under_the_time_after_the_wait(
        make: Any, db: Path, clock: FakeClock) -> None:
    """The writer files what it samples under the time of the sample. It used to read the clock before
    waiting for the lock it samples under: a failure counted while another thread held that lock went
    under the time before the wait (benchmarks/patterns/end_to_end.py lost one from a window so)."""
    reg, store = make(poll_interval=60.0)
    b = reg.get("svc", failure_threshold=100)
    assert store.flush()
    me = threading.current_thread()
    asked = threading.Event()
    read = clock.time

    def watched() -> float:
        if threading.current_thread() is not me:
            asked.set()  # the writer read the clock
        return read()

    store._time = watched
    flushing = threading.Thread(target=store.flush)
    with store.mem:
        flushing.start()  # a cycle that samples every circuit starts while another thread holds the lock
        asked.wait(1.0)  # (the old writer read the clock here; the fixed one waits for the lock first)
        clock.advance(120.0)
        fail(b)
    flushing.join()
    assert store.flush()
    second = int(clock.time())
    assert rows(db, "SELECT second, failures FROM circuit_breaker_seconds WHERE service_name = 'svc'") == [
        (second, 1)]


def test_successes_and_rejections_roll_up_per_minute(make: Any, db: Path) -> None:
    reg, store = make()
    b = reg.get("svc", failure_threshold=3, on=Boom)
    for _ in range(7):
        b.record_success(b.admit())
    b.record_ignored(b.admit())
    b.release(b.admit())
    fail(b, 3)
    for _ in range(4):
        with pytest.raises(CircuitOpenError):
            b.admit()
    store.close()
    totals = rows(db, "SELECT sum(calls), sum(successes), sum(failures), sum(ignored), sum(rejections), "
                      "sum(cancelled) FROM circuit_breaker_metrics WHERE service_name = 'svc'")
    assert totals == [(16, 7, 3, 1, 4, 1)]


def test_restart_keeps_an_open_circuit_open_for_the_remaining_time(make: Any, db: Path, clock: FakeClock) -> None:
    reg, store = make()
    b = reg.get("svc", failure_threshold=1, recovery_timeout=60)
    fail(b)
    store.close()
    clock.advance(20)
    reg2, store2 = make()
    b2 = reg2.get("svc", failure_threshold=1, recovery_timeout=60)
    assert store2.flush()  # the first breaker of a store takes the stored state within a writer cycle
    assert b2.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        b2.admit()
    assert info.value.retry_after == pytest.approx(40, abs=0.01)
    clock.advance(40)
    assert b2.state is CircuitState.HALF_OPEN


def test_restart_clamps_a_wall_clock_jump(make: Any, db: Path, clock: FakeClock) -> None:
    reg, store = make()
    fail(reg.get("svc", failure_threshold=1, recovery_timeout=60))
    store.close()
    clock.set_wall(WALL - 10**6)  # the clock went far backwards: never open longer than the period
    reg2, store2 = make()
    b2 = reg2.get("svc")
    assert store2.flush()
    with pytest.raises(CircuitOpenError) as info:
        b2.admit()
    assert info.value.retry_after is not None and info.value.retry_after <= 60


def test_a_new_process_never_resets_shared_state(make: Any, db: Path) -> None:
    reg_a, store_a = make()
    reg_a.get("svc", failure_threshold=1).force_open()
    assert store_a.flush()
    reg_b, store_b = make()
    b = reg_b.get("svc", failure_threshold=1)
    assert store_b.flush()
    assert b.state is CircuitState.FORCED_OPEN
    assert store_b.flush()
    assert rows(db, "SELECT current_state FROM circuit_breaker_states") == [("forced_open",)]


def test_a_transition_in_one_process_reaches_the_other(make: Any) -> None:
    reg_a, _ = make()
    reg_b, _ = make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=60)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=60)
    fail(a)
    assert eventually(lambda: b.state is CircuitState.OPEN)
    with pytest.raises(CircuitOpenError):
        b.admit()
    a.reset()
    assert eventually(lambda: b.state is CircuitState.CLOSED)


def test_transitions_are_compare_and_set(make: Any, db: Path) -> None:
    """Both processes open at once: one row version per real change, and both end up agreeing."""
    reg_a, store_a = make()
    reg_b, store_b = make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=60)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=60)
    assert store_a.flush() and store_b.flush()
    fail(a)
    fail(b)
    assert store_a.flush() and store_b.flush()
    assert eventually(lambda: a.state is b.state is CircuitState.OPEN)
    (version, opened_at), = rows(db, "SELECT version, opened_at FROM circuit_breaker_states")
    assert version == 2  # inserted (1), opened once (2): the loser adopted the winner's row
    assert eventually(lambda: a.stats().opened_at == b.stats().opened_at == opened_at)


def test_failures_of_several_processes_add_up(make: Any, db: Path) -> None:
    """Four workers each see 2 failures of a threshold-5 circuit: together they trip it."""
    pairs = [make() for _ in range(4)]
    breakers = [reg.get("svc", failure_threshold=5, recovery_timeout=60) for reg, _ in pairs]
    for _, store in pairs:
        assert store.flush()
    for b in breakers:
        fail(b, 2)
        assert b.state is CircuitState.CLOSED  # none of them alone would open
    assert eventually(lambda: all(b.state is CircuitState.OPEN for b in breakers))
    opened = rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'state_change' "
                      "AND to_state = 'open'")
    assert opened == [(1,)]


def test_a_success_resets_the_shared_count(make: Any) -> None:
    (reg_a, store_a), (reg_b, store_b) = make(), make()
    a = reg_a.get("svc", failure_threshold=4)
    b = reg_b.get("svc", failure_threshold=4)
    assert store_a.flush() and store_b.flush()
    fail(a, 2)
    assert store_a.flush()
    b.record_success(b.admit())  # the service answered: the 2 failures before are no longer consecutive
    assert store_b.flush()
    fail(b, 2)
    assert store_a.flush() and store_b.flush() and store_a.flush()
    assert a.state is CircuitState.CLOSED and b.state is CircuitState.CLOSED
    fail(a, 1)
    fail(b, 1)  # 2 + 2: the shared count reaches the threshold
    assert eventually(lambda: a.state is CircuitState.OPEN and b.state is CircuitState.OPEN)


def test_the_default_policy_path_of_a_decorator_persists(make: Any, db: Path) -> None:
    reg, store = make()

    @circuit("decorated", registry=reg, failure_threshold=2)
    def f() -> None:
        raise Boom()

    for _ in range(2):
        with pytest.raises(Boom):
            f()
    store.close()
    assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'failure'") == [(2,)]


def test_a_newer_schema_is_refused_with_a_clear_message(db: Path, make: Any) -> None:
    with sqlite3.connect(db) as conn:
        migrate(conn)
        conn.execute("INSERT INTO circuitry_schema (version, name) VALUES (?, 'future')", (LATEST_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match="upgrade circuitry"), sqlite3.connect(db) as conn:
        migrate(conn)
    with capture_logs() as logs:
        reg, store = make()
        b = reg.get("svc", failure_threshold=1)
        fail(b)  # still protected, from memory
        assert b.state is CircuitState.OPEN
        store.flush(1)
    assert any(e["event"] == "circuitry.store_fault" and e["fault"] == "newer_schema" for e in logs)


def test_retention_prunes_old_events_and_caps_their_number(make: Any, db: Path, clock: FakeClock) -> None:
    reg, store = make(retention=3600, max_events=1000)
    b = reg.get("svc", failure_threshold=10**6)
    fail(b, 500)
    assert store.flush()
    clock.advance(7200)
    fail(b, 1500)
    assert store.flush()
    store._last_prune = 0.0
    assert store.flush()
    ((count, oldest),) = rows(db, "SELECT count(*), min(ts) FROM circuit_breaker_events")
    assert count <= 1001
    assert oldest >= WALL + 7200 - 1


# -- faults: zero exceptions reach protected calls, one warning per episode, the backlog catches up --


def _hammer(reg: Registry, n: int) -> int:
    """Protected calls through a decorator while the store is failing; returns exceptions seen that
    were not the function's own or a rejection (there must be none)."""
    surprises = 0

    @circuit("faulty", registry=reg, failure_threshold=10**6, on=Boom)
    def call(i: int) -> int:
        if i % 3 == 0:
            raise Boom()
        if i % 7 == 0:
            raise Other()
        return i

    for i in range(n):
        try:
            call(i)
        except (Boom, Other):
            pass
        except Exception:
            surprises += 1
    return surprises


def _expected(n: int) -> tuple[int, int, int]:
    fails = sum(1 for i in range(n) if i % 3 == 0)
    ignored = sum(1 for i in range(n) if i % 3 and i % 7 == 0)
    return n - fails - ignored, fails, ignored


def _assert_caught_up(db: Path, n: int) -> None:
    ok, fails, ignored = _expected(n)
    got = rows(db, "SELECT sum(successes), sum(failures), sum(ignored) FROM circuit_breaker_metrics "
                   "WHERE service_name = 'faulty'")
    assert got == [(ok, fails, ignored)]
    assert rows(db, "SELECT sum(calls), sum(failures) FROM circuit_breaker_seconds WHERE service_name = 'faulty'") == [
        (ok + fails, fails)]
    # every failure has its row, or is counted in a row standing for several (past the per-second limit)
    assert rows(db, "SELECT sum(occurrences) FROM circuit_breaker_events WHERE service_name = 'faulty' "
                    "AND event_type = 'failure'") == [(fails,)]


def _fault_warnings(logs: list[dict[str, Any]], kind: str) -> int:
    return sum(1 for e in logs if e["event"] == "circuitry.store_fault" and e["fault"] == kind)


class Injected:
    """Makes the store's database misbehave as a full disk or a read-only file would, on every
    connection the writer opens while it is on (the writer reopens its connection after such faults)."""

    def __init__(self, store: SQLiteStore, *pragmas: str) -> None:
        self.store = store
        self.pragmas = pragmas
        self.on = False
        backend = store.backend
        real = backend.connect

        def connect(role: Any, *, timeout: float) -> Any:
            conn = real(role, timeout=timeout)
            if self.on and role != "reader":
                for pragma in self.pragmas:
                    conn.raw.execute(pragma)
            return conn

        backend.connect = connect  # type: ignore[method-assign]

    def __enter__(self) -> Injected:
        self.on = True
        if self.store.writer.conn is not None:
            for pragma in self.pragmas:
                self.store.writer.conn.raw.execute(pragma)
        return self

    def __exit__(self, *exc: object) -> None:
        self.on = False

        def undone() -> bool:
            conn = self.store.writer.conn
            if conn is None:
                return True
            try:
                conn.raw.execute("PRAGMA query_only = OFF")
                conn.raw.execute("PRAGMA max_page_count = 1073741823")
            except sqlite3.ProgrammingError:  # the writer closed it meanwhile, reconnecting after the fault
                return False
            return True

        assert eventually(undone)


def test_fault_locked_database(make: Any, db: Path) -> None:
    reg, store = make(busy_timeout=0.05)
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    blocker = sqlite3.connect(db, isolation_level=None)
    with capture_logs() as logs:
        blocker.execute("BEGIN EXCLUSIVE")
        assert _hammer(reg, 3000) == 0
        assert eventually(lambda: store.health().fault == "locked")
        time.sleep(0.3)  # several failed write attempts during the episode
        blocker.execute("COMMIT")
        blocker.close()
        assert store.flush(10)
    assert _fault_warnings(logs, "locked") == 1
    assert any(e["event"] == "circuitry.store_recovered" for e in logs)
    store.close()
    _assert_caught_up(db, 3000)


def test_a_short_lock_is_contention_not_a_fault(make: Any, db: Path) -> None:
    """A lock shorter than busy_timeout delays writes; it is not reported, and probes stay coordinated."""
    reg, store = make(busy_timeout=5.0)
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    blocker = sqlite3.connect(db, isolation_level=None)
    with capture_logs() as logs:
        blocker.execute("BEGIN EXCLUSIVE")
        assert _hammer(reg, 300) == 0
        time.sleep(0.3)
        assert store.health().fault is None
        assert not store.links()[0].memory
        blocker.execute("COMMIT")
        blocker.close()
        assert store.flush(10)
    assert _fault_warnings(logs, "locked") == 0
    store.close()
    _assert_caught_up(db, 300)


def test_fault_disk_full(make: Any, db: Path) -> None:
    reg, store = make()
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    assert store.writer.conn is not None
    pages = store.writer.conn.raw.execute("PRAGMA page_count").fetchone()[0]
    with capture_logs() as logs:
        with Injected(store, f"PRAGMA max_page_count = {pages}"):  # the disk is full
            assert _hammer(reg, 6000) == 0
            assert eventually(lambda: store.health().fault == "disk_full")
            assert store.health().queued > 0  # rows in a failing batch are counted as queued
        assert store.flush(10)
    assert _fault_warnings(logs, "disk_full") == 1
    store.close()
    _assert_caught_up(db, 6000)


def test_fault_read_only_database_recovers_when_writable_again(make: Any, db: Path) -> None:
    """The file turns read-only (chmod, a remount): calls go on; once it is writable again the store
    reopens it and writes the backlog (a read-only connection is never kept)."""
    reg, store = make()
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    with capture_logs() as logs:
        with Injected(store, "PRAGMA query_only = ON"):  # writes fail as on a read-only file
            assert _hammer(reg, 3000) == 0
            assert eventually(lambda: store.health().fault == "read_only")
            time.sleep(0.2)  # several reopen-and-fail rounds
        assert store.flush(10)
    assert _fault_warnings(logs, "read_only") == 1
    store.close()
    _assert_caught_up(db, 3000)


def test_fault_unreachable_folder(make: Any, tmp_path: Path) -> None:
    """The database's folder cannot be created or written (a read-only or missing mount): calls go on,
    and once the folder is usable the backlog is written. (A file where the folder should be gives the
    same error whoever runs the test; permission bits do not stop root.)"""
    blocker = tmp_path / "mnt"
    blocker.write_text("not a folder")
    db = blocker / "x.db"
    with capture_logs() as logs:
        reg, store = make(path=db)
        assert _hammer(reg, 600) == 0
        assert eventually(lambda: store.health().fault == "unavailable")
        blocker.unlink()
        assert store.flush(10)
    assert _fault_warnings(logs, "unavailable") == 1
    store.close()
    _assert_caught_up(db, 600)


def test_a_file_that_is_not_a_database_is_never_moved(make: Any, db: Path) -> None:
    """A mistyped path to a user's file: circuitry does not touch it, says so, and protects from memory."""
    content = b"this is not a database, it is a grocery list\n" * 200
    db.write_bytes(content)
    with capture_logs() as logs:
        reg, store = make()
        assert _hammer(reg, 600) == 0
        assert eventually(lambda: store.health().fault == "not_a_database")
        assert not store.flush(0.5)
    assert db.read_bytes() == content
    assert [p.name for p in db.parent.iterdir()] == [db.name]
    (warning,) = [e for e in logs if e["event"] == "circuitry.store_fault"]
    assert "nothing was moved" in warning["note"] and str(db) in warning["note"]
    assert store.health().set_aside == () and not store.health().healthy
    with capture_logs() as closing:  # closing says what is lost, at once, and exit has nothing left to do
        store.close(timeout=0.2)
    (lost,) = [e for e in closing if e["event"] == "circuitry.store_unflushed"]
    assert lost["rows"] == store.health().queued > 0 and lost["when"] == "close" and "close()" in lost["note"]
    from circuitry.store import process

    assert store not in process._STORES


def _damage_table(db: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage (a bad sector under that table only)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(db, "r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xde\xad" * (size // 2))


@pytest.mark.parametrize("first", ["application", "circuitry"])
def test_damaged_circuit_tables_in_an_application_database_never_move_it(make: Any, db: Path, first: str) -> None:
    """The application's own database holds the circuit tables (``db_path="pipeline.db"``), whoever
    created the file: a damaged circuit table stops circuitry's writes — the application's tables stay
    where they are, readable."""

    def application_tables() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE cards (id INTEGER PRIMARY KEY, number TEXT)")
            conn.executemany("INSERT INTO cards (number) VALUES (?)", [(f"4242-{i}",) for i in range(100)])

    if first == "application":
        application_tables()
    reg, store = make()
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    store.close()
    if first == "circuitry":
        application_tables()
    _damage_table(db, "circuit_breaker_states")
    with capture_logs() as logs:
        reg, store = make()
        assert _hammer(reg, 600) == 0
        assert eventually(lambda: store.health().fault == "corrupt")
    assert rows(db, "SELECT count(*) FROM cards") == [(100,)]
    assert store.health().set_aside == ()
    (warning,) = [e for e in logs if e["event"] == "circuitry.store_fault"]
    assert "nothing was moved" in warning["note"]
    assert ("cards" if first == "circuitry" else "not created by circuitry") in warning["note"]


def test_a_damaged_file_circuitry_created_is_set_aside_and_recreated(make: Any, db: Path) -> None:
    reg, store = make()
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    store.close()
    _damage_table(db, "circuit_breaker_states")
    with capture_logs() as logs:
        reg, store = make()
        assert _hammer(reg, 600) == 0
        assert store.flush(10)
    assert _fault_warnings(logs, "corrupt") == 1
    (aside,) = store.health().set_aside
    (warning,) = [e for e in logs if e["event"] == "circuitry.store_fault"]
    assert warning["set_aside"] == aside and aside in warning["note"]
    assert Path(aside).exists()
    store.close()
    _assert_caught_up(db, 600)
    assert rows(db, "PRAGMA quick_check") == [("ok",)]


def test_fault_deleted_file_is_recreated_with_the_current_state(make: Any, db: Path) -> None:
    reg, store = make()
    reg.get("other", failure_threshold=1).force_open()
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    with capture_logs() as logs:  # the writer may notice the deletion at once
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        assert _hammer(reg, 300) == 0
        assert store.flush(10)
    assert _fault_warnings(logs, "deleted") == 1
    assert rows(db, "SELECT service_name, current_state FROM circuit_breaker_states ORDER BY 1") == [
        ("faulty", "closed"), ("other", "forced_open")]
    store.close()
    got = rows(db, "SELECT sum(calls) FROM circuit_breaker_metrics WHERE service_name = 'faulty'")
    assert got[0][0] is not None and got[0][0] > 0


def test_after_a_deletion_the_read_model_and_the_analyst_use_the_new_file(make: Any, db: Path,
                                                                         clock: FakeClock) -> None:
    """The writer recreates a deleted file; the read model's connection and the analyst's went on with the
    deleted one: status() read alerts that were gone, and analyses wrote patterns nobody would see."""
    from circuitry.store.records import Records

    reg, store = make()
    b = reg.get("svc", failure_threshold=1)
    records = Records(store.backend, "host-a:1", timeout=5.0)
    records.pattern("svc", pattern=None, window=900, failures=0, error_rate=0.0, threshold=None, timeout=None,
                    confidence=0.0, evidence={}, now=clock.time())
    b.record_failure(b.admit(), Boom())
    assert eventually(lambda: store.alerts("svc") != [])  # read once through the read model's connection
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    reg.get("other").record_success(reg.get("other").admit())
    assert store.flush(10)
    assert rows(db, "SELECT count(*) FROM circuit_breaker_alerts") == [(0,)]  # the writer's new file
    assert eventually(lambda: store.alerts("svc") == [])  # the read model reads it too
    assert eventually(lambda: (records.pattern("svc", pattern="steady", window=900, failures=12, error_rate=0.1,
                                               threshold=5, timeout=60.0, confidence=0.9, evidence={},
                                               now=clock.time()),
                               rows(db, "SELECT count(*) FROM circuit_breaker_failure_patterns"))[1] != [(0,)])
    records.close()
    store.close()


def test_a_quiet_circuits_first_failure_is_shared_within_a_cycle(make: Any, clock: FakeClock) -> None:
    """A circuit quiet for a while is sampled every few seconds, and its failure log looked at every second:
    its first failures reached the other processes up to a second late (across processes a threshold of 5
    let about 8 failures through). With few circuits the log is looked at every cycle."""
    from circuitry.store.rollups import QUIET_AFTER

    reg, store = make()
    b = reg.get("svc", failure_threshold=10**6, on=Boom)
    assert store.flush()
    link = b.linked
    writer = store.writer
    with store.mem:  # (the writer's own cycle waits meanwhile: only the cycle below samples)
        link.hot, link.quiet = False, QUIET_AFTER + 1
        writer.forget(link)
        b.record_failure(b.admit(), Boom())
        tick = time.monotonic()
        writer._last_cold = tick  # sampled every circuit just now ...
        writer._last_scan = tick - 0.03  # ... and looked at the failure logs a cycle ago
        writer._sample_all(clock.time(), full=False)
        assert not link.failure_log and link.hot  # its failure is on its way to the database
    assert store.flush()


def test_a_full_queue_drops_rows_counts_them_and_records_it(make: Any, db: Path) -> None:
    reg, store = make(queue_size=100, busy_timeout=0.05, failure_rows_per_second=10_000)
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    blocker = sqlite3.connect(db, isolation_level=None)
    with capture_logs() as logs:
        blocker.execute("BEGIN EXCLUSIVE")
        assert _hammer(reg, 3000) == 0  # 1000 failures into a queue of 100
        blocker.execute("COMMIT")
        blocker.close()
        assert store.flush(10)
    health = store.health()
    assert health.dropped > 0
    assert any(e["event"] == "circuitry.store_dropped" for e in logs)
    store.close()
    written = rows(db, "SELECT sum(occurrences) FROM circuit_breaker_events WHERE service_name = 'faulty' "
                       "AND event_type = 'failure'")[0][0]
    notes = [json.loads(r[0]) for r in rows(db, "SELECT additional_data FROM circuit_breaker_events "
                                                "WHERE event_type = 'dropped' ORDER BY id")]
    assert sum(n["dropped"] for n in notes) == notes[-1]["total"] == health.dropped  # each drop reported once
    assert written + notes[-1]["failures_total"] == _expected(3000)[1]  # every failure either written or counted
    # the rollups never drop: they come from counters, not the queue
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics WHERE service_name = 'faulty'") == [
        (_expected(3000)[1],)]


def test_decorating_opens_nothing_until_the_first_call(make: Any, db: Path) -> None:
    """Importing a module full of @circuit decorators does no I/O; the first call does."""
    reg, store = make()

    @circuit("lazy", registry=reg, failure_threshold=1)
    def f() -> int:
        return 1

    assert "lazy" not in reg and not db.exists()
    assert f() == 1
    assert "lazy" in reg and reg["lazy"].policy.failure_threshold == 1
    assert store.flush() and db.exists()


async def test_the_sqlite_store_is_a_store_and_reads_from_asyncio(make: Any) -> None:
    from circuitry.store import Store

    reg, store = make()
    fail(reg.get("svc", failure_threshold=1))
    assert isinstance(store, Store)
    assert store.flush()
    rows = await store.aquery("SELECT current_state FROM circuit_breaker_states WHERE service_name = ?", ("svc",))
    assert rows == [{"current_state": "open"}]


def test_flush_writes_the_rollups_too(make: Any, db: Path) -> None:
    """A process that flushes and then leaves by os._exit (a forked worker) keeps its counts."""
    reg, store = make(metrics_interval=3600)
    b = reg.get("svc")
    assert store.flush()
    for _ in range(5):
        b.record_success(b.admit())
    assert store.flush()
    assert rows(db, "SELECT sum(successes) FROM circuit_breaker_metrics WHERE service_name = 'svc'") == [(5,)]


async def test_async_with_flushes_and_closes(db: Path, clock: FakeClock) -> None:
    async with SQLiteStore(db, clock=clock) as store:
        reg = Registry(clock=clock, hooks=[], store=store)
        fail(reg.get("svc", failure_threshold=5), 3)
    assert store.health().queued == 0
    assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'failure'") == [(3,)]
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics") == [(3,)]


def test_latency_reaches_the_rollups_when_measured(make: Any, db: Path, clock: FakeClock) -> None:
    reg, store = make()

    @circuit("timed", registry=reg, measure_latency=True, failure_threshold=10**6)
    def call(ms: int) -> None:
        clock.advance(ms / 1000)  # the call takes `ms` on the injected clock

    @circuit("untimed", registry=reg)
    def plain() -> None:
        pass

    for ms in (10, 20, 30, 40):
        call(ms)
    plain()
    assert store.flush()
    assert rows(db, "SELECT latency_count, round(latency_sum_ms, 6), round(latency_max_ms, 6) "
                    "FROM circuit_breaker_metrics WHERE service_name = 'timed'") == [(4, 100.0, 40.0)]
    assert rows(db, "SELECT latency_count FROM circuit_breaker_metrics WHERE service_name = 'untimed'") == [(0,)]
    status = store.circuit("timed")
    assert status is not None
    assert (status["last_hour"]["avg_latency_ms"], status["last_hour"]["max_latency_ms"]) == (25.0, 40.0)


def test_rollups_held_during_a_long_outage_are_bounded_and_lose_no_count() -> None:
    """Three hours with a database that takes no writes: memory holds at most 60 minutes per circuit,
    and every count is still there (the oldest filed under one minute)."""
    from circuitry.store.rollups import PENDING_MINUTES, Rollups

    r = Rollups()
    for minute in range(180):
        for name in ("a", "b"):
            r.add(name, minute * 60.0 + 1.0, [3, 1, 0, 2, 0, 0, 0.0, 0.0], circuits=2)
    assert len(r.minutes) <= 2 * (PENDING_MINUTES + 1)
    assert r.coarsened > 0
    for name in ("a", "b"):
        total, _ = r.unwritten(name, 0)
        assert total[:5] == [540, 180, 0, 360, 0]


def test_flush_while_the_database_is_unreachable_keeps_the_retry_backoff(tmp_path: Path) -> None:
    """``flush()`` asks for final cycles until one is clean -- but not while the database fails: asking on
    every cycle skipped the fault's backoff, and one flush made tens of thousands of connection attempts."""
    import errno

    store = SQLiteStore(tmp_path / "down.db", poll_interval=0.01)
    attempts = [0]
    real = store.backend.connect

    def connect(role: Any, *, timeout: float) -> Any:
        if role == "writer":
            attempts[0] += 1
            raise OSError(errno.EACCES, "the database cannot be reached")
        return real(role, timeout=timeout)

    store.backend.connect = connect  # type: ignore[method-assign]
    try:
        Registry(hooks=[], store=store).get("svc")
        assert eventually(lambda: store.health().fault is not None)
        before = attempts[0]
        assert not store.flush(1.0)
        assert attempts[0] - before < 100  # the backoff's few; the loop made ~18,000 a second
    finally:
        store.backend.connect = real  # type: ignore[method-assign]
        store.close(1.0)


def test_what_needs_attention_counts_the_calls_not_written_yet(make: Any, db: Path, clock: FakeClock) -> None:
    """As status() does: a failing circuit shows in needs_attention() at once, not after the writer's next
    rollup (the clock stands still here, so no rollup is written until flush)."""
    reg, store = make()

    @circuit("flaky", registry=reg, failure_threshold=10**6)
    def call(fail: bool) -> None:
        if fail:
            raise ValueError("down")

    call(False)
    assert store.flush()
    assert reg.needs_attention() == []
    for _ in range(25):
        with pytest.raises(ValueError):
            call(True)
    status = reg.status("flaky")
    assert status is not None and status["last_hour"]["success_rate"] == 3.8
    attention = reg.needs_attention()
    assert attention is not None
    assert [(a["service_name"], a["success_rate"]) for a in attention] == [("flaky", 3.8)]
    assert attention[0]["reasons"] == ["success rate 3.8% in the last hour"]
    assert store.flush()
    assert reg.needs_attention() == attention  # the same once written: nothing counted twice
