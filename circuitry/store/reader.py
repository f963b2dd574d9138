"""The connections a read model reads through (see :class:`Reader`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from circuitry.exceptions import SchemaVersionError, StoreError
from circuitry.store.backend import Backend, Connection, NoDatabaseError
from circuitry.store.owned import FileWatch

__all__ = ["Reader"]


class Reader:
    """The connections of a read model: one read-only connection for reads (a lock around it), one that
    never waits (for a breaker adopting its state on a caller's thread), and one for the few writes
    readers make (acknowledging alerts). Held closed across ``fork()``.

    Args:
        backend: The database.
        clock: Wall clock for "the last hour" (default: ``time.time``).
        busy_timeout: Seconds a read may wait for a lock.
    """

    def __init__(self, backend: Backend, *, clock: Callable[[], float] | None = None,
                 busy_timeout: float = 5.0) -> None:
        self.backend = backend
        self._time = clock or time.time
        self._timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._wconn: Connection | None = None
        self._quick_lock = threading.Lock()
        self._quick: Connection | None = None
        self._watch = FileWatch(backend)

    def close(self) -> None:
        with self._lock, self._quick_lock:
            for conn in (self._conn, self._wconn, self._quick):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._conn = self._wconn = self._quick = None

    def hold(self) -> None:
        """Before ``fork()``: wait for the read in flight, close the connections, keep them closed."""
        self._lock.acquire()
        self._quick_lock.acquire()
        for conn in (self._conn, self._wconn, self._quick):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._conn = self._wconn = self._quick = None

    def release(self) -> None:
        self._quick_lock.release()
        self._lock.release()

    def drop_idle(self) -> None:
        """Close the connections not in use (they reopen on their next use): see
        the writer's ``_drop_idle_elsewhere``."""
        for lock, names in ((self._lock, ("_conn", "_wconn")), (self._quick_lock, ("_quick",))):
            if lock.acquire(blocking=False):
                try:
                    for name in names:
                        conn = getattr(self, name)
                        if conn is not None:
                            with contextlib.suppress(Exception):
                                conn.close()
                            setattr(self, name, None)
                finally:
                    lock.release()

    def inherited(self) -> list[Connection]:
        """(After ``fork()``, in the child.) The connections to abandon; the model starts afresh."""
        conns = [c for c in (self._conn, self._wconn, self._quick) if c is not None]
        self._conn = self._wconn = self._quick = None
        self._lock = threading.Lock()
        self._quick_lock = threading.Lock()
        return conns

    def state_now(self, name: str) -> tuple[bool, tuple[Any, ...] | None]:
        """Whether ``name``'s stored state could be read at once — no waiting for a lock, for another
        reader or for a server, no schema change — and its row (``None``: none stored, or not read)."""
        from circuitry.store.state_rows import STATE_COLUMNS, clean_row

        if not self._quick_lock.acquire(blocking=False):
            return False, None
        try:
            self._fresh("_quick")
            if self._quick is None:
                self._quick = self.backend.connect("reader", timeout=0.0)
            got = self._quick.execute(f"SELECT {STATE_COLUMNS} FROM circuit_breaker_states WHERE service_name = ?",
                                      (name,))
            return True, clean_row(got[0])[0] if got else None
        except Exception:
            if self._quick is not None:
                with contextlib.suppress(Exception):
                    self._quick.close()
                self._quick = None
            return False, None
        finally:
            self._quick_lock.release()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._lock:
            try:
                self._fresh("_conn")
                if self._conn is None:
                    self._conn = self.backend.connect("reader", timeout=self._timeout)
                yield self._conn
            except StoreError:
                raise
            except Exception as exc:
                if self.backend.classify(exc) is None and not isinstance(exc, ValueError | TypeError):
                    raise
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
                raise StoreError(f"reading {self.backend.location} failed: {exc}") from exc

    def _fresh(self, name: str) -> None:
        """(The lock of connection ``name`` held.) Close it if its file was deleted or replaced: it reopens
        on the file that is there now."""
        conn = getattr(self, name)
        if conn is not None and self._watch.replaced(name, conn):
            with contextlib.suppress(Exception):
                conn.close()
            setattr(self, name, None)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._reading() as conn:
                return conn.execute(sql, params)
        except NoDatabaseError:
            return []  # nothing written yet: nothing to read
        except StoreError as exc:
            if not self._missing(exc):
                raise
            version = self.schema_version()
            if version is None or version < self._latest():
                return []  # no circuit tables yet, or an older circuitry's: nothing of this kind to read
            try:  # every table should be there now: read again (the first read may have met a migration)
                with self._reading() as conn:
                    return conn.execute(sql, params)
            except StoreError as again:
                if not self._missing(again):
                    raise
                # one was dropped, or damaged, since
                raise StoreError(f"{self.backend.location} has circuitry schema version {version} but a circuit "
                                 f"table is missing or damaged ({again.__cause__}); `circuitry migrate` recreates "
                                 "missing tables") from again

    def _missing(self, exc: StoreError) -> bool:
        """Whether ``exc`` says a table or column is not there."""
        return isinstance(exc.__cause__, Exception) and self.backend.classify(exc.__cause__) == "old_schema"

    def _latest(self) -> int:
        """The newest schema version this circuitry knows for the backend."""
        if self.backend.kind == "postgresql":
            from circuitry.store.postgres import schema as pg_schema

            return int(pg_schema.LATEST_VERSION)
        from circuitry.store.sqlite import schema

        return int(schema.LATEST_VERSION)

    def schema_version(self) -> int | None:
        """The newest circuitry schema version the database records; ``None`` if it has no circuit tables
        (or does not exist yet).

        Raises:
            StoreError: The database cannot be reached or read.
        """
        try:
            with self._reading() as conn:
                rows = conn.execute("SELECT max(version) FROM circuitry_schema")
        except NoDatabaseError:
            return None
        except StoreError as exc:
            if self._missing(exc):
                return None
            raise
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def older_shape(self) -> bool:
        """Whether the database holds the original design's circuit tables without circuitry's schema
        record (made by the design's SQL, or by another tool): ``circuitry migrate`` upgrades them.

        Raises:
            StoreError: The database cannot be reached or read.
        """
        if self.schema_version() is not None:
            return False
        try:
            with self._reading() as conn:
                conn.execute("SELECT 1 FROM circuit_breaker_states LIMIT 1")
        except NoDatabaseError:
            return False
        except StoreError as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def ready(self) -> bool:
        """Whether the database holds circuitry's tables (``False``: it does not exist, or holds none yet).

        Raises:
            StoreError: The database cannot be reached or read (an unreachable server, a damaged file):
                not the same as holding no tables.
        """
        try:
            return self.schema_version() is not None
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception) and self.backend.classify(cause) == "unavailable":
                verb = "connect to" if self.backend.kind == "postgresql" else "open"
                raise StoreError(f"cannot {verb} {self.backend.location}: {cause}") from cause
            raise

    def check(self) -> None:
        """Raise if the database is not one this circuitry can read as written.

        Raises:
            SchemaVersionError: A newer circuitry wrote it (its schema version is newer than any this
                circuitry knows).
            StoreError: It cannot be reached or read.
        """
        version = self.schema_version()
        latest = self._latest()
        if version is not None and version > latest:
            raise SchemaVersionError(
                f"{self.backend.location} has circuitry schema version {version}, newer than the {latest} this "
                "circuitry understands: upgrade circuitry to read it")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One read-only SQL statement (``?`` placeholders); rows as dicts."""
        with self._reading() as conn:
            return conn.query_dicts(sql, params)
