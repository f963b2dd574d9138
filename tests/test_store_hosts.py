"""Several hosts on one PostgreSQL server, simulated by real processes with connections of their own
(``tests/host_worker.py``; each process names the "host" it stands for).

What these pin: three hosts x four workers go through an outage and a recovery as one circuit — one
opening per outage in the history, every worker refusing calls while it lasts, at most one probe at a
time, one closing, every worker closed at the end, counts conserved — and the same fleet survives the
server restarting in the middle: no exception reaches a protected call, no call waits on the database,
every count reaches the database afterwards, and notifications resume.

Timing: deadlines are liveness bounds on a noisy shared machine, never speed claims (the figures are
in ``benchmarks/bench_postgres.py``).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("host_worker.py")


class HostProcess:
    """One worker process; its stdout JSON lines arrive on a queue (every wait has a timeout)."""

    def __init__(self, folder: Path, n: int, mode: str, **args: Any) -> None:
        self.err_path = folder / f"host-worker-{n}-{mode}.stderr"
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in close()
        env = dict(os.environ, CIRCUITRY_DB="none", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), mode, json.dumps(args)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=env)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

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
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {key!r} within {timeout} s\n{self.stderr_tail()}") from None
            if msg is None:
                self.lines.put(None)
                raise AssertionError(f"worker exited (rc={self.proc.poll()}) before {key!r}\n{self.stderr_tail()}")
            if key in msg:
                return msg

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._err.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    started: list[HostProcess] = []
    counter = itertools.count()

    def start(mode: str, **args: Any) -> HostProcess:
        p = HostProcess(tmp_path, next(counter), mode, **args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params or None).fetchall()


def set_service(control: Path, state: str) -> None:
    tmp = control.with_suffix(".tmp")
    tmp.write_text(state)
    tmp.replace(control)


def fleet(spawn: Any, url: str, control: Path, hosts: int = 3, per_host: int = 4, **args: Any) -> list[HostProcess]:
    workers = [spawn("outage", url=url, control=str(control), host=f"host-{h + 1}", **args)
               for h in range(hosts) for _ in range(per_host)]
    for w in workers:
        w.expect("ready", timeout=60)
    return workers


def reach(workers: list[HostProcess], state: str, timeout: float = 60.0) -> None:
    """Wait until every worker has said its breaker reached ``state`` (each reads on from its last message):
    a phase of a test lasts as long as a loaded machine needs, not a fixed time."""
    for w in workers:
        deadline = time.monotonic() + timeout
        while w.expect("state", timeout=max(0.1, deadline - time.monotonic()))["state"] != state:
            pass


def assert_conserved(url: str, reports: list[dict[str, Any]], name: str = "payment_api") -> None:
    calls = sum(r["counts"]["calls"] for r in reports)
    ok = sum(r["counts"]["successes"] for r in reports)
    failed = sum(r["counts"]["failures"] for r in reports)
    rejected = sum(r["counts"]["rejections"] for r in reports)
    got = rows(url, "SELECT sum(calls), sum(successes), sum(failures), sum(rejections) FROM circuit_breaker_metrics "
                    "WHERE service_name = %s", (name,))
    assert [int(v) for v in got[0]] == [calls, ok, failed, rejected]
    got = rows(url, "SELECT sum(occurrences) FROM circuit_breaker_events WHERE service_name = %s "
                    "AND event_type = 'failure'", (name,))
    assert int(got[0][0] or 0) == failed


def test_three_hosts_by_four_workers_go_through_an_outage_as_one_circuit(spawn: Any, pg_url: str,
                                                                        tmp_path: Path) -> None:
    control = tmp_path / "service"
    set_service(control, "up")
    workers = fleet(spawn, pg_url, control)
    time.sleep(1.0)
    set_service(control, "down")  # the payment provider goes down for everyone
    reach(workers, "open")
    time.sleep(1.0)  # open, half-open, open again: calls are refused
    set_service(control, "up")  # and comes back
    reach(workers, "closed")
    set_service(control, "stop")
    reports = [w.expect("report", timeout=90) for w in workers]
    for w in workers:
        assert w.proc.wait(30) == 0, w.stderr_tail()

    assert all(r["surprises"] == [] for r in reports), [r["surprises"] for r in reports if r["surprises"]]
    assert all(r["flushed"] and r["health"]["dropped"] == 0 for r in reports), reports
    assert len({r["process"].split(":")[0] for r in reports}) == 3  # three hosts
    # every worker saw the outage as an open circuit and refused calls, and every one is closed at the end
    assert all("open" in r["states"] and r["seen"]["rejected"] > 0 for r in reports), [r["states"] for r in reports]
    assert all(r["final"] == "closed" for r in reports), [r["final"] for r in reports]
    # the shared history, in commit order: one opening from closed for the one outage, one closing at the end
    transitions = rows(pg_url, "SELECT from_state, to_state, process FROM circuit_breaker_events WHERE service_name = "
                               "'payment_api' AND event_type = 'state_change' ORDER BY id")
    pairs = [(f, t) for f, t, _ in transitions]
    assert pairs.count(("closed", "open")) == 1, pairs
    assert pairs[-1] == ("half_open", "closed") and pairs.count(("half_open", "closed")) == 1, pairs
    # each half-open episode was one probe: half_open is entered once per episode, left once
    assert pairs.count(("open", "half_open")) == pairs.count(("half_open", "open")) + 1, pairs
    ((state, _),) = rows(pg_url, "SELECT current_state, failure_count FROM circuit_breaker_states "
                                             "WHERE service_name = 'payment_api'")
    assert state == "closed"
    writers = {p.split(":")[0] for _, _, p in transitions}
    print(f"\ntransitions {pairs}; written by {sorted(writers)}; slowest protected call "
          f"{max(r['slowest'] for r in reports) * 1000:.1f} ms")
    assert_conserved(pg_url, reports)


def test_the_server_restarts_in_the_middle(spawn: Any, pg_cluster: Any, pg_url: str, tmp_path: Path) -> None:
    """Three hosts x four workers call through an outage while the server restarts: no exception reaches
    a protected call, no call waits on the database, the backlog reaches the database afterwards, and
    notifications resume (a transition after the restart reaches every worker)."""
    control = tmp_path / "service"
    set_service(control, "up")
    workers = fleet(spawn, pg_url, control)
    time.sleep(1.0)
    set_service(control, "down")
    time.sleep(0.5)
    pg_cluster.restart()  # mid-outage: the writers' and listeners' sessions all end
    time.sleep(1.5)
    set_service(control, "up")
    time.sleep(3.0)
    # after the restart, an operator opens the circuit by hand from a process of its own: every worker
    # of every host must see it (notifications resumed, or at worst the polling fallback)
    from circuitry import Registry
    from circuitry.store import open_store

    store = open_store(pg_url, poll_interval=0.025)
    try:
        b = Registry(hooks=[], store=store).get("payment_api", failure_threshold=5, recovery_timeout=0.5,
                                                on=(ConnectionError,), probe_timeout=2.0)
        assert store.flush(30)
        b.force_open()
        assert store.flush(30)
        reach(workers, "forced_open")
        set_service(control, "stop")
        reports = [w.expect("report", timeout=90) for w in workers]
        for w in workers:
            assert w.proc.wait(30) == 0, w.stderr_tail()
    finally:
        store.close()

    assert all(r["surprises"] == [] for r in reports), [r["surprises"] for r in reports if r["surprises"]]
    slowest = max(r["slowest"] for r in reports)
    print(f"\nslowest protected call while the server restarted: {slowest * 1000:.1f} ms")
    # a call that waited on the database would take the connect or statement timeout (3 s, 5 s)
    assert slowest < 2.0
    assert all(r["health"]["faults"] >= 1 for r in reports)  # every worker noticed the restart
    assert all(r["flushed"] and r["health"]["healthy"] and r["health"]["dropped"] == 0 for r in reports)
    assert all(r["final"] == "forced_open" for r in reports), [r["final"] for r in reports]
    assert all(r["listening"] for r in reports)
    assert_conserved(pg_url, reports)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])
    depth = peak = 0
    for _, step in points:
        depth += step
        peak = max(peak, depth)
    return peak


def test_one_probe_at_a_time_across_hosts(spawn: Any, pg_url: str) -> None:
    workers = [spawn("probe", url=pg_url, host=f"host-{i % 3 + 1}", name="probed", seed=i, duration=5.0,
                     recovery_timeout=0.3, probe_timeout=5.0, probe_time=0.1, success_p=0.3) for i in range(6)]
    for w in workers:
        w.expect("ready", timeout=60)
    for w in workers:
        w.go()
    reports = [w.expect("intervals", timeout=90) for w in workers]
    probes = sorted((t0, t1) for r in reports for t0, t1, *_ in r["intervals"])
    assert len(probes) >= 3, probes
    assert sum(r["rejected"] for r in reports) > 0
    assert max_overlap(probes) == 1, probes
