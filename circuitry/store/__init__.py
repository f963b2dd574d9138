"""Stores: where breakers persist their state and history, and how processes share them.

:func:`open_store` makes a store from a path or URL; :class:`Store` is the contract a registry relies
on. Importing this package opens nothing and imports no database driver: backends are imported when
first used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from circuitry.exceptions import ConfigurationError
from circuitry.store.base import Store

if TYPE_CHECKING:
    from circuitry.store.engine import SharedStore, StoreHealth
    from circuitry.store.postgres.backend import PostgresStore
    from circuitry.store.readmodel import ReadModel
    from circuitry.store.sqlite.backend import SQLiteStore

__all__ = ["PostgresStore", "ReadModel", "SQLiteStore", "SharedStore", "Store", "StoreHealth", "open_reader",
           "open_store", "sqlite_path"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _is_postgres(target: str) -> bool:
    return target.startswith(_POSTGRES_SCHEMES)


def _postgres() -> Any:
    """The PostgreSQL backend module (psycopg is imported only now)."""
    from circuitry.exceptions import ConfigurationError

    try:
        from circuitry.store.postgres import backend
    except ImportError as exc:
        raise ConfigurationError("a postgresql:// URL needs psycopg 3: "
                                 f"pip install 'circuitry-breaker[postgres]' ({exc})") from None
    return backend


def _target(target: object) -> str:
    """``target`` as text, or a ConfigurationError naming it."""
    text = os.fspath(target) if isinstance(target, str | os.PathLike) else None
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"target must be a file path or a database URL, got {target!r}")
    return text


def sqlite_path(target: str) -> str | None:
    """The file a SQLite target names (a path, or ``sqlite:///path``), or ``None`` for another URL."""
    if target.startswith("sqlite:///"):
        return target[len("sqlite:///"):]
    if "://" in target:
        return None
    return target


def open_store(target: str | os.PathLike[str], **options: Any) -> SharedStore:
    """The store for ``target``: a SQLite file path (or ``sqlite:///path``), or a PostgreSQL URL
    (``postgresql://…`` or ``postgres://…``, shared by several hosts). Nothing is opened until the
    first breaker is adopted.

    Raises:
        ConfigurationError: ``target`` names a database this circuitry cannot open.

    .. versionadded:: 0.1.0
    """
    text = _target(target)
    if _is_postgres(text):
        store: SharedStore = _postgres().PostgresStore(text, **options)
        return store
    path = sqlite_path(text)
    if path is None:
        raise ConfigurationError(f"unsupported database URL {text.split('://')[0]}://… (use a SQLite path or a "
                                 "postgresql:// URL)")
    from circuitry.store.sqlite.backend import SQLiteStore

    return SQLiteStore(path, **options)


def open_reader(target: str | os.PathLike[str]) -> ReadModel:
    """A read model over the database at ``target`` (read-only; starts no thread) — what the command
    line and dashboards read."""
    from circuitry.store.readmodel import ReadModel

    text = _target(target)
    if _is_postgres(text):
        return ReadModel(_postgres().PostgresBackend(text))
    path = sqlite_path(text)
    if path is None:
        raise ConfigurationError(f"unsupported database URL {text.split('://')[0]}://… (use a SQLite path or a "
                                 "postgresql:// URL)")
    from circuitry.store.sqlite.backend import SQLiteBackend

    return ReadModel(SQLiteBackend(path))


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres().PostgresStore
    if name == "SQLiteStore":
        from circuitry.store.sqlite.backend import SQLiteStore

        return SQLiteStore
    if name in ("SharedStore", "StoreHealth"):
        from circuitry.store import engine

        return getattr(engine, name)
    if name == "ReadModel":
        from circuitry.store.readmodel import ReadModel

        return ReadModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
