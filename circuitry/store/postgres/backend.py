"""The PostgreSQL backend: several hosts share their circuits through one server. Only what differs
about PostgreSQL is here (the sharing engine is written once, in :mod:`circuitry.store.engine`).

* **Connections.** psycopg 3, autocommit with explicit transactions, one long-lived connection per
  thread that does I/O (the writer, the listener, the analyst, readers) — no pool: each thread keeps
  its one connection, and a pool would only add a dependency. Every session runs in UTC with a
  ``lock_timeout`` (the engine's ``timeout``: a lock held longer is contention, reported as such), a
  ``statement_timeout`` (a server that stops answering is a fault, never a hung writer), TCP
  keepalives, and an ``application_name`` saying which process and role it is.
* **Dialect.** The engine's ``?`` placeholders become ``%s``; ``numeric`` results (``sum()`` of
  integers) come back as ``int``/``float``, ``timestamptz`` as the same UTC text SQLite stores, so the
  engine and the read model see the same values on both backends.
* **Propagation.** A trigger announces every change of a circuit's row on channel
  ``circuitry_states`` (see ``migrations/postgresql/008``); a listener thread with a connection of its
  own wakes the writer, which reads just those rows. After the listener reconnects, and every few
  seconds anyway, the writer reads every row (``change_seq`` is no ordering guarantee across
  PostgreSQL transactions, and a notification sent while nobody listened is lost); while the listener
  is down, the writer polls.
* **Leases** are decided by the server's clock (``clock_timestamp()``), so no host's clock matters.
* **Credentials** come only from the URL or libpq's environment (``PGPASSWORD``, ``~/.pgpass``) and
  are never shown: :attr:`PostgresBackend.location` has no password, and every error raised from here
  has it masked.
* **fork()**: connections are closed before it (the engine's hooks); the listener's, open in the
  child, is cut off there without a word to the server (its socket is pointed at ``/dev/null``), so
  the parent's session is never terminated by a child.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from circuitry.exceptions import ConfigurationError, SchemaVersionError, StoreError
from circuitry.store.backend import Connection, Fault, Role
from circuitry.store.engine import SharedStore
from circuitry.store.postgres.connection import NumericLoader, Secrets, TimestampLoader, WouldWaitError, _Conn, mask_url
from circuitry.store.postgres.listener import Listener
from circuitry.store.postgres.schema import migrate
from circuitry.store.sharing import STATE_COLUMNS

__all__ = ["PostgresBackend", "PostgresStore", "mask_url"]

#: Seconds between full reads of every state row while notifications arrive (a safety net).
FULL_READ_EVERY: Final = 5.0
#: Seconds between full reads while the listener is down (the cheap ``change_seq`` poll runs every cycle).
FALLBACK_READ_EVERY: Final = 0.5
_ABANDONED: list[Any] = []  # connections cut off in a forked child: never finalized there


class PostgresBackend:
    """A PostgreSQL database as a circuitry database (see the module docstring).

    Args:
        url: ``postgresql://user:password@host:port/dbname?...`` (libpq's parameters and environment
            apply; the password may come from ``PGPASSWORD`` or ``~/.pgpass`` instead).
        statement_timeout: Seconds any statement may run before the server cancels it.
        connect_timeout: Seconds a connection attempt may take (unless the URL says).
    """

    kind = "postgresql"

    def __init__(self, url: str, *, statement_timeout: float = 5.0, connect_timeout: float = 3.0) -> None:
        self._url = url
        self._secrets = Secrets(url)
        self.location = mask_url(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"invalid PostgreSQL URL {self.location}: {self.mask(str(exc))}") from None
        self._user_options = str(params.get("options") or "")
        self._has_connect_timeout = "connect_timeout" in params
        self._has_app_name = "application_name" in params
        self.statement_timeout = statement_timeout
        self.connect_timeout = connect_timeout
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.listener = Listener(self)
        self._full_at = 0.0

    def mask(self, text: str) -> str:
        """``text`` with the URL's password masked."""
        return self._secrets.mask(text)

    def _error(self, exc: BaseException) -> BaseException:
        """``exc``, or a copy of it with the password masked if its message shows it."""
        text = str(exc)
        masked = self.mask(text)
        if masked == text:
            return exc
        copy = type(exc)(masked) if isinstance(exc, psycopg.Error) else StoreError(masked)
        return copy

    def connect_raw(self, role: str, *, lock_timeout: float, read_only: bool = False,
                    statement_timeout: float | None = None) -> psycopg.Connection[tuple[Any, ...]]:
        """A psycopg connection in autocommit mode, its session set up for ``role``."""
        st = self.statement_timeout if statement_timeout is None else statement_timeout
        opts = [f"-c TimeZone=UTC -c lock_timeout={max(1, int(lock_timeout * 1000))}",
                f"-c statement_timeout={max(1, int(st * 1000))}",
                "-c idle_in_transaction_session_timeout=60000"]
        if read_only:
            opts.append("-c default_transaction_read_only=on")
        kwargs: dict[str, Any] = {
            "autocommit": True, "options": " ".join([self._user_options, *opts]).strip(),
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
        }
        if not self._has_connect_timeout:
            kwargs["connect_timeout"] = max(1, round(self.connect_timeout))
        if not self._has_app_name:
            kwargs["application_name"] = f"circuitry:{role}:{self.process}"[:63]
        try:
            raw: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(self._url, **kwargs)
        except Exception as exc:
            raise self._error(exc) from None
        raw.adapters.register_loader("numeric", NumericLoader)
        raw.adapters.register_loader("timestamptz", TimestampLoader)
        raw.adapters.register_loader("timestamp", TimestampLoader)
        return raw

    def connect(self, role: Role, *, timeout: float) -> _Conn:
        if role == "reader" and timeout <= 0.0:
            # A reader that may not wait (a breaker adopting on a caller's thread): a network round trip
            # would be a wait. The writer's first read gives the breaker its state a cycle later.
            raise WouldWaitError(f"{self.location}: reading needs a round trip to the server")
        reader = role == "reader"
        raw = self.connect_raw(role, lock_timeout=max(timeout, 0.001), read_only=reader)
        try:
            if not reader:
                migrate(raw)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                raw.close()
            if isinstance(exc, Exception):
                raise self._error(exc) from None
            raise
        return _Conn(raw, self._secrets, read_only=reader)

    def stale(self, conn: Connection) -> Fault | None:
        # A broken connection fails its next statement, and the writer reopens it then (a server that
        # restarted is the same database: no rewrite of every circuit, as for a replaced SQLite file).
        return None

    def changed_states(self, conn: Connection, since: int) -> list[tuple[Any, ...]] | None:
        assert isinstance(conn, _Conn)
        listener = self.listener
        listener.ensure()
        names, catch_up, listening = listener.take()
        now = time.monotonic()
        if catch_up or since == 0 or not conn.caught_up or now >= self._full_at:
            # Every row: on a new connection, after the listener (re)connected (notifications sent while
            # nobody listened are lost), and every few seconds anyway. Rows not newer than what the engine
            # holds are ignored by it.
            rows = conn.execute(f"SELECT {STATE_COLUMNS} FROM circuit_breaker_states")
            conn.caught_up = True
            self._full_at = now + (FULL_READ_EVERY if listening else FALLBACK_READ_EVERY)
            return rows
        if not listening:  # polling until the listener is back: what change_seq says is new
            return conn.execute(f"SELECT {STATE_COLUMNS} FROM circuit_breaker_states WHERE change_seq > ? "
                                "ORDER BY change_seq", (since,)) or None
        if not names:
            return None
        return conn.execute(f"SELECT {STATE_COLUMNS} FROM circuit_breaker_states WHERE service_name = ANY(?)",
                            (sorted(names),))

    def classify(self, exc: BaseException) -> Fault | None:
        if isinstance(exc, SchemaVersionError):
            return "newer_schema"
        if isinstance(exc, WouldWaitError):
            return "unavailable"
        if isinstance(exc, OSError):
            return "unavailable"
        if not isinstance(exc, psycopg.Error):
            return None
        state = exc.sqlstate or ""
        if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.DeadlockDetected | pg_errors.SerializationFailure):
            return "locked"
        if state == "53100" or isinstance(exc, pg_errors.DiskFull):
            return "disk_full"
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction) or state == "25006":
            return "read_only"
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedColumn | pg_errors.UndefinedFunction):
            return "old_schema"
        if state in ("XX001", "XX002"):
            return "corrupt"
        if (isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or state.startswith(("08", "57", "53"))
                or not state):
            # connection refused or dropped, server shutting down or starting, statement timeout (57014),
            # too many connections (53300), authentication (no state before the session exists)
            return "unavailable"
        return "io_error"

    def remedy(self, fault: Fault, exc: BaseException) -> dict[str, Any]:
        if fault == "newer_schema":
            return {"disable": str(exc)}
        if fault == "read_only":
            return {"note": "the server takes no writes (a read-only replica after a failover?): protected calls "
                            "continue from memory; every retry reconnects, so writes resume as soon as a primary "
                            "answers at this address"}
        if fault == "disk_full":
            return {"note": "the server is out of disk space: protected calls continue from memory; writes are "
                            "retried and the backlog is kept"}
        if fault == "unavailable":
            return {"note": "the server is unreachable or did not answer in time: protected calls continue from "
                            "memory; it is reconnected with backoff and the backlog written when it answers"}
        return {}

    def abandon(self, conns: Iterator[Connection]) -> None:
        for conn in conns:
            raw = getattr(conn, "pg", conn)
            cut_off(raw)

    # -- process life ---------------------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.listener.after_fork_in_child()
        self._full_at = 0.0

    def close(self) -> None:
        self.listener.stop()


def cut_off(raw: Any) -> None:
    """(In a forked child.) Make an inherited psycopg connection unusable without telling the server:
    its socket now points at ``/dev/null``, so whatever libpq says when it is finalized (a Terminate
    message) goes nowhere — the parent's session lives on. It is kept referenced forever."""
    with contextlib.suppress(Exception):
        fd = raw.pgconn.socket
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    _ABANDONED.append(raw)


class PostgresStore(SharedStore):
    """Persist and share the breakers of a registry in a PostgreSQL database, across every process of
    every host that uses it. Nothing is opened until the first breaker is adopted.

    Args:
        url: ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``). The password may be
            left to ``PGPASSWORD`` or ``~/.pgpass``; it is never logged.
        statement_timeout: Seconds a statement may run before the server cancels it (a fault, retried).
        connect_timeout: Seconds a connection attempt may take.
        **options: The engine's settings (:class:`~circuitry.store.engine.SharedStore`): ``retention``,
            ``poll_interval``, ``busy_timeout``, ``clock``, ``analysis_interval``, ...

    .. versionadded:: 0.1.0
    """

    def __init__(self, url: str, *, statement_timeout: float = 5.0, connect_timeout: float = 3.0,
                 **options: Any) -> None:
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(f"url must be a postgresql:// URL, got {mask_url(str(url))!r}")
        from circuitry._checks import check_number
        from circuitry.store.engine import check_options

        check_options(type(self).__name__, options)
        statement_timeout = check_number("statement_timeout", statement_timeout, lo=0.01, hi=3600.0, lo_open=False)
        connect_timeout = check_number("connect_timeout", connect_timeout, lo=0.1, hi=600.0, lo_open=False)
        self.backend: PostgresBackend = PostgresBackend(url, statement_timeout=statement_timeout,
                                                        connect_timeout=connect_timeout)
        super().__init__(self.backend, **options)

    def _init_runtime(self) -> None:
        super()._init_runtime()
        # A notification wakes this store's writer (its writer after a fork too: the attribute is read
        # each time).
        self.backend.listener.wake = self._wake_writer

    def _wake_writer(self) -> None:
        self.writer.wake.set()

    def _after_fork_in_child(self) -> None:
        self.backend.after_fork_in_child()
        super()._after_fork_in_child()

    def _close(self, timeout: float, when: str) -> None:
        super()._close(timeout, when)
        self.backend.close()

    @property
    def url(self) -> str:
        """The database's URL without its password."""
        return self.backend.location

