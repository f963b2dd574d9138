"""``circuitry demo``: twenty minutes of a flaky service behind a breaker, fast-forwarded.

The service goes through phases — healthy, three outages of a minute or two — and a client calls it
about 20 times a second through ``@circuit``. The breaker and its store run on a simulated clock that
ends at the real time now: the run takes a few seconds, and the history written (failures, transitions,
per-second counts, alerts) is what twenty real minutes would have left, dated up to now. Each line is
a transition from the breaker's hooks; the summary comes from its counters and from the analysis of
that history (pattern, advice with its expected effect, alerts). The service's randomness is seeded; the
moments at which the store's threads act (a probe's lease, an alert) are not, so the counts vary a
little from run to run.

The demo starts on a fresh file each run, and the only file it ever replaces is one an earlier demo
made: a file it creates is marked (``PRAGMA user_version``), and anything else at the path — an
application's database, circuitry's own database, a text file — is left alone and refused
(:func:`check_demo_db`).
"""

from __future__ import annotations

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
from circuitry.testing import FakeClock

if TYPE_CHECKING:
    from circuitry.store import SQLiteStore

#: ``PRAGMA user_version`` of a database the demo made ("demo"): the only kind of file it replaces.
DEMO_MARK: Final = 0x64656D6F

#: (starts at second, phase, failure probability of a call) over the demo's twenty minutes.
PHASES: Final = ((0, "healthy", 0.0005), (240, "outage", 0.95), (330, "healthy", 0.0005), (600, "outage", 0.95),
                 (660, "healthy", 0.0005), (930, "outage", 0.95), (1050, "healthy", 0.0005))
SPAN: Final = 1200  # seconds of service time


class FlakyService:
    """A pretend remote service whose failure probability follows :data:`PHASES` (seconds since ``start``
    on ``clock``)."""

    def __init__(self, rng: random.Random, clock: FakeClock) -> None:
        self.rng = rng
        self.clock = clock
        self.start = clock.time()
        self.calls = 0

    def phase(self) -> tuple[str, float]:
        t = self.clock.time() - self.start
        current = PHASES[0]
        for phase in PHASES:
            if t >= phase[0]:
                current = phase
        return current[1], current[2]

    def fetch(self, item: int) -> str:
        self.calls += 1
        if self.rng.random() < self.phase()[1]:
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


def _fresh_store(db: str, clock: FakeClock) -> SQLiteStore:
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
    return SQLiteStore(db, clock=clock, analysis_interval=3600, analysis_window=SPAN)


def run_demo(out: TextIO = sys.stdout, seed: int = 7, db: str | None = "circuitry-demo.db",
             pace: float | None = None) -> dict[str, int]:
    """Run the demo; with ``db``, the breaker persists there (state, history, patterns, alerts): a fresh
    file, replacing only an earlier demo's (see :func:`check_demo_db`). ``pace``: real seconds per minute
    of service time (default: a quarter of a second on a terminal, none otherwise)."""
    if pace is None:
        pace = 0.25 if out.isatty() else 0.0
    rng = random.Random(seed)
    clock = FakeClock(start=1000.0, wall=time.time() - SPAN)  # the twenty minutes end now
    service = FlakyService(rng, clock)

    def show(event: Event) -> None:
        t = int(clock.time() - service.start)
        extra = f"  ({event.reason}" + (f", open for {event.open_for:.0f}s" if event.open_for else "") + ")"
        out.write(f"  {t // 60:02d}:{t % 60:02d}  [{service.phase()[0]:<8}] {event.name:<30}{extra}\n")

    show.kinds = frozenset({EventKind.TRANSITION})  # type: ignore[attr-defined]
    store = None if db is None else _fresh_store(db, clock)
    registry = Registry(hooks=[show], rng=rng, store=store, clock=clock)

    @circuit("inventory_api", registry=registry, failure_threshold=5, recovery_timeout=10, backoff_factor=1.5,
             on=ConnectionError)
    def fetch(item: int) -> str:
        return service.fetch(item)

    out.write("circuitry demo: twenty minutes of a flaky service behind @circuit('inventory_api', "
              "failure_threshold=5, recovery_timeout=10, backoff_factor=1.5), fast-forwarded (mm:ss of service "
              "time)\n\n")
    served = failed = refused = calls = 0
    for second in range(SPAN):
        n = rng.randint(15, 25)
        for _ in range(n):
            calls += 1
            try:
                fetch(calls)
                served += 1
            except ConnectionError:
                failed += 1
            except CircuitOpenError:
                refused += 1
            clock.advance(1.0 / n)
        if store is not None:
            store.flush()  # the writer files this second's counts under this second
        if pace and second % 60 == 59:
            out.flush()
            time.sleep(pace)
    stats = registry["inventory_api"].stats()
    out.write(
        f"\n{calls} calls: {served} served, {failed} failed, {refused} refused fast by the open circuit "
        f"(the service saw {service.calls} calls).\n"
        f"breaker counters: successes={stats.successes} failures={stats.failures} rejected={stats.rejected}\n"
    )
    if store is not None:
        from circuitry.runners.analyst import Analyst

        analysis = Analyst.attach(store).analyse(registry["inventory_api"])
        result, rec = analysis.pattern, analysis.recommendation
        alerts = store.alerts("inventory_api", include_acknowledged=True, limit=1000)
        store.close()
        pattern = f"{result.type} (confidence {result.confidence:.2f})" if result.type else "none (too little data)"
        kinds = sorted({a["alert_type"] for a in alerts})
        out.write(
            f"\nhistory written to {store.path}:\n"
            f"  failure pattern of the twenty minutes: {pattern}\n"
            f"  recommendation: {rec.as_seed_dict()['message']}\n"
            f"  alerts raised: {len(alerts)} ({', '.join(kinds)})\n"
            f"look at it with:  circuitry status --db {db}   ·   circuitry alerts --db {db}   ·   "
            f"sqlite3 {db} 'SELECT * FROM circuit_breaker_events'\n")
    return {"calls": calls, "served": served, "failed": failed, "refused": refused,
            "service_calls": service.calls}
