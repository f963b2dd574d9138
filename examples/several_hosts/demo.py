"""Several hosts, one circuit: six processes standing in for two workers on each of three hosts share
the circuit of a payment provider through one PostgreSQL database. The provider goes down: failures
seen anywhere add up, the circuit opens for every worker on every host at once, one probe at a time
tests the provider, and when it is back the circuit closes everywhere.

    pip install 'circuitry-breaker[postgres]'
    python examples/several_hosts/demo.py postgresql://user:password@localhost:5432/dbname

(or set ``$CIRCUITRY_DB`` to the URL). The database needs nothing prepared: circuitry creates its tables.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from typing import Any

from circuitry import CircuitOpenError, circuit, configure


def worker(url: str, host: str, index: int, down: Any, stop: Any, start: Any, results: Any) -> None:
    registry = configure(db=url)  # the one line that makes this process share circuits with every host

    @circuit("payment_api", failure_threshold=5, recovery_timeout=1.0, on=ConnectionError)
    def charge(amount: float) -> str:
        if down.is_set():
            raise ConnectionError("payment provider unreachable")
        return f"charged {amount:.2f}"

    start.wait(60)
    states: list[str] = []
    refused = 0
    while not stop.is_set():
        try:
            charge(9.99)
        except ConnectionError:
            pass
        except CircuitOpenError:
            refused += 1  # refused fast: the provider is not called at all
        state = registry["payment_api"].state.value
        if not states or states[-1] != state:
            states.append(state)
        time.sleep(0.005)
    registry.store.flush(10)  # type: ignore[union-attr]
    results.put((host, index, refused, states))


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CIRCUITRY_DB", "")
    if not url.startswith(("postgresql://", "postgres://")):
        sys.exit("usage: demo.py postgresql://user:password@host:5432/dbname (or set CIRCUITRY_DB)")
    ctx = mp.get_context("spawn")
    down, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    hosts = [(f"host-{h}", i) for h in (1, 2, 3) for i in range(2)]
    start = ctx.Barrier(len(hosts) + 1)
    procs = [ctx.Process(target=worker, args=(url, host, i, down, stop, start, results)) for host, i in hosts]
    for p in procs:
        p.start()
    start.wait(60)
    time.sleep(0.5)
    print("the payment provider goes down")
    down.set()
    time.sleep(3.0)
    print("the payment provider is back")
    down.clear()
    time.sleep(3.0)
    stop.set()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
    for host, index, refused, states in outcomes:
        print(f"{host} worker {index}: {' -> '.join(states)}; refused {refused} calls without calling the provider")

    from circuitry.store import open_reader

    reader = open_reader(url)
    history = reader.transitions("payment_api", 0, time.time() + 60)
    openings = sum(1 for t in history if t["from_state"] == "closed" and t["to_state"] == "open")
    print(f"openings recorded for all hosts together: {openings}")
    print(f"state now: {reader.circuit('payment_api')['state']}")  # type: ignore[index]
    reader.close()


if __name__ == "__main__":
    main()
