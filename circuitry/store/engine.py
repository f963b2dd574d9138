"""The sharing engine: persistent, shared circuit state and history, off the call path, for any backend.

How it works, in one place (the shared-row rules are in :mod:`circuitry.store.sharing`):

* **Nothing on the caller's thread.** A breaker tells its :class:`~circuitry.store.link.Link` about
  failures, probes and transitions with a few in-memory operations; one writer thread per store does
  all I/O. Successes and rejections are not even reported: the writer samples each breaker's atomic
  counters and files the differences under the second and the minute (:mod:`circuitry.store.rollups`).
  Breakers that had calls lately are sampled every cycle (``poll_interval``), quiet ones every few
  seconds, so ten thousand idle circuits cost next to nothing.
* **Prompt transitions, batched history.** A transition wakes the writer, which commits it within a
  cycle; failure rows go out in batches of at most ``_BATCH`` rows a transaction.
* **Other processes' changes** arrive through the backend (``PRAGMA data_version`` on SQLite, a
  poll of one counter; ``LISTEN/NOTIFY`` on PostgreSQL) and are adopted within a cycle.
* **Faults.** The store is advisory. An error is classified by the backend; a fault episode is
  reported once (a structured ``circuitry.store_fault`` warning saying what was done, and a
  ``store_fault`` row once the database takes writes again); I/O is retried with backoff while
  sampling goes on, so nothing is lost and the backlog catches up. While a fault lasts, half-open
  probes are decided from memory (the cross-process bound needs the database). A lock is a fault only
  once it has lasted ``busy_timeout``. Rows the database refuses are logged and skipped, never retried
  forever. If the bounded row queue fills, rows are dropped, counted, and a ``dropped`` row says how
  many; counts are never dropped (they are sampled from counters).
* **fork() and exit never wait on the database.** Before ``fork()`` only a lock held around in-memory
  work is taken; the child drops inherited connections unused and starts over, counting from the
  fork. At exit the store flushes for at most ``exit_timeout`` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from circuitry._clock import SYSTEM_CLOCK, Clock
from circuitry._core import CircuitBreaker
from circuitry._policy import check_int, check_number
from circuitry._state import CircuitState
from circuitry.exceptions import ConfigurationError, StoreError
from circuitry.instrumentation.logging import log
from circuitry.store.backend import Backend, Connection
from circuitry.store.link import Link
from circuitry.store.rollups import Rollups, prune
from circuitry.store.sharing import INSERT_EVENT, Sharing, failure_rows, row_tuple

if TYPE_CHECKING:
    from circuitry.store.readmodel import ReadModel

__all__ = ["Runner", "SharedStore", "StoreHealth"]

_BATCH: Final = 1000  # rows per transaction: a small volume must not need room for the whole backlog
_COLD_SAMPLE: Final = 5.0  # seconds between samples of a circuit without calls lately
_HOT_FOR: Final = 200  # samples without a call before a circuit counts as quiet
_DEMAND_FOR: Final = 2.0  # seconds a refused caller's wish for a probe lease is kept alive
_RETRY_LEASE: Final = 0.1  # seconds between lease attempts while every lease is held elsewhere


def _process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _log(level: str, event: str, **fields: Any) -> None:
    log(level, event, **fields)


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """How a store is doing.

    Attributes:
        path: Where the database is (a URL's password is never shown).
        healthy: Writes succeed (no fault episode, not disabled).
        fault: The current fault (``locked``, ``disk_full``, ``read_only``, …) or ``None``.
        faults: Fault episodes so far.
        queued: Rows waiting to be written, including a batch being retried.
        written_events: Event rows written.
        dropped: Event rows dropped because the queue was full (their counts are in the rollups).
        set_aside: Files circuitry created and set aside because they were damaged.
        refused_rows: Rows the database refused (logged, then skipped).
        superseded: Local transitions another process's write replaced (see ``circuitry.store.sharing``).
        disabled: Why the store stopped writing for good (a file that is not its to touch, a newer
            schema), or ``None``.
    """

    path: str
    healthy: bool
    fault: str | None
    faults: int
    queued: int
    written_events: int
    dropped: int
    set_aside: tuple[str, ...]
    refused_rows: int = 0
    superseded: int = 0
    disabled: str | None = None


class Runner(Protocol):
    """Something that works beside a store's writer (the analyst): told about shared transitions,
    stopped with the store, restarted after ``fork()``."""

    def transitioned(self, service: str, from_state: str | None, to_state: str, reason: str, at: float) -> None: ...

    def start(self) -> None: ...

    def hold(self) -> None:
        """Before ``fork()``: finish the I/O in flight, close connections, keep them closed."""
        ...

    def release(self) -> None:
        """After ``fork()``, in the parent: connections may open again."""
        ...

    def close(self, timeout: float = 2.0) -> None: ...

    def after_fork(self) -> None: ...


_STORES: weakref.WeakSet[SharedStore] = weakref.WeakSet()


class SharedStore:
    """Persist and share the breakers of a registry through a database backend.

    Use a concrete store — :class:`~circuitry.store.SQLiteStore` or ``PostgresStore`` — or
    :func:`~circuitry.store.open_store`. Nothing is opened until the first breaker is adopted.

    Args:
        backend: The database.
        retention: Seconds of event, pattern and alert history to keep (default 7 days).
        max_events: The most event rows kept, whatever their age (the oldest go first).
        poll_interval: Seconds between writer cycles: other processes' changes are seen within one.
        metrics_interval: Seconds between writes of the per-second and per-minute counts.
        queue_size: Event rows that may wait to be written; beyond it rows are dropped and counted.
        busy_timeout: Seconds a lock may last before it is reported as a fault.
        clock: The wall clock of timestamps (inject the registry's fake clock in tests).
        failure_rows_per_second: Failure rows written one by one per circuit and second; the rest of
            a second's failures go into one row carrying their number (``occurrences``).
        second_retention: Seconds of per-second counts to keep (default ``max(2 * analysis_window, 3600)``).
        exit_timeout: The most seconds interpreter exit waits for the last writes.
        analysis_interval, analysis_window, alert_policy, auto_apply: Settings of the analyst that
            runs beside the store once it is attached to a registry (see :mod:`circuitry.runners.analyst`).

    .. versionadded:: 0.1.0
    """

    def __init__(self, backend: Backend, *, retention: float = 7 * 86400.0, max_events: int = 1_000_000,
                 poll_interval: float = 0.025, metrics_interval: float = 1.0, queue_size: int = 200_000,
                 busy_timeout: float = 5.0, clock: Clock | None = None, failure_rows_per_second: int = 100,
                 second_retention: float | None = None, exit_timeout: float = 0.5,
                 analysis_interval: float = 60.0, analysis_window: float = 900.0, alert_policy: Any = None,
                 auto_apply: bool = False) -> None:
        self.retention = check_number("retention", retention, lo=1.0, hi=10 * 365 * 86400.0, lo_open=False)
        self.poll_interval = check_number("poll_interval", poll_interval, lo=0.001, hi=60.0, lo_open=False)
        self.metrics_interval = check_number("metrics_interval", metrics_interval, lo=0.01, hi=3600.0,
                                             lo_open=False)
        self.busy_timeout = check_number("busy_timeout", busy_timeout, lo=0.0, hi=600.0, lo_open=False)
        self.exit_timeout = check_number("exit_timeout", exit_timeout, lo=0.0, hi=60.0, lo_open=False)
        self.analysis_interval = check_number("analysis_interval", analysis_interval, lo=0.01, hi=86400.0,
                                              lo_open=False)
        self.analysis_window = check_number("analysis_window", analysis_window, lo=1.0, hi=30 * 86400.0,
                                            lo_open=False)
        self.second_retention = (max(2 * self.analysis_window, 3600.0) if second_retention is None else
                                 check_number("second_retention", second_retention, lo=60.0, hi=30 * 86400.0,
                                              lo_open=False))
        self.max_events = check_int("max_events", max_events, 1000, 10**9)
        self.queue_size = check_int("queue_size", queue_size, 100, 10**9)
        self.failure_rows_per_second = check_int("failure_rows_per_second", failure_rows_per_second, 1, 10**6)
        if not isinstance(auto_apply, bool):
            raise ConfigurationError(f"auto_apply must be a bool, got {auto_apply!r}")
        self.auto_apply = auto_apply
        self.alert_policy = alert_policy
        self.backend = backend
        self._time: Callable[[], float] = (SYSTEM_CLOCK if clock is None else clock).time
        self.runners: list[Runner] = []
        self.alert_callbacks: list[tuple[Callable[[dict[str, Any]], Any], str | None, float]] = []
        self.muted: set[str] = set()
        self._closed = False
        self._init_runtime()
        _STORES.add(self)

    def _init_runtime(self) -> None:
        self.process = _process_name()
        self._lock = threading.Lock()  # the links table
        self._mem = threading.Lock()  # held around in-memory work on breakers (fork() waits for it)
        # Held while the writer uses its connection, one transaction at a time (fork() waits for it, then
        # closes the connection: SQLite's per-process lock bookkeeping must not cross a fork). Order:
        # _io before _mem, never the other way round.
        self._io = threading.RLock()
        self._links: dict[str, Link] = {}
        self._dirty: deque[Link] = deque()
        self._watch: set[Link] = set()  # links whose circuit is open or half-open: leases to look after
        self._rows: deque[tuple[Any, ...]] = deque()
        self._inflight = 0
        self._dropped = itertools.count()
        self._dropped_failures = 0
        self._dropped_reported = 0
        self.rollups = Rollups()
        self._wake = threading.Event()
        self._cycle_done = threading.Condition(threading.Lock())
        self._cycles = self._clean_cycles = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flush_asked = False
        self._conn: Connection | None = None
        self._since = 0  # change sequence of the newest state change seen
        self._last_cold = self._last_metrics = self._last_prune = 0.0
        self._fault: str | None = None
        self._fault_since = 0.0
        self._locked_since: float | None = None
        self._faults = 0
        self._backoff = 0.0
        self._next_io = 0.0
        self._written = 0
        self._refused = 0
        self._superseded = 0
        self._set_aside: list[str] = []
        self._disabled: str | None = None
        self._opened = False
        self._warm = False  # the writer has read every circuit's row: adoption needs no read of its own
        self.sharing = Sharing(self.process, self._shared_transition, self._count_superseded)
        self.sharing.before_write = self._failures_first
        self._read: ReadModel | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend.location!r})"

    # -- registry side --------------------------------------------------------------------------------

    def adopt(self, breaker: CircuitBreaker) -> None:
        """Persist ``breaker`` from now on: it takes the stored state within a writer cycle (a
        process never resets shared state when it starts)."""
        if self._closed:
            return
        link = Link(breaker, log_size=max(64, 4 * self.failure_rows_per_second), clock=self._time,
                    wake=self._wake_for, retry_hint=max(self.poll_interval, 0.01))
        link.memory = self._fault is not None
        known = self.sharing.known.get(breaker.name)
        if known is None and not self._warm:  # before the writer's first read: one read that never waits
            known = self.read.state_now(breaker.name)
        if known is not None:  # adopt the stored state now (else the writer brings it within a cycle)
            self.sharing.adopt(link, known, "restored", expect=link.adopt_gen)
        with self._lock:
            old = self._links.get(breaker.name)
            self._links[breaker.name] = link
        if old is not None and old.breaker is not breaker and old.breaker.linked is old:
            old.breaker.link(None)
        breaker.link(link)
        self._wake_for(link)
        self._ensure_thread()

    def forget(self, breaker: CircuitBreaker) -> None:
        """Stop persisting ``breaker`` (what it counted until now is still written)."""
        with self._lock:
            link = self._links.get(breaker.name)
            if link is None or link.breaker is not breaker:
                return
            del self._links[breaker.name]
        self._watch.discard(link)
        if breaker.linked is link:
            breaker.link(None)
        with self._mem:
            self._sample(link, self._time())  # its last counts and failure rows
            for lease, _ in list(link.grants):
                link.done.append(lease)
        self._dirty.append(link)  # its leases are released by the next cycle
        self._wake.set()

    def prepare(self, timeout: float = 5.0) -> bool:
        """Create or upgrade the circuit tables now (waiting at most ``timeout`` for a lock), so that SQL
        of the application's own can read them at once. True if done; a failure is logged and retried by
        the writer. Never needed for circuitry's own use.
        """
        try:
            conn = self.backend.connect("writer", timeout=timeout)
        except Exception as exc:
            if self.backend.classify(exc) is None:
                raise
            _log("warning", "circuitry.store_not_prepared", location=self.backend.location,
                 error_type=type(exc).__qualname__, error_message=str(exc)[:500])
            return False
        conn.close()
        return True

    def _wake_for(self, link: Link) -> None:
        self._dirty.append(link)
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None or self._closed:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"circuitry-store:{self.backend.location[-40:]}")
                self._thread.start()
        for runner in list(self.runners):
            runner.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything sampled, queued and held now; True if a clean cycle finished within
        ``timeout`` (False while the database takes no writes)."""
        if self._thread is None or not self._thread.is_alive():
            return not self._rows and not self._links
        deadline = time.monotonic() + timeout
        with self._cycle_done:
            self._flush_asked = True
            target = self._cycles + 2  # a cycle that *started* after this call
            while True:
                self._wake.set()
                if self._clean_cycles >= target or (self._cycles >= target and self._disabled):
                    return self._clean_cycles >= target
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cycle_done.wait(min(remaining, 0.05))

    def close(self, timeout: float = 5.0) -> None:
        """Flush (waiting at most ``timeout`` seconds), release held leases, stop the writer and the
        runners, close the connections."""
        if self._closed:
            return
        self.flush(timeout)
        for runner in list(self.runners):
            runner.close(min(timeout, 2.0))
        self._closed = True
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.1, timeout))
        for link in list(self._links.values()):
            if link.breaker.linked is link:
                link.breaker.link(None)
        if self._read is not None:
            self._read.close()

    def __enter__(self) -> SharedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SharedStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def health(self) -> StoreHealth:
        return StoreHealth(self.backend.location, self._fault is None and self._disabled is None, self._fault,
                           self._faults, len(self._rows) + self._inflight, self._written, self._dropped_count(),
                           tuple(self._set_aside), self._refused, self._superseded, self._disabled)

    def _dropped_count(self) -> int:
        return int(repr(self._dropped)[6:-1])

    # -- runners (the analyst) -------------------------------------------------------------------------

    def add_runner(self, runner: Runner) -> None:
        self.runners.append(runner)
        if self._thread is not None:
            runner.start()

    def add_alert_callback(self, callback: Callable[[dict[str, Any]], Any], service: str | None = None,
                           timeout: float = 2.0) -> None:
        """Deliver new alerts (of ``service``, or all) to ``callback`` — sync or async, time-limited, on
        threads of its own: it can neither block nor break a protected call."""
        if not callable(callback):
            raise ConfigurationError(f"alert_callback must be callable, got {callback!r}")
        self.alert_callbacks.append((callback, service, timeout))
        for runner in self.runners:
            add = getattr(runner, "add_callback", None)
            if add is not None:
                add(callback, service, timeout)

    def set_alerts_enabled(self, service: str, enabled: bool) -> None:
        if enabled:
            self.muted.discard(service)
        else:
            self.muted.add(service)

    def _shared_transition(self, service: str, frm: str | None, to: str, reason: str, at: float) -> None:
        for runner in self.runners:
            runner.transitioned(service, frm, to, reason, at)

    def _count_superseded(self, n: int) -> None:
        self._superseded += n

    # -- fork and exit -------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """No connection may cross fork(): SQLite keeps lock bookkeeping per process, and a child that
        inherits it may skip locks it does not hold, or have the parent delete a WAL it still writes.
        So the writer's transaction in flight is let finish (every statement waits at most 0.1 s for a
        lock), every thread's connection is closed, and both sides reopen their own afterwards."""
        self._io.acquire()
        self._mem.acquire()
        self._drop_conn()
        if self._read is not None:
            self._read.hold()
        for runner in self.runners:
            runner.hold()

    def _after_fork_in_parent(self) -> None:
        for runner in self.runners:
            runner.release()
        if self._read is not None:
            self._read.release()
        self._mem.release()
        self._io.release()

    def _after_fork_in_child(self) -> None:
        # Nothing was open at the fork (see _before_fork); threads do not survive it: start over.
        if self._read is not None:
            self._read.inherited()
        links = list(self._links.values())
        self._init_runtime()
        for link in links:  # the parent writes what was counted before the fork
            link.counts = link.breaker.counts()
            link.recorded = link.counts.failures
            link.missing = 0
            link.evidence = (link.counts.successes, link.counts.failures)
            if link.failure_log is not None:
                link.failure_log.clear()
            link.pending.clear()
            link.grants.clear()  # leases are held by the parent
            link.done.clear()
            link._wake = self._wake_for
            self._links[link.name] = link
        for runner in self.runners:
            runner.after_fork()
        if links and not self._closed:
            _finalize_in_child()
            self._ensure_thread()

    # -- the writer -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            stopping = self._stopping
            flushing, self._flush_asked = self._flush_asked, False
            clean = False
            now = self._time()
            with self._mem:
                self._sample_all(now, full=stopping or flushing)
            due = stopping or flushing or time.monotonic() >= self._next_io
            if due and not self._disabled:
                try:
                    self._cycle(now, final=stopping or flushing)
                    clean = not self._rows and not len(self.rollups)
                    self._locked_since = None
                    if self._fault is not None:
                        self._recovered()
                except Exception as exc:
                    self._on_error(exc)
            with self._cycle_done:
                self._cycles += 1
                if clean:
                    self._clean_cycles = self._cycles
                self._cycle_done.notify_all()
            if stopping:
                with self._io:
                    self._release_all()
                    self._drop_conn()
                return

    def _sample_all(self, now: float, full: bool) -> None:
        cold = full or now - self._last_cold >= _COLD_SAMPLE
        if cold:
            self._last_cold = now
            links: Sequence[Link] = list(self._links.values())
        else:
            links = [link for link in self._links.values() if link.hot or link.failure_log]
        for link in links:
            self._sample(link, now)

    def _sample(self, link: Link, now: float) -> None:
        counts = link.breaker.counts()
        old = link.counts
        if counts == old and not link.failure_log and not link.missing:
            link.quiet += 1
            if link.quiet > _HOT_FOR:
                link.hot = False
            return
        link.quiet = 0
        link.hot = True
        link.counts = counts
        delta: list[float] = [a - b for a, b in zip(counts, old, strict=True)]
        if link.breaker.policy.timed:
            n, total, longest = link.breaker.take_latency()
            delta += [n, total * 1000.0, longest * 1000.0]
        else:
            delta += [0, 0.0, 0.0]
        if any(delta):
            self.rollups.add(link.name, now, delta, len(self._links))
        if delta[1] or link.failure_log or link.missing:
            for row in failure_rows(link, now, self.process, self.failure_rows_per_second):
                self._queue(row)
            if link.breaker.snapshot().state is CircuitState.CLOSED:
                self._dirty.append(link)  # its evidence is shared this cycle

    def _failures_first(self, conn: Connection, link: Link) -> None:
        """(Writer, ``_io`` and ``_mem`` held.) Write the failures ``link`` counted so far before its transition."""
        self._sample(link, self._time())
        self._write_rows()

    def _queue(self, row: tuple[Any, ...]) -> None:
        if len(self._rows) >= self.queue_size:
            next(self._dropped)
            self._dropped_failures += row[10]  # the failures it stood for (occurrences)
        else:
            self._rows.append(row)

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None:
            stale = self.backend.stale(conn)
            if stale is None:
                return conn
            self._drop_conn()
            self._report(stale, StoreError(f"{self.backend.location} was deleted or replaced"))
            self._resync_all()
        conn = self.backend.connect("writer", timeout=min(self.busy_timeout, 0.1))
        self._since = 0  # the first poll reads every row: what changed while no connection was open included
        if not self._opened:
            self._opened = True
            _log("info", "circuitry.store_opened", location=self.backend.location, process=self.process)
        self._conn = conn
        return conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _resync_all(self) -> None:
        self.sharing.known.clear()
        for link in list(self._links.values()):
            link.version = -1
            link.synced_gen = -1
            link.adopt_gen = -1  # whatever the new file holds, this process's state goes in
            self._dirty.append(link)

    @contextlib.contextmanager
    def _db(self) -> Iterator[Connection]:
        """The writer's connection for one step (a transaction or two), with ``_io`` held."""
        with self._io:
            yield self._connection()

    def _cycle(self, now: float, final: bool) -> None:
        dirty = set()
        while self._dirty:
            with contextlib.suppress(IndexError):
                dirty.add(self._dirty.popleft())
        live = self._links
        with self._mem:  # failures before the transitions they caused
            for link in dirty:
                if live.get(link.name) is link:
                    self._sample(link, now)
        self._write_rows()
        for link in dirty:
            if live.get(link.name) is link:
                with self._db() as conn, self._mem:
                    self.sharing.sync(conn, link, now)
                    state = link.breaker.snapshot().state
                if state is CircuitState.OPEN or state is CircuitState.HALF_OPEN or link.grants or link.done:
                    self._watch.add(link)
                else:
                    self._watch.discard(link)
            else:  # forgotten: only its leases remain to give back
                with self._db() as conn:
                    self.sharing.release(conn, self._take_done(link) + [lease for lease, _ in link.grants])
                link.grants.clear()
        for link in list(self._watch):
            self._leases(link, now)
        self._write_rows()  # the rows of this cycle's transitions' side effects (store faults, drops)
        if final or now - self._last_metrics >= self.metrics_interval:
            with self._db() as conn:
                self.rollups.write(conn)
            self._last_metrics = now
            self._note_rollup_losses()
        with self._db() as conn:
            self._poll(conn, now)
        if now - self._last_prune >= 60.0:
            self._last_prune = now
            with self._db() as conn:
                prune(conn, now, retention=self.retention, second_retention=self.second_retention,
                      max_events=self.max_events)

    # -- leases -----------------------------------------------------------------------------------------

    @staticmethod
    def _take_done(link: Link) -> list[int]:
        out = []
        while link.done:
            with contextlib.suppress(IndexError):
                out.append(link.done.popleft())
        return out

    def _leases(self, link: Link, now: float) -> None:
        done = self._take_done(link)
        if done:
            with self._db() as conn:
                self.sharing.release(conn, done)
        b = link.breaker
        if link.memory or b.metrics_only or link.grants or link.version < 0:
            return
        wanted = now - link.wanted_at < _DEMAND_FOR
        snap = b.snapshot()
        if snap.state is not CircuitState.OPEN and snap.state is not CircuitState.HALF_OPEN:
            self._watch.discard(link)
            return
        episode = (0, snap.opened_at)
        lead = 2 * self.poll_interval  # the grant is ready when the open period ends
        due = snap.state is CircuitState.HALF_OPEN or (
            snap.state is CircuitState.OPEN and snap.open_until is not None and snap.open_until <= now + lead)
        pregrant = due and link.pregrant_episode != episode
        if not (pregrant or (wanted and due and now - link.last_attempt >= _RETRY_LEASE)):
            return
        link.last_attempt = now
        with self._db() as conn, self._mem:
            outcome = self.sharing.take_lease(conn, link, wanted=wanted, lead=lead)
        if outcome != "early":  # an early try (another process's open period ends later) is tried again
            link.pregrant_episode = episode

    def _release_all(self) -> None:
        """At close: give back every lease this process holds, so others may probe at once."""
        conn = self._conn
        if conn is None:
            return
        held = []
        for link in list(self._links.values()):
            held += self._take_done(link) + [lease for lease, _ in link.grants]
            link.grants.clear()
        with contextlib.suppress(Exception):
            self.sharing.release(conn, held)

    # -- rows -----------------------------------------------------------------------------------------

    def _write_rows(self) -> None:
        dropped = self._dropped_count()
        if dropped > self._dropped_reported:
            lost = dropped - self._dropped_reported
            failures = self._dropped_failures
            _log("warning", "circuitry.store_dropped", location=self.backend.location, rows=lost, total=dropped,
                 failures_total=failures,
                 note="the row queue was full: these failure rows are not written (their counts are in the "
                      "per-second and per-minute rollups); raise queue_size or fix the store fault")
            self._rows.append(row_tuple("circuitry", "dropped", None, None, "queue_full",
                                        f"{lost} rows dropped: queue full",
                                        {"dropped": lost, "total": dropped, "failures_total": failures},
                                        self._time(), self.process))
            self._dropped_reported = dropped
        deadline = time.monotonic() + max(0.05, 4 * self.poll_interval)
        while self._rows:
            batch = []
            with contextlib.suppress(IndexError):
                for _ in range(min(_BATCH, len(self._rows))):
                    batch.append(self._rows.popleft())
            self._inflight = len(batch)
            try:
                with self._db() as conn, conn.transaction():
                    try:
                        conn.executemany(INSERT_EVENT, batch)
                    except (TypeError, ValueError) as exc:
                        if self.backend.classify(exc) is not None:
                            raise
                        self._one_by_one(conn, batch)  # a row the database refuses must not wedge the queue
            except BaseException:
                self._rows.extendleft(reversed(batch))  # nothing is lost: retried next cycle
                raise
            finally:
                self._inflight = 0
            self._written += len(batch)
            if time.monotonic() > deadline:  # the rest next cycle: keep sampling on time
                self._wake.set()
                return

    def _one_by_one(self, conn: Connection, batch: list[tuple[Any, ...]]) -> None:
        for r in batch:
            try:
                conn.execute(INSERT_EVENT, r)
            except (TypeError, ValueError) as exc:
                self._refused += 1
                _log("error", "circuitry.store_row_refused", location=self.backend.location, row=repr(r)[:300],
                     error_message=str(exc)[:300], total=self._refused)

    def _note_rollup_losses(self) -> None:
        r = self.rollups
        if r.coarsened:
            _log("warning", "circuitry.store_rollups_coarsened", location=self.backend.location,
                 minutes=r.coarsened, note="the database took no writes for a long time: older per-minute "
                 "counts were filed under the oldest minute still held; no count was lost")
            r.coarsened = 0
        if r.seconds_dropped:
            _log("warning", "circuitry.store_seconds_dropped", location=self.backend.location,
                 seconds=r.seconds_dropped, note="per-second detail dropped while the database took no "
                 "writes; the per-minute counts are whole")
            r.seconds_dropped = 0

    # -- other processes ------------------------------------------------------------------------------

    def _poll(self, conn: Connection, now: float) -> None:
        rows = self.backend.changed_states(conn, self._since)
        if rows is None:
            return
        self._warm = True
        links = self._links
        for row in rows:
            self._since = max(self._since, row[7] or 0)
            self.sharing.learn(row)
            link = links.get(row[0])
            if link is None or row[2] <= link.version:
                continue
            with self._mem:
                self.sharing.adopt(link, row, "remote", expect=link.synced_gen)
            self._dirty.append(link)
        for link in list(links.values()):
            if link.grants:
                given = self.sharing.yield_unused(conn, link)
                if given:
                    self.sharing.release(conn, given)

    # -- faults ---------------------------------------------------------------------------------------

    def _on_error(self, exc: Exception) -> None:
        kind = self.backend.classify(exc)
        if kind is None:  # not a database error: a bug; report it as one and keep going
            kind = "io_error"
            _log("error", "circuitry.store_bug", location=self.backend.location, error_type=type(exc).__qualname__,
                 error_message=str(exc)[:500])
        if kind == "locked":
            first = self._locked_since
            if first is None:
                self._locked_since = first = time.monotonic()
            if time.monotonic() - first < self.busy_timeout:
                self._next_io = time.monotonic() + self.poll_interval
                return  # contention, not a fault yet
        extra = self.backend.remedy(kind, exc)
        if "set_aside" in extra:
            self._set_aside.append(extra["set_aside"])
            self._resync_all()
        if "disable" in extra:
            self._disabled = str(extra["disable"])
        if kind in ("deleted", "io_error", "read_only", "corrupt", "unavailable", "disk_full"):
            self._drop_conn()  # reopen: a read-only file may be writable again, a replaced one is new
        self._report(kind, exc, **extra)
        self._backoff = min(5.0, max(0.05, self._backoff * 2))
        self._next_io = time.monotonic() + self._backoff

    def _report(self, kind: str, exc: BaseException, **extra: Any) -> None:
        """One structured warning per fault episode (the kind changing starts a new one)."""
        with self._lock:
            if self._fault == kind:
                return
            self._fault = kind
            self._fault_since = self._time()
            self._faults += 1
        for link in list(self._links.values()):
            link.memory = True
        note = extra.pop("note", None) or ("protected calls continue from memory; writes are retried and the "
                                           "backlog is kept")
        if self._disabled:
            note = f"circuitry stopped writing to this database: {self._disabled}"
        _log("warning", "circuitry.store_fault", location=self.backend.location, fault=kind,
             error_type=type(exc).__qualname__, error_message=str(exc)[:500], note=note, **extra)
        self._rows.append(row_tuple("circuitry", "store_fault", None, kind, type(exc).__qualname__, str(exc)[:500],
                                    {**extra, "note": note}, self._time(), self.process))

    def _recovered(self) -> None:
        with self._lock:
            kind, since = self._fault, self._fault_since
            self._fault = None
            self._backoff = 0.0
        for link in list(self._links.values()):
            link.memory = False
        _log("info", "circuitry.store_recovered", location=self.backend.location, fault=kind,
             seconds=round(self._time() - since, 3))

    # -- reading --------------------------------------------------------------------------------------

    @property
    def read(self) -> ReadModel:
        """The read model: status, alerts, patterns, metrics, what needs attention."""
        if self._read is None:
            from circuitry.store.readmodel import ReadModel

            self._read = ReadModel(self.backend, clock=self._time, busy_timeout=self.busy_timeout)
        return self._read

    def circuit(self, name: str) -> dict[str, Any] | None:
        """The read model's :meth:`~circuitry.store.readmodel.ReadModel.circuit`, with what this process
        counted but has not written yet added in: exact, and without waiting on the writer."""
        now = self._time()
        since = int((now - 3600.0) // 60)
        for _ in range(5):
            with self._mem:
                held, seq = self.rollups.unwritten(name, since)
                link = self._links.get(name)
                if link is not None:
                    counts = link.breaker.counts()
                    for i in range(5):
                        held[i] += counts[i] - link.counts[i]
            status = self.read.circuit(name, now=now)
            if self.rollups.committed == seq:  # no commit in between: the database read and ``held`` add up
                break
        if status is None:
            if link is None:
                return None
            snap = link.breaker.snapshot()
            status = {"service_name": name, "state": snap.state.value, "pattern": None, "unacknowledged_alerts": 0,
                      "last_hour": {"total_calls": 0, "successes": 0, "failures": 0, "rejections": 0,
                                    "circuit_open_duration": 0, "avg_latency_ms": None, "max_latency_ms": None}}
        h = status["last_hour"]
        h["successes"] += int(held[0])
        h["failures"] += int(held[1])
        h["rejections"] += int(held[3])
        h["total_calls"] += int(sum(held[:5]))
        decided = h["successes"] + h["failures"]
        h["success_rate"] = round(100.0 * h["successes"] / decided, 1) if decided else 100.0
        h["failure_rate"] = round(h["failures"] / decided, 4) if decided else 0.0
        return status

    def unwritten_states(self) -> dict[str, str]:
        """This process's circuits whose state changed since the store last wrote or read their row."""
        out = {}
        for link in list(self._links.values()):
            snap = link.breaker.snapshot()
            if snap.generation != link.synced_gen:
                out[link.name] = snap.state.value
        return out

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one read-only SQL statement; rows as dicts. Raises :class:`StoreError`."""
        return self.read.query(sql, params)

    async def aquery(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """:meth:`query` for asyncio code (on a worker thread: the event loop never waits on the database)."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.query, sql, params)

    def alerts(self, service: str | None = None, *, include_acknowledged: bool = False,
               limit: int = 100) -> list[dict[str, Any]]:
        """Alert rows, newest first."""
        return self.read.alerts(service, include_acknowledged=include_acknowledged, limit=limit)

    def acknowledge(self, alert_id: int | None = None, *, service: str | None = None) -> int:
        """Acknowledge one alert by id, or every open alert of a service; returns how many."""
        keys = self.read.acknowledge(alert_id=alert_id, service=service)
        for runner in self.runners:
            forget = getattr(runner, "acknowledged", None)
            if forget is not None:
                forget(keys)
        return len(keys)

    def links(self) -> list[Link]:
        return list(self._links.values())

    def record(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Queue event rows (``circuitry.store.sharing.row_tuple``) for the writer."""
        for row in rows:
            self._queue(row)
        self._wake.set()


def _close_all_at_exit() -> None:
    """At interpreter exit, flush what each open store holds — briefly: exit must stay prompt."""
    for store in list(_STORES):
        with contextlib.suppress(Exception):
            store.close(timeout=store.exit_timeout)
            if store.health().queued:
                _log("warning", "circuitry.store_exit_unflushed", location=store.backend.location,
                     rows=store.health().queued, note=f"not written within exit_timeout={store.exit_timeout} s")


_finalizer_registered = False


def _finalize_in_child() -> None:
    """A forked ``multiprocessing`` child leaves by ``os._exit`` without running ``atexit``; its own exit
    path runs ``multiprocessing.util`` finalizers, so the flush is registered there too."""
    global _finalizer_registered
    if _finalizer_registered:
        return
    _finalizer_registered = True
    try:
        import multiprocessing.util as mp_util

        mp_util.Finalize(None, _close_all_at_exit, exitpriority=100)
    except Exception:  # pragma: no cover - multiprocessing unavailable: atexit remains
        pass


def _before_fork() -> None:
    for store in list(_STORES):
        store._before_fork()


def _after_fork_in_parent() -> None:
    for store in list(_STORES):
        store._after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _finalizer_registered
    _finalizer_registered = False
    for store in list(_STORES):
        store._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
