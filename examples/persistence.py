"""Persistence: a circuit opened in one run is still open in the next, for the time that remains.

Run it twice in a row: the second run starts with the circuit open and refuses at once.
"""

from __future__ import annotations

import sys

from circuitry import CircuitOpenError, Registry, circuit
from circuitry.store import SQLiteStore

DB = sys.argv[1] if len(sys.argv) > 1 else "persistence-example.db"

store = SQLiteStore(DB)
registry = Registry(store=store, hooks=[])


@circuit("billing_api", registry=registry, failure_threshold=3, recovery_timeout=120, on=ConnectionError)
def charge(amount: int) -> str:
    raise ConnectionError("billing is down")


def main() -> None:
    breaker = registry.get("billing_api")
    print(f"starting state: {breaker.state.value}")
    for _ in range(4):
        try:
            charge(10)
        except ConnectionError:
            print("failed: billing is down")
        except CircuitOpenError as exc:
            print(f"refused: circuit {exc.name!r} is {exc.state}, retry in {exc.retry_after:.0f}s")
    store.close()  # optional: an unclosed store is flushed at exit too
    rows = store.query("SELECT event_type, to_state FROM circuit_breaker_events ORDER BY id")
    print(f"{len(rows)} events stored in {DB}")


if __name__ == "__main__":
    main()
