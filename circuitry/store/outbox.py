"""The webhook outbox: alerts waiting to be delivered to webhook endpoints, durable in the store and
delivered once across processes and hosts (the sender is :mod:`circuitry.runners.webhooks`).

Written once for every backend, in the SQL subset SQLite and PostgreSQL share (see
:mod:`circuitry.store.backend`): ``?`` placeholders, ``ON CONFLICT … DO NOTHING``, ``RETURNING``,
epoch seconds as numbers. Times that decide leases and retries come from the database's clock
(``conn.now()``), as probe leases do.

The rules, in one place:

* **Enqueue once.** One row per ``(alert_id, endpoint)`` (a unique key): the process that stored an
  alert enqueues it right after, and a periodic catch-up sweep by any sender enqueues alerts nobody did
  (a crash between the two commits, a process without webhooks). Both insert with ``ON CONFLICT DO
  NOTHING``, so an alert gets one row per endpoint whoever gets there first.
* **Attempt once at a time.** A sender *claims* due rows with a compare-and-set ``UPDATE … WHERE
  (claimed_until IS NULL OR claimed_until < now) … RETURNING``: a claimed row belongs to that sender
  until its lease expires (longer than the request's timeout), so no two processes send the same
  delivery at the same time. The attempt is counted when claimed, so a sender that dies mid-request
  still uses up an attempt.
* **Settle only one's own claim.** A result is written ``WHERE claimed_by = ?``: a sender whose lease
  expired (and was taken over) changes nothing.
* **Dead letters.** After the endpoint's last attempt (or a response that retrying cannot fix) the row
  is ``dead``: kept, listed by ``circuitry webhooks`` and the dashboard, and put back by
  :meth:`Outbox.requeue`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from circuitry.store.owned import OwnedConnection
from circuitry.store.sharing import json_text

__all__ = ["COLUMNS", "STATES", "Delivery", "Outbox", "counts_sql", "list_sql"]

#: The states of an outbox row.
STATES: Final = ("pending", "delivered", "dead")
#: The columns :func:`list_sql` selects, in order.
COLUMNS: Final = ("id", "delivery_id", "endpoint", "alert_id", "service_name", "payload", "state", "attempts",
                  "next_attempt_at", "claimed_by", "claimed_until", "last_status", "last_error", "created_at",
                  "updated_at", "delivered_at")
_COLS: Final = ", ".join(COLUMNS)
_ALERT_COLS: Final = ("id", "service_name", "alert_type", "severity", "message", "details", "created_at",
                      "occurrences", "alert_key", "ts")
_INSERT: Final = (
    "INSERT INTO circuitry_webhook_outbox (delivery_id, endpoint, alert_id, service_name, payload, state, attempts, "
    "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) "
    "ON CONFLICT (alert_id, endpoint) DO NOTHING RETURNING id")
#: A row to send now. One circuit's deliveries to one endpoint go in order: a row waits while an earlier one
#: of its circuit and endpoint is pending (being sent, or due again after a failure) -- sent in parallel,
#: a PagerDuty resolve overtook the retry of its trigger, and the incident stayed open for good.
_DUE: Final = ("state = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until < ?) "
               "AND endpoint IN ({endpoints}) AND NOT EXISTS (SELECT 1 FROM circuitry_webhook_outbox AS earlier "
               "WHERE earlier.endpoint = circuitry_webhook_outbox.endpoint AND earlier.service_name = "
               "circuitry_webhook_outbox.service_name AND earlier.state = 'pending' AND earlier.id < "
               "circuitry_webhook_outbox.id)")


def list_sql(*, state: str | None = None, endpoint: str | None = None, service: str | None = None,
             limit: int = 100, offset: int = 0) -> tuple[str, tuple[Any, ...]]:
    """The query listing outbox rows (newest first) and its parameters; columns are :data:`COLUMNS`."""
    where, params = [], []
    for column, value in (("state", state), ("endpoint", endpoint), ("service_name", service)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = f"SELECT {_COLS} FROM circuitry_webhook_outbox"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY id DESC LIMIT ? OFFSET ?", (*params, int(limit), int(offset))


def counts_sql() -> str:
    """The query counting outbox rows by ``(endpoint, state)``."""
    return ("SELECT endpoint, state, count(*) FROM circuitry_webhook_outbox GROUP BY endpoint, state "
            "ORDER BY endpoint, state")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed outbox row: what a sender needs to attempt it.

    Attributes:
        id: The row's id.
        delivery_id: The delivery's random id (sent to the receiver, the same on every attempt).
        endpoint: The endpoint's name.
        alert: The alert as stored (a dict).
        attempts: Attempts so far, this one included.
        claimed_until: When this sender's lease expires (database clock).
    """

    id: int
    delivery_id: str
    endpoint: str
    alert: dict[str, Any]
    attempts: int
    claimed_until: float


def alert_dict(row: Sequence[Any]) -> dict[str, Any]:
    """An alert row (``_ALERT_COLS``) as the dict the outbox stores."""
    d = dict(zip(_ALERT_COLS, row, strict=True))
    try:
        d["details"] = json.loads(d["details"]) if d["details"] else {}
    except ValueError:
        pass  # kept as text: the receiver sees what is stored
    return d


class Outbox(OwnedConnection):
    """The outbox's reads and writes for one sender, on a connection of its own (opened on first use;
    one thread at a time — the sender's, and the analyst's when it enqueues).

    Args:
        backend: The database.
        process: This process's name (``host:pid``), written as ``claimed_by``.
        timeout: Seconds a statement may wait for a lock.
    """

    def now(self) -> float:
        with self.connection() as conn:
            return conn.now()

    # -- enqueueing -----------------------------------------------------------------------------------

    def enqueue(self, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Add ``(endpoint, alert dict)`` rows, due now; an alert already queued for an endpoint is
        left as it is. Returns how many rows were added."""
        if not items:
            return 0
        added = 0
        with self.connection() as conn, conn.transaction():
            now = conn.now()
            for endpoint, alert in items:
                got = conn.execute(_INSERT, (uuid.uuid4().hex, endpoint, alert.get("id"), alert.get("service_name"),
                                             json_text(alert, sort_keys=True), now, now, now))
                added += len(got)
        return added

    def missing(self, endpoint: str, *, since: float, severities: Sequence[str], services: Sequence[str] | None,
                limit: int = 500) -> list[dict[str, Any]]:
        """Alerts stored since ``since`` (epoch seconds) with no row for ``endpoint`` yet: what the
        catch-up sweep enqueues."""
        if not severities or (services is not None and not services):
            return []
        sql = (f"SELECT {', '.join('a.' + c for c in _ALERT_COLS)} FROM circuit_breaker_alerts a WHERE a.ts >= ? "
               f"AND a.severity IN ({', '.join('?' * len(severities))})")
        params: list[Any] = [since, *severities]
        if services is not None:
            sql += f" AND a.service_name IN ({', '.join('?' * len(services))})"
            params += list(services)
        sql += (" AND NOT EXISTS (SELECT 1 FROM circuitry_webhook_outbox o WHERE o.alert_id = a.id AND "
                "o.endpoint = ?) ORDER BY a.id LIMIT ?")
        with self.connection() as conn:
            rows = conn.execute(sql, (*params, endpoint, limit))
        return [alert_dict(r) for r in rows]

    # -- delivering -----------------------------------------------------------------------------------

    def claim(self, endpoints: Sequence[str], *, lease: float, limit: int) -> list[Delivery]:
        """Take up to ``limit`` due rows of ``endpoints`` for this process for ``lease`` seconds (and
        count the attempt). A row another sender holds is not taken until its lease expires."""
        if not endpoints or limit <= 0:
            return []
        due = _DUE.format(endpoints=", ".join("?" * len(endpoints)))
        with self.connection() as conn, conn.transaction():
            now = conn.now()
            until = now + lease
            rows = conn.execute(
                f"UPDATE circuitry_webhook_outbox SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1, "
                f"updated_at = ? WHERE id IN (SELECT id FROM circuitry_webhook_outbox WHERE {due} ORDER BY "
                f"next_attempt_at, id LIMIT ?) AND {due} RETURNING id, delivery_id, endpoint, payload, attempts",
                (self.process, until, now, now, now, *endpoints, limit, now, now, *endpoints))
        out = []
        for rid, delivery_id, endpoint, payload, attempts in sorted(rows):
            try:
                alert = json.loads(payload)
            except ValueError:
                alert = {"message": payload}
            out.append(Delivery(int(rid), str(delivery_id), str(endpoint), alert, int(attempts), until))
        return out

    def delivered(self, delivery: Delivery, status: int | None) -> bool:
        """Record a delivery as done; False if this process no longer held it (nothing changed)."""
        with self.connection() as conn, conn.transaction():
            now = conn.now()
            got = conn.execute(
                "UPDATE circuitry_webhook_outbox SET state = 'delivered', delivered_at = ?, updated_at = ?, "
                "last_status = ?, last_error = NULL, claimed_by = NULL, claimed_until = NULL "
                "WHERE id = ? AND claimed_by = ? AND state = 'pending' RETURNING id",
                (now, now, status, delivery.id, self.process))
        return bool(got)

    def failed(self, delivery: Delivery, *, status: int | None, error: str, retry_in: float | None) -> bool:
        """Record a failed attempt: due again in ``retry_in`` seconds, or dead (``None``). False if this
        process no longer held it."""
        with self.connection() as conn, conn.transaction():
            now = conn.now()
            if retry_in is None:
                got = conn.execute(
                    "UPDATE circuitry_webhook_outbox SET state = 'dead', updated_at = ?, last_status = ?, "
                    "last_error = ?, claimed_by = NULL, claimed_until = NULL "
                    "WHERE id = ? AND claimed_by = ? AND state = 'pending' RETURNING id",
                    (now, status, error[:1000], delivery.id, self.process))
            else:
                got = conn.execute(
                    "UPDATE circuitry_webhook_outbox SET next_attempt_at = ?, updated_at = ?, last_status = ?, "
                    "last_error = ?, claimed_by = NULL, claimed_until = NULL "
                    "WHERE id = ? AND claimed_by = ? AND state = 'pending' RETURNING id",
                    (now + max(0.0, retry_in), now, status, error[:1000], delivery.id, self.process))
        return bool(got)

    # -- operators ------------------------------------------------------------------------------------

    def requeue(self, *, ids: Sequence[int] | None = None, endpoint: str | None = None) -> int:
        """Put dead rows (those in ``ids``, or every dead row, of ``endpoint`` or all) back in the queue,
        due now, with their attempts reset. Returns how many."""
        where: list[str] = ["state = 'dead'"]
        params: list[Any] = []
        if ids is not None:
            if not ids:
                return 0
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            params += [int(i) for i in ids]
        if endpoint is not None:
            where.append("endpoint = ?")
            params.append(endpoint)
        with self.connection() as conn, conn.transaction():
            now = conn.now()
            got = conn.execute(
                "UPDATE circuitry_webhook_outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                f"updated_at = ?, claimed_by = NULL, claimed_until = NULL WHERE {' AND '.join(where)} RETURNING id",
                (now, now, *params))
        return len(got)

    def prune(self, *, delivered_for: float, dead_for: float) -> int:
        """Delete delivered rows older than ``delivered_for`` seconds and dead ones older than
        ``dead_for``; returns how many."""
        with self.connection() as conn, conn.transaction():
            now = conn.now()
            got = conn.execute(
                "DELETE FROM circuitry_webhook_outbox WHERE (state = 'delivered' AND updated_at < ?) "
                "OR (state = 'dead' AND updated_at < ?) RETURNING id", (now - delivered_for, now - dead_for))
        return len(got)
