"""The store's conformance suite: every behaviour a store promises, run against every backend — SQLite
and PostgreSQL (a throw-away server, see ``tests/pg_cluster.py``).

Several stores on one database behave like several processes (or hosts): each has its own connections
and sees the others' commits only through the database. Real processes are in
``test_store_processes.py`` (SQLite) and ``test_store_hosts.py`` (PostgreSQL).

Clocks: the stores run on a fake clock whose wall time is an hour behind the real one. On SQLite the
database's clock *is* that clock (one host); on PostgreSQL it is the server's, so a lease expires when
the server's clock says so, whatever the hosts' clocks say — :meth:`Target.lease_time_passes` moves
both.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from circuitry import CircuitOpenError, CircuitState, Registry, circuit
from circuitry.analysis.alerts import Alert
from circuitry.store import SharedStore, open_store
from circuitry.store.records import Records
from circuitry.testing import FakeClock

from .conftest import Boom, Other, eventually

BACKENDS = ["sqlite", "postgresql"]


class Target:
    """One database of one backend, and what a test needs to inspect or disturb it."""

    def __init__(self, kind: str, where: str, clock: FakeClock, cluster: Any = None) -> None:
        self.kind = kind
        self.where = where
        self.clock = clock
        self.cluster = cluster
        self.made: list[SharedStore] = []

    def make(self, **options: Any) -> tuple[Registry, Any]:
        options.setdefault("poll_interval", 0.01)
        store = open_store(self.where, clock=self.clock, **options)
        self.made.append(store)
        return Registry(clock=self.clock, hooks=[], store=store), store

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) on a connection of the test's own."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.where, timeout=10, isolation_level=None)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.where, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params or None)
            return cur.fetchall() if cur.description is not None else []

    def created(self) -> bool:
        """Whether circuitry created anything in the database yet."""
        if self.kind == "sqlite":
            return Path(self.where).exists()
        return bool(self.rows("SELECT to_regclass('circuitry_schema') IS NOT NULL")[0][0])

    def lease_time_passes(self, seconds: float) -> None:
        """``seconds`` pass on the hosts' clocks and on the database's."""
        if self.kind == "postgresql":
            time.sleep(seconds + 0.05)  # the server's clock cannot be moved: wait for it
        self.clock.advance(seconds)

    @contextlib.contextmanager
    def refusing(self, fault: str) -> Iterator[None]:
        """The database refuses writes the way a full disk or a read-only database (a replica after a
        failover) does, until the block ends."""
        if self.kind == "sqlite":
            pragma = {"disk_full": "PRAGMA max_page_count = {pages}", "read_only": "PRAGMA query_only = ON"}[fault]
            with _SQLiteInjected(self, pragma):
                yield
            return
        if fault == "disk_full":  # what PostgreSQL raises when it cannot extend a file
            self.rows("CREATE OR REPLACE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                      "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; "
                      "END $$")
            tables = ("circuit_breaker_events", "circuit_breaker_metrics", "circuit_breaker_seconds",
                      "circuit_breaker_states")
            for t in tables:
                self.rows(f"CREATE TRIGGER test_disk_full BEFORE INSERT OR UPDATE ON {t} FOR EACH STATEMENT "
                          "EXECUTE FUNCTION test_disk_full()")
            try:
                yield
            finally:
                for t in tables:
                    self.rows(f"DROP TRIGGER test_disk_full ON {t}")
            return
        # read_only: new sessions are read-only, existing ones are cut (as after a failover to a replica)
        db = self.where.rsplit("/", 1)[1]
        with self.cluster.connect() as admin:  # from another database: this one's sessions turn read-only
            admin.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
            self.terminate_sessions()
            try:
                yield
            finally:
                admin.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')

    def terminate_sessions(self) -> int:
        """Cut every circuitry session of this database (a dropped connection, a failover)."""
        db = self.where.rsplit("/", 1)[1]
        got = self.rows("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = ? AND "
                        "application_name LIKE 'circuitry:%%' AND pid <> pg_backend_pid()", (db,))
        return int(got[0][0])

    def close(self) -> None:
        for store in self.made:
            store.close(timeout=2)


class _SQLiteInjected:
    """Makes the SQLite file misbehave as a full disk or a read-only file would, on every connection the
    writer opens while it is on (the writer reopens its connection after such faults)."""

    def __init__(self, target: Target, pragma: str) -> None:
        self.stores = target.made
        self.pragma = pragma
        self.on = False
        self.real: list[Any] = []

    def _pragma(self, raw: Any) -> str:
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        return self.pragma.format(pages=pages)

    def __enter__(self) -> None:
        self.on = True
        for store in self.stores:
            backend = store.backend
            real = backend.connect
            self.real.append((backend, real))

            def connect(role: Any, *, timeout: float, real: Any = real) -> Any:
                conn = real(role, timeout=timeout)
                if self.on and role != "reader":
                    conn.raw.execute(self._pragma(conn.raw))
                return conn

            backend.connect = connect
            with store.writer.io:  # (the writer's own lock: it may be closing that connection right now)
                if store.writer.conn is not None:
                    store.writer.conn.raw.execute(self._pragma(store.writer.conn.raw))

    def __exit__(self, *exc: object) -> None:
        self.on = False
        for backend, real in self.real:
            backend.connect = real
        for store in self.stores:
            with store.writer.io:
                if store.writer.conn is not None:
                    store.writer.conn.raw.execute("PRAGMA query_only = OFF")
                    store.writer.conn.raw.execute("PRAGMA max_page_count = 1073741823")


@pytest.fixture
def clock() -> FakeClock:
    # An hour behind the real clock: on PostgreSQL the server's clock decides leases, not this one.
    return FakeClock(start=1000.0, wall=time.time() - 3600.0)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def target(backend: str, tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Iterator[Target]:
    if backend == "sqlite":
        t = Target("sqlite", str(tmp_path / "circuits.db"), clock)
    else:
        cluster = request.getfixturevalue("pg_cluster")
        t = Target("postgresql", cluster.create_database(), clock, cluster)
    yield t
    t.close()


def fail(b: Any, n: int = 1, exc: BaseException | None = None) -> None:
    for _ in range(n):
        b.record_failure(b.admit(), exc or Boom("down"))


# -- persistence and restart ----------------------------------------------------------------------------


def test_nothing_is_opened_until_a_breaker_exists(target: Target) -> None:
    _, store = target.make()
    assert not store.flush(0.2) or True  # no breaker: nothing to write, nothing opened
    assert not target.created()


def test_decorating_opens_nothing_until_the_first_call(target: Target) -> None:
    """Importing a module full of @circuit decorators does no I/O; the first call does."""
    reg, store = target.make()

    @circuit("lazy", registry=reg, failure_threshold=1)
    def f() -> int:
        return 1

    assert "lazy" not in reg and not target.created()
    assert f() == 1
    assert "lazy" in reg and reg["lazy"].policy.failure_threshold == 1
    assert store.flush() and target.created()


def test_failures_and_transitions_become_event_rows(target: Target) -> None:
    reg, store = target.make()
    b = reg.get("svc", failure_threshold=2)
    fail(b, 2, ValueError("x" * 5000))
    assert store.flush()
    events = target.rows("SELECT event_type, from_state, to_state, error_type, length(error_message), "
                         "additional_data FROM circuit_breaker_events WHERE service_name = 'svc' ORDER BY id")
    assert [e[0] for e in events] == ["failure", "failure", "state_change"]
    assert events[0][3] == "ValueError" and events[0][4] == 500  # truncated, never a traceback
    assert events[2][1:3] == ("closed", "open")
    assert json.loads(events[2][5])["reason"] == "failure_threshold"
    state = target.rows("SELECT current_state, failure_threshold, recovery_timeout, last_failure_time IS NOT NULL "
                        "FROM circuit_breaker_states")
    assert [tuple(r) for r in state] == [("open", 2, 60, True)]


def test_an_open_period_with_a_fraction_of_a_second_is_stored_as_it_is(target: Target) -> None:
    # It was rounded to whole seconds (a column of integers): recovery_timeout=0.4 read back as 0, and
    # `circuitry recommend` on the demo's database failed on it.
    reg, store = target.make()
    reg.get("quick", recovery_timeout=0.4)
    reg.get("slow", recovery_timeout=2.5)
    assert store.flush()
    got = target.rows("SELECT service_name, recovery_timeout FROM circuit_breaker_states ORDER BY service_name")
    assert [(name, float(t)) for name, t in got] == [("quick", 0.4), ("slow", 2.5)]


def test_a_deleted_state_row_is_written_again_with_the_next_transition(target: Target) -> None:
    """Someone deletes the circuit's row while the processes run. The next transition found the row gone,
    meant to insert it "next cycle" -- and no cycle came for that circuit: the trip, and another
    process's force_open(), were never written, and health() said all was well."""
    reg_a, store_a = target.make()
    reg_b, store_b = target.make()
    a = reg_a.get("svc", failure_threshold=2, recovery_timeout=600)
    b = reg_b.get("svc", failure_threshold=2, recovery_timeout=600)
    assert store_a.flush() and store_b.flush()
    target.rows("DELETE FROM circuit_breaker_states")
    fail(a, 2)
    assert store_a.flush()
    assert [tuple(r) for r in target.rows("SELECT current_state FROM circuit_breaker_states")] == [("open",)]
    assert eventually(lambda: store_b.flush(0.2) and b.state is CircuitState.OPEN)
    b.reset()
    assert store_b.flush()
    assert eventually(lambda: store_a.flush(0.2) and a.state is CircuitState.CLOSED)
    moves = target.rows("SELECT from_state, to_state FROM circuit_breaker_events WHERE event_type = 'state_change' "
                        "ORDER BY id")
    assert [tuple(m) for m in moves] == [("closed", "open"), ("open", "closed")]


def test_a_failure_message_the_database_cannot_store_never_stops_the_queue(target: Target) -> None:
    """Messages with a NUL or a lone surrogate: each row is stored (made storable) or refused and
    counted, never written twice, and the rows around it are written."""
    reg, store = target.make()
    b = reg.get("svc", failure_threshold=10**6)
    fail(b, 1, ValueError("before"))
    fail(b, 1, ValueError("nul\x00byte"))
    fail(b, 1, ValueError("lone \udc80 surrogate"))
    fail(b, 1, ValueError("after"))
    assert store.flush()
    messages = [r[0] for r in target.rows("SELECT error_message FROM circuit_breaker_events "
                                          "WHERE event_type = 'failure' ORDER BY id")]
    assert messages[0] == "before" and messages[-1] == "after"
    assert len(messages) + store.health().refused_rows == 4
    if target.kind == "postgresql":
        assert messages[1:3] == ["nul\ufffdbyte", "lone ? surrogate"]


def test_restart_keeps_an_open_circuit_open_for_the_remaining_time(target: Target, clock: FakeClock) -> None:
    reg, store = target.make()
    fail(reg.get("svc", failure_threshold=1, recovery_timeout=60))
    store.close()
    clock.advance(20)
    reg2, store2 = target.make()
    b2 = reg2.get("svc", failure_threshold=1, recovery_timeout=60)
    assert store2.flush()  # the first breaker of a store takes the stored state within a writer cycle
    assert b2.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        b2.admit()
    assert info.value.retry_after == pytest.approx(40, abs=0.01)
    clock.advance(40)
    assert b2.state is CircuitState.HALF_OPEN


def test_restart_clamps_a_wall_clock_jump(target: Target, clock: FakeClock) -> None:
    reg, store = target.make()
    fail(reg.get("svc", failure_threshold=1, recovery_timeout=60))
    store.close()
    clock.set_wall(clock.time() - 10**6)  # the clock went far backwards: never open longer than the period
    reg2, store2 = target.make()
    b2 = reg2.get("svc")
    assert store2.flush()
    with pytest.raises(CircuitOpenError) as info:
        b2.admit()
    assert info.value.retry_after is not None and info.value.retry_after <= 60


def test_a_new_process_never_resets_shared_state(target: Target) -> None:
    reg_a, store_a = target.make()
    reg_a.get("svc", failure_threshold=1).force_open()
    assert store_a.flush()
    reg_b, store_b = target.make()
    b = reg_b.get("svc", failure_threshold=1)
    assert store_b.flush()
    assert b.state is CircuitState.FORCED_OPEN
    assert store_b.flush()
    assert [tuple(r) for r in target.rows("SELECT current_state FROM circuit_breaker_states")] == [("forced_open",)]


def test_a_newer_schema_is_refused_with_a_clear_message(target: Target) -> None:
    reg, store = target.make()
    reg.get("first")
    assert store.flush()
    newest = max(r[0] for r in target.rows("SELECT version FROM circuitry_schema"))
    target.rows("INSERT INTO circuitry_schema (version, name) VALUES (?, 'future')", (newest + 1,))
    with capture_logs() as logs:
        reg2, store2 = target.make()
        b = reg2.get("svc", failure_threshold=1)
        fail(b)  # still protected, from memory
        assert b.state is CircuitState.OPEN
        assert eventually(lambda: store2.health().fault == "newer_schema")
    (warning,) = [e for e in logs if e["event"] == "circuitry.store_fault"]
    assert warning["fault"] == "newer_schema" and "upgrade circuitry" in warning["error_message"]
    assert store2.health().disabled is not None


# -- sharing: propagation, compare-and-set, combined evidence ----------------------------------------------


def test_a_transition_in_one_process_reaches_the_other(target: Target) -> None:
    reg_a, _ = target.make()
    reg_b, _ = target.make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=60)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=60)
    fail(a)
    assert eventually(lambda: b.state is CircuitState.OPEN)
    with pytest.raises(CircuitOpenError):
        b.admit()
    a.reset()
    assert eventually(lambda: b.state is CircuitState.CLOSED)


def test_transitions_are_compare_and_set_with_one_row_per_transition(target: Target) -> None:
    """Both processes open at once: one row version per real change, one event row for the transition,
    and both end up agreeing."""
    reg_a, store_a = target.make()
    reg_b, store_b = target.make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=60)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=60)
    assert store_a.flush() and store_b.flush()
    fail(a)
    fail(b)
    assert store_a.flush() and store_b.flush()
    assert eventually(lambda: a.state is b.state is CircuitState.OPEN)
    ((version, opened_at),) = target.rows("SELECT version, opened_at FROM circuit_breaker_states")
    assert version == 2  # inserted (1), opened once (2): the loser adopted the winner's row
    assert eventually(lambda: a.stats().opened_at == b.stats().opened_at == opened_at)
    opened = target.rows("SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'state_change' "
                         "AND to_state = 'open'")
    assert opened[0][0] == 1


def test_failures_of_four_processes_add_up_to_a_trip(target: Target) -> None:
    """Four workers each see 2 failures of a threshold-5 circuit: together they trip it, once."""
    pairs = [target.make() for _ in range(4)]
    breakers = [reg.get("svc", failure_threshold=5, recovery_timeout=60) for reg, _ in pairs]
    for _, store in pairs:
        assert store.flush()
    for b in breakers:
        fail(b, 2)
        assert b.state is CircuitState.CLOSED  # none of them alone would open
    assert eventually(lambda: all(b.state is CircuitState.OPEN for b in breakers))
    opened = target.rows("SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'state_change' "
                         "AND to_state = 'open'")
    assert opened[0][0] == 1


def test_a_success_resets_the_shared_count(target: Target) -> None:
    (reg_a, store_a), (reg_b, store_b) = target.make(), target.make()
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


# -- probe leases ---------------------------------------------------------------------------------------


def _holder(a: Any, b: Any) -> tuple[Any, Any]:
    """(the breaker whose writer took the probe lease as the open period ended, the other one)."""
    assert eventually(lambda: bool(a.linked.grants or b.linked.grants))
    return (a, b) if a.linked.grants else (b, a)


def test_probe_leases_are_shared_and_expire_on_the_database_clock(target: Target, clock: FakeClock) -> None:
    """One probe permit between two processes: whichever writer takes the lease when the open period
    ends holds it; the other's caller is refused until the lease is free — which the database's clock
    decides."""
    (reg_a, _), (reg_b, _) = target.make(), target.make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=10, probe_timeout=1)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=10, probe_timeout=1)
    fail(a)
    assert eventually(lambda: b.state is CircuitState.OPEN)
    clock.advance(10)
    holder, other = _holder(a, b)  # a writer takes the lease as the open period ends
    probe = holder.admit()  # the holder has the one permit
    assert probe.lease > 0
    with pytest.raises(CircuitOpenError) as info:
        other.admit()
    assert info.value.state == "half_open"
    target.lease_time_passes(1)  # the probe never reports back: its lease expires, the other may probe
    with pytest.raises(CircuitOpenError):
        other.admit()  # the other's first caller since the expiry: its wish for a lease reaches its writer
    assert eventually(lambda: bool(other.linked.grants))
    p = other.admit()
    other.record_success(p)
    assert eventually(lambda: holder.state is CircuitState.CLOSED)
    holder.record_failure(probe, Boom())  # the lost probe, late: stale
    assert holder.state is CircuitState.CLOSED


def test_probes_across_processes_never_exceed_the_permit_count(target: Target, clock: FakeClock) -> None:
    """Three processes, two permits: however hard their callers try, two probes are admitted in all."""
    pairs = [target.make() for _ in range(3)]
    breakers = [reg.get("svc", failure_threshold=1, recovery_timeout=10, half_open_max_calls=2, probe_timeout=60)
                for reg, _ in pairs]
    fail(breakers[0])
    assert eventually(lambda: all(b.state is CircuitState.OPEN for b in breakers))
    clock.advance(10)
    admitted = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # every caller keeps asking (its wish reaches its writer)
        for b in breakers:
            with contextlib.suppress(CircuitOpenError):
                admitted.append((b, b.admit()))
        time.sleep(0.01)
    assert len(admitted) == 2, admitted
    held = target.rows("SELECT count(*) FROM circuit_breaker_probe_leases WHERE service_name = 'svc' "
                       "AND kind = 'held'")
    assert held[0][0] == 2


def test_a_cancelled_probe_frees_its_lease_at_once(target: Target, clock: FakeClock) -> None:
    """A probe cancelled (or failing with an exception that is not counted) gives its lease back at once:
    another process probes without waiting for the lease to expire (a minute here)."""
    (reg_a, _), (reg_b, _) = target.make(), target.make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=10, probe_timeout=60)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=10, probe_timeout=60)
    fail(a)
    assert eventually(lambda: b.state is CircuitState.OPEN)
    clock.advance(10)
    holder, other = _holder(a, b)
    probe = holder.admit()
    lease = probe.lease
    holder.release(probe)  # cancelled: CancelledError / KeyboardInterrupt went through the call
    # its lease row goes at once (the other process's writer may take a new one at once, too)
    assert eventually(lambda: target.rows("SELECT count(*) FROM circuit_breaker_probe_leases WHERE lease_id = ?",
                                          (lease,))[0][0] == 0)

    clock.advance(1)  # a moment later (far less than the 60 s a lease lives), the other's caller asks

    def b_probes() -> bool:
        try:
            other.record_success(other.admit())
            return True
        except CircuitOpenError:
            return False

    assert eventually(b_probes)  # long before the 60 s lease would have expired
    assert eventually(lambda: holder.state is CircuitState.CLOSED)


def test_a_grant_no_caller_takes_stays_ready(target: Target, clock: FakeClock) -> None:
    """Nobody calls as the open period ends, nor for several times the lease's length after: the writer
    renews the grant it took, and the first caller probes at once (it was refused once: the grant had
    lapsed, and a new lease was only asked for by that refusal)."""
    reg, store = target.make()
    b = reg.get("svc", failure_threshold=1, recovery_timeout=1)  # a lease lives probe_timeout = 1 s
    fail(b)
    clock.advance(1)
    assert eventually(lambda: bool(b.linked.grants))
    ((lease,),) = target.rows("SELECT lease_id FROM circuit_breaker_probe_leases WHERE kind = 'held'")
    for _ in range(8):  # four seconds without a call
        target.lease_time_passes(0.5)
        assert store.flush()
    probe = b.admit()  # no CircuitOpenError
    assert probe.lease == lease  # the same row, renewed
    b.record_success(probe)
    assert b.state is CircuitState.CLOSED


# -- the analyst's shared writes ----------------------------------------------------------------------------


def _race(n: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` on ``n`` threads released at once."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        out[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _records(target: Target, n: int) -> list[Records]:
    reg, store = target.make()
    reg.get("svc")
    assert store.flush()  # the tables exist
    return [Records(store.backend, f"host-{i}:1", timeout=5.0) for i in range(n)]


def test_json_columns_hold_json_every_reader_takes(target: Target) -> None:
    """A pattern's evidence with an infinite ratio was written ``Infinity`` (Python's JSON): SQLite's
    json_extract then failed on the whole table ("malformed JSON"), and PostgreSQL's ``::json`` on the row.
    A number that is not finite is written null."""
    (records,) = _records(target, 1)
    records.pattern("svc", pattern="burst", window=900, failures=12, error_rate=0.1, threshold=5, timeout=60.0,
                    confidence=0.9, evidence={"time_rate_ratio": float("inf"), "rates": [1.5, float("nan")]},
                    now=time.time())
    records.close()
    if target.kind == "sqlite":
        sql = ("SELECT json_extract(evidence, '$.time_rate_ratio'), json_extract(evidence, '$.rates[0]'), "
               "json_extract(evidence, '$.rates[1]') FROM circuit_breaker_failure_patterns")
    else:
        sql = ("SELECT evidence::json ->> 'time_rate_ratio', (evidence::json -> 'rates' ->> 0)::float, "
               "evidence::json -> 'rates' ->> 1 FROM circuit_breaker_failure_patterns")
    assert target.rows(sql) == [(None, 1.5, None)]


def test_analysis_is_claimed_once_per_period(target: Target) -> None:
    """Six processes claim the same period at once: one wins; the next period is claimable again."""
    records = _records(target, 6)
    try:
        now = time.time()
        first = _race(6, lambda i: records[i].claim("svc", "periodic", 100, now))
        assert sum(first) == 1
        again = _race(6, lambda i: records[i].claim("svc", "periodic", 100, now))
        assert sum(again) == 0
        nxt = _race(6, lambda i: records[i].claim("svc", "periodic", 101, now))
        assert sum(nxt) == 1
    finally:
        for r in records:
            r.close()


def test_a_claim_from_the_future_is_taken_over_after_a_clock_step(target: Target) -> None:
    """The clock stepped back an hour: the last claim's period lay in the future, and no process could
    claim one for an hour (no labels, alerts or adjustments: 0 analyses in 60 periods in a review's run)."""
    a, b = _records(target, 2)
    try:
        now = time.time()
        assert a.claim("svc", "periodic", int(now // 60), now, 60.0)
        back = now - 3600
        assert b.claim("svc", "periodic", int(back // 60), back, 60.0)  # the step back: taken over
        assert not a.claim("svc", "periodic", int(back // 60), back + 1, 60.0)  # once per period again
        assert not b.claim("svc", "periodic", int(back // 60) - 1, back, 60.0)  # an older period: no
    finally:
        a.close()
        b.close()


def test_alerts_are_deduplicated_across_processes(target: Target) -> None:
    """Eight processes raise the same alert at the same moment: one row, eight occurrences."""
    records = _records(target, 8)
    now = time.time()
    alert = Alert("svc", "circuit_opened", "error", "Circuit 'svc' opened", {"reason": "x"}, now,
                  key="svc:circuit_opened")
    try:
        fresh = _race(8, lambda i: records[i].alerts([alert], [], dedup_window=300.0))
    finally:
        for r in records:
            r.close()
    assert sum(len(f) for f in fresh) == 1
    rows = target.rows("SELECT count(*), sum(occurrences) FROM circuit_breaker_alerts WHERE alert_key = ?",
                       ("svc:circuit_opened",))
    assert (rows[0][0], rows[0][1]) == (1, 8)


# -- rollups and history ------------------------------------------------------------------------------------


def test_successes_and_rejections_roll_up_exactly(target: Target) -> None:
    reg, store = target.make()
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
    totals = target.rows("SELECT sum(calls), sum(successes), sum(failures), sum(ignored), sum(rejections), "
                         "sum(cancelled) FROM circuit_breaker_metrics WHERE service_name = 'svc'")
    assert [int(v) for v in totals[0]] == [16, 7, 3, 1, 4, 1]
    seconds = target.rows("SELECT sum(calls), sum(failures), sum(rejections) FROM circuit_breaker_seconds "
                          "WHERE service_name = 'svc'")
    assert [int(v) for v in seconds[0]] == [10, 3, 4]


def test_flush_writes_the_rollups_too(target: Target) -> None:
    """A process that flushes and then leaves by os._exit (a forked worker) keeps its counts."""
    reg, store = target.make(metrics_interval=3600)
    b = reg.get("svc")
    assert store.flush()
    for _ in range(5):
        b.record_success(b.admit())
    assert store.flush()
    assert int(target.rows("SELECT sum(successes) FROM circuit_breaker_metrics WHERE service_name = 'svc'")[0][0]) == 5


def test_latency_reaches_the_rollups_when_measured(target: Target, clock: FakeClock) -> None:
    reg, store = target.make()

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
    ((n, total, longest),) = target.rows("SELECT latency_count, latency_sum_ms, latency_max_ms "
                                         "FROM circuit_breaker_metrics WHERE service_name = 'timed'")
    assert (n, total, longest) == (4, pytest.approx(100.0), pytest.approx(40.0))
    assert target.rows("SELECT latency_count FROM circuit_breaker_metrics WHERE service_name = 'untimed'")[0][0] == 0
    status = store.circuit("timed")
    assert status is not None
    assert (status["last_hour"]["avg_latency_ms"], status["last_hour"]["max_latency_ms"]) == (25.0, 40.0)


def test_retention_prunes_old_events_and_caps_their_number(target: Target, clock: FakeClock) -> None:
    reg, store = target.make(retention=3600, max_events=1000)
    b = reg.get("svc", failure_threshold=10**6)
    start = clock.time()
    fail(b, 500)
    assert store.flush()
    clock.advance(7200)
    fail(b, 1500)
    assert store.flush()
    store.writer._last_prune = 0.0
    assert store.flush()
    ((count, oldest),) = target.rows("SELECT count(*), min(ts) FROM circuit_breaker_events")
    assert count <= 1001
    assert oldest >= start + 7200 - 1


def test_the_event_cap_drops_failures_before_transitions(target: Target, clock: FakeClock) -> None:
    """A flood of failures beyond ``max_events`` pushes out older failures, not the day's transitions:
    the shared metrics count those (circuitry_transitions_total went down), and the analysis reads
    the open periods from them."""
    reg, store = target.make(max_events=1000)
    b = reg.get("svc", failure_threshold=1, recovery_timeout=1)
    fail(b)  # opens
    clock.advance(1)
    assert store.flush()  # the probe's lease is taken as the open period ends
    b.record_success(b.admit())  # half-open, closed
    assert store.flush()
    count_transitions = "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'state_change'"
    transitions = target.rows(count_transitions)[0][0]
    assert transitions >= 2
    flood = reg.get("flood", failure_threshold=10**6)
    for i in range(1500):  # a second apart: failures of one second may share a row
        fail(flood)
        clock.advance(1)
        if i % 100 == 99:
            assert store.flush()
    store.writer._last_prune = 0.0
    assert store.flush()
    ((kept_failures,),) = target.rows("SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'failure'")
    assert 900 <= kept_failures <= 1000
    assert target.rows(count_transitions)[0][0] == transitions


def test_pruning_keeps_each_circuits_latest_adjustment(target: Target, clock: FakeClock) -> None:
    """The adjustment rows every process follows went with the retention (7 days): a worker started after
    that ran the code's settings beside workers that ran the adjusted ones. Each circuit's latest stays."""
    reg, store = target.make(retention=3600)
    reg.get("svc")
    reg.get("other")
    assert store.flush()
    records = Records(store.backend, "host-a:1", timeout=5.0)
    t0 = clock.time()
    for k, name in enumerate(["svc", "svc", "other"]):
        records.event(name, "adjustment", {"action": "adjust", "after": {"threshold": 6 + k, "timeout": 30.0}},
                      t0 + k, message=f"change {k}")
    records.close()
    clock.advance(7200)
    store.writer._last_prune = 0.0
    assert store.flush()
    left = target.rows("SELECT service_name, error_message FROM circuit_breaker_events WHERE event_type = "
                       "'adjustment' ORDER BY id")
    assert left == [("svc", "change 1"), ("other", "change 2")]


def test_the_outbox_sends_one_circuits_deliveries_in_order(target: Target) -> None:
    """The ordering rule of the webhook outbox (a correlated subquery in the claim) on every backend."""
    from circuitry.store.outbox import Outbox

    _, store = target.make()
    box = Outbox(store.backend, "host-a:1")
    alerts = [{"id": i, "service_name": svc, "alert_type": "circuit_opened", "severity": "error", "message": "m",
               "details": {}, "created_at": 1_700_000_000.0 + i, "key": f"{svc}:circuit_opened"}
              for i, svc in ((1, "payments"), (2, "payments"), (3, "orders"))]
    box.enqueue([("pd", a) for a in alerts])
    first = box.claim(["pd"], lease=60.0, limit=10)
    assert sorted(d.alert["id"] for d in first) == [1, 3]  # payments' second waits for its first
    (one,) = [d for d in first if d.alert["id"] == 1]
    assert box.delivered(one, 200)
    assert [d.alert["id"] for d in box.claim(["pd"], lease=60.0, limit=10)] == [2]
    box.close()


# -- the read model -------------------------------------------------------------------------------------


def test_the_read_model_reports_status_alerts_and_acknowledgement(target: Target) -> None:
    reg, store = target.make(analysis_interval=3600)
    b = reg.get("payment_api", failure_threshold=2, recovery_timeout=60)
    for _ in range(3):
        b.record_success(b.admit())
    fail(b, 2)
    assert store.flush()
    assert eventually(lambda: bool(store.alerts("payment_api")))
    status = store.circuit("payment_api")
    assert status is not None
    assert status["state"] == "open" and status["failure_threshold"] == 2
    assert status["last_hour"]["successes"] == 3 and status["last_hour"]["failures"] == 2
    assert status["last_transition"]["to_state"] == "open"
    assert [n["service_name"] for n in store.read.needs_attention()] == ["payment_api"]
    (alert,) = store.alerts("payment_api")
    assert alert["alert_type"] == "circuit_opened" and alert["acknowledged"] is False
    assert isinstance(alert["created_at"], str)  # the same shape on every backend
    # the seed's own alert query runs unchanged (psycopg's placeholders on PostgreSQL, sqlite3's on SQLite)
    seed = ("SELECT * FROM circuit_breaker_alerts WHERE service_name = %s AND acknowledged = FALSE "
            "ORDER BY created_at DESC")
    if target.kind == "sqlite":
        seed = seed.replace("%s", "?")
    got = store.query(seed, ("payment_api",))
    assert [r["alert_type"] for r in got] == ["circuit_opened"]
    assert store.acknowledge(service="payment_api") == 1
    assert store.alerts("payment_api") == []
    assert store.read.names() == ["payment_api"]


def test_query_is_read_only(target: Target) -> None:
    from circuitry.exceptions import StoreError

    reg, store = target.make()
    reg.get("svc").force_open()
    assert store.flush()
    with pytest.raises(StoreError):
        store.query("DELETE FROM circuit_breaker_states")
    if target.kind == "postgresql":  # a SET cannot outlive the statement, nor can two statements be sent
        with contextlib.suppress(StoreError):
            store.query("SET default_transaction_read_only = off")
        with pytest.raises(StoreError):
            store.query("DELETE FROM circuit_breaker_states")
        with pytest.raises(StoreError):
            store.query("SELECT 1; DELETE FROM circuit_breaker_states")
    assert target.rows("SELECT count(*) FROM circuit_breaker_states")[0][0] == 1


async def test_the_store_reads_from_asyncio(target: Target) -> None:
    from circuitry.store import Store

    reg, store = target.make()
    fail(reg.get("svc", failure_threshold=1))
    assert isinstance(store, Store)
    assert store.flush()
    rows = await store.aquery("SELECT current_state FROM circuit_breaker_states WHERE service_name = ?", ("svc",))
    assert rows == [{"current_state": "open"}]


# -- faults: zero exceptions reach protected calls, one warning per episode, the backlog catches up -----------


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


def expected(n: int) -> tuple[int, int, int]:
    fails = sum(1 for i in range(n) if i % 3 == 0)
    ignored = sum(1 for i in range(n) if i % 3 and i % 7 == 0)
    return n - fails - ignored, fails, ignored


def assert_caught_up(target: Target, n: int, name: str = "faulty") -> None:
    ok, fails, ignored = expected(n)
    got = target.rows("SELECT sum(successes), sum(failures), sum(ignored) FROM circuit_breaker_metrics "
                      "WHERE service_name = ?", (name,))
    assert [int(v) for v in got[0]] == [ok, fails, ignored]
    got = target.rows("SELECT sum(calls), sum(failures) FROM circuit_breaker_seconds WHERE service_name = ?", (name,))
    assert [int(v) for v in got[0]] == [ok + fails, fails]
    # every failure has its row, or is counted in a row standing for several (past the per-second limit)
    got = target.rows("SELECT sum(occurrences) FROM circuit_breaker_events WHERE service_name = ? "
                      "AND event_type = 'failure'", (name,))
    assert int(got[0][0]) == fails


def test_a_process_that_lost_the_race_after_a_fault_writes_no_backlog_later(target: Target) -> None:
    """Two processes go through one outage from memory while the database refuses writes. After it, one
    writes the history; the other finds the same state stored and adopts it -- and kept its own copy of
    that history queued, written with its next transition: the outage recorded twice."""
    reg_a, store_a = target.make()
    reg_b, store_b = target.make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=1)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=1)
    assert store_a.flush() and store_b.flush()
    with target.refusing("read_only"):
        for br in (a, b):
            fail(br)  # closed -> open, each from memory
        target.lease_time_passes(1.5)
        for br in (a, b):  # the probe succeeds: closed again (decided from memory during the fault)
            assert eventually(lambda br=br: _probe_succeeds(br))
        assert (a.state, b.state) == (CircuitState.CLOSED, CircuitState.CLOSED)
        assert eventually(lambda: store_a.health().fault is not None and store_b.health().fault is not None)
    assert store_a.flush(15)
    assert store_b.flush(15)
    history = "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'state_change'"
    (before,), = target.rows(history)
    fail(b)  # a new outage
    assert store_b.flush()
    assert target.rows(history) == [(before + 1,)]
    opened = target.rows("SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'state_change' AND "
                         "from_state = 'closed' AND to_state = 'open'")
    assert opened == [(2,)]


def _unreachable(store: Any) -> list[bool]:
    """Make ``store``'s database unreachable until the returned flag is set to False."""
    real = store.backend.connect
    blocked = [True]

    def connect(role: Any, *, timeout: float) -> Any:
        if blocked[0]:
            raise OSError(errno.EACCES, "the database cannot be reached yet")
        return real(role, timeout=timeout)

    store.backend.connect = connect
    return blocked


def test_a_trip_from_memory_never_undoes_what_was_stored_since(target: Target) -> None:
    """A process that cannot reach the database yet (a partition, a server down as it starts) trips
    from memory; meanwhile another trips the same circuit and an operator resets it. When the first
    reaches the database, its old "open" was written over the reset (a second opening row, every process
    open again for ten minutes). The row moved after its trip: the row stands."""
    reg_a, store_a = target.make()
    a = reg_a.get("svc", failure_threshold=2, recovery_timeout=600)
    assert store_a.flush()
    reg_b, store_b = target.make()
    blocked = _unreachable(store_b)
    b = reg_b.get("svc", failure_threshold=2, recovery_timeout=600)
    fail(b, 2)  # b opens from memory
    target.clock.advance(1)
    fail(a, 2)
    assert store_a.flush()
    target.clock.advance(1)
    a.reset()  # the operator, after a's opening
    assert store_a.flush()
    blocked[0] = False
    assert eventually(lambda: store_b.flush(0.5) and b.state is CircuitState.CLOSED)
    assert a.state is CircuitState.CLOSED
    assert [tuple(r) for r in target.rows("SELECT current_state FROM circuit_breaker_states")] == [("closed",)]
    moves = target.rows("SELECT from_state, to_state FROM circuit_breaker_events WHERE event_type = 'state_change' "
                        "ORDER BY id")
    assert [tuple(m) for m in moves] == [("closed", "open"), ("open", "closed")]


def test_a_process_starting_during_an_outage_takes_the_stored_opening(target: Target) -> None:
    """A process starts while the circuit is open and cannot read its row yet (PostgreSQL never reads on a
    caller's thread; a SQLite file may be locked): it runs closed, and its callers trip it from memory.
    That trip is the stored outage seen late: the stored opening stands (its open period is not started
    again), and no ``open -> open`` row is made up."""
    reg_a, store_a = target.make()
    a = reg_a.get("svc", failure_threshold=2, recovery_timeout=600)
    fail(a, 2)
    assert store_a.flush()
    (opened_at, open_until), = target.rows("SELECT opened_at, open_until FROM circuit_breaker_states")
    target.clock.advance(5)
    reg_b, store_b = target.make()
    blocked = _unreachable(store_b)
    b = reg_b.get("svc", failure_threshold=2, recovery_timeout=600)
    assert b.state is CircuitState.CLOSED  # nothing read yet
    fail(b, 2)  # its callers trip it from memory
    blocked[0] = False
    assert eventually(lambda: store_b.flush(0.5))
    assert [tuple(r) for r in target.rows("SELECT current_state, opened_at, open_until FROM "
                                          "circuit_breaker_states")] == [("open", opened_at, open_until)]
    moves = target.rows("SELECT from_state, to_state FROM circuit_breaker_events WHERE event_type = 'state_change' "
                        "ORDER BY id")
    assert [tuple(m) for m in moves] == [("closed", "open")]
    assert b.state is CircuitState.OPEN
    assert b.stats().opened_at == a.stats().opened_at


@pytest.mark.parametrize("decision", ["force_open", "force_closed"])
def test_an_operators_decision_made_before_the_row_was_read_goes_on_top(target: Target, decision: str) -> None:
    """The same late start, but an operator decides in that process before its row can be read: that is
    not the stored outage seen late -- the operator's state is written over the stored opening."""
    reg_a, store_a = target.make()
    fail(reg_a.get("svc", failure_threshold=2, recovery_timeout=600), 2)
    assert store_a.flush()
    reg_b, store_b = target.make()
    blocked = _unreachable(store_b)
    b = reg_b.get("svc", failure_threshold=2, recovery_timeout=600)
    getattr(b, decision)()
    blocked[0] = False
    assert eventually(lambda: store_b.flush(0.5))
    expected = "forced_open" if decision == "force_open" else "disabled"
    assert b.state.value == expected
    assert [tuple(r) for r in target.rows("SELECT current_state FROM circuit_breaker_states")] == [(expected,)]


def test_a_process_starting_during_an_outage_refuses_from_its_first_call(target: Target) -> None:
    """A new process's first breaker waits a moment, once, for the store's first read when it cannot read
    its row at once (PostgreSQL: always): the stored opening is in force before its first call, so no call
    reaches the failing service. With ``startup_wait=0`` it runs closed until its writer has read."""
    reg_a, store_a = target.make()
    a = reg_a.get("svc", failure_threshold=2, recovery_timeout=600)
    fail(a, 2)
    assert store_a.flush()
    reg_b, _ = target.make()
    b = reg_b.get("svc", failure_threshold=2, recovery_timeout=600)
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        b.admit()
    assert b.stats().opened_at == a.stats().opened_at
    if target.kind == "postgresql":  # (a SQLite file not locked is read at once, wait or not)
        reg_c, store_c = target.make(startup_wait=0)
        c = reg_c.get("svc", failure_threshold=2, recovery_timeout=600)
        assert c.state is CircuitState.CLOSED  # not read yet
        assert store_c.flush() and c.state is CircuitState.OPEN


def _probe_succeeds(b: Any) -> bool:
    try:
        permit = b.admit()
    except CircuitOpenError:
        return False
    b.record_success(permit)
    return True


def fault_warnings(logs: list[dict[str, Any]], kind: str) -> int:
    return sum(1 for e in logs if e["event"] == "circuitry.store_fault" and e["fault"] == kind)


@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
def test_a_database_that_refuses_writes_never_reaches_a_protected_call(target: Target, fault: str) -> None:
    reg, store = target.make()
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    with capture_logs() as logs:
        with target.refusing(fault):
            assert _hammer(reg, 3000) == 0
            assert eventually(lambda: store.health().fault == fault)
            time.sleep(0.2)  # several failed write attempts during the episode
            assert store.health().queued > 0
        assert store.flush(15)
    assert fault_warnings(logs, fault) == 1
    assert any(e["event"] == "circuitry.store_recovered" for e in logs)
    store.close()
    assert_caught_up(target, 3000)
