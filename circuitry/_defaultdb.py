"""The process-wide registry's database: where it is (``$CIRCUITRY_DB``, else ``./circuitry.db``), and
opening it at first use; and what a store target names (the database API keeps one registry per file)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from circuitry.exceptions import ConfigurationError

if TYPE_CHECKING:
    from circuitry.store.base import Store

__all__ = ["DB_ENV", "DEFAULT_DB", "MEMORY", "default_db_path", "open_default_store", "store_identity"]


#: The environment variable naming the default registry's database (``:memory:`` or ``none``: no store).
DB_ENV = "CIRCUITRY_DB"
#: The default registry's database when the variable is unset, relative to the working directory at
#: first use (so every worker of one application, started in one directory, shares it).
DEFAULT_DB = "circuitry.db"


def default_db_path() -> str | None:
    """Where the default registry persists: ``$CIRCUITRY_DB``, else ``./circuitry.db``; ``None`` for none."""
    value = os.environ.get(DB_ENV)
    if value is None:
        return DEFAULT_DB
    if value.strip().lower() in ("", ":memory:", "memory", "none", "off"):
        return None
    return value


#: A store target that keeps breakers in this process's memory only (as ``CIRCUITRY_DB=:memory:`` does).
MEMORY = ":memory:"


def store_identity(target: str | os.PathLike[str], argument: str = "target") -> str:
    """What a store target names, the same for every spelling of it: :data:`MEMORY`, a server's URL, or the
    absolute path of a SQLite file (which need not exist yet). A ConfigurationError naming ``argument``
    when it is not a path, is empty, or is a directory."""
    text = os.fspath(target) if isinstance(target, str | os.PathLike) else None
    if not isinstance(text, str):
        raise ConfigurationError(f"{argument} must be a file path, ':memory:' or None, got {target!r}")
    from circuitry.store import sqlite_path

    path = sqlite_path(text)
    if path is None:
        return text  # a server's URL: open_store says whether it can open it
    if path == MEMORY:
        return MEMORY
    if not path.strip():
        raise ConfigurationError(f"{argument} must name a file, got {target!r}")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ConfigurationError(f"{argument} must be a database file, but {path} is a directory")
    return path


def open_default_store() -> Store | None:
    """The default registry's store, opened when its first breaker is made -- or ``None``, and an error
    logged (``circuitry.default_store_failed``, naming ``CIRCUITRY_DB`` and the reason), when the database
    cannot be used: the problem is said once, at the same point of every run, and never raised into a
    protected call (which would fail once, and be followed by calls that silently persist nothing)."""
    path = default_db_path()
    if path is None:
        return None
    from circuitry.store import open_store

    source = DB_ENV if os.environ.get(DB_ENV) is not None else f"the default (./{DEFAULT_DB}: {DB_ENV} is unset)"
    try:
        store_identity(path, DB_ENV)  # (a directory: said as CIRCUITRY_DB's)
        return open_store(path)
    except Exception as exc:
        from circuitry.instrumentation.logging import log

        log("error", "circuitry.default_store_failed", database=path, source=source,
            error_type=type(exc).__qualname__, reason=str(exc)[:500],
            note="circuits of this process are kept in memory only: nothing is stored or shared with other "
                 f"processes; set {DB_ENV} to a database file (or :memory:) and restart")
        return None
