"""Add the circuit breaker tables to a database, or bring them up to date: the migration runner of the
original design (docs: database-circuit-breaker.md, "Migration").

    python scripts/run_migrations.py                 # the default database: $CIRCUITRY_DB, else ./circuitry.db
    python scripts/run_migrations.py pipeline.db     # an application's database (or --db pipeline.db)

It applies every pending migration of ``migrations/`` in order, as ``circuitry migrate --db DB`` does (it
runs that command): idempotent, the application's own tables and rows are left as they are, and a
database written by a newer circuitry is refused. Like ``sqlite3 pipeline.db <
migrations/008_add_circuit_breaker_tracking.sql``, it puts a SQLite file in WAL journal mode (see
docs/reference/store.md, "Journal mode"). A ``postgresql://`` URL is migrated on the server.

Exit status: 0 done (or already up to date), 2 an error (the message is on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

_MEMORY = ("", ":memory:", "memory", "none", "off")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_migrations.py", description=(
        "Add the circuit breaker tables to a database, or bring them up to date (as `circuitry migrate`)."))
    parser.add_argument("database", nargs="?", metavar="DB", help="a SQLite file, sqlite:///path or a "
                        "postgresql:// URL (default: $CIRCUITRY_DB, else ./circuitry.db)")
    parser.add_argument("--db", dest="db_option", metavar="DB", help="the same, as an option")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.database and args.db_option and args.database != args.db_option:
        parser.error("give the database once (DB or --db)")
    db = args.database or args.db_option
    if db is None:
        env = os.environ.get("CIRCUITRY_DB")
        if env is not None and env.strip().lower() in _MEMORY:
            parser.error(f"CIRCUITRY_DB={env!r} keeps breakers in memory: there is no database to migrate "
                         "(name one: run_migrations.py pipeline.db)")
        db = env or "circuitry.db"
    try:
        from circuitry.tools.cli import main as circuitry_main
    except ImportError:  # run from a checkout where circuitry is not installed
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from circuitry.tools.cli import main as circuitry_main
    return circuitry_main(["migrate", "--db", db, *(["--json"] if args.json else [])])


if __name__ == "__main__":
    sys.exit(main())
