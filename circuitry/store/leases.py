"""Half-open probe leases across processes: at most ``half_open_max_calls`` probes of a circuit in flight
in all the processes (and hosts) sharing its row, decided by the database, never on a caller's thread.

* A probe needs a lease row (``circuit_breaker_probe_leases``, kind ``held``). The writer takes one in
  a transaction that first locks the circuit's row (SQLite: the write lock; PostgreSQL: a row lock)
  and counts the live leases; expiry is decided by the database's clock (``Connection.now()``), and a
  lease dated in the future (the clock stepped back) counts as expired, so no clock step keeps a dead
  lease alive.
* The writer takes a lease as the open period ends (``lead`` seconds before, so the grant is ready when
  it does) and hands it to the breaker's link; a caller that finds no grant is refused and its wish is
  noted (a ``wanted`` row when every lease is held elsewhere). A process holding an unused grant gives
  it back when another process wants one, and renews one no caller takes (halfway to its expiry), so
  the first caller after a quiet spell probes at once. A probe that finishes, is cancelled or outlives its lease
  gives its lease back at once, so a cancelled probe never blocks the circuit.
* The first lease of an episode writes ``open → half_open`` in the same transaction.
* While the store is in a fault episode, probes are decided from memory: the bound needs the database.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Final

from circuitry._state import CircuitState
from circuitry.events import Event, EventKind
from circuitry.store.backend import Connection
from circuitry.store.link import Grant, Link
from circuitry.store.sharing import INSERT_EVENT, NEXT_SEQ, STATE_COLUMNS, Sharing, iso, row_tuple
from circuitry.store.state_rows import clean_row

__all__ = ["Leases"]

_DEMAND_FOR: Final = 2.0  # seconds a refused caller's wish for a probe lease is kept alive
_RETRY: Final = 0.1  # seconds between lease attempts while every lease is held elsewhere


class Leases:
    """The probe-lease side of one store's writer (see the module docstring)."""

    def __init__(self, sharing: Sharing, process: str, holder: str, lead: float) -> None:
        self.sharing = sharing
        self.process = process  # written as updated_by and in history rows
        self.holder = holder  # names this store's lease rows
        self.lead = lead  # the grant is ready this many seconds before the open period ends

    def tend(self, db: Callable[[], AbstractContextManager[Connection]], link: Link, now: float,
             memory: AbstractContextManager[object]) -> bool:
        """Give back ``link``'s finished leases and take one if it is due; False once the circuit is
        neither open nor half-open (nothing more to tend)."""
        b = link.breaker
        # A probe that ended its episode keeps its lease until that transition is written: the shared row
        # says half_open until then, and another process would take a lease and probe at once. (The
        # breaker counts the transition before it hands the lease back, and this cycle's sync comes first.)
        done = take_done(link) if b.generation == link.synced_gen else []
        if done:
            with db() as conn:
                self.release(conn, done)
            link.last_attempt = 0.0  # a lease just came free: a waiting caller may have it at once
        snap = b.snapshot()
        if snap.state is not CircuitState.OPEN and snap.state is not CircuitState.HALF_OPEN:
            return bool(link.grants or link.done)
        if link.grants and not link.memory:
            with db() as conn:
                self.renew(conn, link)
        if link.memory or b.metrics_only or link.grants or link.version < 0:
            return True
        wanted = now - link.wanted_at < _DEMAND_FOR
        episode = (0, snap.opened_at)
        due = snap.state is CircuitState.HALF_OPEN or (
            snap.state is CircuitState.OPEN and snap.open_until is not None and snap.open_until <= now + self.lead)
        pregrant = due and link.pregrant_episode != episode
        tick = time.monotonic()  # real time: retries are paced by the machine, not by an injected clock
        if not (pregrant or (wanted and due and tick - link.last_attempt >= _RETRY)):
            return True
        with db() as conn, memory:
            outcome = self.take(conn, link, wanted=wanted)
        # Every lease held elsewhere: try again after _RETRY (or as soon as one of ours comes free).
        link.last_attempt = tick if outcome == "held" else 0.0
        if outcome != "early":  # an early try (another process's open period ends later) is tried again
            link.pregrant_episode = episode
        return True

    def take(self, conn: Connection, link: Link, *, wanted: bool) -> str:
        """Try to take one probe lease for ``link``: ``"granted"``, ``"held"`` (every lease is held
        elsewhere), ``"early"`` (the shared open period has not ended) or ``"moved"`` (the circuit is not
        open or half-open any more). Also writes the
        ``open → half_open`` transition if this is the episode's first lease (up to ``lead`` seconds
        before the open period ends), and leaves a ``wanted`` row
        when a caller here waits and every lease is held elsewhere."""
        b = link.breaker
        p = b.policy
        name = link.name
        became_half_open = False
        with conn.transaction():
            now = conn.now()
            # Touching the row first locks it (SQLite: the transaction holds the write lock already;
            # PostgreSQL: a row lock), so two processes never count the leases at the same moment.
            got = conn.execute("UPDATE circuit_breaker_states SET version = version WHERE service_name = ? "
                               f"RETURNING {STATE_COLUMNS}", (name,))
            if not got:
                link.version = -1
                return "moved"
            row = seen = clean_row(got[0])[0]  # ``seen``: the row as it was before this transaction changed it
            self.sharing.learn(row)
            state, open_until = row[1], row[4]
            outcome = "granted"
            if state == "open" and open_until is not None and open_until - now > (row[5] or 0.0) + 1.0:
                open_until = now  # ends further ahead than its length: the clock stepped back; it is over
            if state != "half_open" and not (state == "open" and (open_until or 0.0) <= now + self.lead):
                lease = None  # closed, forced, or still open: nothing to probe (adopted below)
                outcome = "early" if state == "open" else "moved"
            else:
                if state == "open":
                    moved = conn.execute(
                        "UPDATE circuit_breaker_states SET current_state = 'half_open', version = version + 1, "
                        f"state_changed_at = ?, updated_by = ?, updated_at = ?, change_seq = {NEXT_SEQ} "
                        f"WHERE service_name = ? RETURNING {STATE_COLUMNS}",
                        (iso(max(now, open_until or now)), self.process, now, name))
                    row = clean_row(moved[0])[0]
                    self.sharing.learn(row)
                    conn.execute(INSERT_EVENT, row_tuple(name, "state_change", "open", "half_open", None, None,
                                                         {"reason": "recovery_timeout"}, max(now, open_until or now),
                                                         self.process))
                    became_half_open = True
                conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE service_name = ? AND (expires_at <= ? "
                             "OR granted_at > ?)", (name, now, now + 1.0))
                held = conn.execute("SELECT count(*) FROM circuit_breaker_probe_leases WHERE service_name = ? "
                                    "AND kind = 'held'", (name,))[0][0]
                if held >= p.half_open_max_calls:
                    lease = None
                    outcome = "held"
                    if wanted:
                        conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE service_name = ? AND "
                                     "holder = ? AND kind = 'wanted'", (name, self.holder))
                        conn.execute("INSERT INTO circuit_breaker_probe_leases (service_name, holder, kind, "
                                     "granted_at, expires_at) VALUES (?, ?, 'wanted', ?, ?)",
                                     (name, self.holder, now, now + 1.0))
                else:
                    ttl = p.effective_probe_timeout
                    lease = conn.execute(
                        "INSERT INTO circuit_breaker_probe_leases (service_name, holder, kind, granted_at, "
                        "expires_at) VALUES (?, ?, 'held', ?, ?) RETURNING lease_id",
                        (name, self.holder, now, now + ttl))[0][0]
                    conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE service_name = ? AND holder = ? "
                                 "AND kind = 'wanted'", (name, self.holder))
        # The breaker must be in the episode this lease belongs to before it may use it: a process still
        # half-open from the previous episode (another process's probe failed and re-opened the circuit a
        # moment ago) would otherwise probe at once, a whole open period early.
        current = seen[2] == link.version or self.sharing.adopt(link, seen, "remote", expect=link.synced_gen)
        if became_half_open:
            link.version, link.row_state = row[2], row[1]  # our own step: the breaker gets there by time
            self.sharing.on_transition(Event(EventKind.TRANSITION, name, now, link.breaker.generation,
                                             CircuitState.HALF_OPEN, CircuitState.OPEN, "recovery_timeout"))
        if lease is not None and not current:  # it moved here meanwhile: the lease is not for it; give it back
            self.release(conn, [int(lease)])
            return "moved"
        if lease is None:
            return outcome
        ttl = p.effective_probe_timeout
        link.grant_life = min(ttl / 2.0, 1.0)
        # The grant's expiry on the store's clock (the breaker checks it before handing it out).
        link.grants.append(Grant(int(lease), link._clock() + ttl))
        return outcome

    def renew(self, conn: Connection, link: Link) -> None:
        """Extend ``link``'s grants that no probe took, once they are halfway between their lease's length
        and the point where a caller would refuse them: a circuit nobody calls as its open period ends
        keeps a grant ready (it lapsed, and the first caller after a quiet spell was refused once). A
        grant whose row is gone is left to lapse. Every ``probe_timeout / 2`` or so per quiet circuit,
        a statement of its own: quiet half-open circuits are few."""
        ttl = link.breaker.policy.effective_probe_timeout
        soon = link._clock() + (ttl + link.grant_life) / 2.0
        for grant in list(link.grants):
            if grant.expires > soon:
                continue
            kept = conn.execute("UPDATE circuit_breaker_probe_leases SET expires_at = ? WHERE lease_id = ? AND "
                                "holder = ? AND kind = 'held' RETURNING lease_id",
                                (conn.now() + ttl, grant.lease, self.holder))
            grant.expires = link._clock() + ttl if kept else 0.0

    def release(self, conn: Connection, leases: Sequence[int]) -> None:
        if leases:
            conn.executemany("DELETE FROM circuit_breaker_probe_leases WHERE lease_id = ? AND holder = ?",
                             [(i, self.holder) for i in leases])

    def yield_unused(self, conn: Connection, link: Link) -> list[int]:
        """Unused grants of ``link`` another process is waiting for: taken back (the caller deletes
        their rows) so that process's writer can take them."""
        others = conn.execute("SELECT count(*) FROM circuit_breaker_probe_leases WHERE service_name = ? AND "
                              "kind = 'wanted' AND holder <> ? AND expires_at > ?",
                              (link.name, self.holder, conn.now()))[0][0]
        given: list[int] = []
        while others > len(given):
            try:
                given.append(link.grants.popleft().lease)
            except IndexError:
                break
        return given


def take_done(link: Link) -> list[int]:
    """The leases ``link``'s probes gave back, taken off its queue."""
    out = []
    while link.done:
        with contextlib.suppress(IndexError):
            out.append(link.done.popleft())
    return out
