"""A worker process standing in for one process of one host, for ``test_store_hosts.py``, the PostgreSQL
benchmark and the multi-host example: its own interpreter, its own connections to the server.

Run as ``python tests/host_worker.py MODE '{"url": ..., "host": "host-1", ...}'``. ``host`` becomes this
process's host name (what circuitry writes as ``updated_by`` and ``process``), so three "hosts" on one
machine are told apart in the database. Findings are JSON lines on stdout; logs go to stderr. Every mode
is bounded in time. Nothing here is collected by pytest (no ``test_`` names).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Service:
    """The remote service the workers call: healthy unless the control file says ``down``."""

    def __init__(self, control: str) -> None:
        self.path = Path(control)
        self.down = False
        self._checked = 0.0

    def call(self) -> str:
        now = time.monotonic()
        if now - self._checked > 0.005:
            self._checked = now
            try:
                self.down = self.path.read_text().strip() == "down"
            except OSError:
                self.down = False
        if self.down:
            raise ConnectionError("payment provider unreachable")
        return "ok"


def outage(args: dict[str, Any]) -> None:
    """Call one shared circuit until the control file says ``stop``; report what this process saw: counts,
    transitions, surprises (exceptions that are neither the service's nor a rejection: must be none),
    the slowest protected call, and the store's health."""
    from circuitry import CircuitOpenError, Registry, circuit
    from circuitry.store import open_store

    store = open_store(args["url"], poll_interval=args.get("poll_interval", 0.025))
    reg = Registry(hooks=[], store=store)
    service = Service(args["control"])
    name = args.get("name", "payment_api")

    @circuit(name, registry=reg, failure_threshold=5, recovery_timeout=args.get("recovery_timeout", 0.5),
             on=(ConnectionError,), probe_timeout=args.get("probe_timeout", 2.0))
    def charge() -> str:
        return service.call()

    b = reg.get(name)
    states: list[str] = []
    seen = {"ok": 0, "failed": 0, "rejected": 0}
    surprises: list[str] = []
    slowest = 0.0
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + args.get("deadline", 120.0)
    say(ready=True, process=store.process)
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            charge()
            seen["ok"] += 1
        except ConnectionError:
            seen["failed"] += 1
        except CircuitOpenError:
            seen["rejected"] += 1
        except Exception as exc:
            surprises.append(f"{type(exc).__name__}: {exc}"[:200])
        slowest = max(slowest, time.monotonic() - started)
        state = b.state.value
        if not states or states[-1] != state:
            states.append(state)
            say(state=state)  # for a test that waits for every worker to reach a state
        if service.path.exists() and service.path.read_text().strip() == "stop":
            break
        time.sleep(rng.uniform(0.0005, 0.002))
    flushed = store.flush(30)
    stats = b.stats()
    h = store.health()
    say(report=True, process=store.process, seen=seen, states=states, surprises=surprises, slowest=slowest,
        counts={"calls": stats.calls, "successes": stats.successes, "failures": stats.failures,
                "rejections": stats.rejected},
        final=b.state.value, flushed=flushed,
        health={"healthy": h.healthy, "faults": h.faults, "dropped": h.dropped, "queued": h.queued},
        listening=store.backend.listener.listening)
    store.close()


def probe(args: dict[str, Any]) -> None:
    """Hammer one circuit until a deadline; record every half-open probe's interval (system-wide
    monotonic clock). Closed-state calls fail at once (re-tripping); probes take ``probe_time`` and
    succeed with probability ``success_p``."""
    from circuitry import CircuitOpenError, Registry
    from circuitry.store import open_store

    store = open_store(args["url"], poll_interval=args.get("poll_interval", 0.025))
    reg = Registry(hooks=[], store=store)
    rng = random.Random(args["seed"])
    b = reg.get(args["name"], failure_threshold=1, recovery_timeout=args["recovery_timeout"],
                half_open_max_calls=args.get("permits", 1), probe_timeout=args["probe_timeout"])
    store.flush(30)
    say(ready=True)
    sys.stdin.readline()
    intervals = []
    rejected = 0
    deadline = time.monotonic() + args["duration"]
    while time.monotonic() < deadline:
        try:
            permit = b.admit()
        except CircuitOpenError:
            rejected += 1
            time.sleep(0.002)
            continue
        if permit.probe:
            t0, wall = time.monotonic(), time.time()
            time.sleep(args["probe_time"])
            ok = rng.random() < args["success_p"]
            t1 = time.monotonic()
            (b.record_success if ok else b.record_failure)(permit, *(() if ok else (ConnectionError("down"),)))
            intervals.append((t0, t1, ok, os.getpid(), wall))
        else:
            b.record_failure(permit, ConnectionError("down"))  # the service is down: trip again
    store.flush(30)
    say(intervals=intervals, rejected=rejected)
    store.close()


def watch(args: dict[str, Any]) -> None:
    """Report every state the circuit takes (stored or propagated), with the moment this process learnt
    it — from a hook, called as the writer adopts the change, so no polling loop competes with the
    store's threads — until the control file says ``stop``."""
    from circuitry import Registry
    from circuitry.events import Event, EventKind
    from circuitry.store import open_store

    class Seen:
        kinds = frozenset({EventKind.TRANSITION})

        def __call__(self, event: Event) -> None:
            say(state=event.to_state.value, wall=time.time(), mono=time.monotonic())

    store = open_store(args["url"], poll_interval=args.get("poll_interval", 0.025))
    reg = Registry(hooks=[Seen()], store=store)
    b = reg.get(args["name"], failure_threshold=5, recovery_timeout=600.0)
    store.flush(30)
    say(ready=True, state=b.state.value)
    control = Path(args["control"])
    deadline = time.monotonic() + args.get("deadline", 120.0)
    while time.monotonic() < deadline:
        if control.exists() and control.read_text().strip() == "stop":
            break
        time.sleep(0.05)
    store.close()


MODES = {"outage": outage, "probe": probe, "watch": watch}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    args = json.loads(raw)
    host = args.get("host")
    if host:
        socket.gethostname = lambda: str(host)  # this process stands in for a process of that host
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    MODES[mode](args)


if __name__ == "__main__":
    main()
