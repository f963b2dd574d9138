"""Stores: where breakers persist their state and history, and how processes share them.

:func:`open_store` makes a store from a URL or a path; :class:`Store` is the contract a registry
relies on. Importing this package opens nothing and imports no database driver: the backends are
imported when first used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from circuitry.store.base import Store

if TYPE_CHECKING:
    from circuitry.store._sqlite import SQLiteStore, StoreHealth

__all__ = ["SQLiteStore", "Store", "StoreHealth", "open_store"]


def open_store(target: str | os.PathLike[str], **options: Any) -> Store:
    """The store for ``target``: a SQLite file path (or ``sqlite:///path``).

    Nothing is opened until the first breaker is adopted.

    .. versionadded:: 0.1.0
    """
    from circuitry.store._sqlite import SQLiteStore

    path = os.fspath(target)
    if path.startswith("sqlite:///"):
        path = path[len("sqlite:///"):]
    return SQLiteStore(path, **options)


def __getattr__(name: str) -> Any:
    if name in ("SQLiteStore", "StoreHealth"):
        from circuitry.store import _sqlite

        return getattr(_sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
