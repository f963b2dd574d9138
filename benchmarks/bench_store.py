"""The SQLite store's throughput, cross-process latency, exit time, idle cost and read cost.

    python benchmarks/bench_store.py            # full run, a few minutes on 2 cores
    python benchmarks/bench_store.py --quick    # smoke run (rough numbers)

Five measurements, each in fresh database files in a temporary folder:

1. **Persisted failures per second**, one process: breakers with a huge threshold (so they stay closed)
   record failures as fast as the loop can for ``--seconds``; then ``flush()``. Persisted = the failures
   the database's rows account for (``sum(occurrences)`` of ``failure`` rows) divided by the time from
   the first failure to the end of the flush. Run twice: with the default ``failure_rows_per_second``
   (100 rows a second per circuit, then one row per writer cycle carrying the number of its failures)
   and with every failure its own row (``failure_rows_per_second=10**6``). A sampler thread records the
   backlog (``len(store.rows)``) every 5 ms.
2. **Cross-process visibility**: this process makes ``--transitions`` transitions (alternating
   ``force_open()`` / ``reset()``) at random intervals; a second process polls its breaker's ``state`` in
   a tight loop and notes the ``time.monotonic()`` of each change it sees (the monotonic clock is
   system-wide on Linux, so the two processes' readings compare). Delay = seen - made. A change the
   watcher never saw before the next one was made counts as missed, with the gap as its delay (a
   lower bound).
3. **Exit without close()**: a process records failures and a transition and returns without calling
   ``close()``; the time from its last call to its exit (the atexit flush), and whether its rows landed.
4. **Idle cost**: a process with 10,000 circuits, none called, measured with ``time.process_time()``
   over ``--idle-seconds`` after a warm-up: the share of one core the store's threads take.
5. **Reads**: a database holding 1,000,000 failure events over 100 circuits (written directly, as a
   long-running application would have left them): ``get_stats()`` of one circuit; and
   ``circuitry status`` over a database of 10,000 circuits, as a whole command (start-up included).

Exit status 1 if a sanity check fails (rows missing, changes missed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# -- child processes -------------------------------------------------------------------------------


def _quiet_logs() -> None:
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def child_watch(db: str, pause: float, deadline: float) -> None:
    """Poll one breaker's state (in a tight loop if ``pause`` is 0, else sleeping ``pause`` between
    reads); print every change with its monotonic time. ``disabled`` (force_closed) ends the run."""
    _quiet_logs()
    from circuitry import Registry
    from circuitry.store import SQLiteStore

    store = SQLiteStore(db)
    b = Registry(hooks=[], store=store).get("visible", failure_threshold=1, recovery_timeout=3600.0)
    last = b.state.value
    print(json.dumps({"ready": True, "state": last}), flush=True)
    seen: list[tuple[str, float]] = []
    end = time.monotonic() + deadline
    while last != "disabled" and time.monotonic() < end:
        state = b.state.value
        if state != last:
            seen.append((state, time.monotonic()))
            last = state
        elif pause:
            time.sleep(pause)
    store.close()
    print(json.dumps({"seen": seen}), flush=True)


def child_no_close(db: str, failures: int) -> None:
    """Record failures and a transition, then return without close()."""
    _quiet_logs()
    from circuitry import Registry
    from circuitry.store import SQLiteStore

    reg = Registry(hooks=[], store=SQLiteStore(db))
    b = reg.get("exiting", failure_threshold=10**9, recovery_timeout=60.0)
    exc = RuntimeError("down")
    for _ in range(failures):
        b.record_failure(b.admit(), exc)
    b.force_open()
    print(json.dumps({"mono": time.monotonic()}), flush=True)


# -- measurements ----------------------------------------------------------------------------------


def bench_throughput(folder: Path, seconds: float, rate: float | None, rows_per_second: int) -> dict[str, Any]:
    """Record failures flat out (``rate`` None) or paced at ``rate`` per second, then flush."""
    _quiet_logs()
    from circuitry import Registry
    from circuitry.store import SQLiteStore

    db = folder / f"throughput-{rate}-{rows_per_second}.db"
    store = SQLiteStore(db, failure_rows_per_second=rows_per_second)
    reg = Registry(hooks=[], store=store)
    breakers = [reg.get(f"svc-{i}", failure_threshold=10**9, recovery_timeout=60.0) for i in range(4)]
    assert store.flush(10)
    exc = ConnectionError("connection refused")
    backlog: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            backlog.append(len(store.rows))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    recorded = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    chunk = 1000 if rate is None else max(4, int(rate / 200))  # paced: a chunk every 5 ms
    per_breaker = chunk // 4
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate is not None and recorded > rate * (now - t0):
            time.sleep(0.001)
            continue
        for b in breakers:
            for _ in range(per_breaker):
                b.record_failure(b.admit(), exc)
        recorded += 4 * per_breaker
    t_rec = time.perf_counter()
    clean = store.flush(120)
    t_flush = time.perf_counter()
    sampling.set()
    sampler.join()
    health = store.health()
    store.close()
    conn = sqlite3.connect(db)
    rows, counted = conn.execute("SELECT count(*), coalesce(sum(occurrences), 0) FROM circuit_breaker_events "
                                 "WHERE event_type = 'failure'").fetchone()
    in_rollups = conn.execute("SELECT coalesce(sum(failures), 0) FROM circuit_breaker_metrics").fetchone()[0]
    conn.close()
    return {
        "recorded": recorded, "rows": rows, "counted": counted, "in_rollups": in_rollups, "dropped": health.dropped,
        "clean_flush": clean, "record_seconds": t_rec - t0, "flush_seconds": t_flush - t_rec,
        "recorded_per_s": recorded / (t_rec - t0), "persisted_per_s": counted / (t_flush - t0),
        "rows_per_s": rows / (t_flush - t0), "rows_per_second_setting": rows_per_second,
        "backlog_max": max(backlog, default=0), "backlog_mean": statistics.fmean(backlog) if backlog else 0.0,
        "queue_size": store.queue_size, "rate": rate,
    }


def bench_visibility(folder: Path, n: int, lo: float, hi: float, seed: int, pause: float) -> dict[str, Any]:
    _quiet_logs()
    from circuitry import Registry
    from circuitry.store import SQLiteStore

    db = folder / f"visibility-{pause}.db"
    store = SQLiteStore(db)
    b = Registry(hooks=[], store=store).get("visible", failure_threshold=1, recovery_timeout=3600.0)
    assert store.flush(10)
    watcher = subprocess.Popen([sys.executable, __file__, "--child", "watch", str(db), str(pause), str(n * hi + 60)],
                               stdout=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    ready = json.loads(watcher.stdout.readline())
    assert ready["state"] == "closed", ready
    rng = random.Random(seed)
    made: list[tuple[str, float]] = []
    for i in range(n):
        time.sleep(rng.uniform(lo, hi))
        target = "forced_open" if i % 2 == 0 else "closed"
        t = time.monotonic()
        if target == "forced_open":
            b.force_open()
        else:
            b.reset()
        made.append((target, t))
    time.sleep(0.5)
    b.force_closed()  # ends the watcher's loop
    out = watcher.communicate(timeout=n * hi + 120)[0]
    store.close()
    seen = json.loads(out.strip().splitlines()[-1])["seen"]
    delays, missed = [], 0
    j = 0
    for i, (state, t) in enumerate(made):
        t_next = made[i + 1][1] if i + 1 < len(made) else float("inf")
        while j < len(seen) and seen[j][1] < t:
            j += 1
        if j < len(seen) and seen[j][0] == state and seen[j][1] < t_next:
            delays.append(seen[j][1] - t)
            j += 1
        else:
            missed += 1
            delays.append(t_next - t)  # lower bound: the next change came first
    delays.sort()
    return {
        "transitions": n, "missed": missed, "p50_ms": 1000 * _quantile(delays, 0.50),
        "p90_ms": 1000 * _quantile(delays, 0.90), "p99_ms": 1000 * _quantile(delays, 0.99),
        "max_ms": 1000 * delays[-1], "mean_ms": 1000 * statistics.fmean(delays),
        "interval": [lo, hi], "poll_interval_ms": 1000 * store.poll_interval, "pause": pause,
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def bench_exit(folder: Path, runs: int, failures: int) -> dict[str, Any]:
    times, lifetimes, landed = [], [], []
    for i in range(runs):
        db = folder / f"exit-{failures}-{i}.db"
        t_start = time.monotonic()
        proc = subprocess.Popen([sys.executable, __file__, "--child", "no_close", str(db), str(failures)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        done = json.loads(proc.stdout.readline())
        proc.wait(60)
        t_exit = time.monotonic()
        times.append(t_exit - done["mono"])
        lifetimes.append(t_exit - t_start)
        conn = sqlite3.connect(db)
        n = conn.execute("SELECT coalesce(sum(occurrences), 0) FROM circuit_breaker_events "
                         "WHERE event_type = 'failure'").fetchone()[0]
        state = conn.execute("SELECT current_state FROM circuit_breaker_states").fetchone()
        conn.close()
        landed.append((n, state[0] if state else None))
    return {
        "runs": runs, "failures": failures, "exit_mean_s": statistics.fmean(times), "exit_max_s": max(times),
        "lifetime_mean_s": statistics.fmean(lifetimes),
        "rows_min": min(n for n, _ in landed), "states": sorted({s or "-" for _, s in landed}),
    }


def bench_idle(folder: Path, circuits: int, seconds: float) -> dict[str, Any]:
    """CPU taken by a store with ``circuits`` quiet circuits (in a fresh process, so nothing else runs)."""
    db = folder / "idle.db"
    out = subprocess.run([sys.executable, __file__, "--child", "idle", str(db), str(circuits), str(seconds)],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def child_idle(db: str, circuits: int, seconds: float) -> None:
    _quiet_logs()
    from circuitry import Registry
    from circuitry.store import SQLiteStore

    store = SQLiteStore(db)
    reg = Registry(hooks=[], store=store)
    for i in range(circuits):
        reg.get(f"quiet-{i:05d}")
    assert store.flush(120)
    time.sleep(6.0)  # past the first samples of every circuit: steady state
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = time.process_time(), time.monotonic()
    store.close()
    print(json.dumps({"circuits": circuits, "seconds": t1 - t0, "cpu_seconds": c1 - c0,
                      "core_percent": 100.0 * (c1 - c0) / (t1 - t0)}), flush=True)


def bench_reads(folder: Path, events: int, circuits_stats: int, circuits_status: int) -> dict[str, Any]:
    """get_stats() on a database of ``events`` failure rows; `circuitry status` on ``circuits_status``."""
    _quiet_logs()
    from circuitry import DatabaseCircuitBreaker, Registry
    from circuitry.store import SQLiteStore

    db = folder / "reads.db"
    store = SQLiteStore(db)
    Registry(hooks=[], store=store).get("svc-0")
    assert store.flush(30)
    store.close()
    now = time.time()
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany("INSERT INTO circuit_breaker_states (service_name, version, change_seq) VALUES (?, 1, 0) "
                         "ON CONFLICT DO NOTHING", [(f"svc-{i}",) for i in range(circuits_stats)])
        step = 3600.0 / (events / circuits_stats)
        for i in range(circuits_stats):
            name = f"svc-{i}"
            conn.executemany(
                "INSERT INTO circuit_breaker_events (service_name, event_type, to_state, error_type, error_message, "
                "created_at, ts, process) VALUES (?, 'failure', 'closed', 'TimeoutError', 'timed out', '', ?, 'x')",
                ((name, now - 3600 + k * step) for k in range(events // circuits_stats)))
        conn.executemany("INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, "
                         "failures) VALUES (?, ?, '', 1000, 900, 100)",
                         [(f"svc-{i}", m) for i in range(circuits_stats) for m in range(int(now // 60) - 59,
                                                                                         int(now // 60) + 1)])
    conn.close()
    breaker = DatabaseCircuitBreaker(db_path=str(db), service_name="svc-7")
    breaker.get_stats()  # connections opened
    timings = []
    for _ in range(20):
        t = time.perf_counter()
        breaker.get_stats()
        timings.append(time.perf_counter() - t)
    status_db = folder / "status.db"
    subprocess.run([sys.executable, "-m", "circuitry", "migrate", "--db", str(status_db)], check=True,
                   capture_output=True)
    conn = sqlite3.connect(status_db)
    with conn:
        conn.executemany("INSERT INTO circuit_breaker_states (service_name, current_state, version) "
                         "VALUES (?, ?, 1)", [(f"circuit-{i:05d}", "open" if i % 50 == 0 else "closed")
                                              for i in range(circuits_status)])
        conn.executemany("INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, "
                         "failures) VALUES (?, ?, '', 100, 95, 5)",
                         [(f"circuit-{i:05d}", m) for i in range(circuits_status)
                          for m in range(int(now // 60) - 59, int(now // 60) + 1)])
    conn.close()
    status_times = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "circuitry", "status", "--db", str(status_db)], check=True,
                       capture_output=True)
        status_times.append(time.perf_counter() - t)
    return {"events": events, "stats_circuits": circuits_stats, "get_stats_ms": 1000 * statistics.median(timings),
            "get_stats_max_ms": 1000 * max(timings), "status_circuits": circuits_status,
            "status_ms": 1000 * statistics.median(status_times), "status_min_ms": 1000 * min(status_times)}


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.system()} {platform.release()} {platform.machine()}, {model}, {os.cpu_count()} logical CPUs, "
            f"load average {load:.2f} at start; CPython {platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, *rest = sys.argv[2:]
        if mode == "watch":
            child_watch(rest[0], float(rest[1]), float(rest[2]))
        elif mode == "idle":
            child_idle(rest[0], int(rest[1]), float(rest[2]))
        else:
            child_no_close(rest[0], int(rest[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of recording for the throughput run")
    parser.add_argument("--transitions", type=int, default=200, help="transitions for the visibility run")
    parser.add_argument("--exit-runs", type=int, default=5, help="runs of each exit measurement")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="seconds of the idle measurement")
    parser.add_argument("--events", type=int, default=1_000_000, help="failure events for the read measurement")
    opts = parser.parse_args()
    if opts.quick:
        opts.seconds, opts.transitions, opts.exit_runs, opts.idle_seconds, opts.events = 1.0, 40, 2, 5.0, 100_000
    print(machine())
    from circuitry import __version__

    print(f"circuitry {__version__}\n")
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        folder = Path(tmp)
        print("1. persisted failures, one process")
        for rows_per_second in (100, 10**6):
            for rate in (None, 60_000.0):
                t = bench_throughput(folder, opts.seconds, rate, rows_per_second)
                how = "flat out" if rate is None else f"paced at {rate:,.0f}/s"
                rows = ("every failure its own row" if rows_per_second >= 10**6
                        else f"{rows_per_second} rows a second per circuit, the rest counted in one")
                print(f"   {how}, {rows}: recorded {t['recorded']:,} failures in {t['record_seconds']:.2f} s "
                      f"({t['recorded_per_s']:,.0f}/s); flush took {t['flush_seconds']:.2f} s "
                      f"(clean: {t['clean_flush']})")
                print(f"     failures the rows account for: {t['counted']:,} in {t['rows']:,} rows; in the rollups: "
                      f"{t['in_rollups']:,}; dropped rows: {t['dropped']:,}; persisted {t['persisted_per_s']:,.0f} "
                      f"failures/s, {t['rows_per_s']:,.0f} rows/s (target >= 50,000 failures/s)")
                print(f"     backlog: max {t['backlog_max']:,} rows, mean {t['backlog_mean']:,.0f} "
                      f"(queue_size {t['queue_size']:,})")
                failed |= t["in_rollups"] != t["recorded"] or (t["dropped"] == 0 and t["counted"] != t["recorded"])
        print()

        for pause in (0.0, 0.001):
            v = bench_visibility(folder, opts.transitions, 0.05, 0.2, seed=7, pause=pause)
            how = "a tight loop" if not pause else f"a loop sleeping {1000 * pause:g} ms per read"
            print(f"2. cross-process visibility, watcher polling in {how}: {v['transitions']} transitions at "
                  f"random intervals of {v['interval'][0]:.2f}-{v['interval'][1]:.2f} s, "
                  f"poll_interval {v['poll_interval_ms']:.0f} ms")
            print(f"   delay p50 {v['p50_ms']:.1f} ms, p90 {v['p90_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms, "
                  f"max {v['max_ms']:.1f} ms, mean {v['mean_ms']:.1f} ms; missed {v['missed']} "
                  "(target p99 <= 50 ms)\n")

        print("3. exit without close() (time from the last call to process exit)")
        for failures in (1_000, 100_000):
            e = bench_exit(folder, opts.exit_runs, failures)
            print(f"   {failures:>7,} failures queued: mean {e['exit_mean_s']:.3f} s, max {e['exit_max_s']:.3f} s "
                  f"over {e['runs']} runs (whole process {e['lifetime_mean_s']:.2f} s); failure rows landed: "
                  f"at least {e['rows_min']:,} of {failures:,}; final state {', '.join(e['states'])}")
            failed |= e["rows_min"] != failures or e["states"] != ["forced_open"]
        print()

        idle = bench_idle(folder, 10_000, opts.idle_seconds)
        print(f"4. idle: {idle['circuits']:,} quiet circuits took {idle['cpu_seconds']:.3f} s of CPU in "
              f"{idle['seconds']:.1f} s: {idle['core_percent']:.2f} % of one core (target <= 1 %)\n")

        r = bench_reads(folder, opts.events, 100, 10_000)
        print(f"5. reads: get_stats() with {r['events']:,} failure events over {r['stats_circuits']} circuits: "
              f"median {r['get_stats_ms']:.2f} ms, max {r['get_stats_max_ms']:.2f} ms (target <= 10 ms)")
        print(f"   `circuitry status` over {r['status_circuits']:,} circuits, whole command: median "
              f"{r['status_ms']:.0f} ms, best {r['status_min_ms']:.0f} ms (target <= 300 ms)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
