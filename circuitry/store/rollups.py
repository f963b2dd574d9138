"""Counts sampled from breakers, held until written: per-second rows (what the pattern engine reads)
and per-minute rows (history), and the pruning that keeps history bounded.

The writer samples each breaker's counters (``CircuitBreaker.counts()``, exact and lock-free) and files
the differences under the second and the minute of the sample. Nothing is queued per call: the
protected call only increments a counter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from circuitry._state import CircuitState
from circuitry.store.backend import Connection
from circuitry.store.link import Link
from circuitry.store.sharing import failure_rows, iso

__all__ = ["QUIET_AFTER", "Rollups", "prune", "sample"]

_UPSERT_MINUTE: Final = (
    "INSERT INTO circuit_breaker_metrics (service_name, minute, bucket_start, calls, successes, failures, "
    "ignored, rejections, cancelled, latency_count, latency_sum_ms, latency_max_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (service_name, minute) DO UPDATE SET "
    "calls = circuit_breaker_metrics.calls + excluded.calls, "
    "successes = circuit_breaker_metrics.successes + excluded.successes, "
    "failures = circuit_breaker_metrics.failures + excluded.failures, "
    "ignored = circuit_breaker_metrics.ignored + excluded.ignored, "
    "rejections = circuit_breaker_metrics.rejections + excluded.rejections, "
    "cancelled = circuit_breaker_metrics.cancelled + excluded.cancelled, "
    "latency_count = circuit_breaker_metrics.latency_count + excluded.latency_count, "
    "latency_sum_ms = circuit_breaker_metrics.latency_sum_ms + excluded.latency_sum_ms, "
    "latency_max_ms = CASE WHEN excluded.latency_max_ms > circuit_breaker_metrics.latency_max_ms "
    "THEN excluded.latency_max_ms ELSE circuit_breaker_metrics.latency_max_ms END")
_UPSERT_TEN: Final = (
    "INSERT INTO circuit_breaker_metrics_10m (service_name, bucket, calls, successes, failures, ignored, rejections, "
    "cancelled, latency_count, latency_sum_ms, latency_max_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (service_name, bucket) DO UPDATE SET "
    "calls = circuit_breaker_metrics_10m.calls + excluded.calls, "
    "successes = circuit_breaker_metrics_10m.successes + excluded.successes, "
    "failures = circuit_breaker_metrics_10m.failures + excluded.failures, "
    "ignored = circuit_breaker_metrics_10m.ignored + excluded.ignored, "
    "rejections = circuit_breaker_metrics_10m.rejections + excluded.rejections, "
    "cancelled = circuit_breaker_metrics_10m.cancelled + excluded.cancelled, "
    "latency_count = circuit_breaker_metrics_10m.latency_count + excluded.latency_count, "
    "latency_sum_ms = circuit_breaker_metrics_10m.latency_sum_ms + excluded.latency_sum_ms, "
    "latency_max_ms = CASE WHEN excluded.latency_max_ms > circuit_breaker_metrics_10m.latency_max_ms "
    "THEN excluded.latency_max_ms ELSE circuit_breaker_metrics_10m.latency_max_ms END")
_UPSERT_SECOND: Final = (
    "INSERT INTO circuit_breaker_seconds (service_name, second, calls, failures, rejections) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (service_name, second) DO UPDATE SET "
    "calls = circuit_breaker_seconds.calls + excluded.calls, "
    "failures = circuit_breaker_seconds.failures + excluded.failures, "
    "rejections = circuit_breaker_seconds.rejections + excluded.rejections")

#: Per circuit, the most per-minute rollups held in memory while the database takes no writes.
PENDING_MINUTES: Final = 60
#: The most per-second rows held in memory, all circuits together (each minute's counts are kept
#: whole in the per-minute rollups; past this the oldest seconds' detail is dropped, counted, logged).
PENDING_SECONDS: Final = 200_000


class Rollups:
    """Counts waiting to be written: ``minutes[(name, minute)] = [successes, failures, ignored, rejected,
    cancelled, timed calls, latency sum ms, latency max ms]`` and ``seconds[(name, second)] = [calls,
    failures, rejections]``."""

    def __init__(self) -> None:
        self.minutes: dict[tuple[str, int], list[float]] = {}
        self.seconds: dict[tuple[str, int], list[int]] = {}
        self.coarsened = 0  # minutes folded into an older one during a long outage
        self.seconds_dropped = 0  # seconds whose detail was dropped (their minute kept the counts)
        # Readers (``unwritten``) see what is held and what is being written, consistently: the batch
        # in flight stays visible until its commit, and ``committed`` says a commit happened.
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, int], list[float]] = {}
        self.committed = 0

    def __len__(self) -> int:
        return len(self.minutes) + len(self.seconds)

    def add(self, name: str, now: float, delta: Sequence[float], circuits: int) -> None:
        """File one sample's differences (the five counts, then the three latency figures)."""
        with self._lock:
            self._add(name, now, delta, circuits)

    def pending_calls(self) -> int:
        """Calls held or in flight, every circuit (successes, failures, ignored, refused, cancelled)."""
        with self._lock:
            return int(sum(sum(d[:5]) for source in (self.minutes, self._inflight) for d in source.values()))

    def unwritten(self, name: str, since_minute: int) -> tuple[list[float], int]:
        """``name``'s counts held or in flight from ``since_minute`` on (summed like a minute bucket), and
        the commit number they go with (see :meth:`write`)."""
        total = [0.0] * 8
        with self._lock:
            for source in (self.minutes, self._inflight):
                for (n, minute), d in source.items():
                    if n == name and minute >= since_minute:
                        merge(total, d)
            return total, self.committed

    def _add(self, name: str, now: float, delta: Sequence[float], circuits: int) -> None:
        minute = int(now // 60)
        bucket = self.minutes.get((name, minute))
        if bucket is None:
            self.minutes[(name, minute)] = list(delta)
            if len(self.minutes) > PENDING_MINUTES * max(1, circuits):
                self._coarsen()
        else:
            merge(bucket, delta)
        calls = int(delta[0] + delta[1])
        if calls or delta[3]:
            key = (name, int(now))
            sec = self.seconds.get(key)
            if sec is None:
                self.seconds[key] = [calls, int(delta[1]), int(delta[3])]
                if len(self.seconds) > PENDING_SECONDS:
                    self._drop_oldest_seconds()
            else:
                sec[0] += calls
                sec[1] += int(delta[1])
                sec[2] += int(delta[3])

    def _coarsen(self) -> None:
        """Bound the rollups waiting for a database that has failed for a long time: per circuit,
        minutes older than the newest PENDING_MINUTES fold into the oldest minute kept. No count is
        lost; only the minute it is filed under moves (the caller says so once)."""
        by_service: dict[str, list[int]] = {}
        for name, minute in self.minutes:
            by_service.setdefault(name, []).append(minute)
        for name, minutes in by_service.items():
            if len(minutes) <= PENDING_MINUTES:
                continue
            minutes.sort()
            target = self.minutes[(name, minutes[-PENDING_MINUTES])]
            for minute in minutes[:-PENDING_MINUTES]:
                merge(target, self.minutes.pop((name, minute)))
                self.coarsened += 1

    def _drop_oldest_seconds(self) -> None:
        for key in sorted(self.seconds, key=lambda k: k[1])[: len(self.seconds) // 10]:
            del self.seconds[key]
            self.seconds_dropped += 1

    def write(self, conn: Connection) -> None:
        """Write everything held, in one transaction; on failure everything stays held (merged with
        what accumulated meanwhile)."""
        with self._lock:
            minutes, seconds = self.minutes, self.seconds
            if not minutes and not seconds:
                return
            self.minutes, self.seconds = {}, {}
            self._inflight = minutes
        rows = [(name, minute, iso(minute * 60), sum(d[:5]), d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7])
                for (name, minute), d in minutes.items()]
        tens: dict[tuple[str, int], list[float]] = {}
        for (name, minute), d in minutes.items():
            merge(tens.setdefault((name, minute // 10), [0.0] * 8), d)
        trows = [(name, bucket, int(sum(d[:5])), *(int(x) for x in d[:6]), d[6], d[7])
                 for (name, bucket), d in tens.items()]
        srows = [(name, second, *d) for (name, second), d in seconds.items()]
        try:
            with conn.transaction():
                if rows:
                    conn.executemany(_UPSERT_MINUTE, rows)
                    conn.executemany(_UPSERT_TEN, trows)
                if srows:
                    conn.executemany(_UPSERT_SECOND, srows)
        except BaseException:
            with self._lock:
                self._inflight = {}
                for key, d in minutes.items():
                    merge(self.minutes.setdefault(key, [0] * 7 + [0.0]), d)
                for key, sd in seconds.items():
                    have = self.seconds.setdefault(key, [0, 0, 0])
                    for i in range(3):
                        have[i] += sd[i]
            raise
        with self._lock:
            self._inflight = {}
            self.committed += 1


def merge(bucket: list[float], delta: Sequence[float]) -> None:
    """Add one rollup into another: counts and latency sums add up, the latency maximum is kept."""
    for i in range(7):
        bucket[i] += delta[i]
    bucket[7] = max(bucket[7], delta[7])


#: Events other than failures are dropped by count only beyond this many times ``max_events``.
_OTHER_EVENTS: Final = 10


_NOT_LATEST: Final = ("NOT (event_type = 'adjustment' AND id IN (SELECT max(id) FROM circuit_breaker_events "
                      "WHERE event_type = 'adjustment' GROUP BY service_name))")


def prune(conn: Connection, now: float, *, retention: float, second_retention: float, max_events: int) -> None:
    """Drop history older than its retention: events, patterns and alerts after ``retention``;
    per-minute rows after ``max(retention, 90 days)``; per-second rows after ``second_retention``;
    expired leases; then the oldest failure rows beyond ``max_events`` events (other events once ten times
    as many newer ones exist)."""
    # every circuit that writes events has a state row; the store's own rows go under "circuitry"
    services = [r[0] for r in conn.execute("SELECT service_name FROM circuit_breaker_states")] + ["circuitry"]
    cutoff = now - retention
    with conn.transaction():
        # A circuit's latest adjustment stays, however old: it is the settings every process follows (a
        # worker started after it was pruned ran the code's settings beside workers running the adjusted ones).
        conn.executemany(f"DELETE FROM circuit_breaker_events WHERE service_name = ? AND ts < ? AND {_NOT_LATEST}",
                         [(name, cutoff) for name in services])
        conn.execute("DELETE FROM circuit_breaker_failure_patterns WHERE ts < ?", (cutoff,))
        conn.execute("DELETE FROM circuit_breaker_alerts WHERE ts < ?", (cutoff,))
        conn.execute("DELETE FROM circuit_breaker_metrics WHERE minute < ?",
                     (int((now - max(retention, 90 * 86400.0)) // 60),))
        conn.execute("DELETE FROM circuit_breaker_metrics_10m WHERE bucket < ?",
                     (int((now - max(retention, 90 * 86400.0)) // 600),))
        conn.executemany("DELETE FROM circuit_breaker_seconds WHERE service_name = ? AND second < ?",
                         [(name, int(now - second_retention)) for name in services])
        # lease times are the database's clock (a host whose clock runs ahead must not delete live leases)
        conn.execute("DELETE FROM circuit_breaker_probe_leases WHERE expires_at < ?", (conn.now() - 3600,))
        conn.execute("DELETE FROM circuitry_analysis_leases WHERE taken_at < ?", (now - 86400,))
        got = conn.execute("SELECT max(id) - min(id) + 1, max(id) FROM circuit_breaker_events")
        count, top = got[0] if got else (None, None)
        if count is not None and count > max_events:
            # The bound drops failure rows, the bulk, first. Transitions and the rest are rare, and what the
            # state history, the analysis and the shared metrics count (circuitry_transitions_total went
            # down when a flood of failures pushed the day's transitions out): they go only once ten times
            # the bound of newer events exist (the count is the span of ids, as above).
            conn.execute("DELETE FROM circuit_breaker_events WHERE id <= ? AND event_type = 'failure'",
                         (top - max_events,))
            if count > _OTHER_EVENTS * max_events:
                conn.execute(f"DELETE FROM circuit_breaker_events WHERE id <= ? AND {_NOT_LATEST}",
                             (top - _OTHER_EVENTS * max_events,))


#: Samples without a call before a circuit counts as quiet (sampled every few seconds, not every cycle).
QUIET_AFTER: Final = 200


def sample(link: Link, now: float, rollups: Rollups, circuits: int, put: Callable[[tuple[Any, ...]], None],
           process: str, per_second: int) -> bool:
    """File what ``link``'s breaker counted since its last sample, and queue its failure rows. True when
    it counted failures or successes while closed (its evidence is to be shared this cycle)."""
    counts = link.breaker.counts()
    old = link.counts
    if counts == old and not link.failure_log and not link.missing:
        link.quiet += 1
        if link.quiet > QUIET_AFTER:
            link.hot = False
        return False
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
        rollups.add(link.name, now, delta, circuits)
    if delta[1] or link.failure_log or link.missing:
        for row in failure_rows(link, now, process, per_second):
            put(row)
        return link.breaker.snapshot().state is CircuitState.CLOSED
    # successes only: the shared count is reset if some process's failures are in it
    return bool(delta[0]) and link.shared_count > 0
