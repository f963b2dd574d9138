"""A worker process for ``test_store_processes.py``: one real, separate process sharing a store file.

Run as ``python tests/store_worker.py MODE '{"db": ..., ...}'``. Each mode does one job on the database
and prints its findings as JSON lines on stdout (lines the test waits for, such as ``READY``, are
JSON too). Every mode is bounded in time: a worker that is never told to stop gives up after its own
deadline. Nothing here is collected by pytest (no ``test_`` names).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import time
from typing import Any

import structlog

from circuitry import CircuitOpenError, Registry, circuit
from circuitry.store import SQLiteStore


class Boom(Exception):
    """A counted failure."""


class Other(Exception):
    """An exception the circuits do not count (ignored)."""


class Cancel(BaseException):
    """Stands for a cancellation: propagates untouched, counted as cancelled."""


# Logs go to stderr (the test sends it to a file): stdout carries only this worker's JSON lines.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def open_store(args: dict[str, Any]) -> tuple[SQLiteStore, Registry]:
    store = SQLiteStore(args["db"], poll_interval=args.get("poll_interval", 0.025))
    return store, Registry(hooks=[], store=store)


def stats_dict(b: Any) -> dict[str, Any]:
    s = b.stats()
    return {"calls": s.calls, "successes": s.successes, "failures": s.failures, "ignored": s.ignored,
            "rejections": s.rejected, "cancelled": s.cancelled, "state": s.state.value}


def health_dict(store: SQLiteStore) -> dict[str, Any]:
    h = store.health()
    return {"healthy": h.healthy, "fault": h.fault, "faults": h.faults, "queued": h.queued,
            "dropped": h.dropped, "written": h.written_events}


def wait_for_go(deadline: float = 60.0) -> None:
    """Block until the test writes a line on stdin (a start barrier); give up at ``deadline``."""
    import select

    ready, _, _ = select.select([sys.stdin], [], [], deadline)
    if not ready:
        sys.exit(4)
    sys.stdin.readline()


# -- modes ---------------------------------------------------------------------------------------------


def conservation(args: dict[str, Any]) -> None:
    """Hammer shared circuits with a mix of outcomes; report exactly what this process counted."""
    store, reg = open_store(args)
    rng = random.Random(args["seed"])
    names = args["names"]
    policy = {"failure_threshold": 4, "recovery_timeout": 0.05, "on": (Boom,)}
    faces = [circuit(n, registry=reg, **policy) for n in names]

    def body(kind: str) -> str:
        if kind == "boom":
            raise Boom("down")
        if kind == "other":
            raise Other("not ours")
        if kind == "cancel":
            raise Cancel()
        return "ok"

    kinds = ["ok"] * 50 + ["boom"] * 25 + ["other"] * 15 + ["cancel"] * 5 + ["pause"] * 5
    deadline = time.monotonic() + args["duration"]
    while time.monotonic() < deadline:
        face = rng.choice(faces)
        kind = rng.choice(kinds)
        if kind == "pause":
            time.sleep(0.0005)
            continue
        try:
            face.call(body, kind)
        except (Boom, Other, Cancel, CircuitOpenError):
            pass
    store.close(timeout=20)
    say(totals={n: stats_dict(reg.get(n)) for n in names}, health=health_dict(store))


def probe(args: dict[str, Any]) -> None:
    """Hammer one circuit until a deadline; record every half-open probe's interval (system-wide
    monotonic clock). Closed-state calls fail at once (re-tripping); probes take ``probe_time``."""
    store, reg = open_store(args)
    rng = random.Random(args["seed"])
    b = reg.get(args["name"], failure_threshold=1, recovery_timeout=args["recovery_timeout"],
                half_open_max_calls=1, probe_timeout=args["probe_timeout"])
    say(ready=True)
    wait_for_go()
    intervals = []
    rejected = 0
    deadline = time.monotonic() + args["duration"]
    while time.monotonic() < deadline:
        try:
            permit = b.admit()
        except CircuitOpenError:
            rejected += 1
            time.sleep(0.003)
            continue
        if permit.probe is None:  # closed: the service is still down
            b.record_failure(permit, Boom("down"))
            continue
        t0 = time.monotonic()
        time.sleep(args["probe_time"])
        ok = rng.random() < args["success_p"]
        t1 = time.monotonic()
        intervals.append([t0, t1, ok, os.getpid()])
        if ok:
            b.record_success(permit)
        else:
            b.record_failure(permit, Boom("still down"))
    store.close(timeout=10)
    say(intervals=intervals, rejected=rejected, health=health_dict(store))


def probe_hold(args: dict[str, Any]) -> None:
    """Hammer one circuit until this process gets a probe permit; report it and hold it (the test
    kills the process with SIGKILL while its probe runs)."""
    store, reg = open_store(args)
    b = reg.get(args["name"], failure_threshold=1, recovery_timeout=args["recovery_timeout"],
                half_open_max_calls=1, probe_timeout=args["probe_timeout"])
    if args.get("barrier"):  # started ahead, it asks for a permit only when told to
        say(ready=True)
        wait_for_go()
    told_waiting = False
    deadline = time.monotonic() + args["deadline"]
    while time.monotonic() < deadline:
        try:
            permit = b.admit()
        except CircuitOpenError as exc:
            if exc.state == "half_open" and not told_waiting:
                say(waiting=True, mono=time.monotonic(), wall=time.time())
                told_waiting = True
            time.sleep(0.003)
            continue
        if permit.probe is None:
            b.record_failure(permit, Boom("down"))
            continue
        say(probe=True, mono=time.monotonic(), wall=time.time(), waited=told_waiting)
        time.sleep(args["hold"])  # the probe "runs" (the test kills us here)
        b.record_success(permit)
        store.close(timeout=5)
        say(done=True)
        return
    say(timeout=True)
    sys.exit(3)


def evidence(args: dict[str, Any]) -> None:
    """After the start barrier, take the breaker, (optionally settle,) record two counted failures,
    then poll until the circuit is open here (or the deadline)."""
    store, reg = open_store(args)
    say(ready=True)
    wait_for_go()
    b = reg.get(args["name"], failure_threshold=5, recovery_timeout=600.0)
    time.sleep(args["settle"])
    counted = 0
    for _ in range(2):
        try:
            permit = b.admit()
        except CircuitOpenError:
            continue
        b.record_failure(permit, Boom("down"))
        counted += 1
    t0 = time.monotonic()
    deadline = t0 + args["deadline"]
    while b.state.value == "closed" and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = b.state.value
    waited = time.monotonic() - t0
    store.close(timeout=10)
    say(state=seen, counted=counted, waited=waited, health=health_dict(store))


def watch(args: dict[str, Any]) -> None:
    """Poll one breaker's state; report every change (with the system-wide monotonic time) until the
    states in ``expect`` have been seen in order, or the deadline."""
    store, reg = open_store(args)
    b = reg.get(args["name"], failure_threshold=1, recovery_timeout=600.0)
    last = b.state.value
    say(ready=True, state=last)
    expect = list(args["expect"])
    deadline = time.monotonic() + args["deadline"]
    while expect and time.monotonic() < deadline:
        state = b.state.value
        if state != last:
            say(state=state, mono=time.monotonic())
            last = state
            if state == expect[0]:
                expect.pop(0)
        else:
            time.sleep(0.001)
    store.close(timeout=5)
    say(finished=not expect)


def open_exit(args: dict[str, Any]) -> None:
    """Trip a circuit, close the store, exit."""
    store, reg = open_store(args)
    b = reg.get(args["name"], failure_threshold=1, recovery_timeout=args["recovery_timeout"])
    b.record_failure(b.admit(), Boom("down"))
    s = b.stats()
    store.close(timeout=10)
    say(state=s.state.value, opened_at=s.opened_at, retry_after=s.retry_after, wall=time.time())


def report(args: dict[str, Any]) -> None:
    """Take the named breakers from the store (a fresh process's view) and report their state."""
    store, reg = open_store(args)
    out = {}
    wall = time.time()  # before the reads: the time left that they report is at most the time left now
    for name in args["names"]:
        b = reg.get(name, **args.get("policy", {}))
        s = b.stats()
        out[name] = {"state": s.state.value, "opened_at": s.opened_at, "retry_after": s.retry_after}
    store.close(timeout=10)
    say(breakers=out, wall=wall)


def crash(args: dict[str, Any]) -> None:
    """Write as hard as possible — failures, trips, manual transitions on many breakers — until killed."""
    store, reg = open_store(args)
    rng = random.Random(args["seed"])
    breakers = [reg.get(f"crash-{i}", failure_threshold=3, recovery_timeout=3600.0) for i in range(args["n"])]
    store.flush(5)
    say(go=True)
    deadline = time.monotonic() + args.get("deadline", 20.0)
    while time.monotonic() < deadline:
        b = rng.choice(breakers)
        r = rng.random()
        if r < 0.70:
            try:
                permit = b.admit()
            except CircuitOpenError:
                continue
            if rng.random() < 0.8:
                b.record_failure(permit, Boom("down " * rng.randint(1, 20)))
            else:
                b.record_success(permit)
        elif r < 0.85:
            b.reset()
        elif r < 0.95:
            b.force_open()
        else:
            b.force_closed()
    store.close(timeout=5)
    say(finished=True)


def no_close(args: dict[str, Any]) -> None:
    """Record failures and leave without calling close(): the atexit flush must write them."""
    _, reg = open_store(args)
    breakers = [reg.get(f"exit-{i}", failure_threshold=10**9, recovery_timeout=60.0) for i in range(args["k"])]
    for i in range(args["n"]):
        b = breakers[i % len(breakers)]
        b.record_failure(b.admit(), Boom(f"failure {i}"))
    if args.get("trip"):
        breakers[0].force_open()
    say(done=True, mono=time.monotonic())
    # ... and simply return: no close(), no flush()


def _wait_child(pid: int, deadline: float) -> int | str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"


def fork(args: dict[str, Any]) -> None:
    """The gunicorn --preload pattern: a store in use before os.fork(); children record failures on
    their copies of the breaker and leave via os._exit after flushing; the parent keeps working. Before
    each fork the parent records a burst of failures, so its writer is often mid-transaction then."""
    store, reg = open_store(args)
    b = reg.get("forked", failure_threshold=10**9, recovery_timeout=60.0)
    other = reg.get("forked-signal", failure_threshold=1, recovery_timeout=600.0)
    b.record_failure(b.admit(), Boom("parent before fork"))
    ok_before = store.flush(10)
    parent_failures = 1
    children: list[int | str] = []
    for round_ in range(args["rounds"]):
        for _ in range(args["burst"]):  # queued in the parent when it forks; the parent's writer is busy
            b.record_failure(b.admit(), Boom("parent, queued at fork"))
        parent_failures += args["burst"]
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                for _ in range(args["child_failures"]):
                    b.record_failure(b.admit(), Boom(f"child {round_}"))
                if round_ == 0:
                    other.force_open()  # a transition made in a child reaches the parent
                code = 0 if store.flush(args["child_flush"]) else 3
            except BaseException:
                code = 5
            os._exit(code)
        # the parent keeps working while the child runs
        for _ in range(3):
            b.record_failure(b.admit(), Boom("parent after fork"))
            parent_failures += 1
        children.append(_wait_child(pid, args["child_deadline"]))
    b.record_failure(b.admit(), Boom("parent after the children"))
    parent_failures += 1
    ok_after = store.flush(10)
    deadline = time.monotonic() + 10
    while other.state.value != "forced_open" and time.monotonic() < deadline:
        time.sleep(0.01)
    signal_state = other.state.value
    events = store.query("SELECT process, sum(occurrences) AS n FROM circuit_breaker_events "
                         "WHERE service_name = 'forked' AND event_type = 'failure' GROUP BY process")
    # the parent's writer connection still works: one more round trip through it
    b.record_failure(b.admit(), Boom("parent, last"))
    parent_failures += 1
    ok_last = store.flush(10)
    health = health_dict(store)
    store.close(timeout=10)
    with sqlite3.connect(args["db"]) as conn:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        last_events = conn.execute("SELECT sum(occurrences) FROM circuit_breaker_events WHERE service_name = 'forked' "
                                   "AND event_type = 'failure'").fetchone()[0]
    say(children=children, ok_before=ok_before, ok_after=ok_after, ok_last=ok_last, signal_state=signal_state,
        events=events, parent_failures=parent_failures, last_events=last_events, quick_check=check, health=health)


def fork_parent_closes(args: dict[str, Any]) -> None:
    """A store in use before os.fork(); the parent closes its store while the child is still writing
    (configure() to another file, or the parent winding down). The child's rows must still land."""
    store, reg = open_store(args)
    b = reg.get("forked", failure_threshold=10**9, recovery_timeout=60.0)
    b.record_failure(b.admit(), Boom("parent before fork"))
    store.flush(10)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            flushes = []
            for _ in range(args["child_rounds"]):
                for _ in range(10):
                    b.record_failure(b.admit(), Boom("child"))
                flushes.append(store.flush(5))
                time.sleep(0.05)
            say(child_failures=10 * args["child_rounds"], flushes=flushes, child_process=store.process)
        except BaseException:
            code = 5
        os._exit(code)
    time.sleep(args["close_after"])
    store.close(timeout=10)
    status = _wait_child(pid, args["child_deadline"])
    say(child_status=status)


def trip_rounds(args: dict[str, Any]) -> None:
    """Each round: wait until the test's reset reached this process (say ``armed``), wait for the go
    every worker gets at once, then fail one call (if admitted); report whether this process's breaker
    opened."""
    store, reg = open_store(args)
    b = reg.get(args["name"], failure_threshold=1, recovery_timeout=600.0)
    say(ready=True)
    for round_ in range(args["rounds"]):
        deadline = time.monotonic() + 10
        while b.state.value != "closed" and time.monotonic() < deadline:  # the reset reached this process
            time.sleep(0.002)
        say(armed=round_, state=b.state.value)
        wait_for_go()
        tripped = False
        try:
            permit = b.admit()
            b.record_failure(permit, Boom("down"))
            tripped = True
        except CircuitOpenError:
            pass
        store.flush(10)
        say(round=round_, tripped=tripped, state=b.state.value)
    store.close(timeout=10)
    say(done=True, health=health_dict(store))


def _mp_work(db: str, calls: int, name: str) -> None:
    """A multiprocessing child: persists through the store it inherited, then returns (os._exit)."""
    from circuitry._registry import default_registry

    reg = default_registry()
    b = reg.get(name, failure_threshold=10**9)
    for _ in range(calls):
        b.record_success(b.admit())
    b.record_failure(b.admit(), Boom("child"))


def _pool_task(name: str) -> int:
    from circuitry._registry import default_registry

    b = default_registry().get(name, failure_threshold=10**9)
    b.record_success(b.admit())
    return 1


def multiprocessing_fork(args: dict[str, Any]) -> None:
    """``multiprocessing`` with the fork start method: Process children and a Pool (closed and joined)
    count through the store the parent configured -- or, with ``parent_uses_store`` false, through the
    store each child opens itself from ``CIRCUITRY_DB`` (the parent never made one); children leave by
    os._exit."""
    import multiprocessing

    import circuitry

    if args.get("parent_uses_store", True):
        circuitry.configure(db=args["db"])
        reg = circuitry.default_registry()
        reg.get("mp-parent").record_success(reg.get("mp-parent").admit())  # the store is in use before the fork
    else:
        os.environ["CIRCUITRY_DB"] = args["db"]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_mp_work, args=(args["db"], args["calls"], "mp-process"))
             for _ in range(args["children"])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    with ctx.Pool(args["workers"]) as pool:
        done = sum(pool.map(_pool_task, ["mp-pool"] * args["tasks"], chunksize=100))
        pool.close()
        pool.join()
    circuitry.configure(db=None)
    say(exitcodes=[p.exitcode for p in procs], pool_done=done)


MODES = {f.__name__: f for f in (conservation, probe, probe_hold, evidence, watch, open_exit, report, crash,
                                 no_close, fork, fork_parent_closes, trip_rounds, multiprocessing_fork)}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
