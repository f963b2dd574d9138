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
from collections.abc import Callable
from typing import Any

from circuitry._core import CircuitBreaker
from circuitry._registry import Registry, default_registry
from circuitry._state import CircuitState
from circuitry.exceptions import ConfigurationError, StoreError

__all__ = ["DatabaseCircuitBreaker", "MultiServiceDatabaseCircuitBreaker"]

_registries: dict[str, Registry] = {}
_registries_lock = threading.Lock()


def registry_for(db_path: str | os.PathLike[str] | None) -> Registry:
    """One registry (and store) per database file in a process; ``None``: the default registry."""
    if db_path is None:
        return default_registry()
    key = os.path.abspath(os.fspath(db_path))
    with _registries_lock:
        registry = _registries.get(key)
        if registry is None:
            registry = _registries[key] = Registry(store=key)
            registry.prepare_store()  # the tables exist at once: the application may query them with its own SQL
        return registry


class DatabaseCircuitBreaker:
    """A persistent breaker for one service, with the database API (``await breaker.call(fn, *args)``).

    Args:
        db_path: The SQLite file (default: where the process-wide registry persists — see
            :func:`circuitry.configure`).
        service_name: The breaker's name.
        failure_threshold: Consecutive failures that open the circuit.
        recovery_timeout: Seconds open before a probe is let through.
        enable_alerts: Raise alerts (rows of ``circuit_breaker_alerts``) for this service.
        alert_callback: Called with each alert's dict (sync or async); it can neither block nor
            break a protected call.
        expected_exception: What counts as a failure (a type, a tuple or a predicate).
        **policy: Any other :class:`~circuitry.Policy` field.

    .. versionadded:: 0.1.0
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None, service_name: str | None = None,
                 failure_threshold: int = 5, recovery_timeout: float = 60, enable_alerts: bool = True,
                 alert_callback: Callable[[dict[str, Any]], Any] | None = None,
                 expected_exception: Any = Exception, *, registry: Registry | None = None,
                 **policy: Any) -> None:
        if service_name is None:
            raise ConfigurationError("service_name is required")
        if not isinstance(enable_alerts, bool):
            raise ConfigurationError(f"enable_alerts must be a bool, got {enable_alerts!r}")
        if alert_callback is not None and not callable(alert_callback):
            raise ConfigurationError(f"alert_callback must be callable, got {alert_callback!r}")
        self.registry = registry if registry is not None else registry_for(db_path)
        self.service_name = service_name
        self.breaker: CircuitBreaker = self.registry.get(
            service_name, failure_threshold=failure_threshold, recovery_timeout=recovery_timeout,
            on=expected_exception, **policy)
        self.enable_alerts = enable_alerts
        self.alert_callback = alert_callback
        self.registry.set_alerts_enabled(service_name, enable_alerts)
        if alert_callback is not None and enable_alerts:
            self.registry.on_alert(alert_callback, service=service_name)

    def __repr__(self) -> str:
        return f"<DatabaseCircuitBreaker {self.service_name!r} {self.breaker.state.value}>"

    @property
    def state(self) -> CircuitState:
        return self.breaker.state

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` (sync or async) through the breaker; raises
        :class:`~circuitry.CircuitBreakerError` when the circuit refuses it."""
        result = self.breaker.call(fn, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def reset(self) -> None:
        """Close the circuit (shared: other processes see it within a poll)."""
        self.breaker.reset()

    def get_stats(self) -> dict[str, Any]:
        """Statistics: this process's counters, and the last hour as the database holds it (every
        process's calls, with this process's not yet written added in) — without waiting on the store."""
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
        except StoreError as exc:
            stats["store_error"] = str(exc)
            return stats
        if status is not None:
            h = status["last_hour"]
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
        db_path: The SQLite file (default: where the process-wide registry persists).
        enable_alerts: Raise alerts for the services.
        alert_callback: Receives every alert dict (sync or async).
        **defaults: Policy defaults for the breakers it creates (``failure_threshold=``, ...).

    .. versionadded:: 0.1.0
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None, enable_alerts: bool = True,
                 alert_callback: Callable[[dict[str, Any]], Any] | None = None, **defaults: Any) -> None:
        self.db_path = db_path
        self.registry = registry_for(db_path)
        self.enable_alerts = enable_alerts
        self.alert_callback = alert_callback
        self.defaults = defaults
        self._breakers: dict[str, DatabaseCircuitBreaker] = {}
        self._lock = threading.Lock()

    async def get_breaker(self, service_name: str, **policy: Any) -> DatabaseCircuitBreaker:
        """The breaker of ``service_name``, created on first use with the manager's defaults."""
        with self._lock:
            breaker = self._breakers.get(service_name)
            if breaker is None:
                breaker = self._breakers[service_name] = DatabaseCircuitBreaker(
                    service_name=service_name, enable_alerts=self.enable_alerts,
                    alert_callback=self.alert_callback, registry=self.registry, **{**self.defaults, **policy})
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
