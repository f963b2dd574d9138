"""Helpers for the dashboard's tests: a real server (uvicorn on 127.0.0.1, a free port, in a thread) and
databases with hostile names or ten thousand circuits."""

from __future__ import annotations

import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from circuitry import Registry
from circuitry.store import SQLiteStore

from .conftest import eventually

HOSTILE = "<script>alert(1)</script>"
HOSTILE_MESSAGE = '<img src=x onerror="window.__xss=1">'
TOKEN = "dashboard-test-token-0123456789"


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) for the block; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert eventually(lambda: server.started, timeout=30), "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode(), dict(r.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers.items())


def populated(path: Path) -> Path:
    """A database with a hostile circuit name and message, an open circuit with alerts, quiet ones."""
    store = SQLiteStore(path, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store)
    hostile = reg.get(HOSTILE, failure_threshold=1)
    hostile.record_failure(hostile.admit(), RuntimeError(HOSTILE_MESSAGE))
    payments = reg.get("payments", failure_threshold=3, recovery_timeout=60)
    for _ in range(20):
        payments.record_success(payments.admit())
    for _ in range(3):
        payments.record_failure(payments.admit(), TimeoutError("upstream took 30 s"))
    for i in range(5):
        b = reg.get(f"search-{i}")
        b.record_success(b.admit())
    assert eventually(lambda: len(store.alerts()) >= 2)
    store.flush()
    store.close()
    return path


def many(path: Path, n: int = 10_000) -> Path:
    """A database with ``n`` circuits (a few open, some with alerts and an hour of per-minute counts)."""
    SQLiteStore(path).prepare()
    now = time.time()
    states = ["open" if i % 997 == 0 else "half_open" if i % 1999 == 0 else "closed" for i in range(n)]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO circuit_breaker_states (service_name, current_state, failure_threshold, recovery_timeout, "
            "version, change_seq, updated_at) VALUES (?, ?, 5, 60, 1, ?, ?)",
            [(f"svc-{i:05d}", states[i], i + 1, now) for i in range(n)])
        conn.executemany(
            "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures) "
            "VALUES (?, ?, '', 100, 95, 5)",
            [(f"svc-{i:05d}", int(now // 60) - m) for i in range(0, n, 7) for m in range(60)])
        conn.executemany(
            "INSERT INTO circuit_breaker_alerts (service_name, alert_type, severity, message, acknowledged, ts, "
            "alert_key) VALUES (?, 'circuit_opened', 'error', 'opened', FALSE, ?, ?)",
            [(f"svc-{i:05d}", now - 60, f"svc-{i:05d}:circuit_opened") for i in range(0, n, 997)])
    return path
