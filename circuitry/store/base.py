"""The contract between a registry and a store: what a :class:`~circuitry.Registry` calls.

Kept apart from the backends so that importing it opens nothing and imports no database driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from circuitry._core import CircuitBreaker

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """What a registry needs of a store.

    The registry calls :meth:`adopt` for every breaker it creates and :meth:`forget` for every breaker
    it drops. Both run on the caller's thread, so they only hand work over: all I/O belongs to the
    store's own threads, and nothing a protected call does ever waits on the database.

    .. versionadded:: 0.1.0
    """

    def adopt(self, breaker: CircuitBreaker) -> None:
        """Persist ``breaker`` from now on; it takes the stored state, if there is one."""
        ...

    def forget(self, breaker: CircuitBreaker) -> None:
        """Stop persisting ``breaker`` (what it counted so far is still written)."""
        ...

    def flush(self, timeout: float = 5.0) -> bool:
        """Write what is pending; True if everything was written within ``timeout``."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the store's threads, release its connections."""
        ...
