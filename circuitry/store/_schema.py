"""Schema migrations: plain SQL files in ``circuitry/migrations`` (``migrations/`` at the repository
root links there), applied in order and recorded in ``circuitry_schema``."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from circuitry.exceptions import SchemaVersionError

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "applied_versions", "migrate"]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def _discover() -> tuple[Migration, ...]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = re.fullmatch(r"(\d+)_(\w+)\.sql", path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path))
    return tuple(sorted(found, key=lambda m: m.version))


MIGRATIONS = _discover()
LATEST_VERSION = MIGRATIONS[-1].version if MIGRATIONS else 0


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'circuitry_schema'").fetchone()
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM circuitry_schema")}


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations; return the versions applied.

    Raises:
        SchemaVersionError: The database records a version newer than any this circuitry knows.
    """
    applied = applied_versions(conn)
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise SchemaVersionError(
            f"this database has circuitry schema version {newest}, newer than the {LATEST_VERSION} this "
            "circuitry understands: upgrade circuitry (pip install -U circuitry) to use it")
    done = []
    for migration in MIGRATIONS:
        if migration.version not in applied:
            conn.executescript(migration.sql)
            done.append(migration.version)
    return done
