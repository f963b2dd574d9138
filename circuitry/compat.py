"""The database API: ``DatabaseCircuitBreaker`` and ``MultiServiceDatabaseCircuitBreaker``.

Thin adapters over one registry-and-store pair per database file — not a second implementation:
``DatabaseCircuitBreaker(db_path="pipeline.db", service_name="openrouter_api", ...)`` is the breaker
``openrouter_api`` of the registry persisting to ``pipeline.db``, the same one
``circuit("openrouter_api", registry=...)`` would use.
"""

from __future__ import annotations

import inspect
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from circuitry._core import CircuitBreaker, validate_name
from circuitry._defaultdb import MEMORY, store_identity
from circuitry._policy import Policy
from circuitry._registry import Registry, default_registry
from circuitry._state import CircuitState
from circuitry.exceptions import ConfigurationError, StoreError

__all__ = ["DatabaseCircuitBreaker", "MultiServiceDatabaseCircuitBreaker"]

_registries: dict[str, Registry] = {}
_registries_lock = threading.Lock()
_UNSET: Any = object()


def registry_for(db_path: str | os.PathLike[str] | None) -> Registry:
    """One registry (and store) per database file in a process; ``None``: the default registry;
    ``":memory:"``: one registry without a store (breakers in this process's memory only).

    Raises:
        ConfigurationError: ``db_path`` is not a path, is empty, or is a directory.
    """
    if db_path is None:
        return default_registry()
    key = store_identity(db_path, "db_path")
    with _registries_lock:
        registry = _registries.get(key)
        if registry is None:
            if key == MEMORY:
                registry = _registries[key] = Registry()
            else:
                registry = Registry(store=key)
                registry.prepare_store()  # the tables exist at once: the application may query them with its own SQL
                _registries[key] = registry
        return registry


def _policy(failure_threshold: Any = 5, recovery_timeout: Any = 60, expected_exception: Any = _UNSET,
            **policy: Any) -> Policy:
    """The policy of a breaker of the database API (its defaults: 5 failures, 60 seconds); ``on=`` and
    ``expected_exception=`` are one setting, given once."""
    kwargs = {"failure_threshold": failure_threshold, "recovery_timeout": recovery_timeout, **policy}
    if expected_exception is not _UNSET:
        kwargs["expected_exception"] = expected_exception  # with on= too: from_kwargs says "not both"
    return Policy.from_kwargs(kwargs)


def _check_alert_arguments(enable_alerts: object, alert_callback: object) -> None:
    if not isinstance(enable_alerts, bool):
        raise ConfigurationError(f"enable_alerts must be a bool, got {enable_alerts!r}")
    if alert_callback is not None and not callable(alert_callback):
        raise ConfigurationError(f"alert_callback must be callable, got {alert_callback!r}")


# -- alerts, per handle ------------------------------------------------------------------------------
#
# Every handle of a service in a process is the same breaker, so the store raises a service's alerts
# once; what belongs to a handle is whether *its* callback receives them. Each distinct callback of a
# service is registered with the store once, through a _Gate (one delivery per alert per callback,
# however many handles name it); a gate whose handles are all gone is emptied and reused for the
# next callback, so a handle built per request leaks nothing. The service's alerts are raised while
# some live handle enables them, or none disables them.


class _Gate:
    """One alert callback slot of a service in a store: calls the callback live handles gave it, or
    nothing while free."""

    __slots__ = ("callback", "users")

    def __init__(self) -> None:
        self.callback: Callable[[dict[str, Any]], Any] | None = None
        self.users = 0

    def __call__(self, alert: dict[str, Any]) -> Any:
        callback = self.callback
        return None if callback is None else callback(alert)

    def __repr__(self) -> str:  # what a log of a failed delivery names: the application's callback
        return repr(self.callback)


class _ServiceAlerts:
    __slots__ = ("disabled", "enabled", "gates")

    def __init__(self) -> None:
        self.enabled = 0  # live handles with enable_alerts=True
        self.disabled = 0  # ... and with enable_alerts=False
        self.gates: list[_Gate] = []

    @property
    def raised(self) -> bool:
        return self.enabled > 0 or self.disabled == 0


_alerts: weakref.WeakKeyDictionary[Registry, dict[str, _ServiceAlerts]] = weakref.WeakKeyDictionary()
_alerts_lock = threading.RLock()  # re-entered by a handle's finalizer run by a collection inside _join_alerts


def _same(a: object, b: object) -> bool:
    try:
        return a is b or bool(a == b)  # == : two bound methods of one object are one callback
    except Exception:
        return False


def _join_alerts(handle: DatabaseCircuitBreaker, registry: Registry, service: str, enabled: bool,
                 callback: Callable[[dict[str, Any]], Any] | None) -> None:
    with _alerts_lock:
        sa = _alerts.setdefault(registry, {}).setdefault(service, _ServiceAlerts())
        gate: _Gate | None = None
        new = False
        if enabled and callback is not None:
            gate = next((g for g in sa.gates if g.users and _same(g.callback, callback)), None)
            if gate is None:
                gate = next((g for g in sa.gates if not g.users), None)
                if gate is None:
                    gate, new = _Gate(), True
            gate.users += 1
            gate.callback = callback
        if enabled:
            sa.enabled += 1
        else:
            sa.disabled += 1
        registry.set_alerts_enabled(service, sa.raised)
        if new and gate is not None and registry.on_alert(gate, service=service):
            sa.gates.append(gate)
        finalizer = weakref.finalize(handle, _leave_alerts, weakref.ref(registry), service, enabled, gate)
        finalizer.atexit = False


def _leave_alerts(registry_ref: weakref.ref[Registry], service: str, enabled: bool, gate: _Gate | None) -> None:
    registry = registry_ref()
    with _alerts_lock:
        if gate is not None:
            gate.users -= 1
            if not gate.users:
                gate.callback = None
        sa = None if registry is None else _alerts.get(registry, {}).get(service)
        if registry is None or sa is None:
            return
        if enabled:
            sa.enabled -= 1
        else:
            sa.disabled -= 1
        registry.set_alerts_enabled(service, sa.raised)


class DatabaseCircuitBreaker:
    """A persistent breaker for one service, with the database API (``await breaker.call(fn, *args)``).

    Handles made for one service and database in a process (by this class, or by
    :class:`MultiServiceDatabaseCircuitBreaker`) are one breaker: its state, counts and alerts are shared.

    Args:
        db_path: The SQLite file (or ``sqlite:///path``); ``":memory:"`` keeps the breakers in this
            process's memory only, as ``CIRCUITRY_DB=:memory:`` does (default: where the process-wide
            registry persists — see :func:`circuitry.configure`).
        service_name: The breaker's name.
        failure_threshold: Consecutive failures that open the circuit.
        recovery_timeout: Seconds open before a probe is let through.
        enable_alerts: This handle's setting: whether ``alert_callback`` receives the service's alerts.
            The alerts (rows of ``circuit_breaker_alerts``) are raised while some handle of the service
            in this process enables them, or none disables them.
        alert_callback: Called with each alert's dict (sync or async); it can neither block nor
            break a protected call. A callback given to several handles of a service gets each alert once.
        expected_exception: What counts as a failure (a type, a tuple or a predicate); ``on=`` is the
            same setting (give one of them).
        registry: The registry whose breaker this is (instead of ``db_path``).
        **policy: Any other :class:`~circuitry.Policy` field.

    Raises:
        ConfigurationError: An argument is invalid (the message names it); nothing is opened then.
        RegistryConflictError: The service exists already with another policy.

    .. versionadded:: 0.1.0
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None, service_name: str | None = None,
                 failure_threshold: int = 5, recovery_timeout: float = 60, enable_alerts: bool = True,
                 alert_callback: Callable[[dict[str, Any]], Any] | None = None,
                 expected_exception: Any = _UNSET, *, registry: Registry | None = None,
                 **policy: Any) -> None:
        if service_name is None:
            raise ConfigurationError("service_name is required")
        if not isinstance(service_name, str):
            raise ConfigurationError(f"service_name must be a str, got {service_name!r} "
                                     f"({type(service_name).__name__})")
        try:
            validate_name(service_name)
        except ConfigurationError as exc:  # the same rules ("name must ..."), under this API's argument
            raise ConfigurationError(f"service_{exc}") from None
        _check_alert_arguments(enable_alerts, alert_callback)
        if registry is not None:
            if not isinstance(registry, Registry):
                raise ConfigurationError(f"registry must be a Registry, got {registry!r}")
            if db_path is not None:
                raise ConfigurationError("give db_path= or registry=, not both")
        settings = _policy(failure_threshold, recovery_timeout, expected_exception, **policy)
        self.registry = registry if registry is not None else registry_for(db_path)
        self.service_name = service_name
        self.breaker: CircuitBreaker = self.registry.get(service_name, settings)
        self._enable_alerts = enable_alerts
        self._alert_callback = alert_callback
        _join_alerts(self, self.registry, service_name, enable_alerts, alert_callback)

    @property
    def enable_alerts(self) -> bool:
        """Whether this handle's ``alert_callback`` receives the service's alerts (set at construction)."""
        return self._enable_alerts

    @property
    def alert_callback(self) -> Callable[[dict[str, Any]], Any] | None:
        return self._alert_callback

    def __repr__(self) -> str:
        return f"<DatabaseCircuitBreaker {self.service_name!r} {self.breaker.state.value}>"

    @property
    def state(self) -> CircuitState:
        return self.breaker.state

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` (sync or async) through the breaker; raises
        :class:`~circuitry.CircuitBreakerError` when the circuit refuses it."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        result = self.breaker.call(fn, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def reset(self) -> None:
        """Close the circuit (shared: other processes see it within a poll)."""
        self.breaker.reset()

    def get_stats(self) -> dict[str, Any]:
        """Statistics: this process's counters, and the last hour as the database holds it (every
        process's calls, with this process's not yet written added in) — without waiting on the store.
        ``success_rate`` is this process's, or the last hour's while this process has decided no call."""
        s = self.breaker.stats()
        decided = s.successes + s.failures
        stats: dict[str, Any] = {
            "state": s.state.value,
            "failure_count": s.consecutive_failures,
            "success_rate": round(100.0 * s.successes / decided, 1) if decided else 100.0,
            "latest_pattern": None,
            "last_hour_metrics": {"total_calls": s.calls, "success_rate": 100.0, "circuit_open_duration": 0},
            "unacknowledged_alerts": 0,
        }
        if self.registry.store is None:
            stats["last_hour_metrics"]["success_rate"] = stats["success_rate"]
            return stats
        try:
            status = self.registry.status(self.service_name)
        except StoreError as exc:  # the counts of this process, as without a store
            stats["store_error"] = str(exc)
            stats["last_hour_metrics"]["success_rate"] = stats["success_rate"]
            return stats
        if status is not None:
            h = status["last_hour"]
            if not decided:  # nothing decided in this process yet (a restart): the circuit's last hour
                stats["success_rate"] = h["success_rate"]
            stats["last_hour_metrics"] = {key: h[key] for key in (
                "total_calls", "success_rate", "circuit_open_duration", "rejections", "avg_latency_ms",
                "max_latency_ms") if key in h}
            pattern = status["pattern"]
            if pattern is not None:
                stats["latest_pattern"] = {k: pattern.get(k) for k in ("type", "confidence", "suggested_threshold",
                                                                       "suggested_timeout", "prediction")}
            stats["unacknowledged_alerts"] = status["unacknowledged_alerts"]
        return stats

    def get_recommendations(self) -> dict[str, Any]:
        """The recommendation dict: the last analysis window classified now, and the settings that
        pattern calls for (nothing below the confidence floor)."""
        try:
            rec = self.registry.recommendation(self.service_name)
        except StoreError:
            rec = None
        if rec is not None:
            return dict(rec.as_seed_dict())
        p = self.breaker.policy
        return {"has_recommendations": False, "message": "No change recommended: no history stored",
                "current_threshold": p.failure_threshold, "recommended_threshold": p.failure_threshold,
                "current_timeout": p.recovery_timeout, "recommended_timeout": p.recovery_timeout,
                "confidence": 0.0, "primary_pattern": None}

    def apply_recommendations(self) -> bool:
        """Apply the current recommendation (threshold, timeout, backoff) to the breaker: one explicit
        call. Returns whether anything changed."""
        return self.registry.apply_recommendation(self.service_name)


class MultiServiceDatabaseCircuitBreaker:
    """Breakers for many services over one database, with the database API.

    Args:
        db_path: The SQLite file (or ``sqlite:///path``, or ``":memory:"``; default: where the
            process-wide registry persists).
        enable_alerts: Whether ``alert_callback`` receives the services' alerts (see
            :class:`DatabaseCircuitBreaker`).
        alert_callback: Receives every alert dict of the services it made breakers for (sync or async).
        **defaults: Policy defaults for the breakers it creates (``failure_threshold=``, ...).

    Raises:
        ConfigurationError: An argument is invalid (the message names it), at construction.

    .. versionadded:: 0.1.0
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None, enable_alerts: bool = True,
                 alert_callback: Callable[[dict[str, Any]], Any] | None = None, **defaults: Any) -> None:
        _check_alert_arguments(enable_alerts, alert_callback)
        if "service_name" in defaults:
            raise ConfigurationError("service_name is given to get_breaker(), not to "
                                     "MultiServiceDatabaseCircuitBreaker()")
        _policy(**defaults)  # the defaults are checked now, not at the first get_breaker()
        self.db_path = db_path
        self.registry = registry_for(db_path)
        self.enable_alerts = enable_alerts
        self.alert_callback = alert_callback
        self.defaults = defaults
        self._breakers: dict[str, DatabaseCircuitBreaker] = {}
        self._lock = threading.Lock()

    async def get_breaker(self, service_name: str, **policy: Any) -> DatabaseCircuitBreaker:
        """The breaker of ``service_name``, created on first use with the manager's defaults (and
        ``policy``).

        Raises:
            RegistryConflictError: ``policy`` given for a service whose breaker has another policy.
        """
        wanted = _policy(**{**self.defaults, **policy}) if policy else None
        with self._lock:
            breaker = self._breakers.get(service_name)
            if breaker is None:
                breaker = self._breakers[service_name] = DatabaseCircuitBreaker(
                    service_name=service_name, enable_alerts=self.enable_alerts,
                    alert_callback=self.alert_callback, registry=self.registry, **{**self.defaults, **policy})
            elif wanted is not None and wanted is not breaker.breaker.policy:
                self.registry.get(service_name, wanted)  # the registry's comparison: a conflict, or the same policy
            return breaker

    async def call(self, service_name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        breaker = await self.get_breaker(service_name)
        return await breaker.call(fn, *args, **kwargs)

    async def reset_all(self) -> None:
        for breaker in list(self._breakers.values()):
            await breaker.reset()

    def get_all_stats(self) -> dict[str, dict[str, Any]]:
        return {name: b.get_stats() for name, b in sorted(self._breakers.items())}

    def get_services_needing_attention(self) -> list[dict[str, Any]]:
        """Services that are not closed, have unacknowledged alerts, or failed most of their calls in
        the last hour, most urgent first — every service in the database, not only this process's."""
        if self.registry.store is not None:
            try:
                return self.registry.needs_attention() or []
            except StoreError:
                pass
        out = []
        for name, b in sorted(self._breakers.items()):
            stats = b.get_stats()
            reasons = []
            if stats["state"] != "closed":
                reasons.append(f"circuit is {stats['state']}")
            if stats["unacknowledged_alerts"]:
                reasons.append(f"{stats['unacknowledged_alerts']} unacknowledged alert(s)")
            if reasons:
                out.append({"service_name": name, "state": stats["state"], "reasons": reasons,
                            "unacknowledged_alerts": stats["unacknowledged_alerts"],
                            "success_rate": stats["last_hour_metrics"]["success_rate"]})
        order = {"forced_open": 0, "open": 1, "half_open": 2}
        out.sort(key=lambda s: (order.get(s["state"], 3), -s["unacknowledged_alerts"]))
        return out
