"""The command line: migrate, status, alerts, ack, patterns, recommend, demo."""

from __future__ import annotations

import io
import json
import random
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuitry import Registry
from circuitry.store import SQLiteStore, open_reader
from circuitry.store.sqlite.schema import LATEST_VERSION
from circuitry.testing import FakeClock
from circuitry.tools.cli import main


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    db = tmp_path / "app.db"
    store = SQLiteStore(db, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store)
    b = reg.get("payments", failure_threshold=2, recovery_timeout=60)
    reg.get("search").record_success(reg.get("search").admit())
    for _ in range(2):
        b.record_failure(b.admit(), TimeoutError("slow"))
    deadline = time.monotonic() + 10
    while not store.alerts("payments") and time.monotonic() < deadline:
        time.sleep(0.01)
    store.close()
    return db


def test_migrate_creates_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "new.db"
    code, out = run("migrate", "--db", str(db))
    assert code == 0 and "applied migration(s)" in out and f"schema version {LATEST_VERSION}" in out
    code, out = run("migrate", "--db", str(db))
    assert code == 0 and "up to date" in out


def test_migrate_adds_tables_to_an_application_database(tmp_path: Path) -> None:
    db = tmp_path / "pipeline.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE cards (id INTEGER PRIMARY KEY)")
    assert run("migrate", "--db", str(db))[0] == 0
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"cards", "circuit_breaker_states", "circuit_breaker_alerts"} <= names


def test_migrate_refuses_a_newer_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "future.db"
    run("migrate", "--db", str(db))
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO circuitry_schema (version, name) VALUES (999, 'future')")
    code, _ = run("migrate", "--db", str(db))
    assert code == 2
    assert "newer than" in capsys.readouterr().err


def test_status_lists_every_circuit(populated: Path) -> None:
    code, out = run("status", "--db", str(populated))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "STATE", "FAIL/1H"]
    payments = next(line for line in lines if line.startswith("payments"))
    assert payments.split()[1] == "open"
    assert any(line.startswith("search") and line.split()[1] == "closed" for line in lines)


def test_alerts_and_ack(populated: Path) -> None:
    code, out = run("alerts", "--db", str(populated))
    assert code == 0 and "circuit_opened" in out and "error" in out
    alert_id = out.splitlines()[2].split()[0]
    code, out = run("ack", "--db", str(populated), "--id", alert_id)
    assert (code, out) == (0, "acknowledged 1 alert(s)\n")
    assert run("alerts", "--db", str(populated))[1] == "(none)\n"
    assert "circuit_opened" in run("alerts", "--db", str(populated), "--all")[1]
    assert run("ack", "--db", str(populated), "--service", "payments") == (
        1, "acknowledged 0 alert(s): payments has no unacknowledged alert\n")  # nothing left to ack
    # acknowledging twice, or an id that is not there, are different mistakes and read differently
    assert run("ack", "--db", str(populated), "--id", alert_id) == (
        1, f"acknowledged 0 alert(s): alert {alert_id} was acknowledged already\n")
    assert run("ack", "--db", str(populated), "--id", "99999") == (
        1, "acknowledged 0 alert(s): no alert has id 99999\n")
    code, out = run("ack", "--db", str(populated), "--id", "99999", "--json")
    assert code == 1 and json.loads(out) == {"acknowledged": 0, "keys": [], "why": "no alert has id 99999"}


def test_patterns_and_recommend(tmp_path: Path) -> None:
    db = tmp_path / "hist.db"
    run("migrate", "--db", str(db))
    now = time.time()
    rng = random.Random(3)
    failures = sorted(now - 800 + k * 250 + rng.uniform(0, 3) for k in range(3) for _ in range(12))
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO circuit_breaker_states (service_name, failure_threshold, recovery_timeout) "
                     "VALUES ('bursty', 8, 30)")
        conn.executemany("INSERT INTO circuit_breaker_events (service_name, event_type, ts) "
                         "VALUES ('bursty', 'failure', ?)", [(t,) for t in failures])
        conn.executemany("INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, successes) "
                         "VALUES ('bursty', ?, '', 600)", [(m,) for m in range(int((now - 900) // 60),
                                                                               int(now // 60) + 1)])
        seconds = {s: [10, 0] for s in range(int(now - 900), int(now) + 1)}  # 10 calls a second
        for t in failures:
            seconds[int(t)][1] += 1
        conn.executemany("INSERT INTO circuit_breaker_seconds (service_name, second, calls, failures) "
                         "VALUES ('bursty', ?, ?, ?)", [(s, c, f) for s, (c, f) in seconds.items()])
        conn.execute("INSERT INTO circuit_breaker_failure_patterns (service_name, pattern_type, time_window_seconds, "
                     "failure_count, error_rate, confidence_score, ts) VALUES ('bursty', 'burst', 900, 36, 0.04, "
                     "0.93, ?)", (now,))
    code, out = run("recommend", "--db", str(db), "--service", "bursty")
    assert code == 0 and "pattern:     burst" in out and "threshold:   8 ->" in out
    code, out = run("recommend", "--db", str(db), "--service", "bursty", "--json")
    assert '"primary_pattern": "burst"' in out
    code, out = run("patterns", "--db", str(db))
    assert code == 0 and "bursty" in out and "0.93" in out


def test_reading_a_missing_database_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("status", "--db", str(tmp_path / "none.db"))[0] == 2
    assert "no database at" in capsys.readouterr().err


def test_demo_runs_and_writes_a_database(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "circuitry", "demo", "--db", "demo.db"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "circuitry.circuit_opened" in proc.stdout and "refused fast by the open circuit" in proc.stdout
    # twenty minutes of service time, fast-forwarded: enough history for a label (not "none (too little data)")
    assert re.search(r"failure pattern of the twenty minutes: (burst|steady|intermittent|escalating) "
                     r"\(confidence", proc.stdout), proc.stdout[-800:]
    # the advice replays the twenty minutes there are, not an hour (its rates "per hour" were a third)
    assert re.search(r"replaying the last 1[12]\d\d s", proc.stdout) or "No change" in proc.stdout, proc.stdout[-800:]
    with sqlite3.connect(tmp_path / "demo.db") as conn:
        failures = conn.execute("SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'failure'")
        assert failures.fetchone()[0] > 0
        assert conn.execute("SELECT current_state FROM circuit_breaker_states").fetchone()[0] in ("closed", "open",
                                                                                                 "half_open")
    # the demo's 0.4 s open period was stored as 0, and recommend refused it ("timeout must be positive")
    proc = subprocess.run([sys.executable, "-m", "circuitry", "recommend", "--db", "demo.db", "--service",
                           "inventory_api"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_demo_replaces_only_a_database_an_earlier_demo_made(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from circuitry.tools import demo

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    app = tmp_path / "app.db"
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE cards (id INTEGER PRIMARY KEY)")
    stored = tmp_path / "circuitry.db"  # an application's circuits: circuit tables only, but not the demo's
    SQLiteStore(stored).prepare()
    for path in (notes, app, stored, tmp_path):
        before = path.read_bytes() if path.is_file() else None
        assert run("demo", "--db", str(path))[0] == 2, path
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("nothing was changed" in err or "is a directory" in err), err
        assert (path.read_bytes() if path.is_file() else None) == before
    for url in ("postgresql://user:secret@db.internal/app", f"sqlite:///{tmp_path / 'x.db'}"):  # a path, not a URL
        assert run("demo", "--db", url)[0] == 2
        err = capsys.readouterr().err
        assert "give --db a file path, not a URL" in err and "secret" not in err, err
    assert not (tmp_path / "x.db").exists()
    own = str(tmp_path / "demo.db")
    for _ in range(2):  # an earlier demo's database is replaced by a fresh one
        assert demo.check_demo_db(own) is None
        clock = FakeClock()
        store = demo._fresh_store(own, clock)
        b = Registry(hooks=[], store=store, clock=clock).get("inventory_api")
        b.record_success(b.admit())
        assert store.flush()
        store.close()
        assert open_reader(own).names() == ["inventory_api"]


def test_status_says_now_when_the_open_period_is_over(populated: Path) -> None:
    """The stored state stays open until the next call probes; the table says the probe is due, not
    "0.0s" (nor a negative wait)."""
    code, out = run("status", "--db", str(populated), "--service", "payments")
    assert code == 0 and out.splitlines()[2].split()[6].endswith("s")  # RETRY IN: about 60 s
    with sqlite3.connect(populated) as conn:
        conn.execute("UPDATE circuit_breaker_states SET open_until = open_until - 3600 "
                     "WHERE service_name = 'payments'")
    code, out = run("status", "--db", str(populated), "--service", "payments")
    assert code == 0
    row = out.splitlines()[2].split()
    assert row[:2] == ["payments", "open"] and row[6] == "now"
    code, out = run("status", "--db", str(populated), "--service", "payments", "--json")
    assert json.loads(out)[0]["retry_after"] == 0.0
