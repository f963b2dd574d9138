"""PostgreSQL schema migrations: plain SQL files in ``circuitry/migrations/postgresql`` (the same numbers
as the SQLite files beside that folder), applied in order, each in a transaction of its own, and
recorded in ``circuitry_schema``.

Several hosts may start at once against an empty database: an advisory lock taken in each migration's
transaction makes them apply it one after the other (the second finds it recorded and skips it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from circuitry.exceptions import SchemaVersionError
from circuitry.store.migration_files import Migration, created_tables, discover

if TYPE_CHECKING:
    import psycopg

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "applied_versions", "migrate"]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent.parent / "migrations" / "postgresql"
#: ``pg_advisory_xact_lock`` key held while a migration runs ("circ" in ASCII).
LOCK_KEY: Final = 0x63697263


MIGRATIONS: Final = discover(MIGRATIONS_DIR)
LATEST_VERSION: Final = MIGRATIONS[-1].version if MIGRATIONS else 0
#: The tables the migrations create.
TABLES: Final = created_tables(MIGRATIONS)


def applied_versions(conn: psycopg.Connection[tuple[object, ...]]) -> set[int]:
    """Versions recorded in ``circuitry_schema`` (empty if the table does not exist)."""
    got = conn.execute("SELECT to_regclass('circuitry_schema') IS NOT NULL").fetchone()
    if not got or not got[0]:
        return set()
    return {int(str(row[0])) for row in conn.execute("SELECT version FROM circuitry_schema")}


def _missing_tables(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    return [t for t in sorted(TABLES) if not (conn.execute("SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()
                                              or (False,))[0]]


def _refuse_newer(applied: set[int]) -> None:
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise SchemaVersionError(
            f"this database has circuitry schema version {newest}, newer than the {LATEST_VERSION} this "
            "circuitry understands: upgrade circuitry to use it")


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Bring the database to the latest schema (``conn`` in autocommit mode); the versions applied.

    Raises:
        SchemaVersionError: The database records a version newer than any this circuitry knows.
    """
    applied = applied_versions(conn)
    _refuse_newer(applied)
    # Tables dropped since they were made: every migration runs again (they are idempotent).
    gone = bool(applied) and bool(_missing_tables(conn))
    if LATEST_VERSION in applied and all(m.version in applied for m in MIGRATIONS) and not gone:
        return []
    done = []
    for migration in MIGRATIONS:
        if migration.version in applied and not gone:
            continue
        with conn.transaction():
            conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
            applied = applied_versions(conn)  # another host may have applied it while we waited
            _refuse_newer(applied)
            if migration.version in applied and not _missing_tables(conn):
                continue
            conn.execute(migration.sql.encode())  # no parameters: the file's statements, as psql runs them
            if migration.version not in applied:
                done.append(migration.version)
    missing = {m.version for m in MIGRATIONS} - applied_versions(conn)
    if missing:
        raise SchemaVersionError(f"migration(s) {sorted(missing)} could not be applied to this database")
    return done
