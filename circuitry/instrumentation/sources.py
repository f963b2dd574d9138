"""Where metrics come from: a :class:`Source` answers, when metrics are collected, what each circuit
has done so far. Exporters (:mod:`~circuitry.instrumentation.prometheus`,
:mod:`~circuitry.instrumentation.otel`) read sources; they never count anything per call.

:class:`RegistrySource` reads one process's :class:`~circuitry.Registry`: calls by outcome from each
breaker's exact counters, state and open period from :meth:`~circuitry.CircuitBreaker.stats`, and
transitions — rare — tallied by a transition hook it adds to the registry. :class:`StoreSource` reads
the shared store instead: every process's circuits and counts, for multi-process servers.

Every value is cumulative since the source started (counters) or current (gauges), the shapes both
Prometheus and OpenTelemetry expect.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from circuitry._core import LATENCY_BUCKETS
from circuitry._state import CircuitState
from circuitry.events import Event, EventKind

if TYPE_CHECKING:
    from circuitry._registry import Registry

__all__ = [
    "OPEN_DURATION_BUCKETS",
    "CircuitSample",
    "DurationSample",
    "LatencySample",
    "RegistrySource",
    "Source",
    "StoreSource",
    "TransitionSample",
]

#: Upper bounds (seconds) of the open-duration histogram's buckets (``+Inf`` is implied).
OPEN_DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)

_NOT_CLOSED: Final = frozenset({CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.FORCED_OPEN})
_CLOSED: Final = frozenset({CircuitState.CLOSED, CircuitState.DISABLED})


@dataclass(frozen=True, slots=True)
class LatencySample:
    """A cumulative latency histogram of a timed circuit's calls.

    Attributes:
        count: Timed calls.
        sum: Their total duration (seconds).
        buckets: ``(upper bound in seconds, cumulative count)`` in increasing order; the last bound is
            ``math.inf`` and its count equals ``count``.
    """

    count: int
    sum: float
    buckets: tuple[tuple[float, int], ...]


@dataclass(frozen=True, slots=True)
class CircuitSample:
    """One circuit, as of one collection.

    Attributes:
        circuit: Its name.
        state: Its state.
        successes, failures, ignored, rejected, cancelled: Calls by outcome, since the breaker was
            created (see :class:`~circuitry.CircuitBreaker.counts`).
        would_reject: Calls a metrics-only breaker would have refused.
        opened_at: When it last opened (epoch seconds), or ``None`` while closed.
        retry_after: Seconds until it may admit a call (0 when closed or half-open), ``None`` when
            forced open.
        probes_in_flight: Half-open probes running now.
        latency: Its latency histogram when it is timed and the source has one, else ``None``.
    """

    circuit: str
    state: CircuitState
    successes: int
    failures: int
    ignored: int
    rejected: int
    cancelled: int
    would_reject: int = 0
    opened_at: float | None = None
    retry_after: float | None = None
    probes_in_flight: int = 0
    latency: LatencySample | None = None

    def outcomes(self) -> tuple[tuple[str, int], ...]:
        """``(outcome, calls)`` for the five outcomes, in a fixed order."""
        return (("success", self.successes), ("failure", self.failures), ("ignored", self.ignored),
                ("rejected", self.rejected), ("cancelled", self.cancelled))


@dataclass(frozen=True, slots=True)
class TransitionSample:
    """How many times a circuit went from one state to another for one reason (cumulative)."""

    circuit: str
    from_state: CircuitState
    to_state: CircuitState
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class DurationSample:
    """A cumulative histogram of a circuit's completed open periods: from leaving closed (opening) to
    closing again, half-open probes included.

    Attributes:
        circuit: Its name.
        count: Completed open periods.
        sum: Their total length (seconds).
        buckets: ``(upper bound in seconds, cumulative count)``; the last bound is ``math.inf``.
    """

    circuit: str
    count: int
    sum: float
    buckets: tuple[tuple[float, int], ...]


@runtime_checkable
class Source(Protocol):
    """What an exporter reads when metrics are collected. Each method is called once per collection,
    from the collecting thread, and must not block for long."""

    def circuits(self) -> Iterable[CircuitSample]:
        """Every circuit, now."""
        ...

    def transitions(self) -> Iterable[TransitionSample]:
        """Transitions so far, by circuit, states and reason."""
        ...

    def open_durations(self) -> Iterable[DurationSample]:
        """Completed open periods so far, per circuit."""
        ...


class _Tally:
    """The transition hook behind :class:`RegistrySource` (transitions are rare: a lock is fine)."""

    kinds = frozenset({EventKind.TRANSITION})

    def __init__(self, bounds: Sequence[float]) -> None:
        self._lock = threading.Lock()
        self._bounds = tuple(bounds)
        self.transitions: dict[tuple[str, CircuitState, CircuitState, str], int] = {}
        self._opened: dict[str, float] = {}  # circuit -> when its current open period began
        self.durations: dict[str, tuple[list[int], list[float]]] = {}  # circuit -> (bucket counts, [sum])

    def __call__(self, event: Event) -> None:
        frm = event.from_state
        if frm is None:
            return
        key = (event.circuit, frm, event.to_state, event.reason or "unknown")
        with self._lock:
            self.transitions[key] = self.transitions.get(key, 0) + 1
            if frm in _CLOSED and event.to_state in _NOT_CLOSED:
                self._opened[event.circuit] = event.at
            elif event.to_state in _CLOSED:
                began = self._opened.pop(event.circuit, None)
                if began is not None:  # an open period seen from its start
                    seconds = max(0.0, event.at - began)
                    counts, total = self.durations.setdefault(
                        event.circuit, ([0] * (len(self._bounds) + 1), [0.0]))
                    counts[bisect.bisect_left(self._bounds, seconds)] += 1
                    total[0] += seconds

    def duration_samples(self) -> list[DurationSample]:
        with self._lock:
            items = [(name, list(counts), total[0]) for name, (counts, total) in self.durations.items()]
        out = []
        bounds = (*self._bounds, float("inf"))
        for name, counts, total in items:
            running, buckets = 0, []
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                buckets.append((bound, running))
            out.append(DurationSample(name, running, total, tuple(buckets)))
        return out

    def __repr__(self) -> str:
        return "<circuitry transition tally>"


class RegistrySource:
    """A :class:`Source` over one :class:`~circuitry.Registry` of this process.

    Args:
        registry: The registry to read (default: the process-wide one, as it is now).
        open_duration_buckets: Upper bounds (seconds) of the open-duration histogram.

    Adds a transition hook to the registry (to tally transitions and open periods from now on);
    :meth:`close` removes it. Reading a circuit takes its lock for a moment, as
    :meth:`~circuitry.CircuitBreaker.stats` does; an open circuit whose period has ended becomes
    half-open when read, exactly as when a call arrives.

    .. versionadded:: 0.1.0
    """

    def __init__(self, registry: Registry | None = None, *,
                 open_duration_buckets: Sequence[float] = OPEN_DURATION_BUCKETS) -> None:
        from circuitry._registry import default_registry

        bounds = sorted(float(b) for b in open_duration_buckets)
        if not bounds or any(not (b > 0) or b == float("inf") for b in bounds):
            from circuitry.exceptions import ConfigurationError

            raise ConfigurationError(
                f"open_duration_buckets must be finite positive seconds, got {open_duration_buckets!r}")
        self.registry = default_registry() if registry is None else registry
        self._tally = _Tally(bounds)
        self.registry.add_hook(self._tally)

    def circuits(self) -> list[CircuitSample]:
        out = []
        for breaker in self.registry:
            s = breaker.stats()
            latency = None
            if breaker.policy.timed:
                counts, total = breaker.latency_histogram()
                cumulative = list(accumulate(counts))
                latency = LatencySample(cumulative[-1], total,
                                        tuple(zip((*LATENCY_BUCKETS, math.inf), cumulative, strict=True)))
            out.append(CircuitSample(
                s.name, s.state, s.successes, s.failures, s.ignored, s.rejected, s.cancelled,
                would_reject=s.would_reject, opened_at=s.opened_at, retry_after=s.retry_after,
                probes_in_flight=s.probes_in_flight, latency=latency))
        return out

    def transitions(self) -> list[TransitionSample]:
        with self._tally._lock:
            items = list(self._tally.transitions.items())
        return [TransitionSample(c, f, t, r, n) for (c, f, t, r), n in items]

    def open_durations(self) -> list[DurationSample]:
        return self._tally.duration_samples()

    def close(self) -> None:
        """Stop tallying (remove the hook from the registry)."""
        self.registry.remove_hook(self._tally)

    def __repr__(self) -> str:
        return f"<RegistrySource {self.registry!r}>"


class StoreSource:
    """A :class:`Source` over the shared store: what *every* process sharing the database counted — the
    source for multi-process servers (gunicorn, uvicorn ``--workers``), where a scrape reaches any one
    worker and must not see only that worker's calls.

    Args:
        source: The store's read model: a :class:`~circuitry.store.readmodel.ReadModel`, a running
            store (its ``read``), or a database path or URL (opened read-only).
        period: Counters count from the start of the current period (UTC-aligned: a day by default,
            starting at midnight UTC), so every worker reports the same numbers; at each period's start
            they begin again from zero, which Prometheus's ``rate()`` and ``increase()`` treat as a
            counter reset. Must be at most the store's retention of events (7 days by default).
        since: Count from this epoch time instead, for good (until history older than the store's
            retention is pruned).
        clock: Wall clock (default ``time.time``).
        open_duration_buckets: Upper bounds (seconds) of the open-duration histogram.

    What it reads, at collection time (nothing is done per call): calls by outcome from the per-minute
    rows every process adds to (written each ``metrics_interval``, a second by default, so a scrape
    lags the calls by about that much); state, opening time and retry-after from the shared state
    rows; transitions by reason and completed open periods from the transition history (one row per
    shared transition, written by the process that made it: nothing is counted once per worker);
    probes in flight from the lease rows. ``would_reject`` is not stored (always 0) and latency is not
    exported from here.

    .. versionadded:: 0.1.0
    """

    def __init__(self, source: Any, *, period: float = 86400.0, since: float | None = None,
                 clock: Callable[[], float] | None = None,
                 open_duration_buckets: Sequence[float] = OPEN_DURATION_BUCKETS) -> None:
        import time

        from circuitry._checks import check_number
        from circuitry.exceptions import ConfigurationError
        from circuitry.store.engine import SharedStore
        from circuitry.store.readmodel import ReadModel

        if isinstance(source, ReadModel):
            self.reader = source
        elif isinstance(source, SharedStore):
            self.reader = source.read
        elif isinstance(source, str | os.PathLike):
            from circuitry.store import open_reader

            self.reader = open_reader(source)
        else:
            raise ConfigurationError(f"source must be a ReadModel, a store or a database path, got {source!r}")
        self.period = check_number("period", period, lo=60.0, hi=31 * 86400.0, lo_open=False)
        self.since = None if since is None else check_number("since", since, lo=0.0, hi=1e11, lo_open=False)
        self._time = clock or time.time
        self._bounds = tuple(sorted(float(b) for b in open_duration_buckets))
        if not self._bounds or any(not (b > 0) or math.isinf(b) for b in self._bounds):
            raise ConfigurationError(
                f"open_duration_buckets must be finite positive seconds, got {open_duration_buckets!r}")
        self._cache: tuple[float, float, list[dict[str, Any]]] | None = None

    @classmethod
    def of(cls, registry: Registry | None = None, **options: Any) -> StoreSource:
        """The source over the store of ``registry`` (default: the process-wide registry)."""
        from circuitry._registry import default_registry
        from circuitry.exceptions import ConfigurationError
        from circuitry.store.engine import SharedStore

        store = (default_registry() if registry is None else registry).store
        if not isinstance(store, SharedStore):
            raise ConfigurationError("this registry keeps its circuits in memory: there is no shared store to read "
                                     "(configure a database, or use RegistrySource)")
        return cls(store, **options)

    def start(self, now: float) -> float:
        """When the counters reported at ``now`` began."""
        if self.since is not None:
            return self.since
        return math.floor(now / self.period) * self.period

    def circuits(self) -> list[CircuitSample]:
        now = self._time()
        totals = self.reader.totals(self.start(now))
        probes = self.reader.probes(now)
        out = []
        for row in self.reader.state_rows():
            try:
                state = CircuitState(row["state"])
            except ValueError:
                continue
            t = totals.get(row["service_name"], {})
            until = row["open_until"]
            if state is CircuitState.OPEN:
                retry: float | None = max(0.0, until - now) if until is not None else 0.0
            elif state is CircuitState.FORCED_OPEN:
                retry = None
            else:
                retry = 0.0
            out.append(CircuitSample(
                row["service_name"], state, int(t.get("successes", 0)), int(t.get("failures", 0)),
                int(t.get("ignored", 0)), int(t.get("rejections", 0)), int(t.get("cancelled", 0)),
                opened_at=row["opened_at"] if state in _NOT_CLOSED else None, retry_after=retry,
                probes_in_flight=probes.get(row["service_name"], 0)))
        return out

    def _transitions(self, fresh: bool) -> list[dict[str, Any]]:
        import time

        now = self._time()
        start = self.start(now)
        cached = self._cache
        if not fresh and cached is not None and cached[0] == start and time.monotonic() - cached[1] < 1.0:
            return cached[2]  # transitions() then open_durations() of one collection: read once
        rows = self.reader.all_transitions(start)
        self._cache = (start, time.monotonic(), rows)
        return rows

    def transitions(self) -> list[TransitionSample]:
        tally: dict[tuple[str, CircuitState, CircuitState, str], int] = {}
        for t in self._transitions(fresh=True):
            try:
                frm, to = CircuitState(t["from_state"] or "closed"), CircuitState(t["to_state"])
            except ValueError:
                continue
            key = (t["service_name"], frm, to, t["reason"] or "unknown")
            tally[key] = tally.get(key, 0) + 1
        return [TransitionSample(c, f, t, r, n) for (c, f, t, r), n in sorted(tally.items(), key=lambda kv: kv[0])]

    def open_durations(self) -> list[DurationSample]:
        opened: dict[str, float] = {}
        durations: dict[str, list[float]] = {}
        for t in self._transitions(fresh=False):
            try:
                frm, to = CircuitState(t["from_state"] or "closed"), CircuitState(t["to_state"])
            except ValueError:
                continue
            name = t["service_name"]
            if frm in _CLOSED and to in _NOT_CLOSED:
                opened[name] = float(t["ts"])
            elif to in _CLOSED and name in opened:
                durations.setdefault(name, []).append(max(0.0, float(t["ts"]) - opened.pop(name)))
        out = []
        bounds = (*self._bounds, math.inf)
        for name, seconds in sorted(durations.items()):
            counts = [0] * len(bounds)
            for s in seconds:
                counts[bisect.bisect_left(self._bounds, s)] += 1
            running, buckets = 0, []
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                buckets.append((bound, running))
            out.append(DurationSample(name, running, sum(seconds), tuple(buckets)))
        return out

    def __repr__(self) -> str:
        return f"<StoreSource {self.reader.backend.location!r}>"
