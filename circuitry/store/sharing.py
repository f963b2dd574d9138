"""How processes share one circuit through its row of ``circuit_breaker_states``: written once, for
every backend (the SQL is the subset SQLite and PostgreSQL share; see :mod:`circuitry.store.backend`).

The rules, in one place:

* **Compare-and-set.** A process writes its breaker's state with ``UPDATE … WHERE version = ?``. If
  another process moved first, the write changes nothing and this process adopts the row instead —
  unless its change was an operator's (``reset()``, ``force_open()``…) or the outcome of a probe it
  holds a lease for: those are written on top of the row, again by compare-and-set.
* **One transition, one row.** The process whose write changes the shared state records the
  transition in ``circuit_breaker_events``, in the same transaction; a process that loses the race
  records nothing (its own transition was the same one, or is superseded). Local transitions made
  between two writes (a fault episode, or several within one writer cycle — even ones that undid each
  other) are each written as a history row by the write that follows, in the order they happened.
* **Half-open is decided by leases.** ``open → half_open`` happens by time in every process; it is
  written by the first lease taken after the open period, in the transaction that takes the lease.
  A probe needs a lease row (``circuit_breaker_probe_leases``): ``half_open_max_calls`` held rows per
  circuit across all processes, taken in a transaction that first locks the circuit's row, with
  expiry decided by the database's clock. A lease whose holder died expires; a lease dated in the
  future (the clock stepped back) counts as expired, so no clock step keeps a dead lease alive.
* **Combined evidence.** Each process adds the failures it saw to the row's ``failure_count`` (a
  success anywhere resets it to the failures seen after that success); the transaction in which the
  sum reaches the threshold opens the circuit, for everyone.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from circuitry._core import describe
from circuitry._state import CircuitState
from circuitry.events import Event, EventKind
from circuitry.store.backend import Connection
from circuitry.store.link import Link
from circuitry.store.state_rows import NEXT_SEQ, STATE_COLUMNS, clean_row, repair_row

__all__ = ["INSERT_EVENT", "NEXT_SEQ", "STATE_COLUMNS", "Sharing", "failure_rows", "iso", "row_tuple"]

_SELECT: Final = f"SELECT {STATE_COLUMNS} FROM circuit_breaker_states WHERE service_name = ?"
INSERT_EVENT: Final = (
    "INSERT INTO circuit_breaker_events (service_name, event_type, from_state, to_state, error_type, "
    "error_message, additional_data, created_at, ts, process, occurrences) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_CAS: Final = (
    "UPDATE circuit_breaker_states SET current_state = ?, failure_count = ?, failure_threshold = ?, "
    "recovery_timeout = ?, state_changed_at = ?, version = version + 1, opened_at = ?, open_until = ?, "
    "open_for = ?, reopen_count = ?, updated_by = ?, updated_at = ?, "
    f"last_failure_time = coalesce(?, last_failure_time), change_seq = {NEXT_SEQ} "
    "WHERE service_name = ? AND version = ? RETURNING version, change_seq")
_INSERT: Final = (
    "INSERT INTO circuit_breaker_states (service_name, current_state, failure_count, failure_threshold, "
    "recovery_timeout, state_changed_at, version, opened_at, open_until, open_for, reopen_count, updated_by, "
    "updated_at, last_failure_time, change_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    f"CASE WHEN {NEXT_SEQ} > ? THEN {NEXT_SEQ} ELSE ? END) "
    "ON CONFLICT (service_name) DO NOTHING RETURNING version, change_seq")
_MANUAL: Final = frozenset({CircuitState.FORCED_OPEN.value, CircuitState.DISABLED.value})
_PROBE_OUTCOMES: Final = frozenset({"probe_succeeded", "probe_failed"})

_iso_cache: list[Any] = [None, ""]

def iso(ts: float) -> str:
    """``ts`` (epoch seconds) as the UTC text SQLite's ``strftime('%Y-%m-%d %H:%M:%f')`` writes; the same
    text is a valid ``timestamptz`` literal in a UTC session."""
    second = int(ts // 1)
    if _iso_cache[0] != second:
        _iso_cache[1] = time.strftime("%Y-%m-%d %H:%M:", time.gmtime(second))
        _iso_cache[0] = second
    return f"{_iso_cache[1]}{second % 60 + (ts - second):06.3f}"


def json_text(data: Any, **options: Any) -> str:
    """``data`` as JSON that every reader takes: a number that is not finite (an infinite ratio in a pattern's
    evidence) is written ``null`` -- Python writes ``Infinity``, which SQLite's ``json_extract`` (for the
    whole table), PostgreSQL's ``::json`` and other languages' parsers refuse. Anything else JSON has no
    form for is written as its text."""
    return json.dumps(_finite(data), default=str, allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def row_tuple(service: str, event_type: str, from_state: str | None, to_state: str | None, error_type: str | None,
              error_message: str | None, data: dict[str, Any] | None, ts: float, process: str,
              occurrences: int = 1) -> tuple[Any, ...]:
    """An ``INSERT_EVENT`` parameter tuple."""
    return (service, event_type, from_state, to_state, error_type, error_message,
            None if data is None else json_text(data), iso(ts), ts, process, occurrences)


class Sharing:
    """The shared-row logic for one store (its writer thread calls it; nothing here blocks a caller).

    Args:
        process: This process's name (``host:pid``), written as ``updated_by`` and lease ``holder``.
        on_transition: Called with each transition :class:`~circuitry.events.Event` a transaction of
            this process wrote to the shared history, once it commits (the analyst raises alerts from
            these).
        superseded: Called with a count of local transitions another process's write replaced.
    """

    def __init__(self, process: str, on_transition: Callable[[Event], None],
                 superseded: Callable[[int], None]) -> None:
        self.process = process
        self.on_transition = on_transition
        self._superseded = superseded
        #: Called with ``(conn, link)`` after a snapshot is taken and before a transition is written:
        #: the engine writes the failure rows counted up to that snapshot first, so history keeps them
        #: before the transition they caused.
        self.before_write: Callable[[Connection, Link], None] = lambda conn, link: None
        #: The newest row seen of every circuit in the database (read whole on connecting, then kept up to
        #: date by polls and by this process's own writes): a breaker made later adopts from here, no I/O.
        self.known: dict[str, tuple[Any, ...]] = {}

    # -- reading and adopting -------------------------------------------------------------------------

    def select(self, conn: Connection, name: str) -> tuple[Any, ...] | None:
        got = conn.execute(_SELECT, (name,))
        if not got:
            return None
        row, bad = clean_row(got[0])
        if bad:
            row = repair_row(conn, row, bad)
        self.learn(row)
        return row

    def learn(self, row: tuple[Any, ...]) -> None:
        have = self.known.get(row[0])
        if have is None or row[2] >= have[2]:
            self.known[row[0]] = row

    def _wrote(self, link: Link, state: str, snap: Any, until: float | None, version: int, seq: int) -> None:
        self.learn((link.name, state, version, snap.opened_at, until, snap.open_for, snap.reopens, seq,
                    snap.consecutive_failures))

    def adopt(self, link: Link, row: Sequence[Any], reason: str, expect: int | None) -> bool:
        """Give the breaker the row's state — only if it is still in generation ``expect`` (a local
        transition not written yet is settled by compare-and-set instead). True if adopted."""
        _, state, version, opened_at, open_until, open_for, reopens, _, _ = row
        try:
            cs = CircuitState(state)
        except ValueError:  # a value this circuitry does not know: leave the breaker as it is
            return False
        if cs is CircuitState.HALF_OPEN and open_until is not None and 0.0 < open_until - link._clock() < 1.0:
            # The first lease of the episode was taken a little before the open period ends (so the grant
            # is ready): this breaker stays open until then and turns half-open by time, as it would.
            # (Further ahead than that, the clock stepped back: the row's half-open state stands.)
            cs = CircuitState.OPEN
        b = link.breaker
        before = b.generation
        gen = b.adopt(cs, opened_at=opened_at, open_until=open_until, open_for=open_for, reopens=reopens or 0,
                      reason=reason, expect=expect)
        if gen < 0:
            return False
        if gen != before:
            counts = link.counts
            link.evidence = (counts.successes, counts.failures)  # evidence counts within a generation
        # The stored state stands for every local transition up to now, a state equal to the breaker's
        # included (another process wrote the same outage first): none of them is written later.
        _drain(link, gen)
        link.synced_gen = gen
        link.version = version
        link.row_state = state
        link.shared_count = row[8] or 0
        if state != "half_open":
            link.grants.clear()  # their rows went with the half-open episode
        return True

    # -- writing --------------------------------------------------------------------------------------

    def sync(self, conn: Connection, link: Link, now: float) -> None:
        """Bring the shared row and the breaker into agreement (one cycle's worth)."""
        b = link.breaker
        if link.version < 0:
            row = self.select(conn, link.name)
            if row is None:
                if self._insert(conn, link, now):
                    return
                row = self.select(conn, link.name)
                if row is None:  # inserted and deleted in between: next cycle
                    return
            if b.generation == link.adopt_gen:  # nothing happened here yet: the stored state wins
                self.adopt(link, row, "restored", expect=link.adopt_gen)
                return
            # The breaker moved before its row could be read (the store was failing): its state goes in,
            # unless an operator's state is stored (an operator's decision outranks a guess from memory),
            # or the row changed after this breaker's first transition not written -- another process
            # wrote what happened since (the same outage's opening, an operator's reset), and a state
            # from memory written over it would undo that.
            link.version, link.row_state = row[2], row[1]
            if row[1] in _MANUAL and b.snapshot().reason != "manual":
                self.adopt(link, row, "restored", expect=None)
                return
            first = link.pending[0] if link.pending else None
            if first is not None:
                got = conn.execute("SELECT updated_at FROM circuit_breaker_states WHERE service_name = ?",
                                   (link.name,))
                # Or the breaker tripped, from closed, while the stored outage was in force: the same outage,
                # seen late by a process that started during it -- its opening stands (written over, its
                # open period would start again with every process that starts, and the history would
                # gain an "open -> open" for each).
                # (Not an operator's change: that goes on top.)
                late = (first.from_state is CircuitState.CLOSED and first.to_state is CircuitState.OPEN
                        and not any(e.reason == "manual" for e in link.pending)
                        and (row[1] == "half_open"
                             or (row[1] == "open" and row[4] is not None and float(row[4]) > first.at)))
                if late or (got and got[0][0] is not None and float(got[0][0]) > first.at):
                    dropped = len(link.pending)
                    if self.adopt(link, row, "restored", expect=None):
                        self._superseded(dropped)
                    return
        snap = b.snapshot()
        if snap.generation == link.synced_gen:
            if snap.state is CircuitState.CLOSED:
                self._evidence(conn, link, now)
            return
        if (snap.state is CircuitState.HALF_OPEN and snap.reason == "recovery_timeout"
                and link.row_state in ("open", "half_open")):
            # Derived from time alone; the lease that lets the first probe through writes it.
            link.synced_gen = snap.generation
            link.pending.clear()
            return
        self._write(conn, link, now)

    def _take(self, link: Link, frm: str | None, state: str, generation: int) -> list[Any]:
        """The local transitions that lead the row from ``frm`` to ``state``: from the first that starts
        where the row stands to the last that ends where it goes (those before were superseded, those
        after are derived from time and written by the lease that follows). Empty if none fits. Only
        those up to the written snapshot's ``generation`` are taken: a later one stays for the next write."""
        pending = _drain(link, generation)
        start = next((i for i, e in enumerate(pending)
                      if (e.from_state.value if e.from_state is not None else None) == frm), None)
        end = next((i for i in range(len(pending) - 1, -1, -1) if pending[i].to_state.value == state), None)
        if start is None or end is None or end < start:
            mine = next((e for e in reversed(pending) if e.to_state.value == state), None)
            return [] if mine is None else [mine]
        return pending[start:end + 1]

    def _record(self, conn: Connection, link: Link, frm: str | None, state: str, reason: str, now: float,
                generation: int, open_for: float | None) -> list[Event]:
        """Write the history rows of a write that took the row from ``frm`` to ``state``; returns them as
        events, for :attr:`on_transition` once the transaction commits."""
        events = self._take(link, frm, state, generation)
        dropped, link.pending_dropped = link.pending_dropped, 0
        chain: list[Event]
        if len(events) == 1 and events[0].to_state.value == state:  # the common case: one transition
            e = events[0]
            chain = [e._replace(from_state=_state(frm), reason=e.reason or reason, generation=generation,
                                open_for=open_for)]
        elif events:
            last = events[-1]
            chain = [*events[:-1], last._replace(reason=last.reason or reason, generation=generation,
                                                 open_for=open_for if state == "open" else last.open_for)]
        elif frm != state:
            chain = [Event(EventKind.TRANSITION, link.name, now, generation, CircuitState(state), _state(frm),
                           reason, open_for=open_for)]
        else:
            return []
        for i, e in enumerate(chain):
            data: dict[str, Any] = {"reason": e.reason or reason, "generation": e.generation}
            if e.to_state is CircuitState.OPEN and e.open_for is not None:
                data["open_for"] = e.open_for
            if dropped and i == 0:
                data["transitions_not_recorded"] = dropped
            conn.execute(INSERT_EVENT, row_tuple(
                link.name, "state_change", e.from_state.value if e.from_state is not None else None,
                e.to_state.value, e.error_type, e.error_message, data, e.at, self.process))
        return chain

    def _insert(self, conn: Connection, link: Link, now: float) -> bool:
        b = link.breaker
        snap = b.snapshot()
        p = b.policy
        state, until, reason = _shared_view(snap)
        # Failures counted up to now are written before the row (and its transition), and they are in
        # the evidence written with it: sampled after the snapshot, never before (that would count a
        # failure in between twice).
        self.before_write(conn, link)
        # A row made again (deleted under running processes, or its table made again) continues the
        # version and change numbers seen, or the others' polls would take it for an old one.
        seen = self.known.get(link.name)
        version = 1 if seen is None else seen[2] + 1
        seq = max((r[7] or 0 for r in self.known.values()), default=0) + 1
        with conn.transaction():
            got = conn.execute(_INSERT, (link.name, state, snap.consecutive_failures, p.failure_threshold,
                                         p.recovery_timeout, iso(now), version, snap.opened_at, until,
                                         snap.open_for, snap.reopens, self.process, now,
                                         None if link.last_failure is None else iso(link.last_failure),
                                         seq, seq))
            if not got:
                return False
            # It moved before the row existed: say how.
            written = self._record(conn, link, "closed", state, reason, now, snap.generation,
                                   snap.open_for if state == "open" else None)
        link.version = got[0][0]
        link.row_state = state
        link.synced_gen = snap.generation
        self._wrote(link, state, snap, until, got[0][0], got[0][1])
        _drain(link, snap.generation)  # (a transition made since the snapshot is written next cycle)
        counts = link.counts
        link.evidence = (counts.successes, counts.failures)  # the row's failure_count has them already
        for event in written:
            self.on_transition(event)
        return True

    def _write(self, conn: Connection, link: Link, now: float) -> None:
        """Compare-and-set the breaker's current state (see the module docstring for who wins)."""
        b = link.breaker
        p = b.policy
        for _ in range(3):
            snap = b.snapshot()
            state, until, reason = _shared_view(snap)
            frm = link.row_state
            self.before_write(conn, link)  # (see _insert)
            with conn.transaction():
                got = conn.execute(_CAS, (
                    state, snap.consecutive_failures, p.failure_threshold, p.recovery_timeout,
                    iso(now), snap.opened_at, until, snap.open_for, snap.reopens, self.process, now,
                    None if link.last_failure is None else iso(link.last_failure), link.name, link.version))
                if got:
                    if state != "half_open":  # the half-open episode is over
                        conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE service_name = ?", (link.name,))
                    written = self._record(conn, link, frm, state, reason, now, snap.generation,
                                           snap.open_for if state == "open" else None)
                else:
                    row = self.select(conn, link.name)
            if got:
                link.version = got[0][0]
                link.row_state = state
                link.synced_gen = snap.generation
                self._wrote(link, state, snap, until, got[0][0], got[0][1])
                counts = link.counts
                link.evidence = (counts.successes, counts.failures)
                if state != "half_open":
                    link.grants.clear()
                for event in written:
                    self.on_transition(event)
                return
            if row is None:  # the row is gone (deleted, or its table made again): insert it now -- no
                link.version = -1  # later cycle may come for this link, and the transition would be lost
                self.sync(conn, link, now)
                return
            # An operator's change not written yet goes on top (a reset() of a circuit already closed changed
            # nothing to write: it does not undo what another process did since).
            manual = snap.reason == "manual" and any(e.reason == "manual" for e in link.pending)
            on_top = manual or (snap.reason in _PROBE_OUTCOMES and row[1] == "half_open")
            if state != row[1] and on_top:
                link.version, link.row_state = row[2], row[1]  # our change follows theirs: write it on top
                continue
            dropped = len(link.pending)
            if self.adopt(link, row, "remote", expect=snap.generation):
                self._superseded(dropped)
            else:
                link.version, link.row_state = row[2], row[1]  # moved again: compare-and-set next cycle
            return

    def _evidence(self, conn: Connection, link: Link, now: float) -> None:
        """Add this process's failures since the last cycle to the shared count; trip on the sum."""
        b = link.breaker
        successes, failures = link.counts.successes, link.counts.failures
        seen_ok, seen_fail = link.evidence
        d_ok, d_fail = successes - seen_ok, failures - seen_fail
        if not d_ok and not d_fail:
            return
        link.evidence = (successes, failures)
        last = None if link.last_failure is None else iso(link.last_failure)
        tripped = None
        with conn.transaction():
            if d_ok:
                got = conn.execute(
                    "UPDATE circuit_breaker_states SET failure_count = ?, last_failure_time = "
                    f"coalesce(?, last_failure_time), change_seq = {NEXT_SEQ} WHERE service_name = ? AND version = ? "
                    "AND current_state = 'closed' RETURNING failure_count",
                    (b.consecutive_failures, last if d_fail else None, link.name, link.version))
            else:
                got = conn.execute(
                    "UPDATE circuit_breaker_states SET failure_count = failure_count + ?, last_failure_time = "
                    f"coalesce(?, last_failure_time), change_seq = {NEXT_SEQ} WHERE service_name = ? AND version = ? "
                    "AND current_state = 'closed' RETURNING failure_count", (d_fail, last, link.name, link.version))
            if got:
                link.shared_count = got[0][0]
            if got and got[0][0] >= b.policy.failure_threshold > b.consecutive_failures:
                # The sum crossed the threshold in this transaction, so exactly one process sees it:
                # that one opens the circuit, in the same transaction, for everyone. (Unless this
                # process's own failures reach it: the breaker, which counted the last one, is opening
                # the circuit itself, with its cause; the next cycle writes that transition.)
                open_for = b.next_open_period()
                opened = conn.execute(
                    "UPDATE circuit_breaker_states SET current_state = 'open', failure_count = 0, "
                    "state_changed_at = ?, version = version + 1, opened_at = ?, open_until = ?, open_for = ?, "
                    f"reopen_count = 0, updated_by = ?, updated_at = ?, change_seq = {NEXT_SEQ} "
                    "WHERE service_name = ? AND version = ? RETURNING version",
                    (iso(now), now, now + open_for, open_for, self.process, now, link.name, link.version))
                if opened:
                    data = {"reason": "shared_failures", "failures": got[0][0], "open_for": open_for}
                    conn.execute(INSERT_EVENT, row_tuple(link.name, "state_change", "closed", "open", None, None,
                                                         data, now, self.process))
                    tripped = (opened[0][0], now, now + open_for, open_for, got[0][0])
        if tripped is not None:
            version, opened_at, until, open_for, total = tripped
            row = (link.name, "open", version, opened_at, until, open_for, 0, 0, 0)
            self.learn(row)
            if not self.adopt(link, row, "shared_failures", expect=link.synced_gen):
                link.version, link.row_state = version, "open"
                snap = b.snapshot()
                mine = [e for e in link.pending if e.generation <= snap.generation]
                if snap.state is CircuitState.OPEN and mine and all(
                        e.from_state is CircuitState.CLOSED and e.to_state is CircuitState.OPEN for e in mine):
                    # The breaker counted its own last failure meanwhile and opened itself: the same
                    # opening, written just now. Written again next cycle it would be a second row
                    # ("open -> open"); it keeps its own open period (the row's, give or take jitter).
                    self._superseded(len(_drain(link, snap.generation)))
                    link.synced_gen = snap.generation
            self.on_transition(Event(EventKind.TRANSITION, link.name, now, b.generation, CircuitState.OPEN,
                                     CircuitState.CLOSED, "shared_failures",
                                     error_message=f"{total} failures across processes", open_for=open_for))

def _state(value: str | None) -> CircuitState | None:
    return None if value is None else CircuitState(value)


def _shared_view(snap: Any) -> tuple[str, float | None, str]:
    """``(state, open_until, reason)`` to write for a breaker's snapshot. A half-open state reached by time
    alone is written as the open period it ends (the first lease writes ``half_open``): the circuit's
    history reads ``closed → open → half_open`` even when one writer cycle saw all of it."""
    if snap.state is CircuitState.HALF_OPEN and snap.reason == "recovery_timeout" and snap.opened_at is not None:
        return "open", snap.opened_at + snap.open_for, "failure_threshold"
    return snap.state.value, snap.open_until, snap.reason


def _drain(link: Link, generation: int) -> list[Event]:
    """Take the pending transitions up to ``generation`` off ``link``'s queue (the breaker appends in
    generation order, under its lock, while the writer works from an earlier snapshot)."""
    pending = link.pending
    taken: list[Event] = []
    while pending and pending[0].generation <= generation:
        taken.append(pending.popleft())
    return taken


def failure_rows(link: Link, now: float, process: str, per_second: int) -> list[tuple[Any, ...]]:
    """Event rows for the failures ``link`` counted since the last sample: one row each, up to
    ``per_second`` a second per circuit, and one row carrying the count (``occurrences``) of the rest.

    Counts come from the breaker's counter (sampled into ``link.counts`` just before), exceptions from
    its failure log: a failure the log lost (it is bounded) is in the count only. A failure counted
    but not yet in the log may be on its way (the breaker counts, then appends), so it becomes part of
    a coalesced row only if it is still missing one sample later.
    """
    log = link.failure_log
    second = int(now)
    used = link.budget[1] if link.budget[0] == second else 0
    out: list[tuple[Any, ...]] = []
    state = link.breaker.snapshot().state.value if log else None
    pending = link.pending
    if pending:  # failures drained with a transition not yet written came before it: never stamp them after
        with contextlib.suppress(IndexError):
            first = pending[0]
            now = min(now, first.at)
            state = first.from_state.value if first.from_state is not None else state
    over = 0
    while log:
        try:
            exc = log.popleft()
        except IndexError:
            break
        if used < per_second:
            used += 1
            etype, emsg = describe(exc)
            out.append(row_tuple(link.name, "failure", None, state, etype, emsg, None, now, process))
        else:
            over += 1
    link.budget = (second, used)
    link.recorded += len(out)
    missing = link.counts.failures - link.recorded - over
    lost = min(link.missing, missing)  # missing for a whole sample: the log dropped them
    link.missing = missing - lost if missing > 0 else 0
    rest = over + max(0, lost)
    if rest > 0:
        data = {"coalesced": rest, "limit_per_second": per_second}
        out.append(row_tuple(link.name, "failure", None, state or link.row_state, None,
                             f"{rest} more failure(s), counted but not recorded one by one", data, now, process,
                             occurrences=rest))
        link.recorded += rest
    if out:
        link.last_failure = now
    return out
