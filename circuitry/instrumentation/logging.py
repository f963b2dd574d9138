"""Logging: circuitry's log lines go where the application sends its own, and nowhere otherwise.

A library prints nothing on stdout. circuitry logs to the stdlib :mod:`logging` logger ``circuitry``,
which carries a :class:`logging.NullHandler`, so without any logging configuration nothing is written
anywhere (that handler is also what keeps Python's last-resort handler quiet: the logging HOWTO's advice
for libraries). ``logging.basicConfig()`` — or any handler on the root or on ``circuitry`` — shows it.

When the application has configured structlog (``structlog.configure(...)`` was called), circuitry logs
through structlog instead, so the application's processors render it like the rest of its logs. An
explicit level on the stdlib ``circuitry`` logger is honoured in both cases:
``logging.getLogger("circuitry").setLevel(logging.CRITICAL)`` silences circuitry whichever backend
writes. structlog is never imported here unless the application imported it.

Every line is one dotted, past-tense event name with structured fields. Through stdlib logging the
message reads ``circuitry.circuit_opened circuit=payment_api from_state=closed ...`` and the record
carries ``record.event`` (the name) and ``record.circuitry`` (the fields as a dict), for JSON formatters.

The rest of circuitry logs through :func:`log`; the default event hook is :class:`LoggingHook`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Final

from circuitry._state import CircuitState
from circuitry.events import Event, EventKind

__all__ = ["LOGGER_NAME", "REMOTE_REASONS", "LoggingHook", "StructlogHook", "isoformat", "log"]

#: The stdlib logger (and structlog logger name) circuitry logs to.
LOGGER_NAME: Final = "circuitry"
#: Transition reasons that mean "decided by another process, or by a previous run": every process
#: sharing a store adopts such a transition, so logging it at the usual level would repeat one outage
#: once per worker. The process that made the transition logs it at the usual level.
REMOTE_REASONS: Final = frozenset({"remote", "restored"})

_logger = logging.getLogger(LOGGER_NAME)
_logger.addHandler(logging.NullHandler())

_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_NAMES: Final[Mapping[int, str]] = {v: k for k, v in _LEVELS.items()}


def isoformat(timestamp: float) -> str:
    """An epoch timestamp as ISO 8601 in UTC, to the microsecond: ``2025-01-31T12:00:00.250000Z``."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def log(level: int | str, event: str, /, **fields: Any) -> None:
    """Log one event of circuitry's through the application's configuration; never raises.

    Args:
        level: A :mod:`logging` level (``logging.WARNING``) or its lowercase name (``"warning"``).
        event: The dotted, past-tense event name, e.g. ``"circuitry.store_fault"``.
        **fields: Structured fields (plain values: str, int, float, bool, None).

    Through structlog when the application configured it, else through the stdlib logger ``circuitry``
    (see the module's documentation). A failure of the logging machinery itself is swallowed: logging
    must never break a protected call or a store's thread.

    .. versionadded:: 0.1.0
    """
    try:
        levelno = level if isinstance(level, int) else _LEVELS[level]
        structlog = sys.modules.get("structlog")  # imported by the application, or not in use
        if structlog is not None and structlog.is_configured():
            # An explicit level on the stdlib logger is the one switch that silences circuitry.
            if _logger.level != logging.NOTSET and not _logger.isEnabledFor(levelno):
                return
            name = _NAMES.get(levelno)
            logger = structlog.get_logger(LOGGER_NAME)
            if name is None:
                logger.log(levelno, event, **fields)
            else:
                getattr(logger, name)(event, **fields)
            return
        if _logger.isEnabledFor(levelno):
            _logger.log(levelno, "%s", _Message(event, fields), extra={"event": event, "circuitry": fields})
    except Exception:  # pragma: no cover - a broken handler or processor: nothing left to tell
        pass


class _Message:
    """The human-readable message, rendered only if a handler formats the record."""

    __slots__ = ("event", "fields")

    def __init__(self, event: str, fields: Mapping[str, Any]) -> None:
        self.event = event
        self.fields = fields

    def __str__(self) -> str:
        parts = [self.event]
        parts += [f"{key}={_logfmt(value)}" for key, value in self.fields.items()]
        return " ".join(parts)


def _logfmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and all(c.isalnum() or c in "._-:/+@" for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


_OPENING: Final = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN})


class LoggingHook:
    """The default event hook: logs transitions (and optionally rejections and failures) with :func:`log`.

    Args:
        kinds: The event kinds to log (default: transitions only). Rejections log at info level and
            failures at debug level: beware that an outage then logs once per call.
        remote_level: The level for transitions adopted from another process or restored from a
            previous run (reason ``"remote"`` or ``"restored"``; see :data:`REMOTE_REASONS`): debug by
            default, so N workers sharing a store do not log one outage N times at warning level.
            ``None`` logs them not at all.
        logger: A structlog-style logger (with ``warning``/``info``/``debug`` methods) to log to
            instead; the default chooses per line between structlog and stdlib logging (see
            :func:`log`).

    Openings (and forced openings) log at warning level, the other transitions at info level. Fields:
    ``circuit``, ``from_state``, ``to_state``, ``reason``, ``generation``, ``pid``, ``at`` (ISO 8601,
    UTC), and when known ``open_for`` (seconds), ``error_type``, ``error_message``.

    .. versionadded:: 0.1.0
       Replaces ``StructlogHook``, which remains as an alias.
    """

    __slots__ = ("_logger", "kinds", "remote_level")

    def __init__(self, kinds: Iterable[EventKind] = (EventKind.TRANSITION,), logger: Any = None, *,
                 remote_level: int | None = logging.DEBUG) -> None:
        self.kinds = frozenset(kinds)
        self.remote_level = remote_level
        self._logger = logger

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.TRANSITION:
            if event.reason in REMOTE_REASONS:
                if self.remote_level is None:
                    return
                level = self.remote_level
            else:
                level = logging.WARNING if event.to_state in _OPENING else logging.INFO
        elif event.kind is EventKind.REJECTION:
            level = logging.INFO
        else:
            level = logging.DEBUG
        fields = event_fields(event)
        name = fields.pop("event")
        if self._logger is not None:
            getattr(self._logger, _NAMES.get(level, "info"))(name, **fields)
        else:
            log(level, name, **fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kinds={sorted(k.value for k in self.kinds)})"


def event_fields(event: Event) -> dict[str, Any]:
    """An event as log fields: the event's plain data with ``to_state``, ``pid`` and an ISO ``at``."""
    fields: dict[str, Any] = {"event": event.name, "circuit": event.circuit}
    if event.from_state is not None:
        fields["from_state"] = event.from_state.value
        fields["to_state"] = event.to_state.value
    else:
        fields["state"] = event.to_state.value
    for key in ("reason", "error_type", "error_message", "open_for"):
        value = getattr(event, key)
        if value is not None:
            fields[key] = value
    if event.shadow:
        fields["shadow"] = True
    fields["generation"] = event.generation
    fields["pid"] = os.getpid()
    fields["at"] = isoformat(event.at)
    return fields


#: Deprecated alias of :class:`LoggingHook` (the default hook logs through stdlib logging unless the
#: application configured structlog, so the old name no longer says what it does).
#:
#: .. deprecated:: 0.2.0
#:    Use :class:`LoggingHook`.
StructlogHook = LoggingHook
