"""One connection of a background thread's own: opened on first use, used by one thread at a time, closed
around ``fork()`` and when a fault calls for it. The analyst's records and the webhook outbox each hold one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from circuitry.store.backend import Backend, Connection

__all__ = ["FileWatch", "OwnedConnection"]


class FileWatch:
    """Whether a connection's file was deleted or replaced since it was opened -- looked at (a ``stat``) at
    most once a second per connection. The writer looks at its own every quarter of a second and writes
    everything again into the new file; a connection of the read model or of a runner that went on with
    the deleted file read alerts that were gone and wrote patterns and alerts nobody would see."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._at: dict[str, float] = {}

    def replaced(self, key: str, conn: Connection) -> bool:
        now = time.monotonic()
        if now - self._at.get(key, 0.0) < 1.0:
            return False
        self._at[key] = now
        return self.backend.stale(conn) is not None


class OwnedConnection:
    """A connection in the ``analyst`` role, opened on first use; one thread at a time.

    Args:
        backend: The database.
        process: This process's name (``host:pid``).
        timeout: Seconds a statement may wait for a lock.
    """

    def __init__(self, backend: Backend, process: str, *, timeout: float = 5.0) -> None:
        self.backend = backend
        self.process = process
        self._timeout = timeout
        self._conn: Connection | None = None
        self._watch = FileWatch(backend)
        self.lock = threading.RLock()  # held while the connection is in use

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        with self.lock:
            try:
                if self._conn is not None and self._watch.replaced("conn", self._conn):
                    self._drop()
                if self._conn is None:
                    self._conn = self.backend.connect("analyst", timeout=self._timeout)
                yield self._conn
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        with self.lock:
            self._drop()

    def drop_idle(self) -> None:
        """Close the connection unless it is in use (it reopens on its next use): see the writer's
        ``_drop_idle_elsewhere``."""
        if self.lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self.lock.release()

    def hold(self) -> None:
        """Before ``fork()``: wait for the statement in flight, close the connection, keep it closed."""
        self.lock.acquire()
        self._drop()

    def release(self) -> None:
        self.lock.release()

    def inherited(self) -> list[Connection]:
        """(After ``fork()``, in the child.) The connection to abandon; this one starts afresh."""
        conns = [self._conn] if self._conn is not None else []
        self._conn = None
        self.lock = threading.RLock()
        return conns

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
