"""The read model: what the CLI, the database API (``DatabaseCircuitBreaker``), the dashboard and
exporters read — one implementation over any backend, reading with set-based queries whose cost does
not grow with history (indexes and rollups), and one connection for the few writes readers make
(acknowledging alerts).

Every method returns plain data (dicts, lists), ready for JSON.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any, Final

from circuitry.exceptions import ConfigurationError, StoreError
from circuitry.store.reader import Reader

__all__ = ["SEVERITY_RANK", "ReadModel", "add_unwritten", "open_seconds"]

SEVERITY_RANK: Final = {"critical": 0, "error": 1, "warning": 2, "info": 3}
_REFUSING: Final = ("open", "forced_open")
# status() of at most this many named circuits reads the minute rollups (exactly the last hour); more (or
# all) read the ten-minute rollups: "the last hour" is then the last 60 to 70 minutes (``window_seconds``).
_EXACT_UP_TO: Final = 200


def add_unwritten(hour: dict[str, Any], held: Sequence[float]) -> None:
    """Add counts not written yet (successes, failures, ignored, rejections, cancelled: a rollup's
    first five) to a status's ``last_hour``, and recompute its rates."""
    hour["successes"] += int(held[0])
    hour["failures"] += int(held[1])
    hour["rejections"] += int(held[3])
    hour["total_calls"] += int(sum(held[:5]))
    decided = hour["successes"] + hour["failures"]
    hour["success_rate"] = round(100.0 * hour["successes"] / decided, 1) if decided else 100.0
    hour["failure_rate"] = round(hour["failures"] / decided, 4) if decided else 0.0


def open_seconds(transitions: Sequence[tuple[float, str | None, str]], since: float, now: float,
                 current: str) -> float:
    """Seconds a circuit refused calls in ``[since, now]`` given its ``(ts, from, to)`` transitions in
    that window, in order, and its state now. The state at ``since`` is the first transition's
    ``from`` (or, with none, the current state)."""
    state = transitions[0][1] if transitions else current
    total = 0.0
    opened = since if state in _REFUSING else None
    for ts, _, to in transitions:
        if to in _REFUSING and opened is None:
            opened = ts
        elif to not in _REFUSING and opened is not None:
            total += ts - opened
            opened = None
    if opened is not None:
        total += now - opened
    return total


def json_object(text: Any) -> dict[str, Any]:
    """A JSON column (a pattern's ``evidence``, an event's ``additional_data``) as a dict: ``{}`` if it is
    missing, damaged or not an object."""
    if isinstance(text, dict):
        return text
    try:
        got = json.loads(text) if isinstance(text, str | bytes) else None
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


class ReadModel(Reader):
    """Reads a circuitry database: read-only connections (``query()`` refuses writes and ATTACH), plain
    data out (dicts, lists), ready for JSON.

    Args:
        backend: The database.
        clock: Wall clock for "the last hour" (default: ``time.time``).
        busy_timeout: Seconds a read may wait for a lock.
    """

    # -- circuits -------------------------------------------------------------------------------------

    def status(self, names: Sequence[str] | None = None, *, now: float | None = None,
               states: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every circuit (or those in ``names``): stored state, the last hour's counts, open time,
        unacknowledged alerts, latest pattern and recommendation; sorted by name. ``states``: states
        known to be newer than the database's (a process's transitions not written yet)."""
        now = self._time() if now is None else now
        since = now - 3600.0
        where, params = "", tuple[str, ...]()
        if names is not None:
            if not names:
                return []
            where = f" WHERE service_name IN ({', '.join('?' * len(names))})"
            params = tuple(names)
        rows = self._rows(
            "SELECT service_name, current_state, version, failure_count, failure_threshold, recovery_timeout, "
            f"opened_at, open_until, updated_by, updated_at, state_changed_at FROM circuit_breaker_states{where} "
            "ORDER BY service_name", params)
        newer = states or {}
        if names is None:  # circuits this process knows that have no row yet
            have = {r[0] for r in rows}
            rows = sorted(rows + [(name, state, 0, 0, None, None, None, None, None, None, None)
                                  for name, state in newer.items() if name not in have])
        if not rows:
            return []
        only = "" if names is None else f" AND service_name IN ({', '.join('?' * len(names))})"
        sums = ("SELECT service_name, sum(calls), sum(successes), sum(failures), sum(rejections), sum(latency_count), "
                "sum(latency_sum_ms), max(latency_max_ms) FROM")
        if names is not None and len(names) <= _EXACT_UP_TO:  # the minute rollups: exactly the last hour
            window = 60.0 * (int(now // 60) - int(since // 60)) + now % 60
            hour = {r[0]: r for r in self._rows(f"{sums} circuit_breaker_metrics WHERE minute >= ?{only} "
                                                "GROUP BY service_name", (int(since // 60), *params))}
        else:  # the ten-minute rollups: seven rows a circuit, so thousands of circuits read fast
            first = int(since // 600)
            window = now - 600.0 * first
            hour = {r[0]: r for r in self._rows(f"{sums} circuit_breaker_metrics_10m WHERE bucket >= ?{only} "
                                                "GROUP BY service_name", (first, *params))}
        alerts: dict[str, list[str]] = {}
        for name, severity in self._rows(
                f"SELECT service_name, severity FROM circuit_breaker_alerts WHERE acknowledged = FALSE{only}", params):
            alerts.setdefault(name, []).append(severity)
        transitions: dict[str, list[tuple[float, str | None, str]]] = {}
        for name, ts, frm, to in self._rows(
                "SELECT service_name, ts, from_state, to_state FROM circuit_breaker_events WHERE "
                f"event_type = 'state_change' AND ts >= ?{only} ORDER BY ts, id", (since, *params)):
            transitions.setdefault(name, []).append((ts, frm, to))
        patterns = {r[0]: r for r in self._rows(
            "SELECT service_name, pattern_type, confidence_score, suggested_threshold, suggested_timeout, ts, "
            "evidence FROM (SELECT p.*, row_number() OVER (PARTITION BY service_name ORDER BY ts DESC, id DESC) "
            f"AS rn FROM circuit_breaker_failure_patterns p WHERE ts >= ?{only}) latest WHERE rn = 1",
            (now - 86400.0, *params))}
        out = []
        for (name, state, version, fcount, threshold, timeout, opened_at, open_until, by, updated_at,
             changed_at) in rows:
            state = newer.get(name, state)
            h = hour.get(name)
            calls, ok, failed, refused, lat_n, lat_sum, lat_max = (h[1:] if h else (0, 0, 0, 0, 0, 0.0, 0.0))
            decided = (ok or 0) + (failed or 0)
            trans = transitions.get(name, [])
            sev = alerts.get(name, [])
            pat = patterns.get(name)
            out.append({
                "service_name": name, "state": state, "version": version, "failure_count": fcount,
                "failure_threshold": threshold, "recovery_timeout": timeout, "opened_at": opened_at,
                "open_until": open_until,
                "retry_after": (max(0.0, open_until - now) if state == "open" and open_until else None),
                "updated_by": by, "updated_at": updated_at, "state_changed_at": changed_at,
                "last_transition": ({"ts": trans[-1][0], "from_state": trans[-1][1], "to_state": trans[-1][2]}
                                    if trans else None),
                "last_hour": {
                    "total_calls": calls or 0, "successes": ok or 0, "failures": failed or 0,
                    "rejections": refused or 0,
                    "success_rate": round(100.0 * (ok or 0) / decided, 1) if decided else 100.0,
                    "failure_rate": round((failed or 0) / decided, 4) if decided else 0.0,
                    "circuit_open_duration": round(open_seconds(trans, since, now, state)),
                    "transitions": len(trans),
                    "window_seconds": round(window),
                    "avg_latency_ms": round(lat_sum / lat_n, 3) if lat_n else None,
                    "max_latency_ms": round(lat_max, 3) if lat_n else None,
                },
                "unacknowledged_alerts": len(sev),
                "worst_alert": min(sev, key=lambda s: SEVERITY_RANK.get(s, 9)) if sev else None,
                "pattern": ({"type": pat[1], "confidence": pat[2], "suggested_threshold": pat[3],
                             "suggested_timeout": pat[4], "ts": pat[5],
                             "prediction": json_object(pat[6]).get("prediction")} if pat else None),
            })
        return out

    def circuit(self, name: str, *, now: float | None = None) -> dict[str, Any] | None:
        """:meth:`status` of one circuit, or ``None`` if the database does not know it."""
        got = self.status([name], now=now)
        return got[0] if got else None

    def names(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT service_name FROM circuit_breaker_states ORDER BY service_name")]

    def needs_attention(self, *, now: float | None = None, states: dict[str, str] | None = None,
                        held: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
        """Circuits that are not closed, have unacknowledged warning-or-worse alerts, or failed more than
        half their decided calls in the last hour (at least 20): most urgent first — refusing circuits,
        then half-open, then the rest, each by worst alert. ``held``: counts not written yet, per circuit
        (:func:`add_unwritten`)."""
        out = []
        for s in self.status(now=now, states=states):
            state, h = s["state"], s["last_hour"]
            if held and s["service_name"] in held:
                add_unwritten(h, held[s["service_name"]])
            worst = s["worst_alert"]
            reasons = []
            if state != "closed":
                reasons.append(f"circuit is {state}")
            if worst is not None and worst != "info":
                reasons.append(f"{s['unacknowledged_alerts']} unacknowledged alert(s), worst: {worst}")
            decided = h["successes"] + h["failures"]
            if decided >= 20 and h["success_rate"] < 50.0:
                reasons.append(f"success rate {h['success_rate']}% in the last hour")
            if reasons:
                rank = (0 if state in _REFUSING else 1 if state == "half_open" else 2,
                        SEVERITY_RANK.get(worst or "", 9), s["service_name"])
                out.append((rank, {"service_name": s["service_name"], "state": state, "reasons": reasons,
                                   "unacknowledged_alerts": s["unacknowledged_alerts"],
                                   "success_rate": h["success_rate"]}))
        out.sort(key=lambda item: item[0])
        return [entry for _, entry in out]

    # -- history ----------------------------------------------------------------------------------------

    def series(self, name: str, since: float, until: float) -> list[tuple[int, int, int]]:
        """Per-second ``(second, calls, failures)`` of ``name`` in ``[since, until]`` (seconds with calls)."""
        return [(int(s), int(c), int(f)) for s, c, f in self._rows(
            "SELECT second, calls, failures FROM circuit_breaker_seconds WHERE service_name = ? AND second >= ? "
            "AND second <= ? ORDER BY second", (name, int(since), int(until)))]

    def metrics(self, name: str, since: float, until: float) -> list[dict[str, Any]]:
        """Per-minute rollups of ``name`` in ``[since, until]``."""
        cols = ("minute", "calls", "successes", "failures", "ignored", "rejections", "cancelled", "latency_count",
                "latency_sum_ms", "latency_max_ms")
        return [dict(zip(cols, r, strict=True)) for r in self._rows(
            f"SELECT {', '.join(cols)} FROM circuit_breaker_metrics WHERE service_name = ? AND minute >= ? "
            "AND minute <= ? ORDER BY minute", (name, int(since // 60), int(until // 60)))]

    def transitions(self, name: str, since: float, until: float) -> list[dict[str, Any]]:
        cols = ("ts", "from_state", "to_state", "error_type", "error_message", "additional_data", "process")
        return [dict(zip(cols, r, strict=True)) for r in self._rows(
            f"SELECT {', '.join(cols)} FROM circuit_breaker_events WHERE service_name = ? AND "
            "event_type = 'state_change' AND ts >= ? AND ts <= ? ORDER BY ts, id", (name, since, until))]

    def events(self, name: str | None, since: float, until: float, *, limit: int = 100_000,
               event_type: str | None = None) -> list[dict[str, Any]]:
        """Event rows in ``[since, until]`` (of ``name``, or all; of ``event_type``, or all), oldest first."""
        cols = ("id", "service_name", "event_type", "from_state", "to_state", "error_type", "error_message",
                "additional_data", "created_at", "ts", "process", "occurrences")
        where = "ts >= ? AND ts <= ?"
        params: list[Any] = [since, until]
        if name is not None:
            where = "service_name = ? AND " + where
            params.insert(0, name)
        if event_type is not None:
            where = "event_type = ? AND " + where
            params.insert(0, event_type)
        return [dict(zip(cols, r, strict=True)) for r in self._rows(
            f"SELECT {', '.join(cols)} FROM circuit_breaker_events WHERE {where} ORDER BY ts, id LIMIT ?",
            (*params, limit))]

    def patterns(self, name: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
        cols = ("id", "created_at", "service_name", "pattern_type", "confidence_score", "failure_count",
                "time_window_seconds", "error_rate", "suggested_threshold", "suggested_timeout", "evidence", "ts",
                "process")
        where, params = "", tuple[str, ...]()
        if name is not None:
            where, params = " WHERE service_name = ?", (name,)
        return [dict(zip(cols, r, strict=True)) for r in self._rows(
            f"SELECT {', '.join(cols)} FROM circuit_breaker_failure_patterns{where} ORDER BY ts DESC, id DESC LIMIT ?",
            (*params, limit))]

    # -- alerts ---------------------------------------------------------------------------------------

    _ALERT_COLS: Final = ("id", "service_name", "alert_type", "severity", "message", "details", "acknowledged",
                          "created_at", "acknowledged_at", "occurrences", "last_seen_at", "alert_key", "ts")

    def alerts(self, name: str | None = None, *, include_acknowledged: bool = False,
               limit: int = 100) -> list[dict[str, Any]]:
        """Alert rows, newest first."""
        where, params = [], []
        if name is not None:
            where.append("service_name = ?")
            params.append(name)
        if not include_acknowledged:
            where.append("acknowledged = FALSE")
        sql = f"SELECT {', '.join(self._ALERT_COLS)} FROM circuit_breaker_alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._rows(sql + " ORDER BY ts DESC, id DESC LIMIT ?", (*params, limit))
        out = [dict(zip(self._ALERT_COLS, r, strict=True)) for r in rows]
        for a in out:
            a["acknowledged"] = bool(a["acknowledged"])
        return out

    def alert(self, alert_id: int) -> dict[str, Any] | None:
        """One alert row by id, acknowledged or not; ``None`` if there is none."""
        rows = self._rows(f"SELECT {', '.join(self._ALERT_COLS)} FROM circuit_breaker_alerts WHERE id = ?",
                          (alert_id,))
        if not rows:
            return None
        out = dict(zip(self._ALERT_COLS, rows[0], strict=True))
        out["acknowledged"] = bool(out["acknowledged"])
        return out

    def acknowledge(self, *, alert_id: int | None = None, service: str | None = None) -> list[str]:
        """Acknowledge one alert by id, or every open alert of a service; the keys acknowledged."""
        if (alert_id is None) == (service is None):
            raise ConfigurationError("give alert_id or service (one of them)")
        if alert_id is not None:
            from circuitry._checks import check_int

            check_int("alert_id", alert_id, -(2**63), 2**63 - 1)  # what an id column holds
        from circuitry.store.sharing import iso

        column, value = ("id", alert_id) if alert_id is not None else ("service_name", service)
        with self._lock:
            try:
                self._fresh("_wconn")
                if self._wconn is None:
                    self._wconn = self.backend.connect("analyst", timeout=self._timeout)
                with self._wconn.transaction():
                    rows = self._wconn.execute(
                        "UPDATE circuit_breaker_alerts SET acknowledged = TRUE, acknowledged_at = ? "
                        f"WHERE {column} = ? AND acknowledged = FALSE RETURNING alert_key", (iso(self._time()), value))
            except Exception as exc:
                if self.backend.classify(exc) is None:
                    raise
                if self._wconn is not None:
                    with contextlib.suppress(Exception):
                        self._wconn.close()
                    self._wconn = None
                raise StoreError(f"cannot acknowledge in {self.backend.location}: {exc}") from exc
        return [r[0] for r in rows if r[0]]

    # -- pages, totals and the outbox (dashboards, exporters, the command line) ----------------------------

    _ATTENTION_RANK: Final = ("CASE current_state WHEN 'open' THEN 0 WHEN 'forced_open' THEN 0 WHEN 'half_open' "
                              "THEN 1 WHEN 'disabled' THEN 2 ELSE 3 END")

    def page(self, *, search: str | None = None, states: Sequence[str] | None = None, alerting: bool = False,
             sort: str = "attention", offset: int = 0, limit: int = 50,
             now: float | None = None) -> dict[str, Any]:
        """One page of circuits, for lists too long to read whole (ten thousand circuits).

        Args:
            search: Only circuits whose name contains this text (case-insensitive for ASCII letters;
                ``%`` and ``_`` match themselves).
            states: Only circuits in these states.
            alerting: Only circuits with unacknowledged alerts.
            sort: ``"attention"`` (refusing circuits first, then half-open, disabled, closed; by name
                within each) or ``"name"``.
            offset: The first row of the page (0: the first).
            limit: Rows on the page (at most 1000).
            now: The time "the last hour" ends (default: now).

        Returns:
            ``{"total": matching circuits, "offset", "limit", "rows": [status dicts of the page]}``;
            each row is what :meth:`status` returns for the circuit.
        """
        if sort not in ("attention", "name"):
            raise ConfigurationError(f"sort must be 'attention' or 'name', got {sort!r}")
        offset = max(0, int(offset))
        limit = min(1000, max(1, int(limit)))
        where, params = self._page_filter(search, states, alerting)
        total_rows = self._rows(f"SELECT count(*) FROM circuit_breaker_states{where}", params)
        total = int(total_rows[0][0]) if total_rows else 0
        order = "service_name" if sort == "name" else f"{self._ATTENTION_RANK}, service_name"
        names = [r[0] for r in self._rows(
            f"SELECT service_name FROM circuit_breaker_states{where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*params, limit, offset))]
        by_name = {s["service_name"]: s for s in self.status(names, now=now)} if names else {}
        return {"total": total, "offset": offset, "limit": limit,
                "rows": [by_name[n] for n in names if n in by_name]}

    @staticmethod
    def _page_filter(search: str | None, states: Sequence[str] | None,
                     alerting: bool) -> tuple[str, tuple[Any, ...]]:
        where: list[str] = []
        params: list[Any] = []
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("lower(service_name) LIKE lower(?) ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if states is not None:
            if not states:
                where.append("1 = 0")
            else:
                where.append(f"current_state IN ({', '.join('?' * len(states))})")
                params += list(states)
        if alerting:
            where.append("service_name IN (SELECT service_name FROM circuit_breaker_alerts WHERE acknowledged = FALSE)")
        return (" WHERE " + " AND ".join(where) if where else ""), tuple(params)

    def state_counts(self) -> dict[str, int]:
        """How many circuits are in each state (states with none are left out)."""
        return {str(s): int(n) for s, n in self._rows(
            "SELECT current_state, count(*) FROM circuit_breaker_states GROUP BY current_state ORDER BY current_state")}

    def alert_counts(self) -> dict[str, int]:
        """Unacknowledged alerts by severity."""
        return {str(s): int(n) for s, n in self._rows(
            "SELECT severity, count(*) FROM circuit_breaker_alerts WHERE acknowledged = FALSE GROUP BY severity")}

    def state_rows(self) -> list[dict[str, Any]]:
        """Every circuit's stored state, lean (no history): ``service_name``, ``state``, ``version``,
        ``opened_at``, ``open_until``, ``updated_by``, ``updated_at``; sorted by name."""
        cols = ("service_name", "state", "version", "opened_at", "open_until", "updated_by", "updated_at")
        return [dict(zip(cols, r, strict=True)) for r in self._rows(
            "SELECT service_name, current_state, version, opened_at, open_until, updated_by, updated_at "
            "FROM circuit_breaker_states ORDER BY service_name")]

    def totals(self, since: float) -> dict[str, dict[str, float]]:
        """Every circuit's counts summed over the per-minute rows from the minute of ``since`` on (every
        process's counts): ``{name: {"calls", "successes", "failures", "ignored", "rejections",
        "cancelled", "latency_count", "latency_sum_ms"}}``."""
        cols = ("calls", "successes", "failures", "ignored", "rejections", "cancelled", "latency_count",
                "latency_sum_ms")
        return {r[0]: dict(zip(cols, (v or 0 for v in r[1:]), strict=True)) for r in self._rows(
            f"SELECT service_name, {', '.join(f'sum({c})' for c in cols)} FROM circuit_breaker_metrics "
            "WHERE minute >= ? GROUP BY service_name", (int(since // 60),))}

    def all_transitions(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """Every circuit's transitions in ``[since, until]``, oldest first: ``id``, ``service_name``,
        ``ts``, ``from_state``, ``to_state``, ``reason`` (from the row's data; ``None`` if absent)."""
        params: tuple[Any, ...] = (since,)
        sql = ("SELECT id, service_name, ts, from_state, to_state, additional_data FROM circuit_breaker_events "
               "WHERE event_type = 'state_change' AND ts >= ?")
        if until is not None:
            sql += " AND ts <= ?"
            params = (since, until)
        out = []
        for rid, name, ts, frm, to, data in self._rows(sql + " ORDER BY ts, id", params):
            reason = json_object(data).get("reason")
            if not isinstance(reason, str):
                reason = None
            out.append({"id": rid, "service_name": name, "ts": ts, "from_state": frm, "to_state": to,
                        "reason": reason})
        return out

    def probes(self, now: float | None = None) -> dict[str, int]:
        """Half-open probe leases held now, by circuit (every process's)."""
        now = self._time() if now is None else now
        return {str(n): int(c) for n, c in self._rows(
            "SELECT service_name, count(*) FROM circuit_breaker_probe_leases WHERE kind = 'held' AND expires_at > ? "
            "GROUP BY service_name", (now,))}

    def deliveries(self, *, state: str | None = None, endpoint: str | None = None, service: str | None = None,
                   limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Webhook outbox rows (newest first): ``pending``, ``delivered`` or ``dead`` deliveries of alerts
        (see :mod:`circuitry.store.outbox`). Empty when the database has no outbox yet."""
        from circuitry.store import outbox

        sql, params = outbox.list_sql(state=state, endpoint=endpoint, service=service, limit=limit, offset=offset)
        out = []
        for r in self._rows(sql, params):
            d = dict(zip(outbox.COLUMNS, r, strict=True))
            try:
                d["payload"] = json.loads(d["payload"])
            except (TypeError, ValueError):
                pass
            out.append(d)
        return out

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """Webhook outbox rows by endpoint and state: ``{endpoint: {"pending": n, "dead": n, ...}}``."""
        from circuitry.store import outbox

        out: dict[str, dict[str, int]] = {}
        for endpoint, state, n in self._rows(outbox.counts_sql()):
            out.setdefault(str(endpoint), {})[str(state)] = int(n)
        return out
