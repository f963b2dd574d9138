"""The ``circuitry`` command line: look at circuits, their alerts and history, act on them, export,
serve the dashboard.

Every command takes ``--db PATH_OR_URL`` (default: ``$CIRCUITRY_DB``, else ``./circuitry.db``) and
``--json`` (machine-readable output on stdout). Reading commands open the database read-only, so they
are safe to point at a live application's database; ``reset``, ``open``, ``close``, ``ack`` and
``webhooks retry`` write, and running processes adopt a state change within a poll. A name the
database does not know is answered with the names it does know.

(Longer than most modules: one function per command, each short, and the argument parser that lists
them; the drawing is in :mod:`circuitry.tools.terminal`.)
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from circuitry._defaultdb import DB_ENV, DEFAULT_DB, default_db_path
from circuitry._meta import version
from circuitry.exceptions import ConfigurationError, SchemaVersionError, StoreError
from circuitry.store import sqlite_path
from circuitry.tools.terminal import Progress, ago, retry_text, table, when

if TYPE_CHECKING:
    from circuitry.store.readmodel import ReadModel

__all__ = ["main"]

_STATES = ("closed", "open", "half_open", "forced_open", "disabled")


class UsageError(Exception):
    """A mistake in what was asked (exit code 2, message on stderr)."""


#: Exit code when stdout is closed early (``circuitry export events | head -1``): a Unix tool's 128 + SIGPIPE.
_CLOSED_STDOUT = 141


def _emit_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _exists(target: str) -> bool:
    path = sqlite_path(target)
    return path is None or os.path.exists(path)  # (a server's URL: the connection says)


def _reader(args: argparse.Namespace) -> ReadModel:
    """The database's read model; a :class:`StoreError` if there is none, it cannot be reached, or it holds
    no circuit tables, a :class:`SchemaVersionError` if a newer circuitry wrote it."""
    from circuitry.store import open_reader

    reader = open_reader(args.db)
    where = reader.backend.location  # a URL without its password
    if not _exists(args.db):
        raise StoreError(f"no database at {where}")
    if not reader.ready():
        if reader.older_shape():
            raise StoreError(f"{where} holds circuit tables of an older shape, without circuitry's schema record: "
                             "`circuitry migrate` upgrades them in place, keeping their rows")
        raise StoreError(f"{where} holds no circuit tables (is it the right file? `circuitry migrate` adds them)")
    reader.check()
    return reader


def _masker(db: str) -> Callable[[str], str]:
    """What hides the password of ``db`` (a PostgreSQL URL) in a message, in every form it may take."""
    if "://" not in db or db.startswith("sqlite:"):
        return lambda text: text
    try:
        from circuitry.store.postgres.connection import Secrets
    except ImportError:  # no psycopg: nothing connected, so no driver message can hold it; the URL may
        from urllib.parse import urlsplit

        try:
            password = urlsplit(db).password
        except ValueError:
            password = None
        return (lambda text: text) if not password else (lambda text: text.replace(password, "***"))
    return Secrets(db).mask


def known(reader: ReadModel, name: str) -> str:
    """``name`` if the database knows that circuit; else a :class:`UsageError` naming the ones it knows."""
    names = reader.names()
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {' or '.join(repr(n) for n in close)}?"
    elif names:
        shown = ", ".join(repr(n) for n in names[:10])
        hint = f"known circuits: {shown}" + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
    else:
        hint = "the database has no circuits yet"
    raise UsageError(f"no circuit named {name!r}; {hint}")


# -- reading -----------------------------------------------------------------------------------------

def _status_row(s: dict[str, Any], now: float) -> dict[str, Any]:
    h = s["last_hour"]
    decided = h["successes"] + h["failures"]
    pat = s.get("pattern")
    return {
        "service": s["service_name"], "state": s["state"],
        "fail_rate": f"{100 * h['failure_rate']:.1f}%" if decided else "-", "calls": h["total_calls"],
        "refused": h["rejections"], "open_s": h["circuit_open_duration"],
        "retry_in": retry_text(s["retry_after"], "s"),
        "pattern": f"{pat['type']} ({pat['confidence']:.2f})" if pat and pat.get("type") else None,
        "alerts": s["unacknowledged_alerts"] or None,
        "changed": ago(s["last_transition"]["ts"], now) if s.get("last_transition") else when_text(
            s.get("state_changed_at")),
    }


def when_text(value: Any) -> str | None:
    return None if value is None else str(value)


_STATUS_COLUMNS = [("service", "SERVICE"), ("state", "STATE"), ("fail_rate", "FAIL/1H"), ("calls", "CALLS/1H"),
                   ("refused", "REFUSED/1H"), ("open_s", "OPEN S/1H"), ("retry_in", "RETRY IN"),
                   ("pattern", "PATTERN"), ("alerts", "ALERTS"), ("changed", "LAST CHANGE")]


_PAGE_OF_CIRCUITS = 1000  # what one ReadModel.page() gives at most


def _select(reader: ReadModel, args: argparse.Namespace, now: float) -> list[dict[str, Any]]:
    if args.service:
        return reader.status([known(reader, n) for n in args.service], now=now)
    if args.search or args.state or args.limit:
        # every match (or the first --limit), a page at a time: a page holds at most 1000 circuits
        sort = "attention" if args.attention else "name"
        rows: list[dict[str, Any]] = []
        while args.limit is None or len(rows) < args.limit:
            want = _PAGE_OF_CIRCUITS if args.limit is None else min(_PAGE_OF_CIRCUITS, args.limit - len(rows))
            got = reader.page(search=args.search, states=args.state, sort=sort, offset=len(rows), limit=want,
                              now=now)
            rows += got["rows"]
            if not got["rows"] or len(rows) >= got["total"]:
                break
        return rows
    rows = reader.status(now=now)
    if args.attention:
        rank = {"open": 0, "forced_open": 0, "half_open": 1, "disabled": 2}
        rows.sort(key=lambda s: (rank.get(s["state"], 3), s["service_name"]))
    return rows


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    rows = _select(_reader(args), args, now)
    if args.json:
        _emit_json(rows, out)
        return 0
    table([_status_row(s, now) for s in rows], _STATUS_COLUMNS, out)
    return 0


def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    reader = _reader(args)
    for name in args.service or ():
        known(reader, name)
    if not args.service and not args.limit:
        args.limit = 50  # the most urgent fifty: a screenful, and quick with ten thousand circuits
    n = 0
    try:
        while True:
            now = time.time()
            args.attention = True
            rows = _select(reader, args, now)
            if args.json:
                out.write(json.dumps({"at": now, "circuits": rows}, default=str, ensure_ascii=False) + "\n")
            else:
                if out.isatty():
                    out.write("\x1b[H\x1b[2J")
                counts = reader.state_counts()
                summary = ", ".join(f"{counts[s]} {s}" for s in _STATES if counts.get(s))
                out.write(f"circuitry watch  {reader.backend.location}  {when(now)} UTC  ({summary or 'no circuits'}; "
                          f"every {args.interval:g}s, Ctrl-C to stop)\n\n")
                table([_status_row(s, now) for s in rows], _STATUS_COLUMNS, out)
            out.flush()
            n += 1
            if args.count is not None and n >= args.count:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_alerts(args: argparse.Namespace, out: TextIO) -> int:
    reader = _reader(args)
    service = known(reader, args.service) if args.service else None
    rows = reader.alerts(service, include_acknowledged=args.all, limit=args.limit)
    if args.json:
        _emit_json(rows, out)
        return 0
    table(rows, [("id", "ID"), ("created_at", "CREATED (UTC)"), ("severity", "SEVERITY"),
                 ("service_name", "SERVICE"), ("alert_type", "TYPE"), ("occurrences", "TIMES"),
                 ("acknowledged", "ACK"), ("message", "MESSAGE")], out)
    return 0


def cmd_ack(args: argparse.Namespace, out: TextIO) -> int:
    reader = _reader(args)
    service = known(reader, args.service) if args.service else None
    keys = reader.acknowledge(alert_id=args.id, service=service)
    why = None  # when nothing was acknowledged: an id that is not there reads differently from one done before
    if not keys:
        if args.id is not None:
            row = reader.alert(args.id)
            why = f"no alert has id {args.id}" if row is None else f"alert {args.id} was acknowledged already"
        else:
            why = f"{service} has no unacknowledged alert"
    if args.json:
        _emit_json({"acknowledged": len(keys), "keys": keys, **({"why": why} if why else {})}, out)
    else:
        out.write(f"acknowledged {len(keys)} alert(s)" + (f": {why}" if why else "") + "\n")
    return 0 if keys else 1


def cmd_patterns(args: argparse.Namespace, out: TextIO) -> int:
    reader = _reader(args)
    service = known(reader, args.service) if args.service else None
    rows = reader.patterns(service, limit=args.limit)
    if args.json:
        for r in rows:
            if isinstance(r.get("evidence"), str):
                try:
                    r["evidence"] = json.loads(r["evidence"])
                except ValueError:
                    pass
        _emit_json(rows, out)
        return 0
    table(rows, [("created_at", "CREATED (UTC)"), ("service_name", "SERVICE"), ("pattern_type", "PATTERN"),
                 ("confidence_score", "CONFIDENCE"), ("failure_count", "FAILURES"),
                 ("time_window_seconds", "WINDOW S"), ("error_rate", "FAIL/S"),
                 ("suggested_threshold", "THRESH"), ("suggested_timeout", "TIMEOUT")], out)
    return 0


def cmd_adjustments(args: argparse.Namespace, out: TextIO) -> int:
    """The changes of settings automatic adjustment made (``adjustment`` events), newest first."""
    from circuitry.store.readmodel import json_object

    now = time.time()
    reader = _reader(args)
    if args.undo:
        from circuitry.store.control import UnknownCircuitError, actor, undo_adjustment

        name = known(reader, args.undo)
        try:
            done = undo_adjustment(reader.backend, name, by=actor("circuitry-cli"))
        except UnknownCircuitError:
            raise UsageError(f"{name}: no adjustment to undo") from None
        if args.json:
            _emit_json(done, out)
        else:
            what = "the settings its code gives" if done["code_settings"] else "the last change undone"
            out.write(f"{name}: {_settings_text(done['before'])} -> {_settings_text(done['after'])} ({what}); every "
                      "process follows within an analysis interval\n")
        return 0
    service = known(reader, args.service) if args.service else None
    rows = reader.events(service, parse_time(args.since, now), now, event_type="adjustment")[::-1][:args.limit]
    out_rows = []
    for r in rows:
        d = json_object(r["additional_data"])
        before, after = d.get("before") or {}, d.get("after") or {}
        out_rows.append({"created_at": r["created_at"], "service_name": r["service_name"],
                         "action": d.get("action"), "before": before, "after": after,
                         "settings": f"{_settings_text(before)} -> {_settings_text(after)}",
                         "reason": r["error_message"], "process": r["process"]})
    if args.json:
        _emit_json([{k: v for k, v in r.items() if k != "settings"} for r in out_rows], out)
        return 0
    table(out_rows, [("created_at", "CREATED (UTC)"), ("service_name", "SERVICE"), ("action", "ACTION"),
                     ("settings", "SETTINGS"), ("reason", "REASON")], out)
    return 0


def _settings_text(d: Any) -> str:
    """``5/60s`` (failure threshold / open period), with ``x2`` backoff and ``~0.2`` jitter when set."""
    if not isinstance(d, dict) or "threshold" not in d:
        return "?"
    text = f"{d.get('threshold')}/{d.get('timeout'):g}s" if isinstance(d.get("timeout"), int | float) else "?"
    if isinstance(d.get("backoff"), int | float) and d["backoff"] != 1:
        text += f" x{d['backoff']:g}"
    if isinstance(d.get("jitter"), int | float) and d["jitter"]:
        text += f" ~{d['jitter']:g}"
    return text


def cmd_recommend(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.analysis.replay import Settings
    from circuitry.runners.stored import analyse_stored

    now = time.time()
    reader = _reader(args)
    state = reader.circuit(args.service, now=now)
    if state is None and (args.threshold is None or args.timeout is None):
        try:
            known(reader, args.service)
        except UsageError as exc:
            raise UsageError(f"{exc} (or give --threshold and --timeout)") from None
    threshold = args.threshold if args.threshold is not None else state["failure_threshold"]  # type: ignore[index]
    timeout = args.timeout if args.timeout is not None else float(state["recovery_timeout"])  # type: ignore[index]
    analysis = analyse_stored(reader, args.service, now=now, window=args.window,
                              settings=Settings(int(threshold), float(timeout)))
    result, rec, prediction = analysis.pattern, analysis.recommendation, analysis.prediction
    if args.json:
        _emit_json(analysis.as_dict(), out)
        return 0
    ev = result.evidence
    out.write(f"service:     {args.service}  ({ev.calls} calls, {ev.failures} failures in the last "
              f"{args.window:g} s)\n")
    out.write(f"pattern:     {result.type or 'none (too little evidence)'}  confidence {result.confidence:.2f}\n")
    out.write(f"threshold:   {rec.current_threshold} -> {rec.recommended_threshold}\n")
    out.write(f"timeout:     {rec.current_timeout:g} s -> {rec.recommended_timeout:g} s\n")
    if rec.backoff_multiplier:
        out.write(f"backoff:     x{rec.backoff_multiplier:g} per re-open\n")
    out.write(f"why:         {rec.rationale}\n")
    if rec.current_cost is not None:
        out.write(f"effect:      {rec.effect()}\n")
    if prediction is not None and (state is None or state["state"] == "closed"):
        lo, hi = prediction.failure_rate_low, prediction.failure_rate_high
        out.write(f"next {prediction.horizon_seconds / 60:g} min: {prediction.open_probability:.0%} chance of "
                  f"opening; failure share {prediction.failure_rate:.1%} ({lo:.1%}-{hi:.1%})\n")
    out.write(f"{rec.as_seed_dict()['message']}\n")
    return 0


# -- acting ------------------------------------------------------------------------------------------

_ACTION_TEXT = {"reset": "reset (closed, counting afresh)", "open": "forced open (refusing every call until reset)",
                "close": "forced closed (letting every call through, never tripping, until reset)"}


def cmd_control(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.store.control import actor, set_state

    reader = _reader(args)
    name = known(reader, args.service)
    result = set_state(reader.backend, name, args.command, by=actor("circuitry-cli"))
    if args.json:
        _emit_json(result, out)
    else:
        out.write(f"{name}: {result['from_state']} -> {result['to_state']}: {_ACTION_TEXT[args.command]}; running "
                  "processes adopt it within a poll\n")
    return 0


# -- exporting ---------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_AGO = 10_000 * 365.25 * 86400.0
_MAX_EPOCH = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last time an ISO 8601 date can say


def parse_time(text: str, now: float) -> float:
    """``1h``/``30m``/``2d`` (that long ago), epoch seconds, or an ISO 8601 date or time (UTC unless it
    says otherwise)."""
    text = text.strip()
    m = _DURATION.match(text)
    if m:
        ago = float(m.group(1)) * _UNITS[m.group(2)]
        if ago > _MAX_AGO:
            raise UsageError(f"{text!r} is further back than 10,000 years")
        return now - ago
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or abs(value) > _MAX_EPOCH:
            raise UsageError(f"cannot read {text!r} as a time: epoch seconds must be a finite number of at most "
                             f"{_MAX_EPOCH:.0f}")
        return value
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"cannot read {text!r} as a time: give 1h, 30m, 2d, epoch seconds or an ISO 8601 "
                         "date") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


_EXPORT_COLUMNS = {
    "events": ("id", "service_name", "event_type", "from_state", "to_state", "error_type", "error_message",
               "additional_data", "created_at", "ts", "process", "occurrences"),
    "metrics": ("service_name", "minute", "bucket_start", "calls", "successes", "failures", "ignored", "rejections",
                "cancelled", "latency_count", "latency_sum_ms", "latency_max_ms"),
    "alerts": ("id", "service_name", "alert_type", "severity", "message", "details", "acknowledged", "created_at",
               "acknowledged_at", "occurrences", "last_seen_at", "alert_key", "ts"),
}
_PAGE = 20_000


def _export_events(reader: ReadModel, name: str | None, since: float, until: float,
                   progress: Progress) -> Iterator[dict[str, Any]]:
    cursor, seen = since, set[int]()
    while True:
        rows = reader.events(name, cursor, until, limit=_PAGE)
        fresh = [r for r in rows if r["id"] not in seen]
        yield from fresh
        progress.advance(len(fresh), "events")
        if len(rows) < _PAGE or not fresh:
            return
        cursor = rows[-1]["ts"]
        seen = {r["id"] for r in rows if r["ts"] == cursor}


def _export_metrics(reader: ReadModel, names: Sequence[str], since: float, until: float,
                    progress: Progress) -> Iterator[dict[str, Any]]:
    for name in names:
        for r in reader.metrics(name, since, until):
            yield {"service_name": name, **r, "bucket_start": when(r["minute"] * 60)}
        progress.advance(1, name[:30])


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    reader = _reader(args)
    now = time.time()
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now
    if until < since:
        raise UsageError("--until is before --since")
    name = known(reader, args.service) if args.service else None
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json and --format {args.format} ask for different output: give one of them")
    fmt = "json" if args.json else args.format or "csv"
    if args.what == "metrics":
        names = [name] if name else reader.names()
        progress = Progress(len(names), "exporting metrics", sys.stderr, enabled=show)
        rows: Iterator[dict[str, Any]] = _export_metrics(reader, names, since, until, progress)
    elif args.what == "events":
        progress = Progress(None, "exporting events", sys.stderr, enabled=show)
        rows = _export_events(reader, name, since, until, progress)
    else:
        progress = Progress(None, "exporting alerts", sys.stderr, enabled=show)
        rows = iter([a for a in reader.alerts(name, include_acknowledged=True, limit=1_000_000)
                     if since <= (a["ts"] or 0) <= until][::-1])
    if args.output in (None, "-"):
        count = _write(rows, fmt, _EXPORT_COLUMNS[args.what], out)
        progress.finish()
        return 0
    with open(args.output, "w", newline="", encoding="utf-8") as target:
        count = _write(rows, fmt, _EXPORT_COLUMNS[args.what], target)
    progress.finish()
    sys.stderr.write(f"wrote {count} {args.what} row(s) to {args.output}\n")
    return 0


def _write(rows: Iterator[dict[str, Any]], fmt: str, columns: Sequence[str], target: TextIO) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(target, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
            count += 1
    elif fmt == "ndjson":
        for r in rows:
            target.write(json.dumps(r, default=str, ensure_ascii=False) + "\n")
            count += 1
    else:
        target.write("[")
        for r in rows:
            target.write(("," if count else "") + "\n  " + json.dumps(r, default=str, ensure_ascii=False))
            count += 1
        target.write("\n]\n" if count else "]\n")
    return count


# -- webhooks ----------------------------------------------------------------------------------------

def cmd_webhooks(args: argparse.Namespace, out: TextIO) -> int:
    reader = _reader(args)
    if args.webhooks_command == "retry":
        from circuitry.store.control import actor
        from circuitry.store.outbox import Outbox

        if not args.id and not args.dead:
            raise UsageError("give --id ID (repeatable) or --dead (every dead delivery)")
        n = Outbox(reader.backend, actor("circuitry-cli")).requeue(ids=args.id or None, endpoint=args.endpoint)
        if args.json:
            _emit_json({"requeued": n}, out)
        else:
            out.write(f"requeued {n} delivery(ies): a running sender sends them at once\n")
        return 0 if n else 1
    state = "dead" if args.dead else args.state
    rows = reader.deliveries(state=state, endpoint=args.endpoint, limit=args.limit)
    if args.json:
        _emit_json({"counts": reader.delivery_counts(), "deliveries": rows}, out)
        return 0
    counts = reader.delivery_counts()
    for endpoint, by_state in counts.items():
        out.write(f"{endpoint}: " + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) + "\n")
    if counts:
        out.write("\n")
    view = [{"id": r["id"], "endpoint": r["endpoint"], "service": r["service_name"], "state": r["state"],
             "attempts": r["attempts"], "alert": (r["payload"] or {}).get("alert_type")
             if isinstance(r["payload"], dict) else None,
             "next": when(r["next_attempt_at"]) if r["state"] == "pending" else None,
             "status": r["last_status"], "last_error": r["last_error"]} for r in rows]
    table(view, [("id", "ID"), ("endpoint", "ENDPOINT"), ("service", "SERVICE"), ("alert", "ALERT"),
                 ("state", "STATE"), ("attempts", "TRIES"), ("next", "NEXT TRY (UTC)"), ("status", "HTTP"),
                 ("last_error", "LAST ERROR")], out)
    return 0


# -- migrating, the demo, the dashboard ----------------------------------------------------------------

def _pg_versions(url: str) -> set[int]:
    """The schema versions a PostgreSQL database records (empty: none yet)."""
    import psycopg

    from circuitry.store.postgres.schema import applied_versions

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return applied_versions(conn)


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.store.sqlite.schema import (
        LATEST_VERSION,
        MIGRATIONS,
        applied_versions,
        dropped_tables,
        migrate,
        table_names,
    )

    path = sqlite_path(args.db)
    if path is None:  # a server (PostgreSQL): the store migrates it when it connects
        from circuitry.store import open_store

        store = open_store(args.db)
        backend = store.backend
        try:
            before = _pg_versions(args.db)
            backend.connect("writer", timeout=5.0).close()  # the writer's connection migrates first
            after = _pg_versions(args.db)
        except Exception as exc:
            if backend.classify(exc) is None:
                raise
            raise StoreError(f"could not migrate {backend.location}: {exc}") from None  # masked by the backend
        finally:
            store.close()
        applied_now = sorted(after - before)
        if args.json:
            _emit_json({"database": backend.location, "applied": applied_now, "recreated": [],
                        "version": max(after, default=0)}, out)
        elif applied_now:
            out.write(f"{backend.location}: applied migration(s) {', '.join(map(str, applied_now))}; "
                      f"schema version {max(after)}\n")
        else:
            out.write(f"{backend.location}: up to date (schema version {max(after, default=0)})\n")
        return 0
    from circuitry.store.sqlite.backend import cannot_open

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        applied = applied_versions(conn)
    except sqlite3.Error as exc:  # SQLite says "unable to open database file": say which, and why
        if conn is not None:
            conn.close()
        raise cannot_open(Path(path).absolute(), exc) from None
    try:
        pending = len({m.version for m in MIGRATIONS} - applied)
        gone = dropped_tables(conn, applied)  # dropped since: migrate() makes them again
        had = table_names(conn)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = Progress(pending, "migrating", sys.stderr, enabled=pending > 0 and show)
        done = migrate(conn)
        progress.advance(len(done))
        progress.finish()
        recreated = [t for t in gone if t in table_names(conn)]
        created = sorted(table_names(conn) - had - set(recreated))  # by migrations applied now
        versions = sorted(applied_versions(conn))
    finally:
        conn.close()
    if args.json:
        _emit_json({"database": args.db, "applied": done, "created": created, "recreated": recreated,
                    "version": max(versions)}, out)
        return 0
    if recreated:
        out.write(f"{args.db}: recreated missing table(s) {', '.join(recreated)} (empty)\n")
    if done:
        # (an upgrade names the tables it adds; a new database gets them all)
        new = f", which created table(s) {', '.join(created)}" if applied and created else ""
        out.write(f"{args.db}: applied migration(s) {', '.join(map(str, done))}{new}; schema version "
                  f"{LATEST_VERSION}\n")
    elif not recreated:
        out.write(f"{args.db}: up to date (schema version {max(versions)})\n")
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    import io

    from circuitry.tools.demo import check_demo_db, run_demo

    problem = check_demo_db(args.db)
    if problem:
        raise UsageError(problem)
    text = io.StringIO() if args.json else out
    summary = run_demo(out=text, seed=args.random_seed, db=args.db)
    if args.json:
        _emit_json(summary, out)
    return 0


def cmd_dashboard(args: argparse.Namespace, out: TextIO) -> int:
    from circuitry.tools.dashboard import serve

    if args.token_file and not args.actions:
        raise UsageError("--token-file needs --actions (without it the dashboard is read-only)")
    if not args.allow_empty:
        _reader(args)  # a clear error now rather than an empty page
    try:
        return serve(args.db, host=args.host, port=args.port, token_file=args.token_file, actions=args.actions,
                     refresh=args.refresh, out=out)
    except KeyboardInterrupt:  # "Ctrl-C to stop": uvicorn shuts down, then raises the signal again
        return 0


# -- the parser ----------------------------------------------------------------------------------------

class _ArgumentsError(UsageError):
    """A mistake in the arguments, found while parsing them (reported by :func:`main` as one line)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{message} (see `{prog} --help`)")
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr (exit code 2), as the commands' are."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentsError(self.prog, message)


_MAX_ID = 2**63 - 1  # the largest integer a database column holds
_MAX_COUNT = 1_000_000_000
_MAX_WINDOW = 3600.0  # the per-second counts `recommend` reads are kept for an hour


def _whole(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[lo, hi]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a whole number from {lo} to {hi}, got {text[:40]}")
        return value

    return parse


def _seconds(hi: float, *, zero: bool = False, why: str = "") -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds in ``(0, hi]`` (``[0, hi]`` with ``zero``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text[:40]!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero) or value > hi:
            low = "from 0" if zero else "more than 0 and"
            raise argparse.ArgumentTypeError(f"must be a number of seconds {low} at most {hi:g}{why}, got {text[:40]}")
        return value

    return parse


def _time_text(text: str) -> str:
    """An argparse ``type``: a time ``parse_time`` reads (kept as text: ``1h`` is an hour before the command runs)."""
    try:
        parse_time(text, time.time())
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _FromEnvironment(str):
    """``--db`` not given: the database ``$CIRCUITRY_DB`` names (an error then says where the path came from)."""

    __slots__ = ()


def _parser() -> argparse.ArgumentParser:
    from circuitry._policy import MAX_DURATION

    default_db = default_db_path()
    default_db = _FromEnvironment(default_db) if default_db and os.environ.get(DB_ENV) else default_db or DEFAULT_DB
    database = _Parser(add_help=False)
    database.add_argument("--db", default=default_db, metavar="PATH_OR_URL",
                          help="the database (default: $CIRCUITRY_DB, else %(default)s)")
    common = _Parser(add_help=False, parents=[database])
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON on stdout instead of text")
    progress = _Parser(add_help=False)
    progress.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="show a progress bar on stderr (default: when stderr is a terminal)")

    parser = _Parser(prog="circuitry", description="Circuit breakers that remember: look at "
                                     "circuits, their alerts and history; act on them; serve the dashboard.")
    parser.add_argument("--version", action="version", version=f"circuitry {version()}")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout instead of text")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, *parents: _Parser, base: _Parser = common,
            ) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[base, *parents])

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("--service", action="append", metavar="NAME", help="only this circuit (repeatable)")
        p.add_argument("--search", metavar="TEXT", help="only circuits whose name contains TEXT")
        p.add_argument("--state", action="append", choices=_STATES, help="only circuits in this state (repeatable)")
        p.add_argument("--limit", type=_whole(1, _MAX_COUNT), metavar="N", help="at most N circuits")

    status = add("status", "every circuit: state, the last hour, pattern, alerts")
    selection(status)
    status.add_argument("--attention", action="store_true", help="refusing circuits first")
    watch = add("watch", "status, refreshed until Ctrl-C (most urgent first)")
    selection(watch)
    watch.add_argument("--interval", type=_seconds(86400.0), default=2.0, metavar="SECONDS",
                       help="default: %(default)s")
    watch.add_argument("--count", type=_whole(1, _MAX_COUNT), metavar="N", help="stop after N refreshes")
    alerts = add("alerts", "alerts, newest first (unacknowledged unless --all)")
    alerts.add_argument("--service", metavar="NAME")
    alerts.add_argument("--all", action="store_true", help="include acknowledged alerts")
    alerts.add_argument("--limit", type=_whole(1, _MAX_COUNT), default=50)
    ack = add("ack", "acknowledge an alert, or every alert of a circuit")
    group = ack.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", type=_whole(1, _MAX_ID))
    group.add_argument("--service", metavar="NAME")
    patterns = add("patterns", "detected failure patterns, newest first")
    patterns.add_argument("--service", metavar="NAME")
    patterns.add_argument("--limit", type=_whole(1, _MAX_COUNT), default=20)
    adjustments = add("adjustments", "changes of settings made by automatic adjustment, newest first")
    adjustments.add_argument("--service", metavar="NAME")
    adjustments.add_argument("--since", type=_time_text, default="30d",
                             help="1h, 30m, 2d, epoch seconds or ISO 8601 (default: 30d)")
    adjustments.add_argument("--limit", type=_whole(1, _MAX_COUNT), default=50)
    adjustments.add_argument("--undo", metavar="NAME", help="put circuit NAME back to the settings its code gives "
                             "(every process follows; the adjuster does not redo that change for a while)")
    rec = add("recommend", "classify a circuit's recent history and recommend settings")
    rec.add_argument("--service", required=True, metavar="NAME")
    rec.add_argument("--window", type=_seconds(_MAX_WINDOW, why=" (per-second counts are kept for an hour)"),
                     default=900.0, help="seconds of history (default: %(default)s)")
    rec.add_argument("--threshold", type=_whole(1, _MAX_COUNT), help="current failure threshold (default: the "
                     "stored one)")
    rec.add_argument("--timeout", type=_seconds(MAX_DURATION), help="current recovery timeout (default: the "
                     "stored one)")
    for action, text in (("reset", "close a circuit and start counting afresh (every process adopts it)"),
                         ("open", "force a circuit open: refuse every call until reset"),
                         ("close", "force a circuit closed: let every call through, never trip, until reset")):
        add(action, text).add_argument("service", metavar="NAME")
    export = add("export", "write events, per-minute metrics or alerts of a period as CSV or JSON", progress)
    export.add_argument("what", choices=sorted(_EXPORT_COLUMNS), help="what to export")
    export.add_argument("--since", type=_time_text, default="1h",
                        help="1h, 30m, 2d, epoch seconds or ISO 8601 (default: 1h)")
    export.add_argument("--until", type=_time_text, help="the end (default: now)")
    export.add_argument("--service", metavar="NAME", help="one circuit (default: all)")
    export.add_argument("--format", choices=("csv", "json", "ndjson"), default=None, help="csv (the default), json "
                        "or ndjson")
    export.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: stdout)")
    hooks = add("webhooks", "webhook deliveries of alerts: pending, delivered, dead")
    hooks.add_argument("--state", choices=("pending", "delivered", "dead"))
    hooks.add_argument("--dead", action="store_true", help="dead deliveries only (or, with retry: all of them)")
    hooks.add_argument("--endpoint", metavar="NAME")
    hooks.add_argument("--limit", type=_whole(1, _MAX_COUNT), default=50)
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", metavar="retry")
    # `retry`'s options may come before it (`webhooks --db X --dead retry`) or after: no defaults of its
    # own, which argparse would write over the ones given before it
    again = _Parser(add_help=False)
    again.add_argument("--db", default=argparse.SUPPRESS, metavar="PATH_OR_URL",
                       help="the database (default: $CIRCUITRY_DB, else circuitry.db)")
    again.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print JSON on stdout instead of text")
    retry = hooks_sub.add_parser("retry", help="send dead deliveries again", parents=[again])
    retry.add_argument("--id", type=_whole(1, _MAX_ID), action="append", help="a delivery's ID (repeatable)")
    retry.add_argument("--dead", action="store_true", default=argparse.SUPPRESS, help="every dead delivery")
    retry.add_argument("--endpoint", metavar="NAME", default=argparse.SUPPRESS)
    add("migrate", "create or upgrade the circuit tables (a SQLite file, or a PostgreSQL URL)", progress)
    demo = sub.add_parser("demo", help="run a flaky service behind a breaker and watch it work",
                          description="run a flaky service behind a breaker and watch it work")
    demo.add_argument("--random-seed", "--seed", type=int, default=7, dest="random_seed",
                      help="the simulated service's random seed (default: %(default)s)")
    demo.add_argument("--db", default="circuitry-demo.db", help="where the demo persists (default: %(default)s)")
    demo.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print the summary as JSON instead of the narration")
    dash = add("dashboard", "serve the dashboard (http://127.0.0.1:8050 by default)", base=database)  # no --json
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    dash.add_argument("--port", type=_whole(1, 65535), default=8050)
    dash.add_argument("--refresh", type=_seconds(3600.0, zero=True), default=2.0, metavar="SECONDS",
                      help="live update period")
    dash.add_argument("--actions", action="store_true",
                      help="allow acknowledging and resetting/opening/closing circuits, with a token (read from "
                           "--token-file or $CIRCUITRY_DASHBOARD_TOKEN, else made up and printed once)")
    dash.add_argument("--token-file", metavar="FILE", help="a file holding the actions token")
    dash.add_argument("--allow-empty", action="store_true", help=argparse.SUPPRESS)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "status": cmd_status, "watch": cmd_watch, "alerts": cmd_alerts, "ack": cmd_ack, "patterns": cmd_patterns,
    "adjustments": cmd_adjustments,
    "recommend": cmd_recommend, "reset": cmd_control, "open": cmd_control, "close": cmd_control,
    "export": cmd_export, "webhooks": cmd_webhooks, "migrate": cmd_migrate, "demo": cmd_demo,
    "dashboard": cmd_dashboard,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 1 nothing to do, 2 an error, 130 interrupted,
    141 stdout closed before the output was written)."""
    out = sys.stdout if out is None else out
    try:
        args = _parser().parse_args(argv)
    except _ArgumentsError as exc:
        sys.stderr.write(f"{exc.prog}: {exc}\n")
        return 2
    args.json = bool(getattr(args, "json", False))
    mask = _masker(args.db)
    try:
        code = _COMMANDS[args.command](args, out)
        out.flush()
        return code
    except BrokenPipeError:  # `| head`: the reader has what it wanted; say nothing, as Unix tools do
        _quiet(out)
        return _CLOSED_STDOUT
    except KeyboardInterrupt:  # Ctrl-C in a long command: the shell's code for SIGINT, no traceback
        return 130
    except (UsageError, StoreError, SchemaVersionError, ConfigurationError, sqlite3.Error, OSError) as exc:
        text = " ".join(mask(str(exc)).split())  # one line, whatever the driver's message was
        if isinstance(args.db, _FromEnvironment) and not isinstance(exc, UsageError):
            text += f" (--db not given: the database is ${DB_ENV})"
        sys.stderr.write(f"circuitry {args.command}: {text}\n")
        return 2


def _quiet(out: TextIO) -> None:
    """After a broken pipe on stdout: point it at /dev/null, so that flushing it at exit cannot fail again
    (the Python documentation's advice for SIGPIPE)."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a StringIO in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
