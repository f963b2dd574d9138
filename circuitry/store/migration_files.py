"""The migration files both schema modules apply: ``NNN_name.sql`` in a folder, in version order, and the
tables they create (a table missing from a migrated database is made again by rerunning them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Migration", "created_tables", "discover"]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(folder: Path) -> tuple[Migration, ...]:
    """The ``NNN_name.sql`` files of ``folder``, by version."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = re.fullmatch(r"(\d+)_(\w+)\.sql", path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path))
    return tuple(sorted(found, key=lambda m: m.version))


def created_tables(migrations: tuple[Migration, ...]) -> frozenset[str]:
    """The tables ``migrations`` create (``CREATE TABLE IF NOT EXISTS``: every migration may run again)."""
    return frozenset(t for m in migrations for t in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", m.sql))
