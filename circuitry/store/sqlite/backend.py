"""The SQLite backend: what differs about SQLite, and only that (the sharing engine is written once,
in :mod:`circuitry.store.engine`).

* Every connection: WAL, ``synchronous=NORMAL``, a ``busy_timeout``; read-modify-write only inside
  ``BEGIN IMMEDIATE``.
* Another process's commit is noticed by ``PRAGMA data_version`` (a read of a counter in shared
  memory); then only the state rows whose ``change_seq`` is newer are read.
* The file being deleted or replaced is noticed by its inode; the engine reopens and rewrites its
  circuits' state.
* A file circuitry created is marked (``PRAGMA application_id``). A damaged or foreign file is never
  moved unless circuitry created it *and* it holds nothing but circuitry's tables; otherwise circuitry
  stops writing to it, says so, and goes on from memory. A damaged circuitry table in an application's
  database is not a reason to touch the application's data.
* After ``fork()`` the child drops inherited connections without closing them: closing could release
  locks or checkpoint the WAL under the parent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from circuitry._checks import check_clock
from circuitry._clock import SYSTEM_CLOCK, Clock
from circuitry.exceptions import ConfigurationError, SchemaVersionError, StoreError
from circuitry.instrumentation.logging import log as _log
from circuitry.store.backend import Connection, Fault, NoDatabaseError, Role
from circuitry.store.engine import SharedStore, check_options
from circuitry.store.sharing import STATE_COLUMNS
from circuitry.store.sqlite.schema import TABLES, migrate, table_names

__all__ = ["APPLICATION_ID", "CannotOpenError", "SQLiteBackend", "SQLiteStore", "cannot_open"]

#: ``PRAGMA application_id`` of files circuitry creates ("circ").
APPLICATION_ID: Final = 0x63697263
# Kept referenced forever in a forked child: their finalizers must never run there.
_ABANDONED: list[Any] = []


class _Conn:
    """A :class:`~circuitry.store.backend.Connection` over ``sqlite3`` (autocommit; explicit transactions)."""

    __slots__ = ("data_version", "inode", "now", "raw")

    def __init__(self, raw: sqlite3.Connection, now: Callable[[], float], inode: tuple[int, int] | None) -> None:
        self.raw = raw
        self.now = now
        self.inode = inode
        self.data_version = -1

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.raw.execute(sql, params).fetchall()

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.raw.executemany(sql, params)

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.raw.execute(sql, params)
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.raw.execute("ROLLBACK")
            raise
        self.raw.execute("COMMIT")

    def close(self) -> None:
        self.raw.close()


class CannotOpenError(sqlite3.OperationalError):
    """SQLite's "unable to open database file" -- which names neither the file nor the reason -- with
    both: the path, and what the operating system says (``errno`` is its code, when it gave one)."""

    def __init__(self, path: Path, reason: str, code: int | None = None) -> None:
        super().__init__(f"unable to open database file {path}: {reason}")
        self.errno = code


def cannot_open(path: Path, exc: sqlite3.Error, *, write: bool = True) -> sqlite3.Error:
    """``exc`` (SQLite failing to open ``path``) as a :class:`CannotOpenError` saying why, as the operating
    system tells it; ``exc`` itself when it is another error, or when no reason is found."""
    if "unable to open" not in str(exc).lower():
        return exc
    folder = path.parent
    if path.is_dir():
        return CannotOpenError(path, "it is a directory", errno.EISDIR)
    if not folder.exists():
        return CannotOpenError(path, f"no such directory {folder}", errno.ENOENT)
    if not folder.is_dir():
        return CannotOpenError(path, f"{folder} is not a directory", errno.ENOTDIR)
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR if write else os.O_RDONLY))
        elif write:  # (made and removed at once: SQLite would have made it)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
            os.unlink(path)
    except FileExistsError:  # another process made it meanwhile: no reason found
        return exc
    except OSError as err:
        doing = "open it" if path.exists() else f"create it in {folder}"
        return CannotOpenError(path, f"{err.strerror or err} (cannot {doing})", err.errno)
    if write and not os.access(folder, os.W_OK | os.X_OK):
        return CannotOpenError(path, f"permission denied: cannot create its -wal and -shm files in {folder}",
                               errno.EACCES)
    return exc


def _deny_outside_reads(action: int, arg1: str | None, *_: Any) -> int:
    # query() is read-only: no ATTACH (it creates files), no pragma that writes, no writing statement.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg1 not in ("table_info", "table_xinfo", "index_list", "index_info",
                                                        "data_version", "schema_version", "user_version"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class SQLiteBackend:
    """A SQLite file as a circuitry database (see the module docstring)."""

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock | None = None) -> None:
        self.path = Path(os.fspath(path)).absolute()  # pinned: a later chdir must not move the database
        self.location = str(self.path)
        self._time = (SYSTEM_CLOCK if clock is None else clock).time

    def _frozen(self) -> bool:
        """Whether the database cannot change: its folder takes no new file, and it has no write-ahead
        log with content (a -wal file no -shm file can index would be read past)."""
        wal = self.path.with_name(self.path.name + "-wal")
        return not os.access(self.path.parent, os.W_OK) and (not wal.exists() or wal.stat().st_size == 0)

    def connect(self, role: Role, *, timeout: float) -> _Conn:
        if role == "reader":
            if not self.path.exists():
                raise NoDatabaseError(f"no database at {self.path}")
            if self.path.is_dir():
                raise StoreError(f"{self.path} is a directory, not a database file")
            try:
                raw = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=timeout, isolation_level=None,
                                      check_same_thread=False)
            except sqlite3.Error as exc:
                raise cannot_open(self.path, exc, write=False) from exc
            try:
                raw.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError as exc:
                raw.close()
                if not self._frozen():
                    raise cannot_open(self.path, exc, write=False) from exc
                # A folder this process cannot write to (a read-only mount or deploy directory): reading
                # a WAL database needs its -shm file made there, so a plain read fails. No process can
                # write to such a file either (writing needs the -wal and -shm files too), so it is read
                # as it stands -- an open circuit it records stays open in a new process.
                raw = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, timeout=timeout,
                                      isolation_level=None, check_same_thread=False)
            raw.execute("PRAGMA query_only = ON")
            raw.set_authorizer(_deny_outside_reads)
            try:  # (the file it reads, so that a reader notices when it is deleted or replaced: see stale())
                st = os.stat(self.path)
            except OSError:
                return _Conn(raw, self._time, None)
            return _Conn(raw, self._time, (st.st_dev, st.st_ino))
        self.path.parent.mkdir(parents=True, exist_ok=True)  # (documented: docs/reference/store.md)
        new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            raw = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise cannot_open(self.path, exc) from exc
        try:
            raw.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            try:
                raw.execute("PRAGMA journal_mode = WAL")  # (makes the -wal file: the folder must take it)
            except sqlite3.OperationalError as exc:
                raise cannot_open(self.path, exc) from exc
            raw.execute("PRAGMA synchronous = NORMAL")
            raw.execute("PRAGMA journal_size_limit = 67108864")
            if new:
                raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            migrate(raw, log=lambda event, added: _log("warning", event, location=self.location, added=added,
                                                       note=_SCHEMA_NOTES.get(event, "")))
        except BaseException:
            raw.close()
            raise
        st = os.stat(self.path)
        return _Conn(raw, self._time, (st.st_dev, st.st_ino))

    def stale(self, conn: Connection) -> Fault | None:
        inode = getattr(conn, "inode", None)
        if inode is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        return None if (st.st_dev, st.st_ino) == inode else "deleted"

    def changed_states(self, conn: Connection, since: int) -> list[tuple[Any, ...]] | None:
        raw: sqlite3.Connection = conn.raw  # type: ignore[attr-defined]
        version = raw.execute("PRAGMA data_version").fetchone()[0]
        if version == conn.data_version:  # type: ignore[attr-defined]
            return None
        conn.data_version = version  # type: ignore[attr-defined]
        return conn.execute(f"SELECT {STATE_COLUMNS} FROM circuit_breaker_states WHERE change_seq > ? "
                            "ORDER BY change_seq", (since,))

    def classify(self, exc: BaseException) -> Fault | None:
        if isinstance(exc, SchemaVersionError):
            return "newer_schema"
        if isinstance(exc, CannotOpenError):  # (its message holds a path: words in it say nothing)
            return "read_only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "unavailable"
        if isinstance(exc, OSError):  # the file system, before SQLite got a say
            if exc.errno == errno.ENOSPC:
                return "disk_full"
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return "read_only"
            return "unavailable"
        if not isinstance(exc, sqlite3.Error):
            return None
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return "locked"
        if "full" in text:
            return "disk_full"
        if "readonly" in text or "read-only" in text or "read only" in text:
            return "read_only"
        if "not a database" in text:
            return "not_a_database"
        if "malformed" in text or "corrupt" in text:
            return "corrupt"
        if "unable to open" in text:
            return "unavailable"
        if "no such column" in text or "no such table" in text or "has no column named" in text:
            return "old_schema"
        return "io_error"

    def remedy(self, fault: Fault, exc: BaseException) -> dict[str, Any]:
        if fault == "newer_schema":
            return {"disable": str(exc)}
        if fault in ("corrupt", "not_a_database"):
            return self._damaged(fault)
        if fault == "disk_full":
            return self._free_wal()
        if fault == "read_only":
            return {"note": "protected calls continue from memory; the file is reopened on every retry, so "
                            "writes resume as soon as it is writable"}
        return {}

    def _damaged(self, fault: Fault) -> dict[str, Any]:
        """Set the file aside only if circuitry created it and it holds nothing but circuitry's tables."""
        ours, why = self.only_ours()
        if not ours:
            what = "is not a SQLite database" if fault == "not_a_database" else "has damaged circuitry tables"
            return {"disable": f"{self.path} {what} ({why}); nothing was moved or changed — restore it, or "
                               "point circuitry at another file",
                    "note": "protected calls continue from memory"}
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(str(aside) + suffix)
        return {"set_aside": str(aside),
                "note": f"the file was created by circuitry and held only circuit tables: it was moved to {aside} "
                        "and a new one is created; protected calls continue from memory meanwhile"}

    def only_ours(self) -> tuple[bool, str]:
        """Whether the file is circuitry's own -- created by it (its ``application_id``) and holding
        circuit tables only -- and why not."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(100)
        except OSError as err:
            return False, f"cannot read it: {err}"
        if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
            return False, "no SQLite header"
        if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
            return False, "not created by circuitry"
        try:
            raw = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=0.5)
            try:
                names = table_names(raw)
            finally:
                raw.close()
        except sqlite3.Error as err:
            return False, f"its table list is unreadable: {err}"
        foreign = sorted(n for n in names - TABLES if not n.startswith("sqlite_"))
        if foreign:
            return False, f"it also holds other tables: {', '.join(foreign[:5])}"
        return True, "created by circuitry, circuit tables only"

    def _free_wal(self) -> dict[str, Any]:
        try:
            raw = sqlite3.connect(self.path, timeout=0.2, isolation_level=None)
            try:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
        except sqlite3.Error:
            return {}
        return {"note": "protected calls continue from memory; the write-ahead log was truncated to free space "
                        "and writes are retried in small batches"}

    def abandon(self, conns: Iterator[Connection]) -> None:
        _ABANDONED.extend(conns)


_SCHEMA_NOTES = {"circuitry.schema_upgraded": "circuit tables of an older shape were upgraded",
                 "circuitry.schema_repaired": "circuit tables that had been dropped were made again, empty"}


class SQLiteStore(SharedStore):
    """Persist and share the breakers of a registry in one SQLite file, shared by every process of a
    host. Nothing is opened until the first breaker is adopted.

    Args:
        path: The database file, or ``sqlite:///path`` (created if missing; the circuit tables are added
            to an existing application database, whose own tables circuitry never touches — though it
            puts the file in WAL journal mode: see docs/reference/store.md).
        **options: The engine's settings (:class:`~circuitry.store.engine.SharedStore`): ``retention``,
            ``poll_interval``, ``busy_timeout``, ``clock``, ``analysis_interval``, ...

    .. versionadded:: 0.1.0
    """

    def __init__(self, path: str | os.PathLike[str], **options: Any) -> None:
        text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"path must be a file path, got {path!r}")
        from circuitry.store import sqlite_path

        path_text = sqlite_path(text)  # as open_store() and the command line's --db take it
        if path_text is None:
            raise ConfigurationError(f"path must be a file path or a sqlite:/// URL, got {text.split('://')[0]}://… "
                                     "(open_store() opens a postgresql:// URL)")
        text = path_text
        if text == ":memory:":
            raise ConfigurationError("path must be a file: an in-memory database cannot be shared (a registry "
                                     "without a store keeps breakers in memory)")
        if not text.strip() or os.path.isdir(text):  # (sqlite:/// with nothing after it, or a directory)
            raise ConfigurationError(f"path must be a database file, got {path!r}"
                                     + (" (a directory)" if text.strip() else ""))
        check_options(type(self).__name__, options)
        self.backend: SQLiteBackend = SQLiteBackend(text, clock=check_clock(options.get("clock")))
        super().__init__(self.backend, **options)

    @property
    def path(self) -> Path:
        return self.backend.path
