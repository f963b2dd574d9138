"""Several processes, one circuit: failures add up across workers, and one worker's trip refuses
calls in all of them (like the workers of a gunicorn or Celery deployment on one host)."""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from typing import Any

from circuitry import CircuitOpenError, Registry
from circuitry.store import SQLiteStore


def worker(db: str, index: int, start: Any, results: Any) -> None:
    store = SQLiteStore(db)
    registry = Registry(store=store, hooks=[])
    breaker = registry.get("search_api", failure_threshold=5, recovery_timeout=60)
    start.wait(60)  # every worker is up: now the service starts failing
    for _ in range(2):  # each worker sees only 2 failures: below the threshold of 5
        try:
            permit = breaker.admit()
        except CircuitOpenError:
            break  # the others' failures already opened it
        breaker.record_failure(permit, TimeoutError("search timed out"))
    deadline = time.monotonic() + 10
    while breaker.state.value != "open" and time.monotonic() < deadline:
        time.sleep(0.01)  # the other workers' failures arrive through the shared database
    try:
        breaker.admit()
        results.put((index, "admitted"))
    except CircuitOpenError:
        results.put((index, "refused"))
    store.close()


def main() -> None:
    db = sys.argv[1] if len(sys.argv) > 1 else "multiprocess-example.db"
    SQLiteStore(db)  # nothing opened yet; the workers create the file
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=worker, args=(db, i, start, results)) for i in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
    for index, outcome in outcomes:
        print(f"worker {index}: {outcome}")
    print("4 workers x 2 failures tripped a threshold-5 circuit shared by all of them")


if __name__ == "__main__":
    main()
