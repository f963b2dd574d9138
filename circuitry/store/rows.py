"""Event rows on their way to the database: a bounded queue, written in batches by the writer.

A row that does not fit is dropped and counted (with the failures it stood for), and the next write
records a ``dropped`` row saying how many; counts are never dropped (they are sampled from counters).
A row the database refuses (a value it cannot store) is logged and skipped, never retried forever.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final

from circuitry.instrumentation.logging import log
from circuitry.store.backend import Backend, Connection
from circuitry.store.sharing import INSERT_EVENT, row_tuple

__all__ = ["BATCH", "RowQueue"]

BATCH: Final = 1000  # rows per transaction: a small volume must not need room for the whole backlog


class RowQueue:
    """The writer's row queue (see the module docstring). ``put`` may be called from any thread."""

    def __init__(self, size: int, backend: Backend, process: str, clock: Callable[[], float]) -> None:
        self.size = size
        self.backend = backend
        self.process = process
        self._time = clock
        self.rows: deque[tuple[Any, ...]] = deque()
        self.inflight = 0  # rows in the batch being written (counted as queued)
        self.written = 0
        self.refused = 0
        self._dropped = itertools.count()
        self._dropped_failures = 0
        self._reported = 0

    def __len__(self) -> int:
        return len(self.rows) + self.inflight

    @property
    def dropped(self) -> int:
        return int(repr(self._dropped)[6:-1])

    def put(self, row: tuple[Any, ...]) -> None:
        if len(self.rows) >= self.size:
            next(self._dropped)
            self._dropped_failures += row[10]  # the failures it stood for (occurrences)
        else:
            self.rows.append(row)

    def write(self, db: Callable[[], AbstractContextManager[Connection]], budget: float) -> bool:
        """Write batches until the queue is empty (True) or ``budget`` seconds have passed (False: the
        rest goes next cycle, so the writer keeps sampling on time). On an error the batch goes back."""
        dropped = self.dropped
        if dropped > self._reported:
            lost = dropped - self._reported
            failures = self._dropped_failures
            log("warning", "circuitry.store_dropped", location=self.backend.location, rows=lost, total=dropped,
                failures_total=failures,
                note="the row queue was full: these failure rows are not written (their counts are in the "
                     "per-second and per-minute rollups); raise queue_size or fix the store fault")
            self.rows.append(row_tuple("circuitry", "dropped", None, None, "queue_full",
                                       f"{lost} rows dropped: queue full",
                                       {"dropped": lost, "total": dropped, "failures_total": failures},
                                       self._time(), self.process))
            self._reported = dropped
        deadline = time.monotonic() + budget
        rows = self.rows
        while rows:
            batch = []
            with contextlib.suppress(IndexError):
                for _ in range(min(BATCH, len(rows))):
                    batch.append(rows.popleft())
            self.inflight = len(batch)
            try:
                with db() as conn, conn.transaction():
                    conn.execute("SAVEPOINT circuitry_rows")
                    try:
                        conn.executemany(INSERT_EVENT, batch)
                    except (TypeError, ValueError) as exc:
                        if self.backend.classify(exc) is not None:
                            raise
                        conn.execute("ROLLBACK TO SAVEPOINT circuitry_rows")
                        self._one_by_one(conn, batch)  # a row the database refuses must not wedge the queue
                    conn.execute("RELEASE SAVEPOINT circuitry_rows")
            except BaseException:
                rows.extendleft(reversed(batch))  # nothing is lost: retried next cycle
                raise
            finally:
                self.inflight = 0
            self.written += len(batch)
            if time.monotonic() > deadline:
                return not rows
        return True

    def _one_by_one(self, conn: Connection, batch: list[tuple[Any, ...]]) -> None:
        for r in batch:
            conn.execute("SAVEPOINT circuitry_row")
            try:
                conn.execute(INSERT_EVENT, r)
                conn.execute("RELEASE SAVEPOINT circuitry_row")
            except (TypeError, ValueError) as exc:
                conn.execute("ROLLBACK TO SAVEPOINT circuitry_row")
                conn.execute("RELEASE SAVEPOINT circuitry_row")
                self.refused += 1
                log("error", "circuitry.store_row_refused", location=self.backend.location, row=repr(r)[:300],
                    error_message=str(exc)[:300], total=self.refused)
