"""The PostgreSQL store: propagation across hosts, persisted failures per second, probes per half-open
episode across hosts, and the hot path with the store attached.

    python -m benchmarks.bench_postgres            # full run, about 4 minutes on 2 cores
    python -m benchmarks.bench_postgres --quick    # smoke run (rough numbers)
    python -m benchmarks.bench_postgres --url postgresql://user:pw@host/db   # an existing server

Without ``--url`` a throw-away cluster is started (``tests/pg_cluster.py``: ``initdb``, a free port on
127.0.0.1) with PostgreSQL's default durability (``fsync`` and synchronous commit on). "Hosts" are
processes (``tests/host_worker.py``) with connections of their own; the monotonic clock is system-wide
on Linux, so their readings compare.

1. **Propagation**: this process ("host-1") makes ``--transitions`` transitions (alternating
   ``force_open()`` / ``reset()``) at random intervals of 50-150 ms; two watcher processes ("host-2",
   "host-3") note, from a hook, the moment their breaker takes the new state. Delay = seen - made, over
   every (transition, watcher); a change a watcher never saw before the next one was made counts as
   missed, with the gap as its delay (a lower bound).
2. **Persisted failures per second**, one process, each failure its own row
   (``failure_rows_per_second=10**6``): paced at ``--rate`` for ``--seconds``, then ``flush()``; rate =
   rows in the database / (first failure to end of flush); dropped rows must be 0. Also flat out.
3. **Probes per half-open episode**: 3 hosts x 4 workers hammer one circuit whose probes always fail
   (so every episode ends with a re-open and a new one begins); each probe's start is assigned to the
   half-open episode (from the database's history) it fell in. Runs with 1 and 2 permits.
4. **Hot path**: ``benchmarks/bench_core.py`` with the PostgreSQL store attached instead of SQLite.

Exit status 1 if a sanity check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKER = ROOT / "tests" / "host_worker.py"


def _quiet_logs() -> None:
    import logging

    logging.getLogger("circuitry").setLevel(logging.CRITICAL)


def _rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description is not None else []


def _new_db(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


class Proc:
    def __init__(self, mode: str, **args: Any) -> None:
        env = dict(os.environ, CIRCUITRY_DB="none", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), mode, json.dumps(args)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError), self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for msg in self.lines:
                    if key in msg:
                        self.lines.remove(msg)
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {key!r} from a worker within {timeout} s")
                self.cond.wait(left)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# -- 1. propagation ------------------------------------------------------------------------------------


def bench_propagation(url: str, n: int, lo: float, hi: float, folder: Path) -> dict[str, Any]:
    _quiet_logs()
    from circuitry import Registry
    from circuitry.store import open_store

    control = folder / "watch-stop"
    watchers = [Proc("watch", url=url, name="propagated", control=str(control), host=f"host-{i + 2}",
                     deadline=n * hi + 120) for i in range(2)]
    store = open_store(url)
    try:
        b = Registry(hooks=[], store=store).get("propagated", failure_threshold=5, recovery_timeout=600.0)
        assert store.flush(30)
        for w in watchers:
            w.wait_for("ready", 60)
        time.sleep(0.5)
        rng = random.Random(20240611)
        made: list[tuple[float, str]] = []
        for i in range(n):
            time.sleep(rng.uniform(lo, hi))
            if i % 2 == 0:
                b.force_open()
                made.append((time.monotonic(), "forced_open"))
            else:
                b.reset()
                made.append((time.monotonic(), "closed"))
        time.sleep(1.0)
        control.write_text("stop")
        delays: list[float] = []
        missed = 0
        for w in watchers:
            seen = []
            with w.cond:
                seen = [m for m in w.lines if "state" in m and "mono" in m]
            j = 0
            for k, (t, state) in enumerate(made):
                nxt = made[k + 1][0] if k + 1 < len(made) else float("inf")
                while j < len(seen) and seen[j]["mono"] < t:
                    j += 1
                if j < len(seen) and seen[j]["state"] == state and seen[j]["mono"] < nxt:
                    delays.append(seen[j]["mono"] - t)
                    j += 1
                else:  # superseded before it arrived: its delay was at least the gap (a lower bound)
                    missed += 1
                    delays.append(nxt - t if nxt != float("inf") else 1.0)
    finally:
        store.close()
        for w in watchers:
            w.close()
    return {"trials": len(delays), "missed": missed, "load": os.getloadavg()[0], "p50_ms": 1000 * _pct(delays, 0.5),
            "p99_ms": 1000 * _pct(delays, 0.99), "max_ms": 1000 * max(delays),
            "mean_ms": 1000 * statistics.fmean(delays)}


# -- 2. persisted failures per second --------------------------------------------------------------------


def bench_throughput(url: str, seconds: float, rate: float | None) -> dict[str, Any]:
    _quiet_logs()
    from circuitry import Registry
    from circuitry.store import open_store

    store = open_store(url, failure_rows_per_second=10**6)
    reg = Registry(hooks=[], store=store)
    breakers = [reg.get(f"svc-{i}", failure_threshold=10**9, recovery_timeout=60.0) for i in range(4)]
    assert store.flush(30)
    exc = ConnectionError("connection refused")
    backlog: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            backlog.append(len(store.rows))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    recorded = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    chunk = 1000 if rate is None else max(4, int(rate / 200))
    per = chunk // 4
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate is not None and recorded > rate * (now - t0):
            time.sleep(0.001)
            continue
        for b in breakers:
            for _ in range(per):
                b.record_failure(b.admit(), exc)
        recorded += 4 * per
    t_rec = time.perf_counter()
    clean = store.flush(300)
    t_flush = time.perf_counter()
    stop.set()
    sampler.join()
    health = store.health()
    store.close()
    ((rows, occurrences),) = _rows(url, "SELECT count(*), sum(occurrences) FROM circuit_breaker_events "
                                        "WHERE event_type = 'failure'")
    _rows(url, "DELETE FROM circuit_breaker_events")
    return {"rate": rate, "recorded": recorded, "rows": rows, "occurrences": int(occurrences or 0),
            "dropped": health.dropped, "clean_flush": clean, "recorded_per_s": recorded / (t_rec - t0),
            "persisted_per_s": rows / (t_flush - t0), "flush_s": t_flush - t_rec,
            "backlog_max": max(backlog, default=0)}


# -- 3. probes per half-open episode ----------------------------------------------------------------------


def bench_probes(url: str, permits: int, duration: float) -> dict[str, Any]:
    name = f"probed-{permits}"
    workers = [Proc("probe", url=url, host=f"host-{i % 3 + 1}", name=name, seed=i, duration=duration,
                    recovery_timeout=0.2, probe_timeout=5.0, probe_time=0.05, success_p=0.0, permits=permits)
               for i in range(12)]
    try:
        for w in workers:
            w.wait_for("ready", 120)
        for w in workers:
            w.go()
        reports = [w.wait_for("intervals", duration + 120) for w in workers]
    finally:
        for w in workers:
            w.close()
    probes = sorted(tuple(p) for r in reports for p in r["intervals"])
    events = _rows(url, "SELECT ts, from_state, to_state FROM circuit_breaker_events WHERE service_name = %s AND "
                        "event_type = 'state_change' ORDER BY id", (name,))
    # An episode runs from its open -> half_open row to the next one (a new episode begins only after
    # the previous one ended). Stamps are wall-clock seconds of one machine; the half-open row is stamped
    # when the open period ends, which a probe's start may precede by a lease's lead (2 poll intervals).
    starts = [ts - 0.06 for ts, _, to in events if to == "half_open"]
    import bisect

    per_episode = [0] * len(starts)
    outside = 0
    for p in probes:
        i = bisect.bisect_right(starts, p[4]) - 1
        if i < 0:
            outside += 1
        else:
            per_episode[i] += 1
    windows = starts
    points = sorted([(p[0], 1) for p in probes] + [(p[1], -1) for p in probes])
    depth = peak = 0
    for _, step in points:
        depth += step
        peak = max(peak, depth)
    return {"permits": permits, "workers": 12, "episodes": len(windows), "probes": len(probes),
            "max_per_episode": max(per_episode, default=0), "mean_per_episode":
            statistics.fmean(per_episode) if per_episode else 0.0, "outside_episodes": outside,
            "max_concurrent": peak, "rejected": sum(r["rejected"] for r in reports)}


# -- 4. hot path -------------------------------------------------------------------------------------------


def bench_hot_path(url: str, repeats: int, quick: bool) -> str:
    from benchmarks import bench_core
    from circuitry import Registry
    from circuitry.store import open_store

    def pg_registry(tmpdir: str) -> tuple[Registry, Any]:
        store = open_store(url)
        reg = Registry(hooks=[])
        reg.attach(store)
        return reg, store

    bench_core.store_registry = pg_registry  # type: ignore[assignment]
    out = io.StringIO()
    argv = ["--store", "--repeats", str(repeats)] + (["--quick"] if quick else [])
    with contextlib.redirect_stdout(out):
        status = bench_core.main(argv)
    text = out.getvalue().replace("SQLite store", "PostgreSQL store")
    if status:
        text += f"\n(bench_core exited {status})"
    return text


def machine() -> str:
    return f"{platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an existing server's database to use (its circuit tables are dropped first: "
                                  "a database of its own, please); default: a throw-away cluster")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--transitions", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--rate", type=float, default=25_000.0)
    ap.add_argument("--only", choices=["propagation", "throughput", "probes", "hot"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["propagation", "throughput", "probes", "hot"])
    n = args.transitions or (40 if args.quick else 200)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    cluster = None
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if args.url:
        admin = args.url
    else:
        from tests.pg_cluster import Cluster

        cluster = Cluster(durable=True).start()
        admin = cluster.url()
    ok = True
    try:
        server = _rows(admin, "SHOW server_version")[0][0]
        print(f"machine: {machine()}; PostgreSQL {server}{' (throw-away cluster, fsync on)' if cluster else ''}")
        if "propagation" in only:
            r = bench_propagation(_new_db(admin, "bench_propagation"), n, 0.05, 0.15, folder)
            print(f"propagation across hosts: {json.dumps(r)}")
            ok &= r["trials"] >= min(100, 2 * n)
        if "throughput" in only:
            url = _new_db(admin, "bench_throughput")
            for rate in (args.rate, None):
                r = bench_throughput(url, seconds, rate)
                print(f"persisted failures (one row each), {'paced' if rate else 'flat out'}: {json.dumps(r)}")
                ok &= r["rows"] + r["dropped"] >= r["recorded"] - 0 and r["occurrences"] == r["rows"]
                if rate:
                    ok &= r["dropped"] == 0 and r["rows"] == r["recorded"]
        if "probes" in only:
            for permits in (1, 2):
                r = bench_probes(_new_db(admin, f"bench_probes_{permits}"), permits, 8.0 if args.quick else 25.0)
                print(f"probes per half-open episode: {json.dumps(r)}")
                ok &= r["max_per_episode"] <= permits and r["max_concurrent"] <= permits
        if "hot" in only:
            print(bench_hot_path(_new_db(admin, "bench_hot"), 3 if args.quick else 9, args.quick))
    finally:
        if cluster is not None:
            cluster.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
