"""The command line's errors: every number checked when parsed, a server's password never printed, an
unreachable server, a dropped table and a newer schema each said as they are (and `migrate` recreating a
dropped table), a closed stdout ending a command quietly. Each error is one line, exit code 2."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from circuitry.store.sqlite.schema import LATEST_VERSION

from .test_cli import run
from .test_cli_ops import populated_db

UNREACHABLE = "postgresql://ops:hunter2@127.0.0.1:1/x"  # port 1: refused at once


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return populated_db(tmp_path)


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err


BAD_NUMBERS = [
    (["status", "--limit", "-5"], "--limit"), (["status", "--limit", "0"], "--limit"),
    (["status", "--limit", "99999999999999999999999"], "--limit"), (["watch", "--limit", "ten"], "--limit"),
    (["alerts", "--limit", "-1"], "--limit"), (["patterns", "--limit", "0"], "--limit"),
    (["webhooks", "--limit", "-1"], "--limit"),
    (["watch", "--count", "0"], "--count"), (["watch", "--count", "-1"], "--count"),
    (["watch", "--interval", "-1"], "--interval"), (["watch", "--interval", "nan"], "--interval"),
    (["watch", "--interval", "inf"], "--interval"),
    (["recommend", "--service", "payments", "--window", "nan"], "--window"),
    (["recommend", "--service", "payments", "--window", "inf"], "--window"),
    (["recommend", "--service", "payments", "--window", "1e12"], "--window"),
    (["recommend", "--service", "payments", "--window", "0"], "--window"),
    (["recommend", "--service", "payments", "--threshold", "0"], "--threshold"),
    (["recommend", "--service", "payments", "--timeout", "nan"], "--timeout"),
    (["ack", "--id", "99999999999999999999999"], "--id"), (["ack", "--id", "-3"], "--id"),
    (["webhooks", "retry", "--id", "99999999999999999999999"], "--id"),
    (["dashboard", "--port", "99999"], "--port"), (["dashboard", "--port", "0"], "--port"),
    (["dashboard", "--refresh", "nan"], "--refresh"),
    (["export", "events", "--since", "nan"], "--since"), (["export", "events", "--until", "inf"], "--until"),
    (["export", "events", "--since", "1e400"], "--since"),
]


@pytest.mark.parametrize(("argv", "option"), BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_numbers_are_checked_when_the_arguments_are_read(argv: list[str], option: str, db: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import circuitry.tools.cli as cli

    def no_waiting(seconds: float) -> None:  # `watch` must stop at once, not refresh until interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", no_waiting)
    code, out = run(*argv, "--db", str(db))
    err = one_line(capsys.readouterr().err)
    assert code == 2 and out == "", argv
    assert err.startswith(f"circuitry {argv[0]}") and f"argument {option}" in err, err


READING = [["status"], ["alerts"], ["patterns"], ["webhooks"], ["export", "events"], ["watch", "--count", "1"],
           ["recommend", "--service", "payments"], ["ack", "--id", "1"], ["reset", "payments"]]


def test_an_unreachable_server_is_said_so_and_its_password_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    for argv in READING:
        code, out = run(*argv, "--db", UNREACHABLE)
        err = one_line(capsys.readouterr().err)
        assert code == 2 and "hunter2" not in err + out, argv
        assert "cannot connect to postgresql://ops@127.0.0.1:1/x" in err and "no circuit tables" not in err, err


def test_migrate_on_a_server_says_why_it_failed(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    code, _ = run("migrate", "--db", UNREACHABLE)
    err = one_line(capsys.readouterr().err)
    assert code == 2 and "hunter2" not in err and "in the log" not in err
    assert "could not migrate postgresql://ops@127.0.0.1:1/x: " in err and "refused" in err.lower(), err


def test_a_dropped_table_is_an_error_and_migrate_recreates_it(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE circuit_breaker_alerts")
    for argv in (["alerts"], ["status"]):
        assert run(*argv, "--db", str(db))[0] == 2, argv
        err = one_line(capsys.readouterr().err)
        assert "no such table: circuit_breaker_alerts" in err and "circuitry migrate" in err, err
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE circuit_breaker_states")
    code, out = run("migrate", "--db", str(db))
    assert code == 0 and "recreated missing table(s) circuit_breaker_alerts, circuit_breaker_states" in out, out
    assert run("alerts", "--db", str(db)) == (0, "(none)\n")
    assert run("migrate", "--db", str(db))[1].endswith(f"up to date (schema version {LATEST_VERSION})\n")


def test_a_directory_given_as_the_database_is_said_to_be_one(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`status --db <a directory>` said "disk I/O error"; `migrate` said "unable to open database file"
    with no path."""
    assert run("status", "--db", str(tmp_path))[0] == 2
    assert one_line(capsys.readouterr().err) == f"circuitry status: {tmp_path} is a directory, not a database file\n"
    assert run("migrate", "--db", str(tmp_path))[0] == 2
    assert one_line(capsys.readouterr().err) == (f"circuitry migrate: unable to open database file {tmp_path}: "
                                                 "it is a directory\n")


def test_an_error_about_the_database_circuitry_db_names_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --db the commands read $CIRCUITRY_DB; a bad one ("disk I/O error") did not say where the
    path came from."""
    monkeypatch.setenv("CIRCUITRY_DB", str(tmp_path))
    assert run("status")[0] == 2
    assert one_line(capsys.readouterr().err) == (f"circuitry status: {tmp_path} is a directory, not a database file "
                                                 "(--db not given: the database is $CIRCUITRY_DB)\n")


def test_migrating_a_database_made_by_the_first_sql_file_creates_the_later_tables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After `sqlite3 db < migrations/008_….sql`, migrate said "recreated missing table(s)
    circuit_breaker_metrics_10m, ..." for tables migrations 9-11 create, which never existed."""
    from circuitry.store.sqlite.schema import MIGRATIONS, migrate

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[0].sql)
    later = ", ".join(str(m.version) for m in MIGRATIONS[1:])
    assert run("migrate", "--db", str(db)) == (0, f"{db}: applied migration(s) {later}, which created table(s) "
                                                  "circuit_breaker_metrics_10m, circuit_breaker_seconds, "
                                                  "circuitry_analysis_leases, circuitry_webhook_outbox; schema "
                                                  f"version {LATEST_VERSION}\n")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.executescript(MIGRATIONS[0].sql)
        logged: list[tuple[str, list[str]]] = []
        assert migrate(conn, log=lambda event, tables: logged.append((event, tables))) == [
            m.version for m in MIGRATIONS[1:]]
        assert logged == []  # (the store's log said "circuit tables that had been dropped were made again")


def test_a_newer_schema_is_refused_by_reading_commands(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO circuitry_schema (version, name) VALUES (99, 'future')")
    for argv in (["status"], ["alerts"], ["export", "events"], ["webhooks"]):
        assert run(*argv, "--db", str(db))[0] == 2, argv
        err = one_line(capsys.readouterr().err)
        assert f"schema version 99, newer than the {LATEST_VERSION} this circuitry understands" in err, err


def test_a_closed_stdout_ends_the_command_quietly(db: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head -1` already gone: every write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "circuitry", "export", "events", "--db", str(db)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_tables_of_an_older_shape_are_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database with the original design's circuit tables (its SQL, no circuitry schema record) was
    said to hold "no circuit tables" -- false, and the way out (`migrate`) looked like it would start
    afresh. The message says what is there and that migrating keeps the rows."""
    from .test_store_promises import _OLD_SHAPE

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.executescript(_OLD_SHAPE)
    for argv in (["status"], ["alerts"]):
        code, out = run(*argv, "--db", str(old))
        err = one_line(capsys.readouterr().err)
        assert code == 2 and out == "", argv
        assert "older shape" in err and "circuitry migrate" in err and "no circuit tables" not in err, err
    assert run("migrate", "--db", str(old))[0] == 0
    code, out = run("status", "--db", str(old))
    assert code == 0 and "legacy" in out
