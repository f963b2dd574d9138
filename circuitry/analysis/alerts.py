"""Alert rules over breaker events, deduplicated: pure, no I/O, no clock of their own.

(Delivery to users' callbacks lives in :mod:`circuitry.runners.delivery`.)

:class:`AlertEngine`
    Pure rules. It does no I/O and reads no clock: every method takes ``now`` (epoch seconds), so it is
    deterministic in tests. It turns what it is shown -- transitions (:meth:`~AlertEngine.observe`),
    periodic call/failure counts (:meth:`~AlertEngine.observe_counts`), a periodic check of open circuits
    (:meth:`~AlertEngine.tick`) and threshold recommendations (:meth:`~AlertEngine.recommendation`) --
    into :class:`Alert` records. The rules, with their :class:`AlertPolicy` tunables:

    ===========================  ==========  =================================================================
    alert type                   severity    raised when
    ===========================  ==========  =================================================================
    ``circuit_opened``           error       a circuit enters ``OPEN``
    ``circuit_closed``           info        a circuit enters ``CLOSED`` from ``OPEN`` or ``HALF_OPEN``
    ``high_failure_rate``        warning     ``failures / calls >= high_failure_rate`` over the last
                                             ``rate_window`` seconds, with at least ``min_calls_for_rate``
    ``threshold_recommendation`` warning     a recommendation with ``has_recommendations`` true
    ``flapping``                 critical    ``flapping_opens`` trips (openings from a non-open state)
                                             within ``flapping_window`` seconds
    ``open_too_long``            critical    a circuit stays open (or half-open) ``open_too_long`` seconds;
                                             once per open episode
    ``likely_to_open``           warning     a closed circuit's predicted probability of tripping within the
                                             prediction's horizon is at least ``likely_to_open``
    ===========================  ==========  =================================================================

    Deduplication: every alert has a ``key`` (``"<service>:<alert_type>"``; a recommendation's key also
    names the recommended values). An occurrence whose key matches an alert created less than
    ``dedup_window`` seconds earlier creates no new alert: it is *counted into* that alert. The methods
    return only the new alerts (to persist and deliver); the counted repeats are collected and handed out
    by :meth:`~AlertEngine.pending_aggregates`, so every occurrence is either a new alert or counted into
    one -- nothing is dropped. Severity is fixed per alert type and keys are per type, so a lower-severity
    alert never suppresses a higher one: a flapping circuit gets its critical ``flapping`` alert even while
    its ``circuit_opened`` repeats are being counted.

(About 600 lines, most of them documentation: the alert types, the policy and the one engine that
deduplicates them belong together; delivery is in :mod:`circuitry.runners.delivery`.)

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from circuitry._checks import check_int, check_number
from circuitry._state import CircuitState
from circuitry.events import Event, EventKind
from circuitry.exceptions import ConfigurationError

__all__ = [
    "ALERT_TYPES",
    "SEVERITIES",
    "SEVERITY_OF",
    "Aggregate",
    "Alert",
    "AlertEngine",
    "AlertPolicy",
    "AlertType",
    "Severity",
]

AlertType = Literal[
    "circuit_opened", "circuit_closed", "high_failure_rate", "threshold_recommendation", "flapping",
    "open_too_long", "likely_to_open",
]
Severity = Literal["info", "warning", "error", "critical"]

#: Every alert type, in no particular order.
ALERT_TYPES: Final[tuple[AlertType, ...]] = (
    "circuit_opened", "circuit_closed", "high_failure_rate", "threshold_recommendation", "flapping",
    "open_too_long", "likely_to_open",
)
#: Severities, lowest first.
SEVERITIES: Final[tuple[Severity, ...]] = ("info", "warning", "error", "critical")
#: The (fixed) severity of each alert type.
SEVERITY_OF: Final[Mapping[AlertType, Severity]] = {
    "circuit_opened": "error",
    "circuit_closed": "info",
    "high_failure_rate": "warning",
    "threshold_recommendation": "warning",
    "flapping": "critical",
    "open_too_long": "critical",
    "likely_to_open": "warning",
}

_MAX_SECONDS: Final = 365.0 * 24 * 3600
_MAX_COUNT: Final = 1_000_000_000
_RATE_SLOTS: Final = 12  # the rate window is summed over this many time slots: bounded memory
_MAX_OPENINGS_KEPT: Final = 64  # opening times remembered per service beyond flapping_opens


# -- records ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, as created by an :class:`AlertEngine`.

    Alerts hold a ``details`` dict, so they compare by value but are not hashable.

    Attributes:
        service_name: The circuit's name.
        alert_type: One of :data:`ALERT_TYPES`.
        severity: ``"info"``, ``"warning"``, ``"error"`` or ``"critical"`` (see :data:`SEVERITY_OF`).
        message: A human sentence.
        details: Plain JSON-able data (str keys; str, int, float, bool, None, lists and dicts).
        created_at: When it was created (epoch seconds, the ``now`` given to the engine).
        count: How many occurrences were aggregated into it (1 for a new alert; see :class:`Aggregate`).
        key: The deduplication key: ``"<service>:<alert_type>"``, plus the recommended values for a
            ``threshold_recommendation``.

    .. versionadded:: 0.1.0
    """

    service_name: str
    alert_type: AlertType
    severity: Severity
    message: str
    details: dict[str, Any]
    created_at: float
    count: int = 1
    key: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The alert in the original design's shape, as handed to ``alert_callback``.

        Returns:
            A fresh dict with the keys ``service_name``, ``alert_type``, ``severity``, ``message``,
            ``details`` (a copy), ``created_at``, ``count`` and ``acknowledged`` (always ``False``: the
            store owns acknowledgement).
        """
        return {
            "service_name": self.service_name,
            "alert_type": self.alert_type,
            "severity": self.severity,
            "message": self.message,
            "details": _plain(self.details),
            "created_at": self.created_at,
            "count": self.count,
            "acknowledged": False,
        }


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Repeats counted into an existing alert since the last :meth:`AlertEngine.pending_aggregates`.

    Attributes:
        alert: The alert the repeats were counted into, with ``count`` updated to the total so far.
            Its ``key`` and ``created_at`` identify the stored row (they are those of the original).
        added: Occurrences counted since the previous drain (>= 1).
        last_seen: ``now`` of the latest occurrence.
        last_details: The details the latest occurrence would have carried (e.g. the current number of
            openings for ``flapping``).
        first_seen: ``now`` of the first of the ``added`` occurrences (``None``: not known). Where the
            stored alert was acknowledged meanwhile, the repeats become a new alert from this time.
        last_message: The message the latest occurrence would have carried (``None``: the alert's).

    .. versionadded:: 0.1.0
    """

    alert: Alert
    added: int
    last_seen: float
    last_details: dict[str, Any]
    first_seen: float | None = None
    last_message: str | None = None


# -- policy -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """The tunables of an :class:`AlertEngine`; validated at construction.

    Args:
        high_failure_rate: Failure fraction in ``(0, 1]`` at or above which ``high_failure_rate`` fires.
        min_calls_for_rate: Fewest calls in the rate window for the rate to count (>= 1).
        rate_window: Seconds of counts summed for the rate (> 0).
        flapping_opens: Trips within ``flapping_window`` that make a circuit ``flapping`` (>= 2).
        flapping_window: Seconds (> 0).
        open_too_long: Seconds a circuit may stay open before ``open_too_long`` fires (> 0).
        likely_to_open: Predicted probability of a trip at or above which ``likely_to_open`` fires
            (``0 < x <= 1``).
        dedup_window: Seconds after an alert during which repeats of its key are counted into it instead
            of creating new alerts (>= 0; 0 disables deduplication).
        max_services: Services whose rule state is kept; beyond it the least recently seen service's
            state is forgotten (its counted repeats are kept until drained).

    Raises:
        ConfigurationError: An argument is invalid; the message names it.

    .. versionadded:: 0.1.0
    """

    high_failure_rate: float = 0.5
    min_calls_for_rate: int = 20
    rate_window: float = 60.0
    flapping_opens: int = 3
    flapping_window: float = 600.0
    open_too_long: float = 900.0
    likely_to_open: float = 0.5
    dedup_window: float = 300.0
    max_services: int = 10_000

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "high_failure_rate", check_number("high_failure_rate", self.high_failure_rate, lo=0.0, hi=1.0))
        check_int("min_calls_for_rate", self.min_calls_for_rate, 1, _MAX_COUNT)
        setattr_(self, "rate_window", check_number("rate_window", self.rate_window, lo=0.0, hi=_MAX_SECONDS))
        check_int("flapping_opens", self.flapping_opens, 2, 10_000)
        setattr_(self, "flapping_window",
                 check_number("flapping_window", self.flapping_window, lo=0.0, hi=_MAX_SECONDS))
        setattr_(self, "open_too_long", check_number("open_too_long", self.open_too_long, lo=0.0, hi=_MAX_SECONDS))
        setattr_(self, "likely_to_open", check_number("likely_to_open", self.likely_to_open, lo=0.0, hi=1.0))
        setattr_(self, "dedup_window",
                 check_number("dedup_window", self.dedup_window, lo=0.0, hi=_MAX_SECONDS, lo_open=False))
        check_int("max_services", self.max_services, 1, _MAX_COUNT)


# -- engine -------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-able deep copy: enums become their values, tuples/sets lists, other objects ``str``."""
    if value is None or isinstance(value, bool | int | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Mapping):
        return {str(k.value if isinstance(k, enum.Enum) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


class _Live:
    """The latest alert of one key, with repeats counted into it."""

    __slots__ = ("alert", "count", "first_undrained", "last_details", "last_message", "last_seen", "undrained")

    def __init__(self, alert: Alert) -> None:
        self.alert = alert
        self.count = 1
        self.undrained = 0
        self.first_undrained = alert.created_at
        self.last_seen = alert.created_at
        self.last_details = alert.details
        self.last_message = alert.message


class _Service:
    """Rule state of one service; every container is bounded."""

    __slots__ = ("alerted_episode", "episode_start", "live", "openings", "slots")

    def __init__(self, keep_openings: int) -> None:
        self.live: dict[AlertType, _Live] = {}  # at most one per alert type
        self.openings: deque[float] = deque(maxlen=keep_openings)
        self.slots: deque[list[float]] = deque(maxlen=_RATE_SLOTS + 1)  # [slot index, calls, failures]
        self.episode_start: float | None = None  # open episode seen through observe()
        self.alerted_episode: float | None = None  # the episode open_too_long already fired for


class AlertEngine:
    """Turns breaker events, counts and recommendations into deduplicated :class:`Alert` records.

    Pure and deterministic: no I/O, no clock (pass ``now``, epoch seconds, to every method), and
    thread-safe (one lock). Memory is bounded: per service, a handful of small fixed-size containers;
    services beyond ``policy.max_services`` are forgotten least recently seen first.

    Every method returns the *new* alerts, to persist and deliver. Repeats counted into earlier alerts
    are collected for :meth:`pending_aggregates`.

    Args:
        policy: The tunables (default :class:`AlertPolicy` ()).

    Raises:
        ConfigurationError: ``policy`` is not an :class:`AlertPolicy`.

    .. versionadded:: 0.1.0
    """

    def __init__(self, policy: AlertPolicy | None = None) -> None:
        if policy is None:
            policy = AlertPolicy()
        elif not isinstance(policy, AlertPolicy):
            raise ConfigurationError(f"policy must be an AlertPolicy, got {policy!r}")
        self._policy = policy
        self._lock = threading.Lock()
        self._services: OrderedDict[str, _Service] = OrderedDict()
        self._pending: dict[int, _Live] = {}  # id(live) -> live, for records with undrained repeats
        self._keep_openings = max(policy.flapping_opens, _MAX_OPENINGS_KEPT)

    @property
    def policy(self) -> AlertPolicy:
        """The tunables in force."""
        return self._policy

    def __len__(self) -> int:
        """The number of services whose state is kept."""
        return len(self._services)

    def __repr__(self) -> str:
        return f"<AlertEngine services={len(self._services)} pending={len(self._pending)}>"

    # -- inputs -------------------------------------------------------------------------------------

    def observe(self, event: Event, now: float) -> list[Alert]:
        """Apply the transition rules to one breaker event.

        Transitions to ``OPEN`` raise ``circuit_opened``; openings from a non-open state (trips, not
        failed probes) also count towards ``flapping``. Transitions to ``CLOSED`` from ``OPEN`` or
        ``HALF_OPEN`` raise ``circuit_closed``. Other transitions and non-transition events only update
        the open-episode tracking used by :meth:`tick` (or nothing).

        Args:
            event: A breaker event; rejections and failures are ignored.
            now: The current time (epoch seconds).

        Returns:
            The new alerts (possibly empty).
        """
        if event.kind is not EventKind.TRANSITION:
            return []
        now = _check_now(now)
        to, frm, name = event.to_state, event.from_state, event.circuit
        out: list[Alert] = []
        with self._lock:
            svc = self._service(name)
            if to in (CircuitState.OPEN, CircuitState.HALF_OPEN):  # forced opens are deliberate: no episode
                if svc.episode_start is None:
                    svc.episode_start = now
            else:
                svc.episode_start = None
            if to is CircuitState.OPEN:
                trip = frm not in (CircuitState.OPEN, CircuitState.HALF_OPEN)
                details = _plain({
                    "from_state": frm, "reason": event.reason, "error_type": event.error_type,
                    "error_message": event.error_message, "open_for": event.open_for,
                    "generation": event.generation, "reopened": not trip, "at": event.at,
                })
                cause = f" ({event.reason})" if event.reason else ""
                error = f": {event.error_type}: {event.error_message}" if event.error_type else ""
                verb = "opened" if trip else "re-opened after a failed probe"
                self._raise(out, svc, name, "circuit_opened", f"Circuit '{name}' {verb}{cause}{error}",
                            details, now)
                if trip:
                    self._flapping(out, svc, name, now)
            elif to is CircuitState.CLOSED and frm in (CircuitState.OPEN, CircuitState.HALF_OPEN):
                details = _plain({"from_state": frm, "reason": event.reason, "generation": event.generation,
                                  "at": event.at})
                cause = f" ({event.reason})" if event.reason else ""
                self._raise(out, svc, name, "circuit_closed", f"Circuit '{name}' closed{cause}", details, now)
        return out

    def observe_openings(self, service: str, times: Sequence[float], now: float) -> list[Alert]:
        """Apply the flapping rule to the circuit's trips (closed -> open) as the shared history holds
        them, every process's: an engine hears of the trips its own process writes, so a circuit tripped
        by two processes in turn, four times in six seconds, was flapping in neither.

        Args:
            service: The circuit's name.
            times: When it tripped (epoch seconds), from the history; the ones in the window count.
            now: The current time (epoch seconds).

        Returns:
            The new alerts: ``flapping``, when the history holds more trips in the window than this engine
            counted and they reach ``policy.flapping_opens``.
        """
        now = _check_now(now)
        p = self._policy
        recent = sorted(float(t) for t in times if 0.0 <= now - float(t) < p.flapping_window)
        out: list[Alert] = []
        with self._lock:
            svc = self._service(service)
            while svc.openings and now - svc.openings[0] >= p.flapping_window:
                svc.openings.popleft()
            if len(recent) > len(svc.openings):
                svc.openings.clear()
                svc.openings.extend(recent)  # (bounded: the deque keeps the newest)
                self._flapping_rule(out, svc, service, now)
        return out

    def observe_counts(self, service: str, calls: int, failures: int, now: float) -> list[Alert]:
        """Add one period's call and failure counts and apply the failure-rate rule.

        The counts are *not* cumulative: give what happened since the previous call for this service
        (e.g. one per-minute rollup). They are summed over the last ``policy.rate_window`` seconds.

        Args:
            service: The circuit's name.
            calls: Calls that reached the service in the period (successes and failures).
            failures: Of which failed (``0 <= failures <= calls``).
            now: The current time (epoch seconds).

        Returns:
            The new alerts: a ``high_failure_rate`` warning when the windowed rate is at or above
            ``policy.high_failure_rate`` with at least ``policy.min_calls_for_rate`` calls.

        Raises:
            ConfigurationError: ``calls`` or ``failures`` is not a valid count.
        """
        check_int("calls", calls, 0, 2**62)
        check_int("failures", failures, 0, calls)
        now = _check_now(now)
        p = self._policy
        out: list[Alert] = []
        with self._lock:
            svc = self._service(service)
            width = p.rate_window / _RATE_SLOTS
            index = math.floor(now / width)
            slots = svc.slots
            if slots and slots[-1][0] >= index:  # same slot, or time went backwards: add to the newest
                slots[-1][1] += calls
                slots[-1][2] += failures
                index = int(slots[-1][0])
            else:
                slots.append([float(index), float(calls), float(failures)])
            while slots and slots[0][0] <= index - _RATE_SLOTS:
                slots.popleft()
            total = int(sum(s[1] for s in slots))
            failed = int(sum(s[2] for s in slots))
            if total >= p.min_calls_for_rate and failed / total >= p.high_failure_rate:
                rate = failed / total
                details: dict[str, Any] = {
                    "calls": total, "failures": failed, "failure_rate": round(rate, 6),
                    "threshold": p.high_failure_rate, "window_seconds": p.rate_window,
                }
                self._raise(out, svc, service, "high_failure_rate",
                            f"High failure rate for '{service}': {rate:.0%} of {total} calls failed "
                            f"in the last {p.rate_window:g} seconds", details, now)
        return out

    def tick(self, now: float, open_since: Mapping[str, float] | None = None) -> list[Alert]:
        """Periodic check: ``open_too_long`` for circuits open longer than ``policy.open_too_long``.

        Fires once per open *episode* (from a trip until the circuit closes again, half-open probes
        and re-openings included), not once per tick.

        Args:
            now: The current time (epoch seconds).
            open_since: Service name -> start of its current open episode, for every circuit that is
                open now; a service missing from it is taken as not open. Give the *episode* start
                (when it first opened after being closed), not ``BreakerStats.opened_at``, which moves on
                every re-opening. ``None``: use the episodes seen through :meth:`observe`.

        Returns:
            The new alerts.
        """
        now = _check_now(now)
        limit = self._policy.open_too_long
        out: list[Alert] = []
        with self._lock:
            if open_since is None:
                episodes = {n: s.episode_start for n, s in self._services.items() if s.episode_start is not None}
            else:
                episodes = {str(n): _check_now(t, "open_since") for n, t in open_since.items()}
            for name, svc in list(self._services.items()):
                if name not in episodes:
                    svc.alerted_episode = None
            for name, since in episodes.items():
                if now - since < limit:
                    continue
                svc = self._service(name, touch=False)
                if svc.alerted_episode == since:
                    continue
                svc.alerted_episode = since
                details = {"open_since": since, "open_seconds": round(now - since, 3), "limit_seconds": limit}
                self._raise(out, svc, name, "open_too_long",
                            f"Circuit '{name}' has been open for {now - since:.0f} seconds "
                            f"(limit {limit:g})", details, now)
        return out

    def recommendation(self, service: str, rec: Mapping[str, Any], now: float) -> list[Alert]:
        """Raise a ``threshold_recommendation`` when ``rec["has_recommendations"]`` is true.

        Args:
            service: The circuit's name.
            rec: A recommendation dict, e.g. :meth:`circuitry.analysis.recommend.Recommendation.as_seed_dict`.
                It becomes the alert's details. The recommended values (``recommended_*`` keys and
                ``backoff_multiplier``) are part of the dedup key: the same advice repeated is counted,
                different advice is a new alert.
            now: The current time (epoch seconds).

        Returns:
            The new alerts.

        Raises:
            ConfigurationError: ``rec`` is not a mapping.
        """
        if not isinstance(rec, Mapping):
            raise ConfigurationError(f"rec must be a mapping, got {rec!r}")
        if not rec.get("has_recommendations"):
            return []
        now = _check_now(now)
        details: dict[str, Any] = _plain(rec)
        advice = {k: details[k] for k in sorted(details) if k.startswith("recommended_") or k == "backoff_multiplier"}
        fingerprint = ",".join(f"{k.removeprefix('recommended_')}={v}" for k, v in advice.items())
        message = rec.get("message")
        if not isinstance(message, str) or not message:
            message = f"Threshold adjustment recommended for '{service}': {fingerprint or 'see details'}"
        out: list[Alert] = []
        with self._lock:
            svc = self._service(service)
            self._raise(out, svc, service, "threshold_recommendation", message, details, now,
                        key=f"{service}:threshold_recommendation:{fingerprint}")
        return out

    def prediction(self, service: str, prediction: Mapping[str, Any], now: float, *,
                   state: CircuitState = CircuitState.CLOSED) -> list[Alert]:
        """Raise ``likely_to_open`` when a closed circuit is predicted to trip soon.

        Args:
            service: The circuit's name.
            prediction: A prediction dict, e.g. :meth:`circuitry.analysis.predict.Prediction.as_dict`; it
                needs ``open_probability`` and ``horizon_seconds`` and becomes the alert's details.
            now: The current time (epoch seconds).
            state: The circuit's state now: only a closed circuit can trip.

        Returns:
            The new alerts (repeats within ``dedup_window`` are counted into the first).

        Raises:
            ConfigurationError: ``prediction`` is not a mapping with a numeric ``open_probability``.

        .. versionadded:: 0.1.0
        """
        if not isinstance(prediction, Mapping):
            raise ConfigurationError(f"prediction must be a mapping, got {prediction!r}")
        p = prediction.get("open_probability")
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
            raise ConfigurationError(f"prediction['open_probability'] must be a number, got {p!r}")
        now = _check_now(now)
        if state is not CircuitState.CLOSED or p < self._policy.likely_to_open:
            return []
        horizon = prediction.get("horizon_seconds", 0)
        out: list[Alert] = []
        with self._lock:
            svc = self._service(service)
            self._raise(out, svc, service, "likely_to_open",
                        f"Circuit '{service}' is likely to open: {p:.0%} chance within the next "
                        f"{float(horizon) / 60:.0f} minutes", _plain(dict(prediction)), now)
        return out

    # -- outputs ------------------------------------------------------------------------------------

    def pending_aggregates(self) -> list[Aggregate]:
        """Take the repeats counted since the previous call (and forget them).

        Returns:
            One :class:`Aggregate` per alert that had repeats counted into it, oldest alert first. Apply
            them to the stored alerts (``count = aggregate.alert.count``, matched on ``key`` and
            ``created_at``).
        """
        with self._lock:
            lives = sorted(self._pending.values(), key=lambda lv: lv.alert.created_at)
            self._pending.clear()
            out = [
                Aggregate(alert=dataclasses.replace(lv.alert, count=lv.count), added=lv.undrained,
                          last_seen=lv.last_seen, last_details=lv.last_details, first_seen=lv.first_undrained,
                          last_message=lv.last_message)
                for lv in lives
            ]
            for lv in lives:
                lv.undrained = 0
        return out

    def acknowledge(self, key: str) -> bool:
        """Forget the live alert with this key: its next occurrence creates a new alert.

        Args:
            key: An :attr:`Alert.key`.

        Returns:
            Whether a live alert had that key.
        """
        with self._lock:
            for svc in self._services.values():
                for alert_type, lv in svc.live.items():
                    if lv.alert.key == key:
                        del svc.live[alert_type]
                        return True
        return False

    def forget(self, service: str) -> None:
        """Drop a service's rule state (e.g. when its breaker is removed); its pending repeats stay.

        Args:
            service: The circuit's name.
        """
        with self._lock:
            self._services.pop(service, None)

    # -- internals (lock held) ----------------------------------------------------------------------

    def _service(self, name: str, *, touch: bool = True) -> _Service:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service(self._keep_openings)
            while len(self._services) > self._policy.max_services:
                self._services.popitem(last=False)
        elif touch:
            self._services.move_to_end(name)
        return svc

    def _flapping(self, out: list[Alert], svc: _Service, name: str, now: float) -> None:
        svc.openings.append(now)
        self._flapping_rule(out, svc, name, now)

    def _flapping_rule(self, out: list[Alert], svc: _Service, name: str, now: float) -> None:
        p = self._policy
        while svc.openings and now - svc.openings[0] >= p.flapping_window:
            svc.openings.popleft()
        n = len(svc.openings)
        if n >= p.flapping_opens:
            details = {"openings": n, "window_seconds": p.flapping_window,
                       "at_least": n == svc.openings.maxlen, "threshold": p.flapping_opens}
            self._raise(out, svc, name, "flapping",
                        f"Circuit '{name}' is flapping: opened {n} times in {p.flapping_window:g} seconds",
                        details, now)

    def _raise(self, out: list[Alert], svc: _Service, name: str, alert_type: AlertType, message: str,
               details: dict[str, Any], now: float, *, key: str | None = None) -> None:
        key = f"{name}:{alert_type}" if key is None else key
        live = svc.live.get(alert_type)
        if live is not None and live.alert.key == key and now - live.alert.created_at < self._policy.dedup_window:
            live.count += 1
            if not live.undrained:
                live.first_undrained = now
            live.undrained += 1
            live.last_seen = max(live.last_seen, now)
            live.last_details = details
            live.last_message = message
            self._pending[id(live)] = live
            return
        alert = Alert(service_name=name, alert_type=alert_type, severity=SEVERITY_OF[alert_type],
                      message=message, details=details, created_at=now, count=1, key=key)
        svc.live[alert_type] = _Live(alert)
        out.append(alert)


def _check_now(now: object, name: str = "now") -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ConfigurationError(f"{name} must be a finite number (epoch seconds), got {now!r}")
    return float(now)
