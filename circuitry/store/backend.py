"""The contract a database backend meets: everything the sharing engine needs from a database, and
nothing else (httpx's transports are the model: a small base, thin drivers).

The engine (:mod:`circuitry.store.engine`) writes its SQL once, in the subset SQLite and PostgreSQL
share: ``?`` placeholders (a backend may translate them), ``INSERT … ON CONFLICT … DO UPDATE`` with
target columns qualified by table name, ``RETURNING``, ``TRUE``/``FALSE``, and epoch seconds as
``REAL``/``double precision`` numbers computed by the caller. What differs between databases lives in a
backend: how to connect and set a session up, how a write transaction begins, how another process's
change is noticed (``PRAGMA data_version`` or ``LISTEN/NOTIFY``), migrations, the database's clock for
leases, how an error is classified into a fault, and what may be done about a fault (SQLite may set
aside a file circuitry created; it never moves anyone else's).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from circuitry.exceptions import StoreError

__all__ = ["FAULTS", "Backend", "Connection", "Fault", "NoDatabaseError", "Role"]


class NoDatabaseError(StoreError):
    """A reader was asked for a database that does not exist (yet)."""


Role = Literal["writer", "analyst", "reader"]

#: What can go wrong with a database, as the engine tells it (``health().fault``, logs).
Fault = Literal["locked", "disk_full", "read_only", "corrupt", "not_a_database", "unavailable", "deleted",
                "io_error", "newer_schema", "old_schema", "disabled"]
FAULTS: tuple[str, ...] = ("locked", "disk_full", "read_only", "corrupt", "not_a_database", "unavailable",
                           "deleted", "io_error", "newer_schema", "old_schema", "disabled")


class Connection(Protocol):
    """One connection, used by one thread at a time."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (an empty list for statements without rows)."""
        ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each parameter tuple."""
        ...

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One statement of a user's (read-only connections only); rows as dicts by column name."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction: committed on exit, rolled back on an exception. SQLite takes the write
        lock at once (``BEGIN IMMEDIATE``), so a read-modify-write inside cannot interleave."""
        ...

    def now(self) -> float:
        """The database's clock, epoch seconds: what lease expiry is decided by."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """A database the sharing engine can run on."""

    #: ``"sqlite"`` or ``"postgresql"``.
    kind: str
    #: Where the database is, for logs and errors — never with a password.
    location: str

    def connect(self, role: Role, *, timeout: float) -> Connection:
        """Open a connection (the ``writer``'s migrates the schema first). ``timeout``: seconds a
        statement may wait for a lock before it fails."""
        ...

    def classify(self, exc: BaseException) -> Fault | None:
        """The fault ``exc`` is, or ``None`` when it is not a database or file-system error."""
        ...

    def changed_states(self, conn: Connection, since: int) -> list[tuple[Any, ...]] | None:
        """State rows changed by anyone since change sequence ``since`` (``None``: nothing changed,
        answered as cheaply as the database allows). Rows are in the engine's ``STATE_COLUMNS``."""
        ...

    def stale(self, conn: Connection) -> Fault | None:
        """Whether ``conn`` must be reopened before use (the file was deleted or replaced)."""
        ...

    def remedy(self, fault: Fault, exc: BaseException) -> dict[str, Any]:
        """What the backend does about a fault (and whether writes can go on): ``{"disable": reason}``
        stops writing for good; other keys are reported in the log line as what was done."""
        ...

    def abandon(self, conns: Iterator[Connection]) -> None:
        """After ``fork()``, in the child: drop inherited connections without using or closing them."""
        ...
