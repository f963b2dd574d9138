"""Fault episodes: the store is advisory, so what goes wrong with the database is classified, reported
once per episode, retried with backoff, and never raised into a protected call.

A lock is contention, not a fault, until it has lasted ``busy_timeout``. While a fault lasts, probes
are decided from memory (the cross-process probe bound needs the database), sampling goes on, and the
backlog is kept; the backend says what it does about the fault (reopen, set aside a file circuitry
created, stop writing to one it must not touch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from circuitry.instrumentation.logging import log
from circuitry.store.backend import Backend, Fault
from circuitry.store.sharing import row_tuple

__all__ = ["Faults", "StoreHealth"]

# Faults after which the connection is reopened: a read-only file may be writable again, a replaced one
# is new, a damaged one was set aside, a full disk may have room after the WAL is truncated, and tables
# dropped under a running store are made again (connecting migrates).
_REOPEN = frozenset({"deleted", "io_error", "read_only", "corrupt", "not_a_database", "unavailable", "disk_full",
                     "old_schema"})


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """How a store is doing.

    Attributes:
        path: Where the database is (a URL's password is never shown).
        healthy: Writes succeed (no fault episode, not disabled).
        fault: The current fault (``locked``, ``disk_full``, ``read_only``, …) or ``None``.
        faults: Fault episodes so far.
        queued: Rows waiting to be written, including a batch being retried.
        written_events: Event rows written.
        dropped: Event rows dropped because the queue was full (their counts are in the rollups).
        set_aside: Files circuitry created and set aside because they were damaged.
        refused_rows: Rows the database refused (logged, then skipped).
        superseded: Local transitions another process's write replaced (see ``circuitry.store.sharing``).
        disabled: Why the store stopped writing for good (a file that is not its to touch, a newer
            schema), or ``None``.
    """

    path: str
    healthy: bool
    fault: str | None
    faults: int
    queued: int
    written_events: int
    dropped: int
    set_aside: tuple[str, ...]
    refused_rows: int = 0
    superseded: int = 0
    disabled: str | None = None


class Faults:
    """The fault state of one store's writer.

    Args:
        backend: Classifies errors and remedies faults.
        busy_timeout: Seconds a lock may last before it is a fault.
        retry: Seconds before the next attempt after contention (the writer's cycle).
        memory: Called with True when an episode starts (probes are then decided from memory), False
            when it ends.
        record: Queues an event row (the episode's ``store_fault`` row).
        process: This process's name, for that row.
        clock: Wall clock of the row.
    """

    def __init__(self, backend: Backend, *, busy_timeout: float, retry: float, memory: Callable[[bool], None],
                 record: Callable[[tuple[Any, ...]], None], process: str, clock: Callable[[], float]) -> None:
        self.backend = backend
        self.busy_timeout = busy_timeout
        self.retry = retry
        self._memory = memory
        self._record = record
        self.process = process
        self._time = clock
        self._lock = threading.Lock()
        self.fault: str | None = None
        self.count = 0
        self.disabled: str | None = None
        self.set_aside: list[str] = []
        self._since = 0.0
        self._locked_since: float | None = None
        self._backoff = 0.0
        self._next_io = 0.0
        self._bugs: set[str] = set()  # the bugs said in this episode (each once: every retry met it again)

    def due(self) -> bool:
        """Whether the writer may try the database now (backoff over)."""
        return time.monotonic() >= self._next_io

    def ok(self) -> None:
        """A cycle's I/O went through."""
        self._locked_since = None
        self._bugs.clear()
        if self.fault is not None:
            with self._lock:
                kind, since = self.fault, self._since
                self.fault = None
                self._backoff = 0.0
            self._memory(False)
            log("info", "circuitry.store_recovered", location=self.backend.location, fault=kind,
                seconds=round(self._time() - since, 3))

    def error(self, exc: Exception) -> dict[str, Any]:
        """Classify and handle an error of the writer's I/O; returns what the engine must do:
        ``reopen`` (drop the connection), ``resync`` (the file is new: rewrite every circuit)."""
        kind = self.backend.classify(exc)
        if kind is None:  # not a database error: a bug; report it as one (once an episode) and keep going
            kind = "io_error"
            said = f"{type(exc).__qualname__}: {str(exc)[:500]}"
            if said not in self._bugs and len(self._bugs) < 20:  # (bounded: messages that vary are said 20 times)
                self._bugs.add(said)
                log("error", "circuitry.store_bug", location=self.backend.location,
                    error_type=type(exc).__qualname__, error_message=str(exc)[:500])
        if kind == "locked":
            first = self._locked_since
            if first is None:
                self._locked_since = first = time.monotonic()
            if time.monotonic() - first < self.busy_timeout:
                self._next_io = time.monotonic() + self.retry
                return {}  # contention, not a fault yet
        extra = self.backend.remedy(kind, exc)
        actions: dict[str, Any] = {"reopen": kind in _REOPEN, "reopen_all": kind == "read_only"}
        if "set_aside" in extra:
            self.set_aside.append(str(extra["set_aside"]))
            actions["resync"] = True
        if "disable" in extra:
            self.disabled = str(extra.pop("disable"))
        self.report(kind, exc, **extra)
        self._backoff = min(5.0, max(0.05, self._backoff * 2))
        self._next_io = time.monotonic() + self._backoff
        return actions

    def stalled(self, seconds: float) -> None:
        """An I/O step took ``seconds`` (the writer, as it ends): past ``busy_timeout``, breakers decided
        their probes from memory meanwhile; said, once per step, when it ends (it may never end)."""
        if seconds > self.busy_timeout:
            log("warning", "circuitry.store_stalled", location=self.backend.location, seconds=round(seconds, 3),
                note=f"one step of the database's I/O took longer than busy_timeout ({self.busy_timeout:g} s): "
                     "probes were decided from memory meanwhile")

    def report(self, kind: Fault | str, exc: BaseException, **extra: Any) -> None:
        """One structured warning per fault episode (the kind changing starts a new one)."""
        with self._lock:
            if self.fault == kind:
                return
            self.fault = kind
            self._since = self._time()
            self.count += 1
        self._memory(True)
        note = extra.pop("note", None) or ("protected calls continue from memory; writes are retried and the "
                                           "backlog is kept")
        if self.disabled:
            note = f"circuitry stopped writing to this database: {self.disabled}"
        log("warning", "circuitry.store_fault", location=self.backend.location, fault=kind,
            error_type=type(exc).__qualname__, error_message=str(exc)[:500], note=note, **extra)
        self._record(row_tuple("circuitry", "store_fault", None, kind, type(exc).__qualname__, str(exc)[:500],
                               {**extra, "note": note}, self._time(), self.process))
