"""The sharing engine: persistent, shared circuit state and history, off the call path, for any backend.

How it works (each part in its module):

* **Nothing on the caller's thread.** A breaker tells its :class:`~circuitry.store.link.Link` about
  failures, probes and transitions with a few in-memory operations; one writer thread per store does
  all I/O. Successes and rejections are not even reported: the writer samples each breaker's atomic
  counters and files the differences under the second and the minute (:mod:`~circuitry.store.rollups`).
  Breakers that had calls lately are sampled every cycle (``poll_interval``), quiet ones every few
  seconds, so ten thousand idle circuits cost next to nothing.
* **Prompt transitions, batched history.** A transition wakes the writer, which commits it within a
  cycle, by compare-and-set (:mod:`~circuitry.store.sharing`); failure rows go out in batches
  (:mod:`~circuitry.store.rows`); probe leases are taken by the writer (:mod:`~circuitry.store.leases`).
* **Other processes' changes** arrive through the backend (``PRAGMA data_version`` on SQLite;
  ``LISTEN/NOTIFY`` on PostgreSQL) and are adopted within a cycle.
* **Faults** are reported once per episode and retried with backoff while sampling goes on
  (:mod:`~circuitry.store.faults`).
* **fork() and exit** never wait on the database beyond the transaction in flight and ``exit_timeout``
  (:mod:`~circuitry.store.process`).

(A little over 500 lines: the store's options, each checked and documented where it is given, are a
good part of it; the parts that do the work are the modules named above.)
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from circuitry._checks import check_clock, check_int, check_number
from circuitry._clock import Clock
from circuitry._core import CircuitBreaker
from circuitry.exceptions import ConfigurationError
from circuitry.instrumentation.logging import log
from circuitry.store.backend import Backend
from circuitry.store.faults import Faults, StoreHealth
from circuitry.store.leases import Leases
from circuitry.store.link import Link
from circuitry.store.process import Runner, track, untrack
from circuitry.store.rollups import Rollups
from circuitry.store.rows import RowQueue
from circuitry.store.sharing import Sharing
from circuitry.store.writer import Writer

if TYPE_CHECKING:
    from circuitry.analysis.adjust import AdjustPolicy
    from circuitry.analysis.alerts import AlertPolicy
    from circuitry.events import Event
    from circuitry.store.readmodel import ReadModel

__all__ = ["Runner", "SharedStore", "StoreHealth", "check_options"]

_R = TypeVar("_R")

_STORE_SEQ = itertools.count(1)


def _process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def check_options(owner: str, options: Mapping[str, Any]) -> None:
    """Raise a ConfigurationError naming the first of ``options`` that is no setting of the engine, as
    an argument of ``owner`` (the store class the application called)."""
    known = [p for p in inspect.signature(SharedStore.__init__).parameters if p not in ("self", "backend")]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; its settings are: {', '.join(known)}"
            raise ConfigurationError(f"{owner}() got an unknown argument {name!r}{hint}")


class SharedStore:
    """Persist and share the breakers of a registry through a database backend.

    Use a concrete store — :class:`~circuitry.store.SQLiteStore` or ``PostgresStore`` — or
    :func:`~circuitry.store.open_store`. Nothing is opened until the first breaker is adopted.

    Args:
        backend: The database.
        retention: Seconds of event, pattern and alert history to keep (default 7 days).
        max_events: Event rows kept, whatever their age: beyond it the oldest failure rows go; a
            transition or another rare event goes only once ten times as many newer events exist.
        poll_interval: Seconds between writer cycles: other processes' changes are seen within one.
        metrics_interval: Seconds between writes of the per-second and per-minute counts.
        queue_size: Event rows that may wait to be written; beyond it rows are dropped and counted.
        busy_timeout: Seconds a lock may last before it is reported as a fault (and a step of I/O
            before probes are decided from memory: a database that stops answering).
        startup_wait: Seconds the first breaker of a process may wait, once, for the store's first read
            of the stored states when it cannot read its own at once (PostgreSQL always; SQLite while the
            file is locked), so that a process starting during an outage keeps the circuit open; 0 never
            waits (the breakers then take the stored states a writer cycle later, running closed meanwhile).
        clock: The wall clock of timestamps (inject the registry's fake clock in tests).
        failure_rows_per_second: Failure rows written one by one per circuit and second; past it, a
            writer cycle's failures go into one row carrying their number (``occurrences``).
        second_retention: Seconds of per-second counts to keep (default ``max(2 * analysis_window, 3600)``).
        exit_timeout: The most seconds interpreter exit waits for the last writes.
        analysis_interval: Seconds between two analyses of a circuit's history by the analyst that runs
            beside the store once it is attached to a registry (see :mod:`circuitry.runners.analyst`).
        analysis_window: Seconds of recent history each analysis reads.
        alert_policy: The alert rules' settings (:class:`circuitry.analysis.alerts.AlertPolicy`), or
            ``None`` for the defaults.
        auto_apply: Let the analyst adjust circuits' threshold, open period and backoff by itself, one
            bounded, confirmed step at a time towards its recommendations, rolling back a change that
            made the measured cost worse (:mod:`circuitry.analysis.adjust`); every change is an
            ``adjustment`` row in ``circuit_breaker_events`` that every process follows. ``True`` for the
            default rules, or an :class:`~circuitry.analysis.adjust.AdjustPolicy` for others.

    .. versionadded:: 0.1.0
    """

    def __init__(self, backend: Backend, *, retention: float = 7 * 86400.0, max_events: int = 1_000_000,
                 poll_interval: float = 0.025, metrics_interval: float = 1.0, queue_size: int = 200_000,
                 busy_timeout: float = 5.0, clock: Clock | None = None, failure_rows_per_second: int = 100,
                 second_retention: float | None = None, exit_timeout: float = 0.5,
                 analysis_interval: float = 60.0, analysis_window: float = 900.0,
                 alert_policy: AlertPolicy | None = None, auto_apply: bool | AdjustPolicy = False,
                 startup_wait: float = 0.5) -> None:
        self.retention = check_number("retention", retention, lo=1.0, hi=10 * 365 * 86400.0, lo_open=False)
        self.poll_interval = check_number("poll_interval", poll_interval, lo=0.001, hi=60.0, lo_open=False)
        self.metrics_interval = check_number("metrics_interval", metrics_interval, lo=0.01, hi=3600.0,
                                             lo_open=False)
        self.busy_timeout = check_number("busy_timeout", busy_timeout, lo=0.0, hi=600.0, lo_open=False)
        self.startup_wait = check_number("startup_wait", startup_wait, lo=0.0, hi=60.0, lo_open=False)
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
        from circuitry.analysis.adjust import AdjustPolicy
        from circuitry.analysis.alerts import AlertPolicy

        if not isinstance(auto_apply, bool | AdjustPolicy):
            raise ConfigurationError(f"auto_apply must be a bool or an AdjustPolicy, got {auto_apply!r}")
        self.auto_apply, self.adjust_policy = auto_apply is not False, (
            auto_apply if isinstance(auto_apply, AdjustPolicy) else AdjustPolicy())
        if alert_policy is not None and not isinstance(alert_policy, AlertPolicy):
            raise ConfigurationError(f"alert_policy must be an AlertPolicy or None, got {alert_policy!r} "
                                     "(build one: AlertPolicy(high_failure_rate=0.2, ...))")
        self.alert_policy: AlertPolicy | None = alert_policy
        self.backend = backend
        self._time: Callable[[], float] = check_clock(clock).time
        self.runners: list[Runner] = []
        self.alert_callbacks: list[tuple[Callable[[dict[str, Any]], Any], str | None, float]] = []
        self.muted: set[str] = set()
        self._closed = False
        self._init_runtime()
        track(self)

    def _init_runtime(self) -> None:
        self.process = _process_name()
        self._lock = threading.Lock()  # the links table
        self.mem = threading.Lock()  # held around in-memory work on breakers (fork() waits for it)
        self._links: dict[str, Link] = {}
        self._dirty: deque[Link] = deque()
        self._watch: set[Link] = set()  # links whose circuit is open or half-open: leases to look after
        self.rows = RowQueue(self.queue_size, self.backend, self.process, self._time)
        self.rollups = Rollups()
        self.faults = Faults(self.backend, busy_timeout=self.busy_timeout, retry=self.poll_interval,
                             memory=self._memory_mode, record=self.rows.put, process=self.process, clock=self._time)
        self.writer = Writer(self)
        self._startup_waited = False
        self._superseded = 0
        self.sharing = Sharing(self.process, self._shared_transition, self._count_superseded)
        self.sharing.before_write = self.writer.failures_first
        # Lease rows name their holder: this process, and this store in it (two stores on one file in one
        # process coordinate as two processes would).
        self.leases = Leases(self.sharing, self.process, f"{self.process}/{next(_STORE_SEQ)}",
                             lead=2 * self.poll_interval)
        self._read: ReadModel | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend.location!r})"

    # -- registry side --------------------------------------------------------------------------------

    def adopt(self, breaker: CircuitBreaker) -> None:
        """Persist ``breaker`` from now on. It takes the stored state at once if the writer has read it
        (or one read that never waits for a lock can), else within a writer cycle; a process never
        resets shared state when it starts."""
        if self._closed:
            return
        try:
            breaker.name.encode("utf-8")
        except UnicodeEncodeError:  # no database can store this name: the breaker runs from memory alone
            log("error", "circuitry.store_name_refused", location=self.backend.location, circuit=repr(breaker.name),
                note="the name cannot be encoded as UTF-8, so it cannot be stored; the circuit is not persisted")
            return
        link = Link(breaker, log_size=max(64, 4 * self.failure_rows_per_second), clock=self._time,
                    wake=self._wake_for, retry_hint=max(self.poll_interval, 0.01), stalled=self.writer.stalled)
        known = self.sharing.known.get(breaker.name)
        if known is None and not self.writer.warm:  # before the writer's first read: one read that never waits
            read, known = self.read.state_now(breaker.name)
            if not read and self.startup_wait > 0.0 and not self._startup_waited:
                # It could not be read at once (a server is a round trip away; a SQLite file may be locked).
                # Once per store, wait a moment for the writer's first read of every row: a process that
                # starts during an outage must not send its callers to the failing service meanwhile.
                self._startup_waited = True
                self._ensure_thread()
                self.writer.wake.set()
                self.writer.first_read.wait(self.startup_wait)
                known = self.sharing.known.get(breaker.name)
        if known is not None:
            self.sharing.adopt(link, known, "restored", expect=link.adopt_gen)
        with self._lock:
            old = self._links.get(breaker.name)
            self._links[breaker.name] = link
            link.memory = self.faults.fault is not None  # once listed (a fault in the start-up wait is seen)
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
        with self.mem:
            self.writer.sample(link, self._time())  # its last counts and failure rows
            self.writer.forget(link)
            for grant in list(link.grants):
                link.done.append(grant.lease)
        self._dirty.append(link)  # its leases are released by the next cycle
        self.writer.wake.set()

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
            log("warning", "circuitry.store_not_prepared", location=self.backend.location,
                 error_type=type(exc).__qualname__, error_message=str(exc)[:500])
            return False
        conn.close()
        return True

    def _wake_for(self, link: Link) -> None:
        self._dirty.append(link)
        self.writer.wake.set()

    def links(self) -> list[Link]:
        return list(self._links.values())

    def record(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Queue event rows (``circuitry.store.sharing.row_tuple``) for the writer."""
        for row in rows:
            self.rows.put(row)
        self.writer.wake.set()

    # -- lifecycle ------------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if not self._closed and self.writer.start():
            for runner in list(self.runners):
                runner.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything sampled, queued and held now; True if a clean cycle finished within
        ``timeout`` (False while the database takes no writes)."""
        if not self.writer.running:
            return not len(self.rows) and not self._links
        return self.writer.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush (waiting at most ``timeout`` seconds), release held leases, stop the writer and the
        runners, close the connections. Rows the database did not take by then are lost, and a warning
        (``circuitry.store_unflushed``) says how many."""
        self._close(timeout, "close")

    def _close(self, timeout: float, when: str) -> None:
        if self._closed:
            return
        self.flush(timeout)
        for runner in list(self.runners):
            runner.close(min(timeout, 2.0))
        self._closed = True
        self.writer.stop(timeout)
        for link in list(self._links.values()):
            if link.breaker.linked is link:
                link.breaker.link(None)
        if self._read is not None:
            self._read.close()
        untrack(self)
        left, calls = self.health().queued, self.writer.unwritten_calls()  # (calls: counted, not written)
        if left or calls:
            log("warning", "circuitry.store_unflushed", location=self.backend.location, rows=left, calls=calls,
                when=when, note=f"not written in {timeout:g} s of {'exit' if when == 'exit' else 'close()'}: lost")

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
        f = self.faults
        return StoreHealth(self.backend.location, f.fault is None and f.disabled is None, f.fault, f.count,
                           len(self.rows), self.rows.written, self.rows.dropped, tuple(f.set_aside),
                           self.rows.refused, self._superseded, f.disabled)

    # -- runners (the analyst) -------------------------------------------------------------------------

    def add_runner(self, runner: Runner) -> None:
        self.runners.append(runner)
        if self.writer.running:
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

    def _shared_transition(self, event: Event) -> None:
        for runner in self.runners:
            runner.transitioned(event)

    def _count_superseded(self, n: int) -> None:
        self._superseded += n

    def _memory_mode(self, on: bool) -> None:
        for link in list(self._links.values()):
            link.memory = on

    # -- fork -----------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """No connection may cross fork(): SQLite keeps lock bookkeeping per process, and a child that
        inherits it may skip locks it does not hold, or have the parent delete a WAL it still writes.
        So the writer's transaction in flight is let finish (every statement waits at most 0.1 s for a
        lock), every thread's connection is closed, and both sides reopen their own afterwards."""
        self.writer.io.acquire()
        self.mem.acquire()
        self.writer.drop_conn()
        if self._read is not None:
            self._read.hold()
        for runner in self.runners:
            runner.hold()

    def _after_fork_in_parent(self) -> None:
        for runner in self.runners:
            runner.release()
        if self._read is not None:
            self._read.release()
        self.mem.release()
        self.writer.io.release()

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
            self._ensure_thread()

    # -- reading --------------------------------------------------------------------------------------

    @property
    def read(self) -> ReadModel:
        """The read model: status, alerts, patterns, metrics, what needs attention."""
        if self._read is None:
            from circuitry.store.readmodel import ReadModel

            self._read = ReadModel(self.backend, clock=self._time, busy_timeout=self.busy_timeout)
        return self._read

    def _read_with_unwritten(self, names: Sequence[str], read: Callable[[float, dict[str, list[float]]], _R]
                             ) -> tuple[_R, dict[str, list[float]]]:
        """``read(now, held)`` from the database, ``held`` being what this process counted of ``names`` but
        has not written yet; retried (up to five times) until no commit came between taking the counts and
        the end of the read, so that the two add up exactly."""
        now = self._time()
        since = int((now - 3600.0) // 60)
        for _ in range(5):
            held: dict[str, list[float]] = {}
            with self.mem:
                seq = self.rollups.committed
                for name in names:
                    counts, _ = self.rollups.unwritten(name, since)
                    link = self._links.get(name)
                    if link is not None:
                        now_counts = link.breaker.counts()
                        for i in range(5):
                            counts[i] += now_counts[i] - link.counts[i]
                    held[name] = counts
            got = read(now, held)
            if self.rollups.committed == seq:
                break
        return got, held

    def circuit(self, name: str) -> dict[str, Any] | None:
        """The read model's :meth:`~circuitry.store.readmodel.ReadModel.circuit`, with what this process
        counted but has not written yet added in: exact, and without waiting on the writer."""
        status, held = self._read_with_unwritten([name], lambda now, _: self.read.circuit(name, now=now))
        if status is None:
            link = self._links.get(name)
            if link is None:
                return None
            snap = link.breaker.snapshot()
            status = {"service_name": name, "state": snap.state.value, "pattern": None, "unacknowledged_alerts": 0,
                      "last_hour": {"total_calls": 0, "successes": 0, "failures": 0, "rejections": 0,
                                    "circuit_open_duration": 0, "avg_latency_ms": None, "max_latency_ms": None}}
        from circuitry.store.readmodel import add_unwritten

        add_unwritten(status["last_hour"], held[name])
        return status

    def needs_attention(self) -> list[dict[str, Any]]:
        """The read model's :meth:`~circuitry.store.readmodel.ReadModel.needs_attention`, with this
        process's unwritten state changes and counts added in (as :meth:`circuit` does)."""
        states = self.unwritten_states()
        got, _ = self._read_with_unwritten(list(self._links), lambda now, held: self.read.needs_attention(
            now=now, states=states, held=held))
        return got

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
