"""The command line for operators: --version, --json on every command, reset/open/close reaching running
processes, watch, export, webhooks, "did you mean", wrapped messages."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from circuitry import Registry
from circuitry.store import SQLiteStore, open_reader
from circuitry.store.outbox import Outbox
from circuitry.tools.cli import main, parse_time

from .conftest import eventually
from .test_adjust import rec


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


LONG = ("the upstream payment gateway answered 503 Service Unavailable for every request in the last minute; "
        "its status page reports a regional outage in eu-central-1 and recommends retrying after 120 seconds")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return populated_db(tmp_path)


def populated_db(tmp_path: Path) -> Path:
    """A database with an opened circuit, a healthy one, and alerts (one with a long message)."""
    path = tmp_path / "app.db"
    store = SQLiteStore(path, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store)
    b = reg.get("payments", failure_threshold=2, recovery_timeout=60)
    reg.get("search").record_success(reg.get("search").admit())
    for _ in range(2):
        b.record_failure(b.admit(), TimeoutError("slow"))
    assert eventually(lambda: bool(store.alerts("payments")))
    store.close()
    with sqlite3.connect(path) as conn:  # an alert with a long message, as an application might raise
        conn.execute("INSERT INTO circuit_breaker_alerts (service_name, alert_type, severity, message, acknowledged, "
                     "ts, alert_key, created_at) VALUES ('search', 'high_failure_rate', 'warning', ?, FALSE, ?, "
                     "'search:high_failure_rate', '2026-01-01 00:00:00')", (LONG, time.time()))
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert re.fullmatch(r"circuitry \S+\n", capsys.readouterr().out)


def test_every_command_speaks_json(db: Path, tmp_path: Path) -> None:
    d = str(db)
    commands = [["status"], ["alerts"], ["alerts", "--all"], ["patterns"], ["adjustments"], ["webhooks"],
                ["recommend", "--service", "payments"], ["watch", "--count", "1"], ["export", "events"],
                ["migrate"], ["reset", "search"], ["open", "search"], ["close", "search"],
                ["ack", "--service", "search"]]
    for argv in commands:
        for placement in ("after", "before"):
            args = [*argv, "--db", d, "--json"] if placement == "after" else ["--json", *argv, "--db", d]
            code, out = run(*args)
            assert code in (0, 1), (args, code)
            json.loads(out) if argv[0] != "watch" else json.loads(out.splitlines()[0])
    code, out = run("status", "--db", d, "--json")
    names = [s["service_name"] for s in json.loads(out)]
    assert names == ["payments", "search"]


def test_adjustments_lists_the_changes_newest_first(db: Path) -> None:
    """Operators could not see what automatic adjustment had changed without SQL."""
    from circuitry.store.records import Records

    store = SQLiteStore(db, analysis_interval=3600)
    records = Records(store.backend, "host-a:1")
    now = time.time()
    for k, (action, before, after) in enumerate([("adjust", (5, 60.0), (6, 30.0)), ("rollback", (6, 30.0), (5, 60.0))]):
        records.event("payments", "adjustment", {
            "action": action, "before": {"threshold": before[0], "timeout": before[1], "backoff": 1.0, "jitter": 0.0},
            "after": {"threshold": after[0], "timeout": after[1], "backoff": 1.5, "jitter": 0.2}},
            now - 100 + k, message=f"{action} because")
    records.close()
    store.close()
    code, out = run("adjustments", "--db", str(db))
    lines = out.splitlines()
    assert code == 0 and "rollback" in lines[2] and "6/30s -> 5/60s x1.5 ~0.2" in lines[2], out
    assert "adjust " in lines[3] and "5/60s -> 6/30s x1.5 ~0.2" in lines[3] and "adjust because" in lines[3]
    code, out = run("adjustments", "--db", str(db), "--service", "payments", "--json")
    got = json.loads(out)
    assert [r["action"] for r in got] == ["rollback", "adjust"] and got[1]["after"]["threshold"] == 6
    assert run("adjustments", "--db", str(db), "--service", "search")[1].count("\n") <= 2  # none for it


def test_adjustments_undo_puts_every_process_back_to_its_codes_settings(tmp_path: Path) -> None:
    """An operator could not undo an adjustment: the circuit goes back to the settings its code gives, in
    every process, and the adjuster does not make that change again soon."""
    from circuitry.analysis.adjust import decide
    from circuitry.runners.adjuster import settings_of
    from circuitry.runners.analyst import Analyst
    from circuitry.store.records import Records

    path = tmp_path / "live.db"
    store = SQLiteStore(path, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store)
    b = reg.get("payments", failure_threshold=5, recovery_timeout=60)
    reg.get("search")
    assert store.flush()
    records = Records(store.backend, "host-a:1")
    given = {"threshold": 5, "timeout": 60.0, "backoff": 1.0, "max_timeout": None, "jitter": 0.0}
    records.event("payments", "adjustment", {"action": "adjust", "given": given, "before": given,
                                             "after": {**given, "threshold": 6, "timeout": 30.0}},
                  time.time() - 5, message="a step")
    records.close()
    analyst = Analyst.attach(store)
    analyst.run_once()
    assert (b.policy.failure_threshold, b.policy.recovery_timeout) == (6, 30.0)  # followed
    code, out = run("adjustments", "--db", str(path), "--undo", "payments")
    assert code == 0 and "payments: 6/30s -> 5/60s" in out, out
    analyst.run_once(time.time() + 3600)
    assert (b.policy.failure_threshold, b.policy.recovery_timeout) == (5, 60.0)  # every process follows
    advice = rec(threshold=6, timeout=30.0)  # the same change advised again, confirmed
    history = analyst.adjuster.adjustments("payments", time.time())
    d = decide(settings_of(b), advice, now=time.time() + 3600, history=history, recent=[advice])
    assert d.action == "hold" and "rolled back recently" in d.reason
    store.close()
    assert run("adjustments", "--db", str(path), "--undo", "search")[0] == 2  # nothing to undo


def test_undoing_a_change_recorded_before_the_codes_settings_were_undoes_that_change(tmp_path: Path) -> None:
    """Adjustment rows of an earlier release carry no "given": the undo row took the last change's "before"
    for the code's settings, and every process then declined to follow it (the CLI said it had worked)."""
    from circuitry.runners.analyst import Analyst
    from circuitry.store.records import Records

    path = tmp_path / "old.db"
    store = SQLiteStore(path, poll_interval=0.01, analysis_interval=3600)
    b = Registry(hooks=[], store=store).get("payments", failure_threshold=5, recovery_timeout=60)
    assert store.flush()
    records = Records(store.backend, "host-a:1")
    for k, (before, after) in enumerate([((5, 60.0), (6, 30.0)), ((6, 30.0), (7, 15.0))]):
        records.event("payments", "adjustment", {
            "action": "adjust", "before": {"threshold": before[0], "timeout": before[1]},
            "after": {"threshold": after[0], "timeout": after[1]}}, time.time() - 10 + k, message="step")
    records.close()
    analyst = Analyst.attach(store)
    analyst.run_once()
    assert (b.policy.failure_threshold, b.policy.recovery_timeout) == (7, 15.0)
    code, out = run("adjustments", "--db", str(path), "--undo", "payments")
    assert code == 0 and "7/15s -> 6/30s (the last change undone)" in out, out
    analyst.run_once(time.time() + 3600)
    assert (b.policy.failure_threshold, b.policy.recovery_timeout) == (6, 30.0)  # followed
    store.close()


def test_demo_speaks_json(tmp_path: Path) -> None:
    code, out = run("demo", "--db", str(tmp_path / "demo.db"), "--json")
    summary = json.loads(out)
    assert code == 0 and summary and all(isinstance(v, int) for v in summary.values())


def test_reset_open_close_reach_a_running_process(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    store = SQLiteStore(path, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store)
    b = reg.get("payments", failure_threshold=1)
    b.record_success(b.admit())
    assert store.flush()
    code, out = run("open", "payments", "--db", str(path))
    assert code == 0 and "closed -> forced_open" in out
    assert eventually(lambda: b.state.value == "forced_open")
    code, out = run("close", "payments", "--db", str(path), "--json")
    assert json.loads(out)["to_state"] == "disabled"
    assert eventually(lambda: b.state.value == "disabled")
    code, out = run("reset", "payments", "--db", str(path))
    assert code == 0 and eventually(lambda: b.state.value == "closed")
    history = open_reader(path).transitions("payments", 0, time.time() + 10)
    assert [(t["from_state"], t["to_state"]) for t in history] == [
        ("closed", "forced_open"), ("forced_open", "disabled"), ("disabled", "closed")]
    assert all(json.loads(t["additional_data"])["reason"] == "manual" for t in history)
    assert all(t["process"].startswith("circuitry-cli@") for t in history)
    store.close()


def test_a_reset_from_the_command_line_raises_the_closing_alert(db: Path) -> None:
    """The opening raised ``circuit_opened`` (a PagerDuty trigger); the reset from the command line raised
    nothing -- alerts are raised by the process that writes a transition, and the CLI runs no analyst --
    so the incident was never resolved. The reset stores its ``circuit_closed`` now, once."""
    assert [a["alert_type"] for a in open_reader(db).alerts("payments")] == ["circuit_opened"]
    code, out = run("reset", "payments", "--db", str(db))
    assert code == 0 and "open -> closed" in out
    alerts = open_reader(db).alerts("payments", include_acknowledged=True)
    assert sorted(a["alert_type"] for a in alerts) == ["circuit_closed", "circuit_opened"]
    (closed,) = [a for a in alerts if a["alert_type"] == "circuit_closed"]
    assert closed["severity"] == "info" and "manual" in closed["message"]
    run("open", "payments", "--db", str(db))  # a forced open is deliberate: no alert, as in a process
    assert len(open_reader(db).alerts("payments", include_acknowledged=True)) == 2


def test_unknown_names_are_answered_with_known_ones(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["open", "paymnts"], ["status", "--service", "paymnts"], ["alerts", "--service", "paymnts"],
                 ["ack", "--service", "paymnts"], ["export", "events", "--service", "paymnts"],
                 ["recommend", "--service", "paymnts"]):
        code, _ = run(*argv, "--db", str(db))
        assert code == 2, argv
        assert "did you mean 'payments'?" in capsys.readouterr().err, argv
    assert run("reset", "zzzzzz", "--db", str(db))[0] == 2
    assert "known circuits: 'payments', 'search'" in capsys.readouterr().err


def test_messages_wrap_instead_of_being_cut(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    code, out = run("alerts", "--db", str(db))
    assert code == 0
    text = " ".join(line.strip() for line in out.splitlines())
    for word in LONG.split():
        assert word in text
    assert max(len(line) for line in out.splitlines()) <= 100


def test_stored_terminal_escapes_are_not_replayed(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO circuit_breaker_alerts (service_name, alert_type, severity, message, acknowledged, "
                     "ts) VALUES ('search', 'x', 'info', ?, FALSE, ?)", ("\x1b[2J\x1b]0;pwned\x07cleared", time.time()))
    code, out = run("alerts", "--db", str(db))
    assert code == 0 and "\x1b" not in out and "\x07" not in out


def test_watch_refreshes(db: Path) -> None:
    code, out = run("watch", "--db", str(db), "--count", "2", "--interval", "0.01")
    assert code == 0 and out.count("circuitry watch") == 2 and "payments" in out


def test_export_events_and_metrics_of_a_period(db: Path, tmp_path: Path) -> None:
    code, out = run("export", "events", "--db", str(db), "--since", "1h")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["event_type"] for r in rows} >= {"failure", "state_change"}
    assert all(r["service_name"] == "payments" for r in rows if r["event_type"] == "failure")
    target = tmp_path / "m.json"
    code, _ = run("export", "metrics", "--db", str(db), "--since", "2h", "--format", "json", "-o", str(target))
    metrics = json.loads(target.read_text())
    assert code == 0 and sum(m["calls"] for m in metrics if m["service_name"] == "payments") == 2
    code, out = run("export", "events", "--db", str(db), "--since", "2000-01-01", "--until", "2000-01-02")
    assert code == 0 and out.strip().count("\n") == 0  # the header only
    code, out = run("export", "alerts", "--db", str(db), "--format", "ndjson")
    assert code == 0 and all(json.loads(line)["service_name"] for line in out.splitlines())
    assert run("export", "events", "--db", str(db), "--since", "yesterday-ish")[0] == 2
    # --json is --format json: with another format the command cannot do both, so it says so
    assert run("export", "alerts", "--db", str(db), "--json", "--format", "csv")[0] == 2
    assert run("export", "alerts", "--db", str(db), "--json", "--format", "json") == run(
        "export", "alerts", "--db", str(db), "--json")


def test_export_pages_through_many_events(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import circuitry.tools.cli as cli

    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO circuit_breaker_events (service_name, event_type, ts) VALUES ('search', "
                         "'failure', ?)", [(now - 10 + (i // 7) * 0.001,) for i in range(95)])  # equal times
    monkeypatch.setattr(cli, "_PAGE", 10)
    code, out = run("export", "events", "--db", str(db), "--service", "search", "--format", "ndjson")
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert code == 0 and len(ids) == len(set(ids)) == 95


def test_parse_time() -> None:
    assert parse_time("90m", 10_000.0) == 10_000.0 - 5400
    assert parse_time("1700000000", 0) == 1_700_000_000
    assert parse_time("2024-01-01T00:00:00Z", 0) == parse_time("2024-01-01", 0) == 1_704_067_200


def test_webhooks_lists_dead_deliveries_and_retries_them(db: Path) -> None:
    from circuitry.store.sqlite.backend import SQLiteBackend

    outbox = Outbox(SQLiteBackend(db), "test")
    outbox.enqueue([("ops", {"id": 1, "service_name": "payments", "alert_type": "circuit_opened"})])
    (d,) = outbox.claim(["ops"], lease=60, limit=1)
    outbox.failed(d, status=500, error="HTTP 500 Internal Server Error", retry_in=None)
    code, out = run("webhooks", "--db", str(db), "--dead")
    assert code == 0 and "ops: 1 dead" in out and "HTTP 500 Internal Server Error" in out
    code, out = run("webhooks", "retry", "--dead", "--db", str(db))
    assert code == 0 and "requeued 1" in out
    assert open_reader(db).deliveries()[0]["state"] == "pending"
    assert run("webhooks", "retry", "--db", str(db))[0] == 2  # says what to give


def test_webhooks_retry_uses_the_options_given_before_or_after_it(db: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from circuitry.store.sqlite.backend import SQLiteBackend

    monkeypatch.chdir(tmp_path)  # the default database, were --db dropped, is not this one
    monkeypatch.delenv("CIRCUITRY_DB", raising=False)
    outbox = Outbox(SQLiteBackend(db), "test")
    d = str(db)
    for i, argv in enumerate((["webhooks", "--db", d, "retry", "--dead"], ["webhooks", "--dead", "retry", "--db", d],
                              ["webhooks", "--db", d, "--dead", "--endpoint", "ops", "retry"],
                              ["webhooks", "retry", "--dead", "--db", d])):
        outbox.enqueue([("ops", {"id": 100 + i, "service_name": "payments", "alert_type": "circuit_opened"})])
        (delivery,) = outbox.claim(["ops"], lease=60, limit=1)
        outbox.failed(delivery, status=500, error="HTTP 500", retry_in=None)
        code, out = run(*argv)
        assert (code, out) == (0, "requeued 1 delivery(ies): a running sender sends them at once\n"), argv
        outbox.delivered(outbox.claim(["ops"], lease=60, limit=1)[0], 200)
    outbox.close()


def test_status_lists_every_match_past_a_thousand_circuits(tmp_path: Path) -> None:
    from .dashboard_env import many

    db = str(many(tmp_path / "many.db", n=1200))
    with sqlite3.connect(db) as conn:
        (closed,) = conn.execute("SELECT count(*) FROM circuit_breaker_states WHERE current_state = ?",
                                 ("closed",)).fetchone()
    code, out = run("status", "--db", db, "--state", "closed", "--json")
    names = [s["service_name"] for s in json.loads(out)]
    assert code == 0 and closed > 1000 and len(names) == len(set(names)) == closed and names == sorted(names)
    code, out = run("status", "--db", db, "--search", "svc-", "--limit", "1100", "--json")
    assert code == 0 and len(json.loads(out)) == 1100
    code, out = run("status", "--db", db, "--search", "svc-", "--attention", "--limit", "1100", "--json")
    assert code == 0 and len({s["service_name"] for s in json.loads(out)}) == 1100


def test_no_design_jargon_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], *([c, "--help"] for c in ("status", "watch", "alerts", "ack", "patterns", "recommend",
                                                        "reset", "open", "close", "export", "webhooks", "migrate",
                                                        "demo", "dashboard"))):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "the seed" not in text and "seed's" not in text, argv


def test_the_dashboard_command_serves_loopback_with_a_printed_token(db: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "CIRCUITRY_DASHBOARD_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "circuitry", "dashboard", "--db", str(db), "--port", str(port),
                             "--actions"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        token_line = proc.stdout.readline()
        assert token_line.startswith("actions token") and len(token_line.split(": ")[-1].strip()) >= 16
        assert f"http://127.0.0.1:{port}/" in proc.stdout.readline()

        def status(host: str | None = None) -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host} if host else {})
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)
            except OSError:
                return 0

        assert eventually(lambda: status() == 200, timeout=60)
        assert status("rebound.example") == 400
        proc.send_signal(signal.SIGINT)  # "Ctrl-C to stop": a clean stop, not a traceback
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)


def test_long_work_shows_progress_on_a_terminal_only(db: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("export", "metrics", "--db", str(db), "--progress", "-o", str(tmp_path / "m.csv"))
    err = capsys.readouterr().err
    assert code == 0 and "exporting metrics [" in err and "2/2" in err and "done in" in err
    run("export", "metrics", "--db", str(db), "-o", str(tmp_path / "m.csv"))  # stderr is not a terminal here
    assert "exporting" not in capsys.readouterr().err
    code, _ = run("migrate", "--db", str(tmp_path / "new.db"), "--progress")
    assert code == 0 and "migrating [" in capsys.readouterr().err
