"""One breaker as the sharing engine sees it: the :class:`~circuitry._core.StoreLink` the breaker calls,
and the engine's bookkeeping for it.

The breaker calls four things on its link, on the protected call's thread: it appends counted failures
to :attr:`Link.failure_log`, asks :meth:`Link.take_probe` before a half-open probe, and reports
:meth:`Link.probe_done` and :meth:`Link.transitioned`. Each is a few in-memory operations on deques
(atomic under the GIL) and, at most, a wake-up of the writer thread: nothing here waits on anything.
Everything else in this class belongs to the writer thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from circuitry._core import CircuitBreaker, Counts

if TYPE_CHECKING:
    from circuitry.events import Event

__all__ = ["Grant", "Link"]


class Grant:
    """A probe lease this process holds and no probe has taken yet: its row's id, and when it expires on
    the store's clock (the writer renews a grant nobody takes, see :meth:`Leases.tend`)."""

    __slots__ = ("expires", "lease")

    def __init__(self, lease: int, expires: float) -> None:
        self.lease = lease
        self.expires = expires


class Link:
    """The engine's view of one breaker (see the module docstring for who touches what)."""

    __slots__ = (
        "_clock",
        "_stalled",
        "_wake",
        "adopt_gen",
        "breaker",
        "budget",
        "counts",
        "done",
        "evidence",
        "failure_log",
        "grant_life",
        "grants",
        "hot",
        "last_attempt",
        "last_failure",
        "memory",
        "missing",
        "name",
        "pending",
        "pending_dropped",
        "pregrant_episode",
        "quiet",
        "recorded",
        "retry_hint",
        "row_state",
        "shared_count",
        "synced_gen",
        "version",
        "wanted_at",
    )

    def __init__(self, breaker: CircuitBreaker, *, log_size: int, clock: Callable[[], float],
                 wake: Callable[[Link], None], retry_hint: float,
                 stalled: Callable[[], bool] = lambda: False) -> None:
        self.breaker = breaker
        self.name = breaker.name
        self._clock = clock
        self._wake = wake
        #: The breaker appends each counted failure's exception here; the writer drains it.
        self.failure_log: deque[BaseException] | None = deque(maxlen=log_size)
        self.counts: Counts = breaker.counts()  # the counts last sampled
        self.evidence = (self.counts.successes, self.counts.failures)  # what was shared of them
        # Sampled every cycle (it had calls lately), else every few seconds. A new circuit is hot: it is made
        # by its first call (it started cold, and its first five seconds of counts waited for a cold sample).
        self.hot = True
        self.quiet = 0  # samples in a row without a call
        self.budget = (0, 0)  # (second, failure rows written in it)
        self.recorded = self.counts.failures  # failures that have their event row (or are counted in one)
        self.missing = 0  # counted failures not in the log at the last sample
        self.last_failure: float | None = None
        # The shared row, as this process last saw or wrote it.
        self.version = -1  # -1: not read yet
        self.row_state: str | None = None
        self.shared_count = 0  # the row's failure_count as last seen (failures of every process since a success)
        self.synced_gen = -1  # the breaker generation that matches ``version``
        self.adopt_gen = breaker.generation  # the generation at adoption (nothing local happened yet)
        self.pending: deque[Event] = deque(maxlen=64)  # local transitions not written yet
        self.pending_dropped = 0  # the oldest of them, pushed out of ``pending`` (written as a count)
        # Probe leases: rows of circuit_breaker_probe_leases this process holds.
        self.grants: deque[Grant] = deque()  # leases not given to a probe yet
        self.grant_life = 0.0  # a grant this close to its expiry is given back, not handed out
        self.done: deque[int] = deque()  # leases whose probe finished: rows to delete
        self.wanted_at = 0.0  # when a caller was last refused for want of a lease
        self.last_attempt = 0.0  # when the writer last tried to take a lease
        self.pregrant_episode: tuple[int, float | None] | None = None  # the open episode pre-granted for
        self.memory = False  # the store cannot coordinate now: probes are decided from memory
        self._stalled = stalled  # ... nor while its I/O is stuck (no fault can be reported then)
        self.retry_hint = retry_hint

    def __repr__(self) -> str:
        return f"<Link {self.name!r} version={self.version} grants={len(self.grants)}>"

    # -- what the breaker calls (protected call's thread) ---------------------------------------------

    def take_probe(self) -> int | None:
        if self.memory or self._stalled():
            return 0
        grants = self.grants
        while grants:
            try:
                grant = grants.popleft()
            except IndexError:
                break
            if grant.expires - self._clock() > self.grant_life:
                return grant.lease
            self.done.append(grant.lease)  # too close to its expiry for a probe: give it back
        self.wanted_at = self._clock()
        self._wake(self)
        return None

    def probe_retry_after(self) -> float:
        return self.retry_hint

    def probe_done(self, lease: int) -> None:
        self.done.append(lease)
        self._wake(self)

    def transitioned(self, event: Event) -> None:
        pending = self.pending
        if len(pending) == pending.maxlen:
            self.pending_dropped += 1
        pending.append(event)
        self._wake(self)
