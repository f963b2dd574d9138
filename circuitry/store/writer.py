"""The writer: the one thread of a store that does I/O.

Each cycle (``poll_interval``, or at once when a breaker reports a transition or a probe) it samples
the breakers' counters (always, even while the database fails: nothing is lost, only delayed), writes
failure rows, brings each changed circuit's shared row up to date, tends probe leases, writes the
per-second and per-minute counts, adopts what other processes changed, and prunes old history.

Locks: ``io`` is held while the connection is used, one transaction at a time; ``store.mem`` around
in-memory work on breakers. Order: ``io`` before ``mem``. ``fork()`` takes both (see
:meth:`SharedStore._before_fork`), so no connection and no breaker lock is in use when it happens.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final

from circuitry.exceptions import StoreError
from circuitry.instrumentation.logging import log
from circuitry.store.backend import Connection
from circuitry.store.leases import take_done
from circuitry.store.link import Link
from circuitry.store.rollups import prune, sample
from circuitry.store.state_rows import clean_row, repair_row

if TYPE_CHECKING:
    from circuitry.store.engine import SharedStore

__all__ = ["Writer"]

_COLD_SAMPLE: Final = 5.0  # seconds between samples of a circuit without calls lately
# Seconds between looks at every quiet circuit's failure log: a look costs about the same whatever the
# number of circuits -- every cycle for a hundred of them, every second for ten thousand. (Every second
# for any number, a quiet circuit's first failures reached the other processes up to a second late, and
# across processes a threshold of 5 let about 8 failures through after a quiet spell.)
_FAILURE_SCAN: Final = 1.0
_SCAN_PER_CIRCUIT: Final = 1e-4


class Writer:
    """The writer thread of ``store`` and its connection (see the module docstring)."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.io = threading.RLock()
        #: When the I/O step in progress began (``time.monotonic()``), or ``None``: a step that has lasted
        #: past ``busy_timeout`` is a stall (a server that takes the connection and never answers), and
        #: breakers then decide their probes from memory, as during a reported fault.
        self.io_since: float | None = None
        self.wake = threading.Event()
        self.conn: Connection | None = None
        self.warm = False  # every row has been read once: adoption needs no read of its own
        self.first_read = threading.Event()  # set after the first cycle, whether it could read or not
        self._done = threading.Condition(threading.Lock())
        self._cycles = self._clean = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flush_asked = False
        self._since = 0  # change sequence of the newest state change seen
        self._last_cold = self._last_scan = self._last_metrics = self._last_prune = 0.0
        self._hot: set[Link] = set()  # circuits with calls lately: sampled every cycle
        self._opened = False
        self._last_check = 0.0  # when an idle cycle last checked the file (deleted, replaced)
        self._lock = threading.Lock()

    # -- control (any thread) -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start the thread once; True if this call started it."""
        with self._lock:
            if self._thread is not None:
                return False
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"circuitry-store:{self.store.backend.location[-40:]}")
            self._thread.start()
            return True

    def flush(self, timeout: float) -> bool:
        """Wait for a clean cycle that started after this call; False at ``timeout``."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        deadline = time.monotonic() + timeout
        with self._done:
            self._flush_asked = True
            target = self._cycles + 2  # a cycle that *started* after this call
            while True:
                if self.store.faults.fault is None:  # every cycle until a clean one is final (not while the
                    self._flush_asked = True        # database fails: its retries keep their backoff)
                self.wake.set()
                if self._clean >= target or (self._cycles >= target and self.store.faults.disabled):
                    return self._clean >= target
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not thread.is_alive():
                    return False
                self._done.wait(min(remaining, 0.05))

    def stop(self, timeout: float) -> None:
        self._stopping = True
        self.wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.1, timeout))

    def drop_conn(self) -> None:
        with self.io:  # never under a step another thread is taking on it
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
            self.conn = None

    def unwritten_calls(self) -> int:
        """Calls the breakers counted that are not written: filed and waiting, or not yet sampled."""
        total = self.store.rollups.pending_calls()
        for link in list(self.store._links.values()):
            now, then = link.breaker.counts(), link.counts
            total += sum(now) - sum(then)
        return total

    def stalled(self) -> bool:
        """Whether the I/O step in progress has lasted past ``busy_timeout`` (see ``io_since``)."""
        since = self.io_since
        return since is not None and time.monotonic() - since > self.store.busy_timeout

    @contextlib.contextmanager
    def db(self) -> Iterator[Connection]:
        """The connection for one step (a transaction or two), with ``io`` held."""
        with self.io:
            outer = self.io_since is None
            if outer:
                self.io_since = time.monotonic()
            try:
                yield self._connection()
            finally:
                if outer:
                    since, self.io_since = self.io_since, None
                    self.store.faults.stalled(time.monotonic() - (since or 0.0))

    # -- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        s = self.store
        while True:
            self.wake.wait(s.poll_interval)
            self.wake.clear()
            stopping = self._stopping
            flushing, self._flush_asked = self._flush_asked, False
            clean = False
            with s.mem:
                now = s._time()  # read under the lock, next to the counts it files them under
                self._sample_all(now, full=stopping or flushing)
            if (stopping or flushing or s.faults.due()) and not s.faults.disabled:
                try:
                    if self._idle(now, stopping or flushing):
                        with self.db() as conn:  # nothing to write: only see what other processes did
                            self._poll(conn)
                    else:
                        self._cycle(now, final=stopping or flushing)
                    clean = not len(s.rows) and not len(s.rollups)
                    s.faults.ok()
                except Exception as exc:
                    actions = s.faults.error(exc)
                    if actions.get("reopen"):
                        self.drop_conn()
                    if actions.get("reopen_all"):
                        self._drop_idle_elsewhere()
                    if actions.get("resync"):
                        self.resync_all()
            self.first_read.set()
            with self._done:
                self._cycles += 1
                if clean:
                    self._clean = self._cycles
                self._done.notify_all()
            if stopping:
                with self.io:
                    self._release_all()
                    self.drop_conn()
                return

    def _drop_idle_elsewhere(self) -> None:
        """Close the connections of the store's other threads that are not in use (the read model's, the
        runners'; they reopen on their next use). SQLite shares a file's WAL index among a process's
        connections: one opened while the file was read-only kept it read-only for the writer
        reconnecting after the file was made writable, and writes never resumed."""
        s = self.store
        with contextlib.suppress(Exception):  # best effort: the writer's loop must go on whatever happens
            if s._read is not None:
                s._read.drop_idle()
            for runner in s.runners:
                drop = getattr(runner, "drop_idle", None)  # (a runner added by an application may lack it)
                if drop is not None:
                    drop()

    def _idle(self, now: float, final: bool) -> bool:
        """Whether this cycle has nothing to write (no transition, no row, no count, no lease to tend,
        nothing due): then it only polls for other processes' changes — one statement, so thousands of
        quiet circuits cost next to nothing. The file is still checked every quarter of a second."""
        s = self.store
        if (final or s._dirty or len(s.rows) or len(s.rollups) or s._watch or self._hot or self.conn is None
                or s.faults.fault is not None or now - self._last_prune >= 60.0):
            return False
        tick = time.monotonic()
        if tick - self._last_check >= 0.25:
            self._last_check = tick
            self._check_file()
            return self.conn is not None and not s._dirty
        return True

    def _sample_all(self, now: float, full: bool) -> None:
        """Sample the circuits with calls lately every cycle; look at every circuit's failure log every
        cycle to every second (see ``_FAILURE_SCAN``) and sample every circuit every few seconds (so ten
        thousand quiet circuits cost little)."""
        tick = time.monotonic()
        links: Sequence[Link]
        if full or tick - self._last_cold >= _COLD_SAMPLE:
            self._last_cold = self._last_scan = tick
            links = self.store.links()
        elif tick - self._last_scan >= min(_FAILURE_SCAN, len(self.store._links) * _SCAN_PER_CIRCUIT):
            self._last_scan = tick
            links = [*self._hot, *(link for link in self.store.links() if link.failure_log and not link.hot)]
        else:
            links = list(self._hot)
        for link in links:
            self.sample(link, now)

    def sample(self, link: Link, now: float) -> None:
        s = self.store
        if sample(link, now, s.rollups, len(s._links), s.rows.put, s.process, s.failure_rows_per_second):
            s._dirty.append(link)  # its evidence is shared this cycle
        if link.hot:
            self._hot.add(link)
        else:
            self._hot.discard(link)

    def forget(self, link: Link) -> None:
        self._hot.discard(link)

    def failures_first(self, conn: Connection, link: Link) -> None:
        """(``io`` and ``mem`` held.) Write the failures ``link`` counted so far before its transition."""
        self.sample(link, self.store._time())
        self.store.rows.write(self.db, budget=1.0)

    def _connection(self) -> Connection:
        s = self.store
        conn = self.conn
        if conn is not None:
            return conn
        conn = s.backend.connect("writer", timeout=min(s.busy_timeout, 0.1))
        self._since = 0  # the first poll reads every row: what changed while no connection was open included
        if not self._opened:
            self._opened = True
            log("info", "circuitry.store_opened", location=s.backend.location, process=s.process)
        self.conn = conn
        return conn

    def resync_all(self) -> None:
        """The database is a new one (recreated, set aside): every circuit's state goes in again."""
        s = self.store
        s.sharing.known.clear()
        for link in s.links():
            link.version = -1
            link.synced_gen = -1
            link.adopt_gen = -1  # whatever the new file holds, this process's state goes in
            s._dirty.append(link)

    def _check_file(self) -> None:
        """Once a cycle (a system call; not every step, which would hand the GIL over several times a
        cycle): a deleted or replaced file is reopened, and every circuit's state written again."""
        s = self.store
        with self.io:
            conn = self.conn
            stale = None if conn is None else s.backend.stale(conn)
            if stale is not None:
                self.drop_conn()
                s.faults.report(stale, StoreError(f"{s.backend.location} was deleted or replaced"))
                self.resync_all()

    def _cycle(self, now: float, final: bool) -> None:
        s = self.store
        self._check_file()
        dirty = set()
        while s._dirty:
            with contextlib.suppress(IndexError):
                dirty.add(s._dirty.popleft())
        self._hot.update(link for link in dirty if link.hot)  # (a new circuit: sampled from its first cycle)
        try:
            self._cycle_io(now, final, dirty)
        except BaseException:
            # The database failed part-way: the circuits not brought up to date yet go again next cycle
            # (syncing one that was is a no-op), or a transition made during a fault would never be written.
            s._dirty.extend(dirty)
            raise

    def _cycle_io(self, now: float, final: bool, dirty: set[Link]) -> None:
        s = self.store
        live = s._links
        with s.mem:  # failures before the transitions they caused
            for link in dirty:
                if live.get(link.name) is link:
                    self.sample(link, now)
        budget = max(0.05, 4 * s.poll_interval)
        if not s.rows.write(self.db, budget):
            self.wake.set()  # the rest next cycle: keep sampling on time
        for link in dirty:
            if live.get(link.name) is link:
                with self.db() as conn, s.mem:
                    s.sharing.sync(conn, link, now)
                s._watch.add(link)
            else:  # forgotten: only its leases remain to give back
                with self.db() as conn:
                    s.leases.release(conn, take_done(link) + [grant.lease for grant in link.grants])
                link.grants.clear()
        for link in list(s._watch):
            if not s.leases.tend(self.db, link, now, s.mem):
                s._watch.discard(link)
        s.rows.write(self.db, budget)  # what this cycle added (a fault's row, a drop report)
        if final or now - self._last_metrics >= s.metrics_interval:
            with self.db() as conn:
                s.rollups.write(conn)
            self._last_metrics = now
            self._note_rollup_losses()
        with self.db() as conn:
            self._poll(conn)
        if now - self._last_prune >= 60.0:
            self._last_prune = now
            with self.db() as conn:
                prune(conn, now, retention=s.retention, second_retention=s.second_retention,
                      max_events=s.max_events)

    def _release_all(self) -> None:
        """At close: give back every lease this process holds, so others may probe at once."""
        if self.conn is None:
            return
        held = []
        for link in self.store.links():
            held += take_done(link) + [grant.lease for grant in link.grants]
            link.grants.clear()
        with contextlib.suppress(Exception):
            self.store.leases.release(self.conn, held)

    def _note_rollup_losses(self) -> None:
        r = self.store.rollups
        where = self.store.backend.location
        if r.coarsened:
            log("warning", "circuitry.store_rollups_coarsened", location=where, minutes=r.coarsened,
                note="the database took no writes for a long time: older per-minute counts were filed under "
                     "the oldest minute still held; no count was lost")
            r.coarsened = 0
        if r.seconds_dropped:
            log("warning", "circuitry.store_seconds_dropped", location=where, seconds=r.seconds_dropped,
                note="per-second detail dropped while the database took no writes; the per-minute counts are "
                     "whole")
            r.seconds_dropped = 0

    def _poll(self, conn: Connection) -> None:
        """Adopt what other processes changed; give back unused grants another process waits for."""
        s = self.store
        rows = s.backend.changed_states(conn, self._since)
        if rows is None:
            return
        self.warm = True
        links = s._links
        for raw in rows:
            row, bad = clean_row(raw)
            if bad:  # values circuitry cannot use, written by hand: repaired, so every process reads it alike
                row = repair_row(conn, row, bad)
            self._since = max(self._since, row[7] or 0)
            s.sharing.learn(row)
            link = links.get(row[0])
            if link is None:
                continue
            link.shared_count = row[8] or 0
            if row[2] <= link.version:
                continue
            with s.mem:
                s.sharing.adopt(link, row, "remote", expect=link.synced_gen)
            s._dirty.append(link)
        for link in list(links.values()):
            if link.grants:
                given = s.leases.yield_unused(conn, link)
                if given:
                    s.leases.release(conn, given)
