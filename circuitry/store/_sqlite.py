"""The SQLite store: persistent, shared circuit state and history, off the call path.

How it works, in one place:

* **Write-behind.** Failures and transitions reach the store as events (it is a registry hook);
  they are appended to a bounded in-memory queue — nothing else happens on the caller's thread —
  and one writer thread drains the queue in batched transactions. Successes, rejections and the
  rest are never queued: the writer reads each breaker's atomic counters and adds the differences
  to per-minute rows of ``circuit_breaker_metrics``.
* **Shared state.** ``circuit_breaker_states`` holds one row per circuit with a ``version``. A local
  transition is written as a compare-and-set (``UPDATE … WHERE version = ?``); if another process
  moved first, the write changes nothing and this process adopts the row instead — never
  last-writer-wins. The writer polls ``PRAGMA data_version`` (a read of a counter in shared memory)
  every ``poll_interval`` and applies other processes' transitions, so they are seen within one
  poll. A new process adopts the stored state; it never resets it.
* **Combined evidence.** Each writer cycle adds the failures its process saw since the last cycle
  to the row's ``failure_count`` (a success anywhere resets it to the failures seen after that
  success). When the sum reaches the circuit's ``failure_threshold``, the process that noticed opens
  the circuit (by compare-and-set), so four workers seeing two failures each trip a threshold-5
  circuit even though none of them alone would.
* **Probe leases.** While half-open, a probe permit is also a row of
  ``circuit_breaker_probe_leases``, taken in a ``BEGIN IMMEDIATE`` transaction that counts the live
  leases: ``half_open_max_calls`` probes in flight across all processes, not per process. A lease
  expires after ``probe_timeout``, so one held by a killed process frees itself.
* **Faults.** The store is advisory. Any SQLite or OS error is caught in the writer, reported once
  per episode (a structured ``circuitry.store_fault`` warning, and a ``store_fault`` event row once
  the database takes writes again), retried with backoff; the queue is kept, so the backlog catches
  up. A corrupt file is renamed aside and a fresh database created; a deleted file is recreated and
  every circuit's state rewritten. If the bounded queue fills, new rows are dropped, counted, and a
  ``dropped`` event row records how many.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import json
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from circuitry._clock import SYSTEM_CLOCK, Clock
from circuitry._core import CircuitBreaker, Counts
from circuitry._core import _count_value as _count_value
from circuitry._policy import check_int, check_number
from circuitry._state import CircuitState
from circuitry.analysis.alerts import AlertEngine, AlertPolicy
from circuitry.analysis.patterns import PatternResult
from circuitry.analysis.recommend import Recommendation
from circuitry.events import Event, EventKind
from circuitry.exceptions import ConfigurationError, SchemaVersionError, StoreError
from circuitry.runners.analyst import Analyst
from circuitry.store._schema import migrate

if TYPE_CHECKING:
    from circuitry._registry import Registry

__all__ = ["SQLiteStore", "StoreHealth"]

_ISO: Final = "strftime('%Y-%m-%d %H:%M:%f', ?, 'unixepoch')"
_MAX_BATCH: Final = 20_000
#: Per circuit, the most per-minute rollups held in memory while the database takes no writes.
PENDING_MINUTES: Final = 60
_QUIET_REASONS: Final = frozenset({"remote", "restored"})  # decided elsewhere: already recorded there
# The automatic transitions: a state one of these steps on from the stored one builds on it.
_NEXT_STEPS: Final = frozenset({("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
                                ("half_open", "open")})


def _process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, SchemaVersionError):
        return "newer_schema"
    if isinstance(exc, OSError):  # the file system, before SQLite got a say
        if exc.errno == errno.ENOSPC:
            return "disk_full"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "read_only"
        return "unavailable"
    if "locked" in text or "busy" in text:
        return "locked"
    if "full" in text:
        return "disk_full"
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "read_only"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return "corrupt"
    if "unable to open" in text:
        return "unavailable"
    if "deleted" in text:
        return "deleted"
    return "io_error"


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """How the store is doing (see :meth:`SQLiteStore.health`)."""

    path: str
    healthy: bool
    fault: str | None
    faults: int
    queued: int
    written_events: int
    dropped: int
    set_aside: tuple[str, ...]


class _Link:
    """The store's view of one breaker; the breaker calls it (``_shared``) to take probe leases."""

    __slots__ = ("__weakref__", "_evidence", "adopt_gen", "breaker", "counts", "denied_episode",
                 "denied_until", "last_failure", "leases", "name", "store", "synced_gen", "version")

    def __init__(self, store: SQLiteStore, breaker: CircuitBreaker) -> None:
        self.store = store
        self.breaker = breaker
        self.name = breaker.name
        self.version = -1  # the row version last synced; -1: not yet read
        self.synced_gen = -1  # the breaker generation that row version corresponds to
        self.adopt_gen = breaker.generation
        self.counts = _counters(breaker)
        self.leases: list[int] = []
        self.denied_until = 0.0
        self.denied_episode = -2
        self.last_failure: float | None = None
        self._evidence = (self.counts[0], self.counts[1])  # what was shared so far: nothing after adoption

    failure_log: deque[BaseException] | None = None  # failures reach the store as events (a hook)

    def take_probe(self) -> int | None:
        if not self.store._acquire_probe(self):
            return None
        return self.leases[-1] if self.leases else 0

    def probe_retry_after(self) -> float:
        return self.breaker.policy.effective_probe_timeout

    def probe_done(self, lease: int) -> None:
        if lease in self.leases:
            self.leases.remove(lease)
            self.store._lease_releases.append(lease)

    def transitioned(self, event: Event) -> None:
        pass


def _merge(bucket: list[float], delta: Sequence[float]) -> None:
    """Add one rollup into another: the counts and latency sums add up, the latency maximum is kept."""
    for i in range(7):
        bucket[i] += delta[i]
    bucket[7] = max(bucket[7], delta[7])


def _counters(b: CircuitBreaker) -> Counts:
    return b.counts()


_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


class SQLiteStore:
    """Persist and share the breakers of a registry in one SQLite file.

    Attach it to a registry (``Registry(store=SQLiteStore("app.db"))`` or
    ``circuitry.configure(db="app.db")``); every breaker of the registry then persists through it.
    Nothing is opened until the first breaker is adopted.

    Args:
        path: The database file (created if missing; the circuit tables are added to an existing
            application database).
        retention: Seconds of event history to keep (default 7 days); older rows are pruned after
            their per-minute rollups exist.
        max_events: The most event rows kept, whatever their age (the oldest go first).
        poll_interval: Seconds between checks for other processes' changes (and queue drains).
        metrics_interval: Seconds between per-minute metric writes.
        queue_size: The bounded queue of rows waiting to be written; beyond it rows are dropped and
            counted.
        busy_timeout: Seconds the writer waits on a locked database before reporting a fault.
        clock: The wall clock of timestamps and leases (inject the registry's fake clock in tests).
        analysis_interval: Seconds between pattern analyses of every circuit (and alert checks).
        analysis_window: Seconds of history each analysis classifies.
        alert_policy: Alert thresholds and deduplication (:class:`~circuitry.analysis.alerts.AlertPolicy`).
        auto_apply: Apply recommended thresholds and timeouts automatically (off by default).

    .. versionadded:: 0.1.0
    """

    kinds = frozenset({EventKind.TRANSITION, EventKind.FAILURE})

    def __init__(self, path: str | os.PathLike[str], *, retention: float = 7 * 86400.0,
                 max_events: int = 1_000_000, poll_interval: float = 0.025, metrics_interval: float = 1.0,
                 queue_size: int = 200_000, busy_timeout: float = 5.0, clock: Clock | None = None,
                 analysis_interval: float = 60.0, analysis_window: float = 900.0,
                 alert_policy: AlertPolicy | None = None, auto_apply: bool = False) -> None:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ConfigurationError(f"path must be a file path, got {path!r}")
        if os.fspath(path) == ":memory:":
            raise ConfigurationError("path must be a file: an in-memory database cannot be shared")
        retention = check_number("retention", retention, lo=1.0, hi=10 * 365 * 86400.0, lo_open=False)
        analysis_interval = check_number("analysis_interval", analysis_interval, lo=0.01, hi=86400.0, lo_open=False)
        analysis_window = check_number("analysis_window", analysis_window, lo=1.0, hi=30 * 86400.0, lo_open=False)
        poll_interval = check_number("poll_interval", poll_interval, lo=0.001, hi=60.0, lo_open=False)
        metrics_interval = check_number("metrics_interval", metrics_interval, lo=0.01, hi=3600.0, lo_open=False)
        busy_timeout = check_number("busy_timeout", busy_timeout, lo=0.0, hi=600.0, lo_open=False)
        check_int("max_events", max_events, 1000, 10**9)
        check_int("queue_size", queue_size, 100, 10**9)
        self.path = Path(os.fspath(path))
        self.retention = float(retention)
        self.max_events = max_events
        self.poll_interval = float(poll_interval)
        self.metrics_interval = float(metrics_interval)
        self.queue_size = queue_size
        self.busy_timeout = float(busy_timeout)
        self._time = (SYSTEM_CLOCK if clock is None else clock).time
        if not isinstance(auto_apply, bool):
            raise ConfigurationError(f"auto_apply must be a bool, got {auto_apply!r}")
        self._init_runtime()
        self.analyst = Analyst(self, interval=float(analysis_interval), window=float(analysis_window),
                               alert_policy=alert_policy, auto_apply=auto_apply)
        _STORES.add(self)

    def _init_runtime(self) -> None:
        self.process = _process_name()
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}
        self._queue: deque[tuple[Any, ...]] = deque()
        self._lease_releases: deque[int] = deque()
        self._dropped = itertools.count()
        self._dropped_reported = 0
        self._wake = threading.Event()
        self._cycle_done = threading.Condition(threading.Lock())
        self._cycles = 0
        self._clean_cycles = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopping = False
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._side_conn: sqlite3.Connection | None = None
        self._side_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._fork_held: list[Any] = []
        self._data_version = -1
        self._pending_metrics: dict[tuple[str, int], list[float]] = {}
        self._last_metrics = 0.0
        self._flush_metrics = False
        self._coarsened = False
        self._last_prune = 0.0
        self._fault: str | None = None
        self._fault_since = 0.0
        self._faults = 0
        self._backoff = 0.0
        self._written = 0
        self._rejected_rows = 0
        self._set_aside: list[str] = []
        self._disabled: str | None = None
        self._opened_once = False

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- registry side --------------------------------------------------------------------------------

    def attach(self, registry: Registry) -> None:
        """Persist every breaker of ``registry``, existing and future."""
        registry.attach(self)

    def adopt(self, breaker: CircuitBreaker) -> None:
        """Start persisting ``breaker``: it takes the stored state, if there is one."""
        if self._closed:
            return
        if not self.path.is_absolute():  # pin the file now: a later chdir must not move the database
            self.path = self.path.absolute()
        link = _Link(self, breaker)
        with self._lock:
            self._links[breaker.name] = link
        breaker.link(link)
        try:
            row = self._side(lambda c: c.execute(_SELECT_STATE + " WHERE service_name = ?",
                                                 (breaker.name,)).fetchone())
        except Exception as exc:  # the writer will read it (and report the fault) on its next cycle
            self._note_fault(exc)
            row = None
        if row is not None:
            self._apply_row(link, row, "restored")
        self._ensure_thread()
        self._wake.set()

    def forget(self, breaker: CircuitBreaker) -> None:
        """Stop persisting ``breaker``."""
        with self._lock:
            link = self._links.get(breaker.name)
            if link is not None and link.breaker is breaker:
                del self._links[breaker.name]
        if link is not None and breaker.linked is link:
            breaker.link(None)

    def __call__(self, event: Event) -> None:
        """The store's hook: queue failures and local transitions for the writer."""
        if event.reason in _QUIET_REASONS:
            return
        # Rows are queued in their final form: the writer inserts them as they are.
        if event.kind is EventKind.FAILURE:
            link = self._links.get(event.circuit)
            if link is not None:
                link.last_failure = event.at
            if len(self._queue) >= self.queue_size:
                next(self._dropped)
                return
            self._queue.append((event.circuit, "failure", None, event.to_state.value, event.error_type,
                                event.error_message, None, event.at, event.at, self.process))
            return
        extra: dict[str, Any] = {"reason": event.reason, "generation": event.generation}
        if event.open_for is not None:
            extra["open_for"] = event.open_for
        if len(self._queue) >= self.queue_size:
            next(self._dropped)
        else:
            self._queue.append((event.circuit, "state_change",
                                event.from_state.value if event.from_state is not None else None,
                                event.to_state.value, event.error_type, event.error_message, json.dumps(extra),
                                event.at, event.at, self.process))
        self._wake.set()  # transitions are committed promptly, not at the next poll
        self.analyst.transitioned(event)

    # -- lifecycle ------------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None or self._closed:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"circuitry-store:{self.path.name}",
                                                daemon=True)
                self._thread.start()
                self.analyst.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything queued and pending now; True if a clean cycle finished within ``timeout``."""
        if self._thread is None:
            return not self._queue
        deadline = time.monotonic() + timeout
        with self._cycle_done:
            self._flush_metrics = True  # the rollups too, not only the queue
            target = self._cycles + 2  # a cycle that *started* after this call
            while True:
                self._wake.set()
                if self._clean_cycles >= target or (self._cycles >= target and self._disabled):
                    return self._clean_cycles >= target
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cycle_done.wait(min(remaining, 0.05))

    def close(self, timeout: float = 5.0) -> None:
        """Flush (waiting at most ``timeout`` seconds), stop the writer and close the database."""
        if self._closed:
            return
        self.flush(timeout)
        self.analyst.close(min(timeout, 2.0))
        self._closed = True
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.1, timeout))
        with self._side_lock:
            if self._side_conn is not None:
                self._side_conn.close()
                self._side_conn = None
        for link in list(self._links.values()):
            if link.breaker.linked is link:
                link.breaker.link(None)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def health(self) -> StoreHealth:
        return StoreHealth(str(self.path), self._fault is None and self._disabled is None,
                           self._disabled or self._fault, self._faults, len(self._queue), self._written,
                           _count_value(self._dropped), tuple(self._set_aside))

    def _before_fork(self) -> None:
        """Close every connection before ``fork()``, with the threads that use them held outside.

        SQLite keeps its file-lock bookkeeping per process: a child that inherits an open connection —
        or one in the middle of a write — inherits locks it can never release, and the parent, no
        longer seeing the child's connections, may checkpoint and delete a WAL the child still writes
        to. With nothing open at the fork, both sides simply open their own connections again.
        """
        self._fork_held = [lock for lock in (self._writer_lock, self._side_lock, self.analyst.io_lock)
                           if lock.acquire(timeout=10)]
        self._drop_connections()

    def _after_fork_in_parent(self) -> None:
        for lock in reversed(self._fork_held):
            lock.release()
        self._fork_held = []

    def _drop_connections(self) -> None:
        for conn in (self._conn, self._side_conn, self.analyst._conn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._conn = self._side_conn = self.analyst._conn = None
        self._inode = None
        self._data_version = -1

    def _after_fork(self) -> None:
        # Nothing was open at the fork (see _before_fork); the child starts its own threads on demand.
        self._fork_held = []
        self.analyst.after_fork()
        links = list(self._links.values())
        closed = self._closed
        self._init_runtime()
        self._closed = closed
        for link in links:
            link.leases.clear()
            link.counts = _counters(link.breaker)  # the parent reports what it counted before the fork
            link._evidence = (link.counts[0], link.counts[1])
            self._links[link.name] = link
        if links and not closed:
            self._ensure_thread()

    # -- connections ----------------------------------------------------------------------------------

    def _open(self, timeout: float) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _side(self, fn: Any) -> Any:
        """Run ``fn(conn)`` on the short-timeout connection used by callers' threads (leases, adoption)."""
        if self._disabled:
            raise StoreError(self._disabled)
        with self._side_lock:
            if self._side_conn is None:
                self._side_conn = self._open(timeout=0.2)
            try:
                return fn(self._side_conn)
            except sqlite3.DatabaseError:
                self._side_conn.close()
                self._side_conn = None
                raise

    def _writer_conn(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    return conn
            except FileNotFoundError:
                pass
            self._drop_writer_conn()
            self._report("deleted", StoreError(f"{self.path} was deleted or replaced"))
            self._resync_all()
        try:
            conn = self._open(self.busy_timeout)
        except sqlite3.DatabaseError as exc:
            if _classify(exc) != "corrupt":
                raise
            self._set_corrupt_aside(exc)
            conn = self._open(self.busy_timeout)
        st = os.stat(self.path)
        if self._inode is None and not self._opened_once:
            self._opened_once = True
            _log("info", "circuitry.store_opened", path=str(self.path), process=self.process)
        self._inode = (st.st_dev, st.st_ino)
        self._conn = conn
        self._data_version = -1
        return conn

    def _drop_writer_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None
        self._inode = None
        with self._side_lock:
            if self._side_conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._side_conn.close()
                self._side_conn = None

    def _set_corrupt_aside(self, exc: BaseException) -> None:
        self._drop_writer_conn()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(str(aside) + suffix)
        self._set_aside.append(str(aside))
        self._report("corrupt", exc, set_aside=str(aside))
        self._resync_all()

    def _resync_all(self) -> None:
        for link in list(self._links.values()):
            link.version = -1
            link.synced_gen = -1
            link.adopt_gen = -1  # whatever the new file holds, this process's state goes in

    # -- the writer -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._backoff or self.poll_interval)
            self._wake.clear()
            stopping = self._stopping
            clean = False
            if not self._disabled:
                try:
                    with self._writer_lock:  # fork() waits for this: no connection may cross it in use
                        self._cycle(final=stopping)
                    clean = not self._queue and not self._lease_releases
                    if self._fault is not None:
                        self._recovered()
                except Exception as exc:
                    self._on_cycle_error(exc)
            with self._cycle_done:
                self._cycles += 1
                if clean:
                    self._clean_cycles = self._cycles
                self._cycle_done.notify_all()
            if stopping:
                if self._conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.close()
                    self._conn = None
                return

    def _on_cycle_error(self, exc: Exception) -> None:
        kind = _classify(exc)
        if kind == "newer_schema":
            self._disabled = str(exc)
            self._report(kind, exc)
            return
        if kind == "corrupt":
            try:
                self._set_corrupt_aside(exc)
            except OSError as err:
                self._report("unavailable", err)
        else:
            self._report(kind, exc)
        if kind in ("deleted", "io_error"):
            self._drop_writer_conn()
        self._backoff = min(5.0, max(0.05, self._backoff * 2))

    def _note_fault(self, exc: BaseException) -> None:
        self._report(_classify(exc), exc)

    def _report(self, kind: str, exc: BaseException, **extra: Any) -> None:
        """One structured warning per fault episode (the kind changing starts a new one)."""
        with self._lock:
            if self._fault == kind:
                return
            self._fault = kind
            self._fault_since = self._time()
            self._faults += 1
        _log("warning", "circuitry.store_fault", path=str(self.path), fault=kind,
             error_type=type(exc).__qualname__, error_message=str(exc)[:500],
             note="protected calls continue from memory; writes are retried", **extra)
        at = self._time()
        self._queue.append(("circuitry", "store_fault", None, kind, type(exc).__qualname__, str(exc)[:500],
                            json.dumps(extra) if extra else None, at, at, self.process))

    def _recovered(self) -> None:
        with self._lock:
            kind, since = self._fault, self._fault_since
            self._fault = None
            self._backoff = 0.0
        _log("info", "circuitry.store_recovered", path=str(self.path), fault=kind,
             seconds=round(self._time() - since, 3))

    def _cycle(self, final: bool = False) -> None:
        # Taken before the counts are collected: a flush() asked for after this point is served by
        # the next cycle, which collects everything counted before it was asked.
        flushing, self._flush_metrics = self._flush_metrics, False
        conn = self._writer_conn()
        now = self._time()
        links = list(self._links.values())
        for link in links:
            self._collect(link, now)
        self._sync_states(conn, links, now)
        self._write_events(conn)
        self._release_leases(conn)
        if final or flushing or now - self._last_metrics >= self.metrics_interval:
            self._write_metrics(conn)
            self._last_metrics = now
        self._poll(conn)
        if now - self._last_prune >= 60.0:
            self._prune(conn, now)
            self._last_prune = now

    @contextlib.contextmanager
    def _tx(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _collect(self, link: _Link, now: float) -> None:
        counts = _counters(link.breaker)
        old = link.counts
        delta: list[float] = [a - b for a, b in zip(counts, old, strict=True)]
        if link.breaker._timed:
            n, total, longest = link.breaker.take_latency()
            delta += [n, total * 1000.0, longest * 1000.0]
        else:
            delta += [0, 0.0, 0.0]
        if any(delta):
            link.counts = counts
            key = (link.name, int(now // 60))
            bucket = self._pending_metrics.get(key)
            if bucket is None:
                self._pending_metrics[key] = delta
                if len(self._pending_metrics) > PENDING_MINUTES * max(1, len(self._links)):
                    self._coarsen_pending()
            else:
                _merge(bucket, delta)

    def _coarsen_pending(self) -> None:
        """Bound the rollups waiting for a database that has been failing for a long time: per
        circuit, minutes older than the newest PENDING_MINUTES fold into the oldest minute kept.
        No count is lost; only the minute it is filed under moves (and this is said once)."""
        by_service: dict[str, list[int]] = {}
        for name, minute in self._pending_metrics:
            by_service.setdefault(name, []).append(minute)
        folded = 0
        for name, minutes in by_service.items():
            if len(minutes) <= PENDING_MINUTES:
                continue
            minutes.sort()
            keep = minutes[-PENDING_MINUTES]
            target = self._pending_metrics[(name, keep)]
            for minute in minutes[:-PENDING_MINUTES]:
                _merge(target, self._pending_metrics.pop((name, minute)))
                folded += 1
        if folded and not self._coarsened:
            self._coarsened = True
            _log("warning", "circuitry.store_rollups_coarsened", path=str(self.path), minutes=folded,
                 note=f"the database has not taken writes for over {PENDING_MINUTES} minutes: older "
                      "per-minute counts are kept, filed under the oldest minute still held")

    def _sync_states(self, conn: sqlite3.Connection, links: Sequence[_Link], now: float) -> None:
        for link in links:
            b = link.breaker
            if link.version < 0:  # not read yet (adoption could not), or the file was replaced
                row = conn.execute(_SELECT_STATE + " WHERE service_name = ?", (link.name,)).fetchone()
                if row is None:
                    if self._insert_state(conn, link, now):
                        continue
                    row = conn.execute(_SELECT_STATE + " WHERE service_name = ?", (link.name,)).fetchone()
                    if row is None:  # pragma: no cover - inserted and deleted in between
                        continue
                link.version = row[2]
                if b.generation == link.adopt_gen:
                    self._apply_row(link, row, "restored", expect=link.adopt_gen)
                    continue
                # the breaker moved since adoption: its state goes in by compare-and-set below
            snap = b.snapshot()
            if snap.generation != link.synced_gen:
                self._write_state(conn, link, now)
                link._evidence = (link.counts[0], link.counts[1])  # evidence counts within a generation
            elif snap.state is CircuitState.CLOSED:
                self._share_evidence(conn, link, now)

    def _insert_state(self, conn: sqlite3.Connection, link: _Link, now: float) -> bool:
        """Insert the circuit's row; False if another process inserted it first."""
        snap = link.breaker.snapshot()
        p = link.breaker.policy
        cur = conn.execute(
            "INSERT OR IGNORE INTO circuit_breaker_states (service_name, current_state, failure_count, "
            "failure_threshold, recovery_timeout, state_changed_at, version, opened_at, open_until, open_for, "
            f"reopen_count, updated_by, updated_at, last_failure_time) VALUES (?, ?, ?, ?, ?, {_ISO}, 1, ?, ?, ?, ?, "
            f"?, ?, {_ISO})",
            (link.name, snap.state.value, snap.consecutive_failures, p.failure_threshold, p.recovery_timeout,
             now, snap.opened_at, snap.open_until, snap.open_for, snap.reopens, self.process, now,
             link.last_failure))
        if cur.rowcount != 1:
            return False
        link.version = 1
        link.synced_gen = snap.generation
        link._evidence = (link.counts[0], link.counts[1])  # the row's failure_count has them already
        return True

    def _write_state(self, conn: sqlite3.Connection, link: _Link, now: float) -> None:
        """Compare-and-set the breaker's current state.

        If another process wrote first, its row wins — unless this process's state is one legitimate
        step on from the row's (the other process went open -> half_open, and this one's probe closed
        the circuit), or this process's change was an operator's (``reset()``, ``force_open()``): then
        this state is written on top of the row, again by compare-and-set.
        """
        b = link.breaker
        p = b.policy
        for _ in range(3):
            snap = b.snapshot()
            with self._tx(conn):
                cur = conn.execute(
                    f"UPDATE circuit_breaker_states SET current_state = ?, failure_count = ?, failure_threshold = ?, "
                    f"recovery_timeout = ?, state_changed_at = {_ISO}, version = version + 1, opened_at = ?, "
                    "open_until = ?, open_for = ?, reopen_count = ?, updated_by = ?, updated_at = ?, "
                    f"last_failure_time = coalesce({_ISO}, last_failure_time) "
                    "WHERE service_name = ? AND version = ?",
                    (snap.state.value, snap.consecutive_failures, p.failure_threshold, p.recovery_timeout, now,
                     snap.opened_at, snap.open_until, snap.open_for, snap.reopens, self.process, now,
                     link.last_failure, link.name, link.version))
                if cur.rowcount == 1:
                    if snap.state is not CircuitState.HALF_OPEN:
                        conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE service_name = ?", (link.name,))
                    link.version += 1
                    link.synced_gen = snap.generation
                    return
                row = conn.execute(_SELECT_STATE + " WHERE service_name = ?", (link.name,)).fetchone()
            if row is None:
                link.version = -1  # the row is gone: the next cycle inserts it
                return
            mine = snap.state.value
            local = snap.reason not in _QUIET_REASONS  # a decision of this process, not a copy of the row
            if mine != row[1] and local and (snap.reason == "manual" or (row[1], mine) in _NEXT_STEPS):
                link.version = row[2]  # our change follows theirs: write it on top
                continue
            self._apply_row(link, row, "remote", expect=snap.generation)
            return

    def _share_evidence(self, conn: sqlite3.Connection, link: _Link, now: float) -> None:
        """Add this process's failures since the last cycle to the shared count; trip on the sum."""
        b = link.breaker
        failures = link.counts[1]
        successes = link.counts[0]
        seen = link._evidence
        link._evidence = (successes, failures)
        d_ok, d_fail = successes - seen[0], failures - seen[1]
        if not d_ok and not d_fail:
            return
        opened = None
        with self._tx(conn):
            if d_ok:
                row = conn.execute(
                    f"UPDATE circuit_breaker_states SET failure_count = ?, last_failure_time = "
                    f"CASE WHEN ? > 0 THEN {_ISO} ELSE last_failure_time END "
                    "WHERE service_name = ? AND version = ? AND current_state = 'closed' RETURNING failure_count",
                    (b.consecutive_failures, d_fail, now, link.name, link.version)).fetchone()
            else:
                row = conn.execute(
                    f"UPDATE circuit_breaker_states SET failure_count = failure_count + ?, last_failure_time = {_ISO} "
                    "WHERE service_name = ? AND version = ? AND current_state = 'closed' RETURNING failure_count",
                    (d_fail, now, link.name, link.version)).fetchone()
            if row is not None and row[0] >= b.policy.failure_threshold:
                # The sum crossed the threshold in this transaction, so exactly one process sees it:
                # that one opens the circuit, in the same transaction, for everyone.
                open_for = b.next_open_period()
                cur = conn.execute(
                    f"UPDATE circuit_breaker_states SET current_state = 'open', failure_count = 0, "
                    f"state_changed_at = {_ISO}, version = version + 1, opened_at = ?, open_until = ?, open_for = ?, "
                    "reopen_count = 0, updated_by = ?, updated_at = ? WHERE service_name = ? AND version = ?",
                    (now, now, now + open_for, open_for, self.process, now, link.name, link.version))
                if cur.rowcount == 1:
                    opened = (now, now + open_for, open_for)
        if opened is not None:
            link.version += 1
            gen = b.adopt(CircuitState.OPEN, opened_at=opened[0], open_until=opened[1], open_for=opened[2],
                          reopens=0, reason="shared_failures", expect=link.synced_gen)
            if gen >= 0:
                link.synced_gen = gen
                link._evidence = (link.counts[0], link.counts[1])

    def _apply_row(self, link: _Link, row: Sequence[Any], reason: str, expect: int | None = None) -> None:
        """Adopt a stored row — only if the breaker is still in generation ``expect`` (when given):
        a local transition not yet written is settled by compare-and-set instead."""
        _, state, version, opened_at, open_until, open_for, reopens = row
        try:
            cs = CircuitState(state)
        except ValueError:
            return
        before = link.breaker.generation
        gen = link.breaker.adopt(cs, opened_at=opened_at, open_until=open_until, open_for=open_for,
                                 reopens=reopens or 0, reason=reason, expect=expect)
        if gen < 0:
            return  # the breaker moved on: the next cycle writes its state against this row's version
        if gen != before:  # a new generation: evidence from the old one no longer counts
            link._evidence = (link.counts[0], link.counts[1])
        link.synced_gen = gen
        link.version = version

    def _write_events(self, conn: sqlite3.Connection) -> None:
        dropped = _count_value(self._dropped)
        if dropped > self._dropped_reported:
            lost = dropped - self._dropped_reported
            _log("warning", "circuitry.store_dropped", path=str(self.path), rows=lost, total=dropped,
                 note="the write queue was full; raise queue_size or fix the store fault")
            at = self._time()
            self._queue.append(("circuitry", "dropped", None, None, "queue_full", f"{lost} rows dropped: queue full",
                                json.dumps({"dropped": lost, "total": dropped}), at, at, self.process))
            self._dropped_reported = dropped
        while self._queue:
            batch = []
            with contextlib.suppress(IndexError):
                for _ in range(min(_MAX_BATCH, len(self._queue))):
                    batch.append(self._queue.popleft())
            try:
                with self._tx(conn):
                    try:
                        conn.executemany(_INSERT_EVENT, batch)
                    except (sqlite3.IntegrityError, sqlite3.InterfaceError, TypeError, ValueError):
                        self._insert_one_by_one(conn, batch)  # a row SQLite refuses must not wedge the queue
            except BaseException:
                self._queue.extendleft(reversed(batch))  # nothing is lost: retried next cycle
                raise
            self._written += len(batch)

    def _insert_one_by_one(self, conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        for r in batch:
            try:
                conn.execute("SAVEPOINT one_row")
                conn.execute(_INSERT_EVENT, r)
                conn.execute("RELEASE one_row")
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, TypeError, ValueError) as exc:
                conn.execute("ROLLBACK TO one_row")
                conn.execute("RELEASE one_row")
                self._rejected_rows += 1
                _log("error", "circuitry.store_row_rejected", path=str(self.path), row=repr(r)[:300],
                     error_message=str(exc)[:300], total=self._rejected_rows)

    def _release_leases(self, conn: sqlite3.Connection) -> None:
        if not self._lease_releases:
            return
        ids = []
        with contextlib.suppress(IndexError):
            while self._lease_releases:
                ids.append(self._lease_releases.popleft())
        try:
            conn.executemany("DELETE FROM circuit_breaker_probe_leases WHERE lease_id = ?", [(i,) for i in ids])
        except BaseException:
            self._lease_releases.extendleft(ids)
            raise

    def _write_metrics(self, conn: sqlite3.Connection) -> None:
        pending = self._pending_metrics
        if not pending:
            return
        self._pending_metrics = {}
        rows = [(name, minute, minute * 60, sum(d[:5]), d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7])
                for (name, minute), d in pending.items()]
        try:
            with self._tx(conn):
                conn.executemany(_UPSERT_METRICS, rows)
        except BaseException:
            for key, d in pending.items():  # keep them: merged into what accumulated meanwhile
                _merge(self._pending_metrics.setdefault(key, [0] * 7 + [0.0]), d)
            raise

    def _poll(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        links = self._links
        for row in conn.execute(_SELECT_STATE).fetchall():
            link = links.get(row[0])
            if link is not None and row[2] > link.version:
                self._apply_row(link, row, "remote", expect=link.synced_gen)

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        # every circuit that writes events has a state row; the store's own rows go under "circuitry"
        services = [r[0] for r in conn.execute(
            "SELECT service_name FROM circuit_breaker_states UNION SELECT 'circuitry'")]
        with self._tx(conn):
            conn.executemany("DELETE FROM circuit_breaker_events WHERE service_name = ? AND ts < ?",
                             [(name, now - self.retention) for name in services])
            conn.execute("DELETE FROM circuit_breaker_metrics WHERE minute < ?",
                         (int((now - max(self.retention, 90 * 86400.0)) // 60),))
            conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE expires_at < ?", (now - 3600,))
            count = conn.execute("SELECT max(id) - min(id) + 1 FROM circuit_breaker_events").fetchone()[0]
            if count is not None and count > self.max_events:
                conn.execute("DELETE FROM circuit_breaker_events WHERE id < (SELECT max(id) FROM "
                             "circuit_breaker_events) - ?", (self.max_events,))
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- probe leases (called by breakers, in the caller's thread, only when half-open) --------------

    def _acquire_probe(self, link: _Link) -> bool:
        if self._disabled or self._closed:
            return True
        wall = self._time()
        if link.denied_episode == link.version and wall < link.denied_until:
            return False
        limit = link.breaker.policy.half_open_max_calls
        lease = link.breaker.policy.effective_probe_timeout

        def take(conn: sqlite3.Connection) -> tuple[bool, float]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                state = conn.execute("SELECT current_state, open_until, version FROM circuit_breaker_states "
                                     "WHERE service_name = ?", (link.name,)).fetchone()
                moved = state is not None and state[2] > link.version  # a change this process has not seen
                if moved and (state[0] in ("closed", "forced_open", "disabled")
                              or (state[0] == "open" and (state[1] or 0) > wall)):
                    conn.execute("COMMIT")  # another process decided: the poll will bring it here
                    return False, wall + self.poll_interval
                conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE service_name = ? AND expires_at <= ?",
                             (link.name, wall))
                live = [r[0] for r in conn.execute(
                    "SELECT expires_at FROM circuit_breaker_probe_leases WHERE service_name = ?", (link.name,))]
                if len(live) >= limit:
                    conn.execute("COMMIT")
                    return False, min(live)
                cur = conn.execute("INSERT INTO circuit_breaker_probe_leases (service_name, holder, expires_at) "
                                   "VALUES (?, ?, ?)", (link.name, self.process, wall + lease))
                conn.execute("COMMIT")
                link.leases.append(cur.lastrowid or 0)
                return True, 0.0
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

        try:
            granted, until = self._side(take)
        except Exception as exc:  # the store is advisory: decide from memory
            self._note_fault(exc)
            return True
        if not granted:
            link.denied_until = until
            link.denied_episode = link.version
        return bool(granted)

    # -- alerts and analysis ---------------------------------------------------------------------------

    def add_alert_callback(self, callback: Callable[[dict[str, Any]], Any], service: str | None = None,
                           timeout: float = 2.0) -> None:
        """Deliver new alerts (of ``service``, or all) to ``callback`` — sync or async, time-limited,
        on its own thread: it can neither block nor break a protected call."""
        if not callable(callback):
            raise ConfigurationError(f"alert_callback must be callable, got {callback!r}")
        self.analyst.add_callback(callback, service, timeout)

    def set_alerts_enabled(self, service: str, enabled: bool) -> None:
        if enabled:
            self.analyst.muted.discard(service)
        else:
            self.analyst.muted.add(service)

    def analyse(self, service: str) -> tuple[PatternResult, Recommendation]:
        """Classify ``service``'s recent history now and recommend settings (no rows written)."""
        link = self._links.get(service)
        if link is None:
            raise StoreError(f"no circuit {service!r} in this store")
        self.flush(0.5)
        conn = self._open(timeout=self.busy_timeout)
        try:
            return self.analyst.analyse(conn, link.breaker, self._time())
        finally:
            conn.close()

    def alerts(self, service: str | None = None, *, include_acknowledged: bool = False,
               limit: int = 100) -> list[dict[str, Any]]:
        """Alert rows, newest first."""
        where, params = [], []
        if service is not None:
            where.append("service_name = ?")
            params.append(service)
        if not include_acknowledged:
            where.append("acknowledged = FALSE")
        sql = "SELECT * FROM circuit_breaker_alerts" + (" WHERE " + " AND ".join(where) if where else "")
        return self.query(sql + " ORDER BY ts DESC, id DESC LIMIT ?", (*params, limit))

    def acknowledge(self, alert_id: int | None = None, *, service: str | None = None) -> int:
        """Acknowledge one alert by id, or every open alert of a service; returns how many."""
        return acknowledge(self.path, alert_id=alert_id, service=service, now=self._time(),
                           engine=self.analyst.engine)

    # -- reading --------------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only query on a fresh connection; rows as dicts. Raises :class:`StoreError`."""
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"query failed on {self.path}: {exc}") from exc
        finally:
            conn.close()

    async def aquery(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """:meth:`query` for asyncio code, on aiosqlite."""
        import aiosqlite

        try:
            async with aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0) as conn:
                conn.row_factory = aiosqlite.Row
                async with conn.execute(sql, params) as cursor:
                    return [dict(r) for r in await cursor.fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"query failed on {self.path}: {exc}") from exc


_SELECT_STATE: Final = ("SELECT service_name, current_state, version, opened_at, open_until, open_for, "
                        "reopen_count FROM circuit_breaker_states")
_INSERT_EVENT: Final = (
    "INSERT INTO circuit_breaker_events (service_name, event_type, from_state, to_state, error_type, "
    f"error_message, additional_data, created_at, ts, process) VALUES (?, ?, ?, ?, ?, ?, ?, {_ISO}, ?, ?)")
_UPSERT_METRICS: Final = (
    "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures, "
    "ignored, rejections, cancelled, latency_count, latency_sum_ms, latency_max_ms) "
    "VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%S', ?, 'unixepoch'), ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (service_name, minute) DO UPDATE SET calls = calls + excluded.calls, "
    "successes = successes + excluded.successes, failures = failures + excluded.failures, "
    "ignored = ignored + excluded.ignored, rejections = rejections + excluded.rejections, "
    "cancelled = cancelled + excluded.cancelled, latency_count = latency_count + excluded.latency_count, "
    "latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms, "
    "latency_max_ms = max(latency_max_ms, excluded.latency_max_ms)")


def _log(level: str, event: str, **fields: Any) -> None:
    try:
        import structlog

        getattr(structlog.get_logger("circuitry"), level)(event, **fields)
    except Exception:  # pragma: no cover - logging itself broken
        pass


def _close_all_at_exit() -> None:
    """At interpreter exit, flush what each open store has queued — briefly: exit must stay prompt."""
    deadline = time.monotonic() + 1.5
    for store in list(_STORES):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with contextlib.suppress(Exception):
            store.close(timeout=remaining)


def _before_fork() -> None:
    for store in list(_STORES):
        if not store._closed:
            store._before_fork()


def _after_fork_in_parent() -> None:
    for store in list(_STORES):
        store._after_fork_in_parent()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


# -- summaries the seed's API and the CLI read --------------------------------------------------------

_LAST_HOUR_SQL: Final = (
    "SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(successes), 0) AS successes, "
    "coalesce(sum(failures), 0) AS failures, coalesce(sum(rejections), 0) AS rejections, "
    "coalesce(sum(latency_count), 0) AS lat_n, coalesce(sum(latency_sum_ms), 0) AS lat_sum, "
    "coalesce(max(latency_max_ms), 0) AS lat_max "
    "FROM circuit_breaker_metrics WHERE service_name = ? AND minute >= ?")
_TRANSITIONS_SQL: Final = (
    "SELECT ts, from_state, to_state FROM circuit_breaker_events WHERE service_name = ? "
    "AND event_type = 'state_change' AND ts >= ? ORDER BY ts, id")


def open_seconds(transitions: Sequence[dict[str, Any]], since: float, now: float, open_at_start: bool) -> float:
    """Seconds a circuit refused calls in ``[since, now]``, from its ``state_change`` rows."""
    total = 0.0
    opened = since if open_at_start else None
    for row in transitions:
        refusing = row["to_state"] in ("open", "forced_open")
        if refusing and opened is None:
            opened = row["ts"]
        elif not refusing and opened is not None:
            total += row["ts"] - opened
            opened = None
    if opened is not None:
        total += now - opened
    return total


def last_hour_summary(store: SQLiteStore, service: str, now: float | None = None) -> dict[str, Any]:
    """The seed's ``last_hour_metrics``: total calls, success rate (%), seconds the circuit was open."""
    now = time.time() if now is None else now
    since = now - 3600.0
    row = store.query(_LAST_HOUR_SQL, (service, int(since // 60)))[0]
    decided = row["successes"] + row["failures"]
    transitions = store.query(_TRANSITIONS_SQL, (service, since))
    before = store.query("SELECT to_state FROM circuit_breaker_events WHERE service_name = ? AND "
                         "event_type = 'state_change' AND ts < ? ORDER BY ts DESC, id DESC LIMIT 1", (service, since))
    open_at_start = bool(before) and before[0]["to_state"] in ("open", "forced_open")
    return {
        "total_calls": row["calls"],
        "success_rate": round(100.0 * row["successes"] / decided, 1) if decided else 100.0,
        "circuit_open_duration": round(open_seconds(transitions, since, now, open_at_start)),
        "rejections": row["rejections"],
        "avg_latency_ms": round(row["lat_sum"] / row["lat_n"], 3) if row["lat_n"] else None,
        "max_latency_ms": round(row["lat_max"], 3) if row["lat_n"] else None,
    }


def acknowledge(path: str | os.PathLike[str], *, alert_id: int | None = None, service: str | None = None,
                now: float | None = None, engine: AlertEngine | None = None) -> int:
    """Acknowledge alerts in the database at ``path`` (by id, or all of a service); returns how many."""
    if (alert_id is None) == (service is None):
        raise ConfigurationError("give alert_id or service (one of them)")
    now = time.time() if now is None else now
    conn = sqlite3.connect(os.fspath(path), timeout=5.0, isolation_level=None)
    try:
        column, value = ("id", alert_id) if alert_id is not None else ("service_name", service)
        keys = conn.execute(f"UPDATE circuit_breaker_alerts SET acknowledged = TRUE, acknowledged_at = {_ISO} "
                            f"WHERE {column} = ? AND acknowledged = FALSE RETURNING alert_key",
                            (now, value)).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot acknowledge in {os.fspath(path)}: {exc}") from exc
    finally:
        conn.close()
    if engine is not None:
        for (key,) in keys:
            if key:
                engine.acknowledge(key)  # the next occurrence raises a fresh alert
    return len(keys)


_SEVERITY_RANK: Final = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def services_needing_attention(store: SQLiteStore, now: float | None = None) -> list[dict[str, Any]]:
    """Circuits that are not closed, have unacknowledged warning-or-worse alerts, or failed more than
    half their calls in the last hour; most urgent first."""
    now = time.time() if now is None else now
    states = {r["service_name"]: r["current_state"] for r in store.query(
        "SELECT service_name, current_state FROM circuit_breaker_states")}
    alerts: dict[str, list[str]] = {}
    for r in store.query("SELECT service_name, severity FROM circuit_breaker_alerts WHERE acknowledged = FALSE"):
        alerts.setdefault(r["service_name"], []).append(r["severity"])
    rates = {r["service_name"]: r for r in store.query(
        "SELECT service_name, sum(successes) AS ok, sum(failures) AS failed FROM circuit_breaker_metrics "
        "WHERE minute >= ? GROUP BY service_name", (int((now - 3600) // 60),))}
    out = []
    for name in sorted(set(states) | set(alerts)):
        state = states.get(name, "closed")
        severities = [s for s in alerts.get(name, []) if s != "info"]
        rate = rates.get(name)
        decided = (rate["ok"] + rate["failed"]) if rate else 0
        success_rate = round(100.0 * rate["ok"] / decided, 1) if rate and decided else 100.0
        reasons = []
        if state != "closed":
            reasons.append(f"circuit is {state}")
        if severities:
            reasons.append(f"{len(severities)} unacknowledged alert(s), worst: "
                           f"{min(severities, key=lambda s: _SEVERITY_RANK.get(s, 9))}")
        if decided >= 20 and success_rate < 50.0:
            reasons.append(f"success rate {success_rate}% in the last hour")
        if reasons:
            worst = min((_SEVERITY_RANK.get(s, 9) for s in severities), default=9)
            out.append({"service_name": name, "state": state, "reasons": reasons,
                        "unacknowledged_alerts": len(alerts.get(name, [])), "success_rate": success_rate,
                        "_rank": (0 if state in ("open", "forced_open") else 1 if state == "half_open" else 2, worst)})
    out.sort(key=lambda s: s.pop("_rank"))
    return out
