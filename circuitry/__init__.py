"""circuitry: circuit breakers for Python that remember.

.. code-block:: python

    from circuitry import circuit, CircuitOpenError

    @circuit("payment_api", failure_threshold=5, recovery_timeout=60, on=(TimeoutError, ConnectionError))
    async def charge(card, amount): ...
"""

from __future__ import annotations

from typing import Any

from circuitry._clock import Clock, SystemClock
from circuitry._core import BreakerStats, CircuitBreaker, Permit
from circuitry._faces import Circuit, Protected, circuit
from circuitry._policy import Policy
from circuitry._registry import Registry, configure, default_registry, set_default_registry
from circuitry._state import CircuitState
from circuitry.compat import DatabaseCircuitBreaker, MultiServiceDatabaseCircuitBreaker
from circuitry.events import Event, EventKind, Hook, StructlogHook
from circuitry.exceptions import (
    CircuitBreakerError,
    CircuitNotFoundError,
    CircuitOpenError,
    ConfigurationError,
    RegistryConflictError,
    SchemaVersionError,
    StoreError,
)

__all__ = [
    "BreakerStats",
    "Circuit",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitNotFoundError",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "ConfigurationError",
    "DatabaseCircuitBreaker",
    "Event",
    "EventKind",
    "Hook",
    "MultiServiceDatabaseCircuitBreaker",
    "Permit",
    "Policy",
    "Protected",
    "Registry",
    "RegistryConflictError",
    "SchemaVersionError",
    "StoreError",
    "StructlogHook",
    "SystemClock",
    "circuit",
    "configure",
    "default_registry",
    "set_default_registry",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from circuitry._meta import version

        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
