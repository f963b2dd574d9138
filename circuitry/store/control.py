"""Operators' writes to the shared state: reset a circuit, force it open, force it closed, undo what
automatic adjustment changed — from the command line or the dashboard, while the application runs.

Written once for every backend, the way :mod:`circuitry.store.sharing` writes rows: a compare-and-set
of the circuit's row (``UPDATE … WHERE version = ?``) to the manual state, the next ``change_seq`` so
every running process's writer adopts it within a poll, and a ``state_change`` history row with reason
``manual`` naming who did it (``updated_by``), in the same transaction. Probe leases of a half-open
episode go with it. An application process that adopts the row logs it as a remote transition.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

from circuitry.exceptions import ConfigurationError, StoreError
from circuitry.store.backend import Backend, Connection
from circuitry.store.sharing import INSERT_EVENT, NEXT_SEQ, STATE_COLUMNS, iso, row_tuple

__all__ = ["ACTIONS", "UnknownCircuitError", "actor", "set_state", "undo_adjustment"]

Action = Literal["reset", "open", "close"]
#: What each action writes: ``reset`` closes the circuit and starts counting afresh, ``open`` refuses
#: every call until reset (``forced_open``), ``close`` lets every call through and never trips
#: (``disabled``) until reset.
ACTIONS: Final[Mapping[str, str]] = {"reset": "closed", "open": "forced_open", "close": "disabled"}


class UnknownCircuitError(StoreError, LookupError):
    """The database has no circuit of that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no circuit named {name!r}")
        self.name = name


def actor(tool: str) -> str:
    """Who an operator's write is recorded as: ``"<tool>@<host>:<pid>"``."""
    return f"{tool}@{socket.gethostname()}:{os.getpid()}"


def set_state(backend: Backend, name: str, action: str, *, by: str, timeout: float = 5.0,
              attempts: int = 5) -> dict[str, Any]:
    """Apply an operator's ``action`` (``"reset"``, ``"open"`` or ``"close"``) to circuit ``name``.

    Args:
        backend: The database.
        name: The circuit.
        action: One of :data:`ACTIONS`.
        by: Who does it (written as ``updated_by`` and the history row's ``process``); see :func:`actor`.
        timeout: Seconds to wait for the database's lock.
        attempts: Compare-and-set attempts before giving up (another process may write in between).

    Returns:
        ``{"service_name", "from_state", "to_state", "version", "changed"}`` (``changed`` is False when
        the circuit was in that state already: it still starts over, as ``reset()`` does in process).

    Raises:
        ConfigurationError: ``action`` is not one of :data:`ACTIONS`.
        UnknownCircuitError: No such circuit.
        StoreError: The database could not be written.
    """
    to = ACTIONS.get(action)
    if to is None:
        raise ConfigurationError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    with _writing(backend, timeout) as conn:
        for _ in range(max(1, attempts)):
            with conn.transaction():
                now = conn.now()
                got = conn.execute(f"SELECT {STATE_COLUMNS} FROM circuit_breaker_states WHERE service_name = ?",
                                   (name,))
                if not got:
                    raise UnknownCircuitError(name)
                frm, version = got[0][1], got[0][2]
                opened_at = now if to == "forced_open" else None
                moved = conn.execute(
                    "UPDATE circuit_breaker_states SET current_state = ?, failure_count = 0, state_changed_at = ?, "
                    "version = version + 1, opened_at = ?, open_until = NULL, open_for = NULL, reopen_count = 0, "
                    f"updated_by = ?, updated_at = ?, change_seq = {NEXT_SEQ} "
                    "WHERE service_name = ? AND version = ? RETURNING version",
                    (to, iso(now), opened_at, by, now, name, version))
                if not moved:
                    continue  # another process wrote in between: read again
                conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE service_name = ?", (name,))
                data = {"reason": "manual", "action": action, "by": by}
                conn.execute(INSERT_EVENT, row_tuple(name, "state_change", frm, to, None, None, data, now, by))
            _alert(backend, name, frm, to, now, by, timeout)
            return {"service_name": name, "from_state": frm, "to_state": to, "version": moved[0][0],
                    "changed": frm != to, "by": by, "at": now}
        raise StoreError(f"circuit {name!r} kept changing; {action} was not applied (try again)")


@contextlib.contextmanager
def _writing(backend: Backend, timeout: float) -> Iterator[Connection]:
    """An operator's connection, closed after: a database error becomes a :class:`StoreError` naming the
    database."""
    conn = backend.connect("analyst", timeout=timeout)
    try:
        yield conn
    except StoreError:
        raise
    except Exception as exc:
        if backend.classify(exc) is None:
            raise
        raise StoreError(f"cannot write to {backend.location}: {exc}") from exc
    finally:
        conn.close()


def _alert(backend: Backend, name: str, frm: str, to: str, now: float, by: str, timeout: float) -> None:
    """The alerts of the transition just written (a reset of an open circuit: ``circuit_closed``). The
    process that writes a transition raises its alerts, and this one runs no analyst: a reset from the
    command line or the dashboard raised nothing, so a PagerDuty incident its opening triggered was
    never resolved. Stored with the default alert policy and the store's deduplication; a running
    webhook sender's sweep delivers them. A failure here is said, not raised: the state is written."""
    from circuitry._state import CircuitState
    from circuitry.analysis.alerts import AlertEngine
    from circuitry.events import Event, EventKind
    from circuitry.instrumentation.logging import log
    from circuitry.store.records import Records

    try:
        event = Event(EventKind.TRANSITION, name, now, 0, CircuitState(to), CircuitState(frm), "manual")
    except ValueError:  # a state this circuitry does not know
        return
    engine = AlertEngine()
    alerts = engine.observe(event, now)
    if not alerts:
        return
    records = Records(backend, by, timeout=timeout)
    try:
        records.alerts(alerts, [], engine.policy.dedup_window)
    except Exception as exc:
        log("warning", "circuitry.alert_not_stored", circuit=name, error_type=type(exc).__qualname__,
            error_message=str(exc)[:500])
    finally:
        records.close()


def undo_adjustment(backend: Backend, name: str, *, by: str, timeout: float = 5.0) -> dict[str, Any]:
    """Put circuit ``name`` back to the settings its code gives, undoing automatic adjustment (where the
    last change was recorded before adjustments recorded those settings: undo that change alone): an
    ``adjustment`` row (``rollback``, reason "undone by ...") that every process follows within an analysis
    interval, as it follows the adjuster's own; the adjuster then does not make that change again for
    ``10 * cooldown``, as after its own rollbacks.

    Returns:
        ``{"service_name", "before", "after", "by", "at", "code_settings"}`` (settings as the rows keep
        them; ``code_settings``: whether ``after`` is the code's settings or the last change's ``before``).

    Raises:
        UnknownCircuitError: No circuit of that name has an adjustment to undo.
        StoreError: The database could not be read or written.
    """
    import json

    with _writing(backend, timeout) as conn, conn.transaction():
        now = conn.now()
        got = conn.execute("SELECT additional_data FROM circuit_breaker_events WHERE service_name = ? AND "
                           "event_type = 'adjustment' ORDER BY id DESC LIMIT 1", (name,))
        try:
            last = json.loads(got[0][0]) if got else None
        except (TypeError, ValueError):
            last = None
        if not isinstance(last, dict) or not isinstance(last.get("after"), dict):
            raise UnknownCircuitError(name)
        # The code's settings, as the row recorded them; rows made before it did: the first "before"
        # of the chain is not known here, so the last change alone is undone.
        given = last.get("given") if isinstance(last.get("given"), dict) else None
        target = given if given is not None else last.get("before")
        if not isinstance(target, dict):
            raise UnknownCircuitError(name)
        data = {"action": "rollback", "reason": f"undone by {by}", "by": by, "before": last["after"],
                "after": target, "evidence": {}}
        if given is not None:  # (a row without it is followed by every process, whatever its code gives)
            data["given"] = given
        conn.execute(INSERT_EVENT, row_tuple(name, "adjustment", None, None, None, f"undone by {by}", data,
                                             now, by))
    return {"service_name": name, "before": last["after"], "after": target, "by": by, "at": now,
            "code_settings": given is not None}
