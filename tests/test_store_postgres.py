"""What only the PostgreSQL backend promises (the behaviours every backend shares are in
``test_store_conformance.py``): the URL switches, the server's faults (down at start, restarted, a
dropped connection, a statement timeout), a password that is never shown, lease expiry on the server's
clock whatever the hosts' clocks say, migrations on a shared server, and fork().
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from circuitry import CircuitOpenError, CircuitState, Registry, circuit, configure
from circuitry.store import open_reader, open_store
from circuitry.testing import FakeClock

from .conftest import Boom, eventually
from .pg_cluster import PASSWORD
from .test_store_conformance import Target, _hammer, assert_caught_up, fault_warnings


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0, wall=time.time() - 3600.0)


@pytest.fixture
def target(pg_cluster: Any, clock: FakeClock) -> Iterator[Target]:
    t = Target("postgresql", pg_cluster.create_database(), clock, pg_cluster)
    yield t
    t.close()


def test_a_postgresql_url_switches_every_entry_point(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from circuitry._defaultdb import open_default_store as _open_default_store
    from circuitry.store.postgres import PostgresStore

    reg = Registry(hooks=[], store=pg_url)
    assert isinstance(reg.store, PostgresStore)
    reg.store.close()
    for scheme in ("postgresql://", "postgres://"):
        store = open_store(scheme + pg_url.split("://", 1)[1])
        assert isinstance(store, PostgresStore)
        store.close()
    monkeypatch.setenv("CIRCUITRY_DB", pg_url)
    store = _open_default_store()
    assert isinstance(store, PostgresStore)
    store.close()  # type: ignore[union-attr]
    try:
        registry = configure(db=pg_url, poll_interval=0.01)
        assert isinstance(registry.store, PostgresStore)

        @circuit("configured", failure_threshold=1)
        def f() -> None:
            raise Boom()

        with pytest.raises(Boom):
            f()
        assert registry.store.flush()
        assert open_reader(pg_url).circuit("configured")["state"] == "open"  # type: ignore[index]
    finally:
        configure(db=None)


def test_the_password_is_never_shown(target: Target, caplog: pytest.LogCaptureFixture) -> None:
    """Not in the store's repr or health, not in a fault's log line, not in an error — even when the
    server refuses the password."""
    wrong = target.where.replace(PASSWORD, "Wr0ng-pw-XYZ")
    with capture_logs() as logs, caplog.at_level(logging.DEBUG, logger="circuitry"):
        reg, store = target.make()
        reg.get("svc").force_open()
        assert store.flush()
        bad = open_store(wrong, poll_interval=0.01)
        target.made.append(bad)
        b = Registry(hooks=[], store=bad).get("svc", failure_threshold=1)
        b.force_open()
        assert eventually(lambda: bad.health().fault == "unavailable")
        with pytest.raises(Exception) as info:
            open_reader(wrong).status()
    text = " ".join([repr(store), repr(store.health()), repr(bad), repr(bad.health()), str(info.value), repr(logs),
                     caplog.text])
    assert "circuitry@127.0.0.1" in text
    assert PASSWORD not in text and "Wr0ng-pw-XYZ" not in text
    assert any(e["event"] == "circuitry.store_fault" and "password authentication failed" in e["error_message"]
               for e in logs)


def test_server_down_at_start_then_up(pg_cluster: Any, clock: FakeClock) -> None:
    """The application starts while the server is down: calls are protected from memory, nothing is
    raised, and once the server is up the backlog is written."""
    t = Target("postgresql", pg_cluster.create_database(), clock, pg_cluster)
    pg_cluster.stop_server()
    try:
        with capture_logs() as logs:
            reg, store = t.make()
            started = time.monotonic()
            assert _hammer(reg, 3000) == 0
            calls_took = time.monotonic() - started
            assert eventually(lambda: store.health().fault == "unavailable")
    finally:
        pg_cluster.start_server()
    try:
        assert store.flush(30)
        assert fault_warnings(logs, "unavailable") == 1
        print(f"\n3000 protected calls with the server down: {calls_took:.3f} s")
        store.close()
        assert_caught_up(t, 3000)
    finally:
        t.close()


def test_server_restarted_mid_run(target: Target) -> None:
    reg, store = target.make()
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    with capture_logs() as logs:
        assert _hammer(reg, 1500) == 0
        target.cluster.stop_server()
        try:
            assert _hammer(reg, 1500) == 0
            assert eventually(lambda: store.health().fault == "unavailable")
        finally:
            target.cluster.start_server()
        assert store.flush(30)
    assert fault_warnings(logs, "unavailable") == 1
    store.close()
    ok, fails, ignored = (a + b for a, b in zip(_expected_twice(), (0, 0, 0), strict=True))
    got = target.rows("SELECT sum(successes), sum(failures), sum(ignored) FROM circuit_breaker_metrics "
                      "WHERE service_name = 'faulty'")
    assert [int(v) for v in got[0]] == [ok, fails, ignored]
    got = target.rows("SELECT sum(occurrences) FROM circuit_breaker_events WHERE service_name = 'faulty' "
                      "AND event_type = 'failure'")
    assert int(got[0][0]) == fails


def _expected_twice() -> tuple[int, int, int]:
    from .test_store_conformance import expected

    ok, fails, ignored = expected(1500)
    return 2 * ok, 2 * fails, 2 * ignored


def test_a_dropped_connection_is_reopened_and_changes_still_propagate(target: Target) -> None:
    (reg_a, store_a), (reg_b, store_b) = target.make(), target.make()
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=600)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=600)
    assert store_a.flush() and store_b.flush()
    assert eventually(lambda: store_a.backend.listener.listening and store_b.backend.listener.listening)
    assert target.terminate_sessions() >= 4  # both writers and both listeners
    a.force_open()
    assert eventually(lambda: b.state is CircuitState.FORCED_OPEN)  # by polling, or by the new listener
    assert eventually(lambda: store_b.backend.listener.listening)
    a.reset()
    assert eventually(lambda: b.state is CircuitState.CLOSED)
    assert store_a.flush() and store_b.flush()
    assert store_a.health().healthy and store_b.health().healthy


def test_changes_propagate_by_polling_while_nobody_listens(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the listener unable to connect, another host's transition still arrives (the writer polls)."""
    (reg_a, _), (reg_b, store_b) = target.make(), target.make()
    listener = store_b.backend.listener

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("listener connection refused (test)")

    real = store_b.backend.connect_raw
    monkeypatch.setattr(store_b.backend, "connect_raw",
                        lambda role, **kw: refuse() if role == "listener" else real(role, **kw))
    a = reg_a.get("svc", failure_threshold=1, recovery_timeout=600)
    b = reg_b.get("svc", failure_threshold=1, recovery_timeout=600)
    assert store_b.flush()
    assert not listener.listening
    a.force_open()
    assert eventually(lambda: b.state is CircuitState.FORCED_OPEN)
    a.reset()
    assert eventually(lambda: b.state is CircuitState.CLOSED)


def test_a_statement_timeout_is_a_fault_and_the_backlog_catches_up(target: Target) -> None:
    """The server stops answering in time (here: every insert of an event sleeps past the timeout)."""
    reg, store = target.make(statement_timeout=0.2)
    reg.get("faulty", failure_threshold=10**6, on=Boom)
    assert store.flush()
    target.rows("CREATE FUNCTION test_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); "
                "RETURN NULL; END $$")
    target.rows("CREATE TRIGGER test_slow AFTER INSERT ON circuit_breaker_events FOR EACH STATEMENT "
                "EXECUTE FUNCTION test_slow()")
    with capture_logs() as logs:
        started = time.monotonic()
        assert _hammer(reg, 3000) == 0
        calls_took = time.monotonic() - started
        assert eventually(lambda: store.health().fault == "unavailable")
        target.rows("DROP TRIGGER test_slow ON circuit_breaker_events")
        assert store.flush(30)
    assert fault_warnings(logs, "unavailable") == 1
    assert any("canceling statement due to statement timeout" in e.get("error_message", "") for e in logs)
    print(f"\n3000 protected calls while statements time out: {calls_took:.3f} s")
    store.close()
    assert_caught_up(target, 3000)


def test_a_host_clock_cannot_expire_a_live_lease(target: Target) -> None:
    """Two hosts whose clocks are two hours apart: the one holding the probe lease keeps it while it
    lives on the server's clock, however far the other host's clock races on; once it really expires
    (on the server's clock), the other host probes."""
    clock_a = FakeClock(start=1000.0, wall=time.time() - 3600.0)
    clock_b = FakeClock(start=1000.0, wall=time.time() + 3600.0)
    store_a = open_store(target.where, clock=clock_a, poll_interval=0.01)
    store_b = open_store(target.where, clock=clock_b, poll_interval=0.01)
    target.made += [store_a, store_b]
    policy = {"failure_threshold": 1, "recovery_timeout": 10, "probe_timeout": 3}
    a = Registry(clock=clock_a, hooks=[], store=store_a).get("svc", **policy)
    b = Registry(clock=clock_b, hooks=[], store=store_b).get("svc", **policy)
    assert store_a.flush() and store_b.flush()
    fail_once(a)
    assert eventually(lambda: b.state is not CircuitState.CLOSED)
    clock_a.advance(10)
    clock_b.advance(10)
    # The first caller, on either host, to be handed the lease probes (a refused caller's wish reaches
    # its writer, which asks the server again a moment later on its own clock).
    found: list[Any] = []

    def someone_probes() -> bool:
        for me, them, clock in ((a, b, clock_a), (b, a, clock_b)):
            try:
                found.extend([me, them, clock_b if them is b else clock_a, me.admit()])
                return True
            except CircuitOpenError:
                clock.advance(0.02)
        return False

    assert eventually(someone_probes)
    holder, other, racing, probe = found
    ((expires,),) = target.rows("SELECT expires_at FROM circuit_breaker_probe_leases WHERE kind = 'held'")

    def server_now() -> float:
        return float(target.rows("SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])

    refused_while_live = 0
    while server_now() < expires - 0.3:  # the other's callers keep asking while the lease lives
        try:
            other.admit()
            raise AssertionError("the other host probed while the lease was live")
        except CircuitOpenError:
            refused_while_live += 1
        racing.advance(600)  # its clock races on: it would have expired the lease many times over
        time.sleep(0.05)
    assert refused_while_live > 0

    def other_probes() -> bool:
        racing.advance(0.2)
        try:
            other.record_success(other.admit())
            return True
        except CircuitOpenError:
            return False

    assert eventually(other_probes)  # after the lease expired on the server's clock
    assert server_now() >= expires
    assert eventually(lambda: holder.state is CircuitState.CLOSED)
    holder.record_failure(probe, Boom())  # late and stale
    assert holder.state is CircuitState.CLOSED


def fail_once(b: Any) -> None:
    b.record_failure(b.admit(), Boom("down"))


def test_hosts_starting_together_migrate_once(pg_url: str) -> None:
    """Six processes open an empty database at the same moment: the schema is created once, cleanly."""
    from circuitry.store.postgres import PostgresBackend
    from circuitry.store.postgres.schema import LATEST_VERSION

    from .test_store_conformance import _race

    backends = [PostgresBackend(pg_url) for _ in range(6)]
    conns = _race(6, lambda i: backends[i].connect("writer", timeout=5.0))
    for conn in conns:
        conn.close()
    import psycopg

    with psycopg.connect(pg_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM circuitry_schema ORDER BY version")]
    assert versions[-1] == LATEST_VERSION and len(versions) == len(set(versions))


def test_migrating_makes_a_dropped_table_again(pg_url: str) -> None:
    """A table dropped while ``circuitry_schema`` still records the latest version: migrating found
    nothing to do, and the store failed on it (``old_schema``) until the table was made by hand."""
    import psycopg

    from circuitry.store.postgres.schema import MIGRATIONS, migrate

    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert migrate(conn) == [m.version for m in MIGRATIONS]
        conn.execute("DROP TABLE circuit_breaker_alerts")
        assert migrate(conn) == []
        assert conn.execute("SELECT count(*) FROM circuit_breaker_alerts").fetchone() == (0,)
        assert [r[0] for r in conn.execute("SELECT version FROM circuitry_schema ORDER BY version")] == [
            m.version for m in MIGRATIONS]


def test_a_database_upgraded_from_version_8_shows_the_last_hour_at_once(pg_url: str) -> None:
    """Version 9's ten-minute rollups (what the status of every circuit reads) are added up from the
    per-minute rows on upgrade, once: a rerun after a dropped table counts nothing twice."""
    import psycopg

    from circuitry.store.postgres.schema import MIGRATIONS, migrate

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(MIGRATIONS[0].sql)
        minute = int(time.time() // 60)
        for k in range(3):
            conn.execute("INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, "
                         "failures) VALUES ('legacy', %s, now(), 10, 7, 3)", (minute - k,))
        assert migrate(conn) == [m.version for m in MIGRATIONS[1:]]
        totals = "SELECT sum(calls), sum(successes), sum(failures) FROM circuit_breaker_metrics_10m"
        assert conn.execute(totals).fetchone() == (30, 21, 9)
        conn.execute("DROP TABLE circuitry_analysis_leases")
        assert migrate(conn) == []
        assert conn.execute(totals).fetchone() == (30, 21, 9)


def test_a_store_used_before_fork_works_in_parent_and_child(pg_url: str) -> None:
    """A child forked while the listener waits for notifications does not end the parent's session, and
    both keep writing and seeing each other's transitions."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from circuitry import Registry, CircuitState
        from circuitry.store import open_store
        store = open_store({pg_url!r}, poll_interval=0.01)
        reg = Registry(hooks=[], store=store)
        b = reg.get("forked", failure_threshold=10**6)
        other = reg.get("signal", failure_threshold=1)
        assert store.flush(10)
        time.sleep(0.3)  # the listener is waiting for notifications
        pid = os.fork()
        if pid == 0:
            for _ in range(20):
                b.record_failure(b.admit(), RuntimeError("child"))
            other.force_open()
            ok = store.flush(10)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        deadline = time.monotonic() + 10
        while other.state is not CircuitState.FORCED_OPEN and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(5):
            b.record_failure(b.admit(), RuntimeError("parent"))
        ok = store.flush(10)
        print(status, other.state.value, ok, store.health().faults, store.backend.listener.listening)
        store.close()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CIRCUITRY_DB": "none"})
    assert proc.returncode == 0, proc.stderr
    status, state, ok, faults, listening = proc.stdout.split()
    assert (status, state, ok, faults, listening) == ("0", "forced_open", "True", "0", "True"), proc.stderr
    import psycopg

    with psycopg.connect(pg_url) as conn:
        n = conn.execute("SELECT sum(occurrences) FROM circuit_breaker_events WHERE service_name = 'forked' "
                         "AND event_type = 'failure'").fetchone()
    assert n is not None and int(n[0]) == 25


def test_the_command_line_reads_and_migrates_a_postgresql_database(pg_url: str) -> None:
    """`circuitry migrate` and `circuitry status` take a PostgreSQL URL as they take a file."""
    import io

    from circuitry.store.postgres.schema import LATEST_VERSION, MIGRATIONS
    from circuitry.tools.cli import main

    out = io.StringIO()
    assert main(["migrate", "--db", pg_url], out=out) == 0  # a new database: it said "up to date"
    applied = ", ".join(str(m.version) for m in MIGRATIONS)
    assert out.getvalue().endswith(f": applied migration(s) {applied}; schema version {LATEST_VERSION}\n")
    assert "password" not in out.getvalue()
    out = io.StringIO()
    assert main(["migrate", "--db", pg_url], out=out) == 0
    assert out.getvalue().endswith(f": up to date (schema version {LATEST_VERSION})\n")
    out = io.StringIO()
    assert main(["status", "--db", pg_url, "--json"], out=out) == 0
