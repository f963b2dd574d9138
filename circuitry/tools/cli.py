"""The ``circuitry`` command line: a demo, migrations, and reading a database.

Every command that reads takes ``--db PATH`` (default: ``$CIRCUITRY_DB``, else ``./circuitry.db``)
and opens the file read-only, so it is safe to point at a live application's database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from circuitry._registry import default_db_path
from circuitry.exceptions import SchemaVersionError, StoreError


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], out: TextIO) -> None:
    """Print ``rows`` as an aligned text table with the given ``(key, heading)`` columns."""
    if not rows:
        out.write("(none)\n")
        return
    cells = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    out.write("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for c in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    text = str(value)
    return text if len(text) <= 70 else text[:67] + "..."


def _connect(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise StoreError(f"no database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sql, params).fetchall()]


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.store._schema import LATEST_VERSION, applied_versions, migrate

    os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    with sqlite3.connect(args.db) as conn:
        done = migrate(conn)
        versions = sorted(applied_versions(conn))
    if done:
        out.write(f"{args.db}: applied migration(s) {', '.join(map(str, done))}; schema version {LATEST_VERSION}\n")
    else:
        out.write(f"{args.db}: up to date (schema version {max(versions)})\n")
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.store._sqlite import open_seconds

    now = time.time()
    with _connect(args.db) as conn:
        states = _rows(conn, "SELECT * FROM circuit_breaker_states ORDER BY service_name")
        hour = {r["service_name"]: r for r in _rows(
            conn, "SELECT service_name, sum(calls) AS calls, sum(successes) AS ok, sum(failures) AS failed, "
            "sum(rejections) AS refused FROM circuit_breaker_metrics WHERE minute >= ? GROUP BY service_name",
            (int((now - 3600) // 60),))}
        alerts = {r["service_name"]: r["n"] for r in _rows(
            conn, "SELECT service_name, count(*) AS n FROM circuit_breaker_alerts WHERE acknowledged = FALSE "
            "GROUP BY service_name")}
        rows = []
        for s in states:
            name = s["service_name"]
            h = hour.get(name, {})
            decided = (h.get("ok") or 0) + (h.get("failed") or 0)
            transitions = _rows(conn, "SELECT ts, to_state FROM circuit_breaker_events WHERE service_name = ? AND "
                                "event_type = 'state_change' AND ts >= ? ORDER BY ts, id", (name, now - 3600))
            retry = None
            if s["current_state"] == "open" and s["open_until"]:
                retry = max(0.0, s["open_until"] - now)
            rows.append({
                "service": name, "state": s["current_state"], "failures": s["failure_count"],
                "threshold": s["failure_threshold"], "timeout": s["recovery_timeout"],
                "calls_1h": h.get("calls") or 0,
                "success_1h": f"{100.0 * (h.get('ok') or 0) / decided:.1f}%" if decided else "-",
                "refused_1h": h.get("refused") or 0,
                "open_s_1h": round(open_seconds(transitions, now - 3600, now, False)),
                "retry_in": None if retry is None else f"{retry:.1f}s",
                "alerts": alerts.get(name, 0), "changed": s["state_changed_at"],
            })
    table(rows, [("service", "SERVICE"), ("state", "STATE"), ("failures", "FAILS"), ("threshold", "THRESH"),
                 ("timeout", "TIMEOUT"), ("calls_1h", "CALLS/1H"), ("success_1h", "OK/1H"),
                 ("refused_1h", "REFUSED/1H"), ("open_s_1h", "OPEN S/1H"), ("retry_in", "RETRY IN"),
                 ("alerts", "ALERTS"), ("changed", "STATE CHANGED (UTC)")], out)
    return 0


def cmd_alerts(args: argparse.Namespace, out: TextIO) -> int:
    where, params = [], []
    if args.service:
        where.append("service_name = ?")
        params.append(args.service)
    if not args.all:
        where.append("acknowledged = FALSE")
    sql = ("SELECT id, created_at, severity, service_name, alert_type, occurrences, acknowledged, message "
           "FROM circuit_breaker_alerts" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY ts DESC, id DESC LIMIT ?")
    with _connect(args.db) as conn:
        rows = _rows(conn, sql, (*params, args.limit))
    for r in rows:
        r["acknowledged"] = "yes" if r["acknowledged"] else "no"
    table(rows, [("id", "ID"), ("created_at", "CREATED (UTC)"), ("severity", "SEVERITY"),
                 ("service_name", "SERVICE"), ("alert_type", "TYPE"), ("occurrences", "TIMES"),
                 ("acknowledged", "ACK"), ("message", "MESSAGE")], out)
    return 0


def cmd_ack(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.store._sqlite import acknowledge

    if not os.path.exists(args.db):
        raise StoreError(f"no database at {args.db}")
    n = acknowledge(args.db, alert_id=args.id, service=args.service)
    out.write(f"acknowledged {n} alert(s)\n")
    return 0 if n else 1


def cmd_patterns(args: argparse.Namespace, out: TextIO) -> int:
    sql = ("SELECT created_at, service_name, pattern_type, confidence_score, failure_count, time_window_seconds, "
           "error_rate, suggested_threshold, suggested_timeout FROM circuit_breaker_failure_patterns")
    params: list[Any] = []
    if args.service:
        sql += " WHERE service_name = ?"
        params.append(args.service)
    with _connect(args.db) as conn:
        rows = _rows(conn, sql + " ORDER BY ts DESC, id DESC LIMIT ?", (*params, args.limit))
    table(rows, [("created_at", "CREATED (UTC)"), ("service_name", "SERVICE"), ("pattern_type", "PATTERN"),
                 ("confidence_score", "CONFIDENCE"), ("failure_count", "FAILURES"),
                 ("time_window_seconds", "WINDOW S"), ("error_rate", "FAIL/S"),
                 ("suggested_threshold", "THRESH"), ("suggested_timeout", "TIMEOUT")], out)
    return 0


def cmd_recommend(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.runners.analyst import analyse_history

    now = time.time()
    with _connect(args.db) as conn:
        state = _rows(conn, "SELECT failure_threshold, recovery_timeout FROM circuit_breaker_states "
                      "WHERE service_name = ?", (args.service,))
        if not state and (args.threshold is None or args.timeout is None):
            raise StoreError(f"no circuit {args.service!r} in {args.db} (give --threshold and --timeout)")
        threshold = args.threshold if args.threshold is not None else state[0]["failure_threshold"]
        timeout = args.timeout if args.timeout is not None else float(state[0]["recovery_timeout"])
        result, rec, calls = analyse_history(conn, args.service, threshold, timeout, now, args.window)
    if args.json:
        out.write(json.dumps(rec.as_seed_dict(), indent=2) + "\n")
        return 0
    ev = result.evidence
    out.write(f"service:     {args.service}  ({len(calls)} calls, {ev.failures} failures in the last "
              f"{args.window:g} s)\n")
    out.write(f"pattern:     {result.type or 'none (too little evidence)'}  confidence {result.confidence:.2f}\n")
    out.write(f"threshold:   {rec.current_threshold} -> {rec.recommended_threshold}\n")
    out.write(f"timeout:     {rec.current_timeout:g} s -> {rec.recommended_timeout:g} s\n")
    if rec.backoff_multiplier:
        out.write(f"backoff:     x{rec.backoff_multiplier:g} per re-open\n")
    out.write(f"why:         {rec.rationale}\n")
    out.write(f"{rec.as_seed_dict()['message']}\n")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(prog="circuitry", description="Circuit breakers that remember.")
    sub = parser.add_subparsers(dest="command", required=True)
    default_db = default_db_path() or "circuitry.db"

    demo = sub.add_parser("demo", help="run a flaky service behind a breaker and watch it work")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the simulated service")
    demo.add_argument("--db", default="circuitry-demo.db", help="where the demo persists (default: %(default)s)")

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", default=default_db, help="the SQLite database (default: %(default)s)")
        return p

    with_db(sub.add_parser("migrate", help="create or upgrade the circuit tables in a database"))
    with_db(sub.add_parser("status", help="every circuit's state and last hour"))
    alerts = with_db(sub.add_parser("alerts", help="alerts, newest first (unacknowledged unless --all)"))
    alerts.add_argument("--service")
    alerts.add_argument("--all", action="store_true", help="include acknowledged alerts")
    alerts.add_argument("--limit", type=int, default=50)
    ack = with_db(sub.add_parser("ack", help="acknowledge an alert, or every alert of a service"))
    group = ack.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", type=int)
    group.add_argument("--service")
    patterns = with_db(sub.add_parser("patterns", help="detected failure patterns, newest first"))
    patterns.add_argument("--service")
    patterns.add_argument("--limit", type=int, default=20)
    rec = with_db(sub.add_parser("recommend", help="classify a circuit's recent history and recommend settings"))
    rec.add_argument("--service", required=True)
    rec.add_argument("--window", type=float, default=900.0, help="seconds of history (default: %(default)s)")
    rec.add_argument("--threshold", type=int, help="current failure threshold (default: the stored one)")
    rec.add_argument("--timeout", type=float, help="current recovery timeout (default: the stored one)")
    rec.add_argument("--json", action="store_true", help="print the seed's get_recommendations() dict")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from circuitry.tools.demo import run_demo

            asyncio.run(run_demo(out=out, seed=args.seed, db=args.db))
            return 0
        handler = {"migrate": cmd_migrate, "status": cmd_status, "alerts": cmd_alerts, "ack": cmd_ack,
                   "patterns": cmd_patterns, "recommend": cmd_recommend}[args.command]
        return handler(args, out)
    except (StoreError, SchemaVersionError, sqlite3.Error) as exc:
        sys.stderr.write(f"circuitry {args.command}: {exc}\n")
        return 2
