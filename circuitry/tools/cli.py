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
from typing import TYPE_CHECKING, Any, TextIO

from circuitry._registry import default_db_path
from circuitry.exceptions import SchemaVersionError, StoreError
from circuitry.store.records import printable

if TYPE_CHECKING:
    from circuitry.store.readmodel import ReadModel


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


def _reader(args: argparse.Namespace) -> ReadModel:
    from circuitry.store import open_reader

    if not os.path.exists(args.db):
        raise StoreError(f"no database at {args.db}")
    reader = open_reader(args.db)
    if not reader.ready():
        raise StoreError(f"{args.db} holds no circuit tables (is it the right file? `circuitry migrate` adds them)")
    return reader


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.store.sqlite.schema import LATEST_VERSION, applied_versions, migrate

    os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    conn = sqlite3.connect(args.db, isolation_level=None)
    try:
        done = migrate(conn)
        versions = sorted(applied_versions(conn))
    finally:
        conn.close()
    if done:
        out.write(f"{args.db}: applied migration(s) {', '.join(map(str, done))}; schema version {LATEST_VERSION}\n")
    else:
        out.write(f"{args.db}: up to date (schema version {max(versions)})\n")
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    rows = []
    for s in _reader(args).status():
        h = s["last_hour"]
        decided = h["successes"] + h["failures"]
        rows.append({
            "service": s["service_name"], "state": s["state"], "failures": s["failure_count"],
            "threshold": s["failure_threshold"], "timeout": s["recovery_timeout"], "calls_1h": h["total_calls"],
            "success_1h": f"{h['success_rate']:.1f}%" if decided else "-", "refused_1h": h["rejections"],
            "open_s_1h": h["circuit_open_duration"],
            "retry_in": None if s["retry_after"] is None else f"{s['retry_after']:.1f}s",
            "alerts": s["unacknowledged_alerts"], "changed": s["state_changed_at"],
        })
    table(rows, [("service", "SERVICE"), ("state", "STATE"), ("failures", "FAILS"), ("threshold", "THRESH"),
                 ("timeout", "TIMEOUT"), ("calls_1h", "CALLS/1H"), ("success_1h", "OK/1H"),
                 ("refused_1h", "REFUSED/1H"), ("open_s_1h", "OPEN S/1H"), ("retry_in", "RETRY IN"),
                 ("alerts", "ALERTS"), ("changed", "STATE CHANGED (UTC)")], out)
    return 0


def cmd_alerts(args: argparse.Namespace, out: TextIO) -> int:
    rows = _reader(args).alerts(args.service, include_acknowledged=args.all, limit=args.limit)
    for r in rows:
        r["acknowledged"] = "yes" if r["acknowledged"] else "no"
        r["message"] = printable(r["message"])
    table(rows, [("id", "ID"), ("created_at", "CREATED (UTC)"), ("severity", "SEVERITY"),
                 ("service_name", "SERVICE"), ("alert_type", "TYPE"), ("occurrences", "TIMES"),
                 ("acknowledged", "ACK"), ("message", "MESSAGE")], out)
    return 0


def cmd_ack(args: argparse.Namespace, out: TextIO) -> int:
    if not os.path.exists(args.db):
        raise StoreError(f"no database at {args.db}")
    n = len(_reader(args).acknowledge(alert_id=args.id, service=args.service))
    out.write(f"acknowledged {n} alert(s)\n")
    return 0 if n else 1


def cmd_patterns(args: argparse.Namespace, out: TextIO) -> int:
    rows = _reader(args).patterns(args.service, limit=args.limit)
    table(rows, [("created_at", "CREATED (UTC)"), ("service_name", "SERVICE"), ("pattern_type", "PATTERN"),
                 ("confidence_score", "CONFIDENCE"), ("failure_count", "FAILURES"),
                 ("time_window_seconds", "WINDOW S"), ("error_rate", "FAIL/S"),
                 ("suggested_threshold", "THRESH"), ("suggested_timeout", "TIMEOUT")], out)
    return 0


def cmd_recommend(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.runners.analyst import analyse_series

    now = time.time()
    reader = _reader(args)
    state = reader.circuit(args.service, now=now)
    if state is None and (args.threshold is None or args.timeout is None):
        raise StoreError(f"no circuit {args.service!r} in {args.db} (give --threshold and --timeout)")
    threshold = args.threshold if args.threshold is not None else state["failure_threshold"]  # type: ignore[index]
    timeout = args.timeout if args.timeout is not None else float(state["recovery_timeout"])  # type: ignore[index]
    series = reader.series(args.service, now - args.window, now)
    result, rec, calls = analyse_series(series, now=now, window=args.window, threshold=threshold, timeout=timeout)
    if args.json:
        out.write(json.dumps(rec.as_seed_dict(), indent=2) + "\n")
        return 0
    ev = result.evidence
    out.write(f"service:     {args.service}  ({calls} calls, {ev.failures} failures in the last "
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
