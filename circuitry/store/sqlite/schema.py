"""SQLite schema migrations: plain SQL files in ``circuitry/migrations`` (``migrations/`` at the repository
root links there), applied in order and recorded in ``circuitry_schema``.

One step is not plain SQL: tables created by an earlier, shorter schema (the circuit tables as first
specified, without circuitry's columns) get the missing columns added first, because SQLite cannot
add a column only where it is missing. The SQL file records its version only once the columns are
there, so ``sqlite3 db < migrations/008_….sql`` on such a database leaves the upgrade to the library.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from circuitry.exceptions import SchemaVersionError
from circuitry.store.migration_files import Migration, created_tables, discover

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "applied_versions", "dropped_tables", "migrate", "table_names",
           "upgrade_columns"]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


MIGRATIONS = discover(MIGRATIONS_DIR)
LATEST_VERSION = MIGRATIONS[-1].version if MIGRATIONS else 0
#: The tables the migrations create.
TABLES = created_tables(MIGRATIONS)
#: ... and which migration creates each.
_TABLES_OF = {m.version: created_tables((m,)) for m in MIGRATIONS}

# Columns circuitry added to tables that may exist in an older shape: (type for ADD COLUMN, backfill).
# SQLite's ADD COLUMN cannot add a NOT NULL column without a default, nor a primary key: the shapes
# below are what ADD COLUMN accepts, and the backfill gives old rows a meaningful value.
_EPOCH_OF_CREATED_AT = "CAST(strftime('%s', created_at) AS REAL)"
_ADDED_COLUMNS: dict[str, dict[str, tuple[str, str | None]]] = {
    "circuit_breaker_states": {
        "version": ("INTEGER NOT NULL DEFAULT 1", None),
        "opened_at": ("REAL", None),
        "open_until": ("REAL", None),
        "open_for": ("REAL", None),
        "reopen_count": ("INTEGER NOT NULL DEFAULT 0", None),
        "updated_by": ("TEXT", None),
        "updated_at": ("REAL", None),
        "change_seq": ("INTEGER NOT NULL DEFAULT 0", None),
    },
    "circuit_breaker_events": {
        "created_at": ("TIMESTAMP", "CURRENT_TIMESTAMP"),
        "ts": ("REAL", f"coalesce({_EPOCH_OF_CREATED_AT}, 0)"),
        "process": ("TEXT", None),
        "occurrences": ("INTEGER NOT NULL DEFAULT 1", None),
    },
    "circuit_breaker_failure_patterns": {
        "evidence": ("TEXT", None),
        "created_at": ("TIMESTAMP", "CURRENT_TIMESTAMP"),
        "ts": ("REAL", f"coalesce({_EPOCH_OF_CREATED_AT}, 0)"),
        "process": ("TEXT", None),
    },
    "circuit_breaker_alerts": {
        "acknowledged_at": ("TIMESTAMP", None),
        "occurrences": ("INTEGER NOT NULL DEFAULT 1", None),
        "last_seen_at": ("TIMESTAMP", None),
        "alert_key": ("TEXT", "service_name || ':' || alert_type"),
        "ts": ("REAL", f"coalesce({_EPOCH_OF_CREATED_AT}, 0)"),
    },
    "circuit_breaker_probe_leases": {
        "kind": ("TEXT NOT NULL DEFAULT 'held'", None),
        "granted_at": ("REAL", None),
    },
}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def upgrade_columns(conn: sqlite3.Connection, log: Callable[[str, list[str]], None] | None = None) -> list[str]:
    """Add circuitry's columns to circuit tables of an older shape; returns ``table.column`` names added.

    Tables that do not exist are left to the migration files. Runs in one transaction.
    """
    added: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in _ADDED_COLUMNS.items():
            have = _columns(conn, table)
            if not have:
                continue
            for column, (decl, backfill) in columns.items():
                if column in have:
                    continue
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                if backfill is not None:
                    conn.execute(f"UPDATE {table} SET {column} = {backfill}")
                added.append(f"{table}.{column}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if added and log is not None:
        log("circuitry.schema_upgraded", added)
    return added


def table_names(conn: sqlite3.Connection) -> set[str]:
    """The tables in the database (its own and circuitry's)."""
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def dropped_tables(conn: sqlite3.Connection, applied: set[int]) -> list[str]:
    """The tables the ``applied`` migrations made that are not there any more (dropped since). A table
    of a migration not applied yet is not one: it was never made (``sqlite3 db < migrations/008_….sql``
    applies only the first)."""
    made = frozenset().union(*(_TABLES_OF.get(v, frozenset()) for v in applied))
    return sorted(made - table_names(conn))


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'circuitry_schema'").fetchone()
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM circuitry_schema")}


def migrate(conn: sqlite3.Connection, log: Callable[[str, list[str]], None] | None = None) -> list[int]:
    """Bring the database to the latest schema; return the versions applied.

    Raises:
        SchemaVersionError: The database records a version newer than any this circuitry knows.
    """
    applied = applied_versions(conn)
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise SchemaVersionError(
            f"this database has circuitry schema version {newest}, newer than the {LATEST_VERSION} this "
            "circuitry understands: upgrade circuitry to use it")
    # Tables dropped since they were made (a tool that removes tables it does not know): every
    # migration runs again -- they are idempotent -- and makes them anew, empty.
    gone = dropped_tables(conn, applied)
    if newest == LATEST_VERSION and not gone:
        # A column dropped since (``ALTER TABLE ... DROP COLUMN`` by hand, under a running store): every
        # write to its table failed until a restart. Checked on every connection -- a reconnection after
        # a fault included -- at a PRAGMA per table.
        if all(set(columns) <= _columns(conn, table) or not _columns(conn, table)
               for table, columns in _ADDED_COLUMNS.items()):
            return []
        upgrade_columns(conn, log)
        return []
    upgrade_columns(conn, log)
    done = []
    for migration in MIGRATIONS:
        if migration.version not in applied or gone:
            conn.executescript(migration.sql)
            if migration.version not in applied:
                done.append(migration.version)
    if gone and log is not None:
        log("circuitry.schema_repaired", gone)
    missing = {m.version for m in MIGRATIONS} - applied_versions(conn)
    if missing:  # a file ran but did not record itself: its guard found the tables in a shape it cannot use
        raise SchemaVersionError(f"migration(s) {sorted(missing)} could not be applied to this database")
    return done
