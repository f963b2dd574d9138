"""Stores: where breakers persist their state and history, and how processes share them.

:class:`SQLiteStore` is the default: one file, shared by every process of a host. :class:`Store` is
the contract a registry relies on — a PostgreSQL store implements the same methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from circuitry.store._sqlite import SQLiteStore, StoreHealth

if TYPE_CHECKING:
    from circuitry._core import CircuitBreaker
    from circuitry.events import Event, EventKind

__all__ = ["SQLiteStore", "Store", "StoreHealth"]


@runtime_checkable
class Store(Protocol):
    """What a :class:`~circuitry.Registry` needs of a store.

    The registry calls :meth:`adopt` for every breaker it creates and delivers events through
    ``__call__`` (a store is a hook: ``kinds`` says which events it wants). Both run on the caller's
    thread, so they must only hand work over — all I/O belongs to the store's own threads. Reading is
    offered twice: :meth:`query` for threads, :meth:`aquery` for event loops.

    .. versionadded:: 0.1.0
    """

    kinds: frozenset[EventKind]

    def adopt(self, breaker: CircuitBreaker) -> None:
        """Persist ``breaker`` from now on; it takes the stored state, if there is one."""
        ...

    def __call__(self, event: Event) -> None:
        """Take a failure or a transition to write (never blocking, never raising)."""
        ...

    def flush(self, timeout: float = 5.0) -> bool:
        """Write what is pending; True if everything was written within ``timeout``."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the store's threads, release its connections."""
        ...

    def health(self) -> StoreHealth:
        """Whether writes succeed, what failed, how much is queued or was dropped."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A read-only query, rows as dicts."""
        ...

    async def aquery(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """:meth:`query` for asyncio code."""
        ...

    def add_alert_callback(self, callback: Callable[[dict[str, Any]], Any], service: str | None = None,
                           timeout: float = 2.0) -> None:
        """Deliver new alerts to ``callback`` without ever blocking a protected call."""
        ...

    def acknowledge(self, alert_id: int | None = None, *, service: str | None = None) -> int:
        """Acknowledge an alert by id, or every open alert of a service."""
        ...
