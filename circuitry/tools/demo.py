"""``circuitry demo``: a flaky service behind a breaker, transitions printed as they happen.

The service goes through phases — healthy, an outage, a recovery — and a client calls it in a loop
through ``@circuit``. Each line is an event from the breaker's hooks; the summary at the end comes from
the breaker's counters.

The demo starts on a fresh file each run, and the only file it ever replaces is one an earlier demo
made: a file it creates is marked (``PRAGMA user_version``), and anything else at the path — an
application's database, circuitry's own database, a text file — is left alone and refused
(:func:`check_demo_db`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import sys
import time
from typing import TYPE_CHECKING, Final, TextIO

from circuitry._faces import circuit
from circuitry._registry import Registry
from circuitry.events import Event, EventKind
from circuitry.exceptions import CircuitOpenError, ConfigurationError

if TYPE_CHECKING:
    from circuitry.store import SQLiteStore

#: ``PRAGMA user_version`` of a database the demo made ("demo"): the only kind of file it replaces.
DEMO_MARK: Final = 0x64656D6F

PHASES = (("healthy", 0.02, 1.5), ("outage", 0.95, 2.0), ("recovering", 0.30, 1.0), ("healthy", 0.02, 1.5))


class FlakyService:
    """A pretend remote service whose failure probability follows :data:`PHASES`."""

    def __init__(self, rng: random.Random, start: float) -> None:
        self.rng = rng
        self.start = start
        self.calls = 0

    def phase(self, now: float) -> tuple[str, float]:
        t = now - self.start
        for name, p_fail, length in PHASES:
            if t < length:
                return name, p_fail
            t -= length
        return PHASES[-1][0], PHASES[-1][1]

    async def fetch(self, item: int) -> str:
        self.calls += 1
        await asyncio.sleep(0.002)
        _, p_fail = self.phase(time.monotonic())
        if self.rng.random() < p_fail:
            raise ConnectionError("service unavailable")
        return f"item-{item}"


def _demo_made(db: str) -> bool:
    """Whether ``db`` is a database an earlier demo made: one the store would set aside as its own
    (circuitry's mark, circuit tables only) that also carries the demo's mark."""
    from circuitry.store.sqlite.backend import SQLiteBackend

    try:
        with open(db, "rb") as f:
            header = f.read(64)
    except OSError:
        return False
    return int.from_bytes(header[60:64], "big") == DEMO_MARK and SQLiteBackend(db).only_ours()[0]


def check_demo_db(db: str) -> str | None:
    """Why the demo must not use ``db`` (something other than an earlier demo's database is there), or
    ``None``: nothing is there, or an earlier demo's database, which the demo replaces."""
    if "://" in db:
        return (f"the demo keeps its database in a SQLite file of its own: give --db a file path, not a URL "
                f"({db.split('://')[0]}://…)")
    leftovers = [db + suffix for suffix in ("-wal", "-shm") if os.path.lexists(db + suffix)]
    if not os.path.lexists(db):
        if leftovers:
            return (f"{leftovers[0]} is there without its database {db}; nothing was changed — give --db "
                    "another path")
        return None
    if os.path.isdir(db):
        return f"{db} is a directory; give --db a file path"
    if not os.path.isfile(db) or os.path.islink(db) or not _demo_made(db):
        return (f"{db} exists and is not a database made by an earlier demo; nothing was changed — give --db "
                "a new path (the demo replaces only its own database)")
    return None


def _fresh_store(db: str) -> SQLiteStore:
    """A store on a fresh file, marked as the demo's: the demo's numbers are about this run.

    Raises:
        ConfigurationError: Something other than an earlier demo's database is at ``db``.
    """
    from circuitry.store import SQLiteStore
    from circuitry.store.sqlite.backend import APPLICATION_ID

    problem = check_demo_db(db)
    if problem:
        raise ConfigurationError(problem)
    if os.path.lexists(db):  # an earlier demo's: replaced
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(db + suffix)
    raw = sqlite3.connect(db, isolation_level=None)
    try:
        raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        raw.execute(f"PRAGMA user_version = {DEMO_MARK}")
    finally:
        raw.close()
    return SQLiteStore(db, analysis_interval=3600, analysis_window=60)


async def run_demo(out: TextIO = sys.stdout, seed: int = 7, db: str | None = "circuitry-demo.db") -> dict[str, int]:
    """Run the demo; with ``db``, the breaker persists there (state, history, patterns, alerts): a fresh
    file, replacing only an earlier demo's (see :func:`check_demo_db`)."""
    rng = random.Random(seed)
    start = time.monotonic()
    service = FlakyService(rng, start)

    def show(event: Event) -> None:
        t = time.monotonic() - start
        phase, _ = service.phase(time.monotonic())
        extra = f"  ({event.reason}" + (f", open for {event.open_for:.2f}s" if event.open_for else "") + ")"
        out.write(f"{t:6.2f}s  [{phase:<10}] {event.name:<30}{extra}\n")

    show.kinds = frozenset({EventKind.TRANSITION})  # type: ignore[attr-defined]
    store = None if db is None else _fresh_store(db)
    registry = Registry(hooks=[show], rng=rng, store=store)

    @circuit("inventory_api", registry=registry, failure_threshold=5, recovery_timeout=0.4,
             backoff_factor=1.5, on=ConnectionError)
    async def fetch(item: int) -> str:
        return await service.fetch(item)

    out.write("circuitry demo: a flaky service behind @circuit('inventory_api', failure_threshold=5, "
              "recovery_timeout=0.4)\n\n")
    served = failed = refused = 0
    total = sum(length for _, _, length in PHASES)
    item = 0
    while time.monotonic() - start < total:
        item += 1
        try:
            await fetch(item)
            served += 1
        except ConnectionError:
            failed += 1
        except CircuitOpenError:
            refused += 1
            await asyncio.sleep(0.002)
    stats = registry["inventory_api"].stats()
    out.write(
        f"\n{item} calls: {served} served, {failed} failed, {refused} refused fast by the open circuit "
        f"(the service saw {service.calls} calls).\n"
        f"breaker counters: successes={stats.successes} failures={stats.failures} rejected={stats.rejected}\n"
    )
    if store is not None:
        from circuitry.runners.analyst import Analyst

        store.flush(5)
        analysis = Analyst.attach(store).analyse(registry["inventory_api"])
        result, rec = analysis.pattern, analysis.recommendation
        alerts = store.alerts("inventory_api", include_acknowledged=True, limit=1000)
        store.close()
        pattern = f"{result.type} (confidence {result.confidence:.2f})" if result.type else "none (too little data)"
        out.write(
            f"\nhistory written to {store.path}:\n"
            f"  failure pattern of the last minute: {pattern}\n"
            f"  recommendation: {rec.as_seed_dict()['message']}\n"
            f"  alerts raised: {len(alerts)} ({', '.join(sorted({a['alert_type'] for a in alerts}))})\n"
            f"look at it with:  circuitry status --db {db}   ·   circuitry alerts --db {db}   ·   "
            f"sqlite3 {db} 'SELECT * FROM circuit_breaker_events'\n")
    return {"calls": item, "served": served, "failed": failed, "refused": refused,
            "service_calls": service.calls}
