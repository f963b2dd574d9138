"""What the analyst writes, written once for every backend: pattern rows, alerts deduplicated across
processes, and the claim that makes one process — not every worker — analyse a circuit in a period.

Runs on the caller's connection (the analyst's own thread and connection): never a protected call's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from circuitry.analysis.alerts import Aggregate, Alert
from circuitry.store.backend import Connection
from circuitry.store.owned import OwnedConnection
from circuitry.store.sharing import INSERT_EVENT, iso, json_text, row_tuple

__all__ = ["Records", "printable"]

# C0 and C1 controls (ESC starts terminal escapes), and the bidirectional overrides and isolates
_CONTROL = dict.fromkeys([*range(0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0), 0x200E, 0x200F,
                          *range(0x202A, 0x202F), *range(0x2066, 0x206A)], 0xFFFD)


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, bidi overrides) replaced by U+FFFD, so a
    stored message can never drive a terminal or spoof what is around it."""
    return text.translate(_CONTROL)


class Records(OwnedConnection):
    """The analyst's writes, on one connection of its own (opened on first use; one thread at a time)."""

    def claim(self, service: str, kind: str, period: int, now: float, span: float = 60.0) -> bool:
        """Take the period starting at ``period`` (epoch milliseconds; ``span`` seconds long) of ``service``'s ``kind``
        of analysis for this process; False if another process took it (or a later one) first. A claim
        dated more than a period in the future (the clock stepped back) is taken over: it held off every
        analysis for as long as the step."""
        with self.connection() as conn, conn.transaction():
            got = conn.execute(
                "INSERT INTO circuitry_analysis_leases (service_name, kind, period, holder, taken_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (service_name, kind) DO UPDATE SET period = excluded.period, "
                "holder = excluded.holder, taken_at = excluded.taken_at "
                "WHERE circuitry_analysis_leases.period < excluded.period OR circuitry_analysis_leases.taken_at > ? "
                "RETURNING holder",
                (service, kind, period, self.process, now, now + span))
        return bool(got)

    def pattern(self, service: str, *, pattern: str | None, window: float, failures: int, error_rate: float,
                threshold: int | None, timeout: float | None, confidence: float, evidence: dict[str, Any],
                now: float) -> None:
        with self.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO circuit_breaker_failure_patterns (service_name, pattern_type, time_window_seconds, "
                "failure_count, error_rate, suggested_threshold, suggested_timeout, confidence_score, evidence, "
                "created_at, ts, process) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (service, pattern, int(window), failures, error_rate, threshold,
                 None if timeout is None else round(timeout, 3), confidence, json_text(evidence),
                 iso(now), now, self.process))

    def event(self, service: str, event_type: str, data: dict[str, Any], now: float,
              message: str | None = None) -> None:
        """One event row of the analyst's (``adjustment`` and the like)."""
        with self.connection() as conn, conn.transaction():
            conn.execute(INSERT_EVENT, row_tuple(service, event_type, None, None, None, message, data, now,
                                                 self.process))

    def alerts(self, alerts: Sequence[Alert], aggregates: Sequence[Aggregate],
               dedup_window: float) -> list[dict[str, Any]]:
        """Store new alerts and count repeats into existing ones; returns the alerts stored as new rows
        (as dicts with their ``id``). An unacknowledged alert with the same key inside the window —
        raised by any process — absorbs the occurrence (``occurrences`` goes up) instead of a new row.
        Repeats of an alert acknowledged meanwhile (from any process: the CLI, the dashboard) become a
        new alert, stored and returned like one: an acknowledgement answers what was seen, not what
        comes after it."""
        fresh: list[dict[str, Any]] = []
        if not alerts and not aggregates:
            return fresh
        with self.connection() as conn, conn.transaction():
            # Deduplication reads, then writes: the circuits' rows are locked first so that processes raising
            # the same alert take turns (SQLite's transaction holds the write lock already; on PostgreSQL
            # this row lock is what keeps two hosts from both inserting it).
            services = {alert.service_name for alert in alerts} | {agg.alert.service_name for agg in aggregates}
            for service in sorted(services):
                conn.execute("UPDATE circuit_breaker_states SET version = version WHERE service_name = ?", (service,))
            for alert in alerts:
                row = conn.execute(
                    "SELECT id FROM circuit_breaker_alerts WHERE alert_key = ? AND acknowledged = FALSE AND ts >= ? "
                    "ORDER BY id DESC LIMIT 1", (alert.key, alert.created_at - dedup_window))
                if row:
                    conn.execute("UPDATE circuit_breaker_alerts SET occurrences = occurrences + 1, last_seen_at = ? "
                                 "WHERE id = ?", (iso(alert.created_at), row[0][0]))
                    continue
                fresh.append(_insert_alert(conn, alert, 1, alert.created_at))
            for agg in aggregates:
                # (The outer "acknowledged = FALSE": on PostgreSQL an acknowledgement committed between the
                # subquery and the update is seen by the update's re-check of the row, not by the subquery.)
                row = conn.execute(
                    "UPDATE circuit_breaker_alerts SET occurrences = occurrences + ?, last_seen_at = ? WHERE id = "
                    "(SELECT id FROM circuit_breaker_alerts WHERE alert_key = ? AND acknowledged = FALSE "
                    "ORDER BY id DESC LIMIT 1) AND acknowledged = FALSE RETURNING id",
                    (agg.added, iso(agg.last_seen), agg.alert.key))
                if not row:  # acknowledged (or pruned) since: the repeats are news
                    first = agg.last_seen if agg.first_seen is None else agg.first_seen
                    repeat = dataclasses.replace(agg.alert, details=agg.last_details, created_at=first,
                                                 count=agg.added, message=agg.last_message or agg.alert.message)
                    fresh.append(_insert_alert(conn, repeat, agg.added, agg.last_seen))
        return fresh


def _insert_alert(conn: Connection, alert: Alert, occurrences: int, last_seen: float) -> dict[str, Any]:
    """Insert ``alert`` as a new row; returns it as a dict with its ``id`` (what callbacks are handed)."""
    message = printable(alert.message)
    got = conn.execute(
        "INSERT INTO circuit_breaker_alerts (service_name, alert_type, severity, message, details, "
        "acknowledged, created_at, occurrences, last_seen_at, alert_key, ts) VALUES "
        "(?, ?, ?, ?, ?, FALSE, ?, ?, ?, ?, ?) RETURNING id",
        (alert.service_name, alert.alert_type, alert.severity, message,
         json_text(alert.details), iso(alert.created_at), occurrences, iso(last_seen), alert.key,
         alert.created_at))
    data = alert.as_dict()
    data["message"] = message
    data["id"] = got[0][0]
    return data
