"""The SQLite store across real processes: every worker is a separate interpreter running
``tests/store_worker.py`` on one database file.

What these pin: counts are conserved (per-minute metrics of all processes add up to what the
processes counted, and every failure is an event row); at most one half-open probe runs at a time
across processes, and a lease held by a killed process frees itself; failures seen by several
processes add up to a trip; transitions propagate; a new process never resets shared state; the
file survives SIGKILL at any moment; a process that never calls ``close()`` still exits promptly
with its rows written; and a store used before ``os.fork()`` keeps working in parent and child.

Timing: deadlines here are liveness bounds on a noisy shared machine, never speed claims (the
latency figures are in ``benchmarks/bench_store.py``).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from circuitry import CircuitState, Registry
from circuitry.store import SQLiteStore

from .conftest import eventually

WORKER = Path(__file__).with_name("store_worker.py")
FIELDS = ("calls", "successes", "failures", "ignored", "rejections", "cancelled")


class Worker:
    """One worker process; its stdout JSON lines arrive on a queue (read by a thread, so every wait
    has a timeout)."""

    _seq = 0

    def __init__(self, folder: Path, mode: str, **args: Any) -> None:
        Worker._seq += 1
        self.mode = mode
        self.err_path = folder / f"worker-{Worker._seq}-{mode}.stderr"
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in close()
        env = dict(os.environ, CIRCUITRY_DB="none", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), mode, json.dumps(args)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=env)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self.lines.put(msg)
        self.lines.put(None)

    def stderr_tail(self) -> str:
        self._err.flush()
        try:
            return self.err_path.read_text()[-3000:]
        except OSError:
            return ""

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """The next line carrying ``key`` (earlier lines are skipped); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = self.lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"{self.mode} worker: no {key!r} within {timeout} s\n"
                                     f"{self.stderr_tail()}") from None
            if msg is None:
                self.lines.put(None)
                raise AssertionError(f"{self.mode} worker exited (rc={self.proc.poll()}) before {key!r}\n"
                                     f"{self.stderr_tail()}")
            if key in msg:
                return msg

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.mode} worker still running after {timeout} s\n"
                                 f"{self.stderr_tail()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._err.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []

    def start(mode: str, **args: Any) -> Worker:
        w = Worker(tmp_path, mode, **args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def quick_check(path: Path) -> str:
    return str(rows(path, "PRAGMA quick_check")[0][0])


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals in progress at one moment (an end at t comes before a start at t)."""
    points = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])
    depth = peak = 0
    for _, step in points:
        depth += step
        peak = max(peak, depth)
    return peak


# -- 1. conservation -------------------------------------------------------------------------------


def test_counts_of_eight_processes_add_up_in_the_database(spawn: Any, db: Path) -> None:
    names = ["cons-a", "cons-b", "cons-c"]
    workers = [spawn("conservation", db=str(db), seed=i, names=names, duration=2.5) for i in range(8)]
    reports = [w.expect("totals", timeout=60) for w in workers]
    for w in workers:
        assert w.wait(20) == 0, w.stderr_tail()

    expected = {n: dict.fromkeys(FIELDS, 0) for n in names}
    for r in reports:
        assert r["health"]["dropped"] == 0, r
        for n in names:
            for f in FIELDS:
                expected[n][f] += r["totals"][n][f]
    for n in names:  # the mix really happened, on every circuit
        assert all(expected[n][f] > 0 for f in FIELDS), expected[n]

    stored = {n: dict(zip(FIELDS, row, strict=True)) for n, *row in rows(
        db, "SELECT service_name, sum(calls), sum(successes), sum(failures), sum(ignored), sum(rejections), "
            "sum(cancelled) FROM circuit_breaker_metrics GROUP BY service_name")}
    assert stored == expected
    # every failure has its row, or is counted in one standing for several (past the per-second limit)
    failure_rows = dict(rows(db, "SELECT service_name, sum(occurrences) FROM circuit_breaker_events "
                                 "WHERE event_type = 'failure' GROUP BY service_name"))
    assert failure_rows == {n: expected[n]["failures"] for n in names}
    assert rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE event_type = 'dropped'") == [(0,)]
    writers = rows(db, "SELECT count(DISTINCT process) FROM circuit_breaker_events WHERE event_type = 'failure'")
    assert writers == [(8,)]
    assert quick_check(db) == "ok"


# -- 2. probes across processes --------------------------------------------------------------------


def test_one_probe_at_a_time_across_eight_processes(spawn: Any, db: Path) -> None:
    """Eight processes hammer one circuit through at least 50 half-open periods: never two probes at
    once, and after a failed probe the next begins only once a whole new open period has passed
    (no process acts on a stale ``half_open``)."""
    recovery = 0.05
    workers = [spawn("probe", db=str(db), name="probed", seed=i, duration=8.0, recovery_timeout=recovery,
                     probe_timeout=5.0, probe_time=0.02, success_p=0.1) for i in range(8)]
    for w in workers:
        w.expect("ready", timeout=30)
    for w in workers:
        w.go()
    reports = [w.expect("intervals", timeout=90) for w in workers]
    for w in workers:
        assert w.wait(20) == 0, w.stderr_tail()

    probes = sorted((t0, t1, ok, pid) for r in reports for t0, t1, ok, pid in r["intervals"])
    assert len(probes) >= 50, len(probes)  # at least 50 half-open periods (each ends with its one probe)
    assert len({pid for *_, pid in probes}) >= 4, "the probes were spread over the processes"
    assert sum(r["rejected"] for r in reports) > 0  # the others were trying meanwhile
    overlaps = [(a, b) for a, b in itertools.pairwise(probes) if b[0] < a[1]]
    assert not overlaps, f"probes of different processes ran at once: {overlaps[:5]}"
    assert max_overlap([(t0, t1) for t0, t1, _, _ in probes]) == 1
    # a failed probe re-opens the circuit for a whole period (t1 is read just before the failure is
    # reported, so the period starts after it): the next probe cannot start sooner
    early = [(a, b) for a, b in itertools.pairwise(probes) if not a[2] and b[0] - a[1] < recovery]
    assert not early, f"probes started less than recovery_timeout after a failed probe: {early[:5]}"
    assert quick_check(db) == "ok"


def test_processes_tripping_together_write_one_opening_per_episode(spawn: Any, db: Path) -> None:
    """Eight processes fail at the same moment, ten rounds (reset between them): each round, one
    ``closed -> open`` row — the transition happened once, whoever saw it first."""
    rounds = 10
    workers = [spawn("trip_rounds", db=str(db), name="together", rounds=rounds) for _ in range(8)]
    for w in workers:
        w.expect("ready", timeout=30)
    store = SQLiteStore(db, poll_interval=0.01)
    try:
        b = Registry(hooks=[], store=store).get("together", failure_threshold=1, recovery_timeout=600.0)
        for _ in range(rounds):
            if b.state is not CircuitState.CLOSED:  # the workers' opening reached this process: reset it
                assert b.state is CircuitState.OPEN
                b.reset()
            assert store.flush(10)
            armed = [w.expect("armed", timeout=30) for w in workers]
            assert all(a["state"] == "closed" for a in armed), armed
            for w in workers:
                w.go()
            results = [w.expect("round", timeout=30) for w in workers]
            assert all(res["state"] == "open" for res in results), results
            assert eventually(lambda: b.state is CircuitState.OPEN)
        for w in workers:
            w.expect("done", timeout=30)
            assert w.wait(20) == 0
    finally:
        store.close()
    opened = rows(db, "SELECT count(*) FROM circuit_breaker_events WHERE service_name = 'together' "
                      "AND event_type = 'state_change' AND to_state = 'open'")
    assert opened == [(rounds,)], rows(db, "SELECT from_state, to_state, process, additional_data FROM "
                                           "circuit_breaker_events WHERE event_type = 'state_change'")


def test_a_lease_held_by_a_killed_process_expires(spawn: Any, db: Path) -> None:
    probe_timeout = 4.0
    common = {"db": str(db), "name": "leased", "recovery_timeout": 0.3, "probe_timeout": probe_timeout}
    # the other process is started (interpreter, imports, store) before the holder takes its probe: only
    # its first refusal has to come within the lease's 4 s, not a process start on a busy machine
    other = spawn("probe_hold", hold=0.0, deadline=30.0, barrier=True, **common)
    other.expect("ready", timeout=60)
    holder = spawn("probe_hold", hold=60.0, deadline=30.0, **common)
    got = holder.expect("probe", timeout=30)
    other.go()
    other.expect("waiting", timeout=30)  # refused: the holder's lease is live
    assert got["wall"] + probe_timeout > time.time(), "the lease expired before the test could kill its holder"
    holder.kill()
    assert rows(db, "SELECT count(*) FROM circuit_breaker_probe_leases WHERE service_name = 'leased' "
                    "AND kind = 'held'") == [(1,)]
    taken = other.expect("probe", timeout=probe_timeout + 20)
    assert taken["waited"]
    # the second probe began only once the dead holder's lease ran out
    assert taken["wall"] >= got["wall"] + probe_timeout - 0.25, (got, taken)
    other.expect("done", timeout=20)
    assert other.wait(20) == 0


# -- 3. combined evidence --------------------------------------------------------------------------


@pytest.mark.parametrize("settle", [0.0, 0.5], ids=["failing-at-start", "failing-after-settling"])
def test_failures_of_four_processes_trip_the_circuit_together(spawn: Any, db: Path, settle: float) -> None:
    """Threshold 5; four processes see two failures each: none alone trips, together they do.
    ``failing-at-start``: the failures come right after the breaker is taken (a worker that starts
    while the service is down); ``failing-after-settling``: half a second later."""
    workers = [spawn("evidence", db=str(db), name="evident", settle=settle, deadline=10.0) for _ in range(4)]
    for w in workers:
        w.expect("ready", timeout=30)
    for w in workers:
        w.go()
    reports = [w.expect("state", timeout=40) for w in workers]
    for w in workers:
        assert w.wait(20) == 0
    states = rows(db, "SELECT current_state, failure_count FROM circuit_breaker_states WHERE service_name = 'evident'")
    assert [r["state"] for r in reports] == ["open"] * 4, (reports, states)
    assert states[0][0] == "open"
    # None could trip alone (at most 2 each, threshold 5); together they did. A worker whose second call
    # came after the opening was refused, so 5 to 8 failures were counted (it was "== 8" and flaky).
    assert all(r["counted"] <= 2 for r in reports)
    assert 5 <= sum(r["counted"] for r in reports) <= 8, reports
    (data,), = rows(db, "SELECT additional_data FROM circuit_breaker_events WHERE service_name = 'evident' "
                        "AND event_type = 'state_change' AND to_state = 'open'")
    assert json.loads(data)["reason"] == "shared_failures" and json.loads(data)["failures"] >= 5


# -- 4. visibility ---------------------------------------------------------------------------------


def test_transitions_reach_another_process(spawn: Any, db: Path) -> None:
    store = SQLiteStore(db, poll_interval=0.025)
    try:
        reg = Registry(hooks=[], store=store)
        b = reg.get("visible", failure_threshold=1, recovery_timeout=600.0)
        assert store.flush(10)
        watcher = spawn("watch", db=str(db), name="visible", expect=["forced_open", "closed", "open"], deadline=60)
        assert watcher.expect("ready", timeout=30)["state"] == "closed"
        b.force_open()
        assert watcher.expect("state", timeout=10)["state"] == "forced_open"
        b.reset()
        assert watcher.expect("state", timeout=10)["state"] == "closed"
        b.record_failure(b.admit(), RuntimeError("down"))  # a trip, not a manual transition
        assert watcher.expect("state", timeout=10)["state"] == "open"
        assert watcher.expect("finished", timeout=20)["finished"]
        assert watcher.wait(20) == 0
    finally:
        store.close()


# -- 5. no reset at start --------------------------------------------------------------------------


def test_a_new_process_starts_open_with_the_remaining_time(spawn: Any, db: Path) -> None:
    recovery = 30.0
    first = spawn("open_exit", db=str(db), name="remembered", recovery_timeout=recovery)
    opened = first.expect("state", timeout=30)
    assert first.wait(20) == 0
    assert opened["state"] == "open"
    version = rows(db, "SELECT version FROM circuit_breaker_states WHERE service_name = 'remembered'")
    policy = {"failure_threshold": 1, "recovery_timeout": recovery}
    second = spawn("report", db=str(db), names=["remembered"], policy=policy)
    seen = second.expect("breakers", timeout=30)
    assert second.wait(20) == 0
    b = seen["breakers"]["remembered"]
    assert b["state"] == "open"
    assert b["opened_at"] == pytest.approx(opened["opened_at"])
    elapsed = seen["wall"] - opened["wall"]
    assert 0.0 < b["retry_after"] < recovery
    assert b["retry_after"] <= recovery - elapsed + 0.5  # the rest of the period, not a new one
    # and starting did not write over the shared state
    assert rows(db, "SELECT version FROM circuit_breaker_states WHERE service_name = 'remembered'") == version
    assert rows(db, "SELECT current_state FROM circuit_breaker_states WHERE service_name = 'remembered'") == \
        [("open",)]


# -- 6. crash safety -------------------------------------------------------------------------------

CRASH_RUNS = 50
CRASH_POLICY = {"failure_threshold": 3, "recovery_timeout": 3600.0}


def _crash_run(folder: Path, run: int, delay: float) -> dict[str, Any]:
    path = folder / f"crash-{run}.db"
    writer = Worker(folder, "crash", db=str(path), seed=run, n=20)
    try:
        writer.expect("go", timeout=30)
        time.sleep(delay)
        writer.kill()
    finally:
        writer.close()
    check = quick_check(path)
    before = {name: (state, opened_at, open_until, version) for name, state, opened_at, open_until, version in rows(
        path, "SELECT service_name, current_state, opened_at, open_until, version FROM circuit_breaker_states")}
    events = rows(path, "SELECT count(*) FROM circuit_breaker_events")[0][0]
    reader = Worker(folder, "report", db=str(path), names=sorted(before), policy=CRASH_POLICY)
    try:
        seen = reader.expect("breakers", timeout=30)
        rc = reader.wait(20)
    finally:
        reader.close()
    after = {name: (state, opened_at, open_until, version) for name, state, opened_at, open_until, version in rows(
        path, "SELECT service_name, current_state, opened_at, open_until, version FROM circuit_breaker_states")}
    return {"run": run, "check": check, "before": before, "after": after, "seen": seen, "events": events, "rc": rc}


def test_the_file_survives_sigkill_at_any_moment(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    delays = [rng.uniform(0.05, 0.5) for _ in range(CRASH_RUNS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: _crash_run(tmp_path, *args), enumerate(delays)))
    bad = []
    states: dict[str, int] = {}
    for r in results:
        problems = []
        if r["check"] != "ok":
            problems.append(f"quick_check: {r['check']}")
        if r["rc"] != 0:
            problems.append(f"reader rc {r['rc']}")
        if len(r["before"]) != 20:
            problems.append(f"{len(r['before'])} state rows")
        for name, (state, opened_at, open_until, _) in r["before"].items():
            states[state] = states.get(state, 0) + 1
            got = r["seen"]["breakers"][name]
            if got["state"] != state:
                problems.append(f"{name}: row {state}, new process {got['state']}")
            elif state in ("open", "forced_open") and got["opened_at"] != pytest.approx(opened_at):
                problems.append(f"{name}: opened_at row {opened_at}, new process {got['opened_at']}")
            elif state == "open" and abs(got["retry_after"] - (open_until - r["seen"]["wall"])) > 2.0:
                problems.append(f"{name}: open_until {open_until}, retry_after {got['retry_after']}")
        if r["after"] != r["before"]:
            problems.append("the new process changed the stored state")
        if problems:
            bad.append((r["run"], problems))
    assert not bad, bad
    # the kills landed while the writer was busy: histories of varying length, every state seen
    assert sum(1 for r in results if r["events"] > 0) >= CRASH_RUNS // 2
    assert {"closed", "open", "forced_open", "disabled"} <= set(states), states


# -- 7. exit without close() -----------------------------------------------------------------------


def test_a_process_that_never_closes_exits_with_its_rows_written(spawn: Any, db: Path) -> None:
    n = 3000
    w = spawn("no_close", db=str(db), k=3, n=n, trip=True)
    done = w.expect("done", timeout=60)
    assert w.wait(10) == 0  # liveness bound; the exit time is measured by the benchmark
    exit_seconds = time.monotonic() - done["mono"]
    print(f"\nexit without close(): {exit_seconds:.3f} s from the last call to process exit")
    assert rows(db, "SELECT sum(occurrences) FROM circuit_breaker_events WHERE event_type = 'failure'") == [(n,)]
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics") == [(n,)]
    assert rows(db, "SELECT current_state FROM circuit_breaker_states WHERE service_name = 'exit-0'") == \
        [("forced_open",)]
    assert quick_check(db) == "ok"


# -- 8. fork() ----

@pytest.mark.parametrize("parent_uses_store", [True, False], ids=["store-made-before-fork", "store-made-in-child"])
def test_multiprocessing_fork_children_and_pools_keep_their_counts(spawn: Any, db: Path,
                                                                   parent_uses_store: bool) -> None:
    """Children started by multiprocessing (fork) leave by os._exit; their counts are written by the
    multiprocessing exit path. Four Process children of 1,000 successes and 1 failure, and a Pool of
    20,000 tasks (closed and joined): every call is in the database. Also when the parent never made a
    store and each child opens its own (from ``CIRCUITRY_DB``): the exit flush was registered only for
    stores carried across the fork, so those children wrote nothing at all."""
    w = spawn("multiprocessing_fork", db=str(db), children=4, calls=1000, workers=4, tasks=20_000,
              parent_uses_store=parent_uses_store)
    r = w.expect("exitcodes", timeout=120)
    assert w.wait(30) == 0, w.stderr_tail()
    assert r["exitcodes"] == [0] * 4 and r["pool_done"] == 20_000
    got = dict(rows(db, "SELECT service_name, sum(successes) FROM circuit_breaker_metrics GROUP BY service_name"))
    assert got["mp-process"] == 4 * 1000
    assert got["mp-pool"] == 20_000
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics WHERE service_name = 'mp-process'") == [(4,)]


# -- 8b. fork() -------------------------------------------------------------------------------------


def test_a_store_used_before_fork_works_in_parent_and_children(spawn: Any, db: Path) -> None:
    """Each child records failures on its copy of the breaker and flushes before os._exit; the
    parent forks right after a burst of failures, so its writer is often mid-transaction at fork()."""
    rounds, child_failures, burst = 8, 50, 3000
    w = spawn("fork", db=str(db), poll_interval=0.005, rounds=rounds, burst=burst, child_failures=child_failures,
              child_flush=2.0, child_deadline=15.0)
    r = w.expect("children", timeout=rounds * 20 + 40)
    assert w.wait(20) == 0, w.stderr_tail()
    # every child flushed cleanly (its store could write) and exited
    assert r["children"] == [0] * rounds, r
    assert r["ok_before"] and r["ok_after"] and r["ok_last"], r
    assert r["signal_state"] == "forced_open", r  # the first child's transition reached the parent
    total = r["parent_failures"] + rounds * child_failures
    # while the parent ran: every child's rows had arrived, each child writing as its own process
    by_process = {e["process"]: e["n"] for e in r["events"]}
    assert len(by_process) == 1 + rounds, by_process
    assert sum(by_process.values()) == total - 1  # all but the parent's last failure, recorded after
    assert r["last_events"] == total  # the parent's connection kept working after the children
    assert r["quick_check"] == "ok"
    assert r["health"]["faults"] == 0, r["health"]
    assert rows(db, "SELECT sum(failures) FROM circuit_breaker_metrics WHERE service_name = 'forked'") == [(total,)]


def test_a_child_keeps_its_rows_when_the_parent_closes_its_store(spawn: Any, db: Path) -> None:
    """The parent closes its store (reconfiguring, or winding down) while a forked child still writes."""
    w = spawn("fork_parent_closes", db=str(db), child_rounds=12, close_after=0.3, child_deadline=20.0)
    child = w.expect("child_failures", timeout=40)
    status = w.expect("child_status", timeout=40)["child_status"]
    assert w.wait(20) == 0, w.stderr_tail()
    assert status == 0
    assert all(child["flushes"]), child
    stored = rows(db, "SELECT sum(occurrences) FROM circuit_breaker_events WHERE event_type = 'failure' "
                      "AND process = ?", (child["child_process"],))
    assert stored == [(child["child_failures"],)], "the child's flushed rows are not in the database"
    assert quick_check(db) == "ok"
