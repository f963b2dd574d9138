"""The SQLite backend: one file, shared by the processes of a host."""

from circuitry.store.sqlite.backend import SQLiteBackend, SQLiteStore

__all__ = ["SQLiteBackend", "SQLiteStore"]
