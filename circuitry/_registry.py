"""Registries: one breaker per name.

A process has a default registry (what ``circuit("name")`` uses) and may build explicit
:class:`Registry` objects. Getting a name creates its breaker once; asking again with a *different*
policy is a :class:`~circuitry.RegistryConflictError`, never a silent overwrite.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from circuitry._clock import SYSTEM_CLOCK, Clock
from circuitry._core import CircuitBreaker, validate_name
from circuitry._policy import Policy
from circuitry.events import Dispatcher, Hook, StructlogHook
from circuitry.exceptions import ConfigurationError, RegistryConflictError

__all__ = ["Registry", "configure", "default_db_path", "default_registry", "set_default_registry"]


class Registry:
    """Named breakers sharing a clock and a set of hooks.

    Args:
        clock: The clock every breaker of this registry reads (inject a fake one in tests).
        hooks: Event hooks; default: one :class:`~circuitry.events.StructlogHook` logging transitions.
        rng: Random source for jitter.
        store: Where breakers persist: a :class:`~circuitry.store.SQLiteStore`, or a path to one.

    .. versionadded:: 0.1.0
    """

    def __init__(self, *, clock: Clock | None = None, hooks: Iterable[Hook] | None = None,
                 rng: random.Random | None = None, store: Any = None) -> None:
        self.clock = SYSTEM_CLOCK if clock is None else clock
        self.dispatcher = Dispatcher((StructlogHook(),) if hooks is None else hooks)
        self._rng = rng
        self._lock = threading.Lock()
        # The faces read this dict directly on every call: it must only ever be mutated in place.
        self.breakers: dict[str, CircuitBreaker] = {}
        self._declared: dict[str, Policy] = {}  # policies of decorated names not called yet
        self._attached: list[Any] = []
        if store is not None:
            if isinstance(store, str | os.PathLike):
                from circuitry.store import SQLiteStore

                store = SQLiteStore(store)
            if not hasattr(store, "adopt"):
                raise ConfigurationError(f"store must be a path or a store, got {store!r}")
            self.attach(store)

    # -- lookup -------------------------------------------------------------------------------------

    def get(self, name: str, policy: Policy | None = None, **policy_kwargs: Any) -> CircuitBreaker:
        """The breaker called ``name``, created on first use.

        With no policy, an existing breaker is returned whatever its policy (a new one gets the
        defaults). With a policy that differs from the existing breaker's, raises
        :class:`~circuitry.RegistryConflictError`.
        """
        if policy is not None and policy_kwargs:
            raise ConfigurationError("give a Policy or keyword arguments, not both")
        if policy is None and policy_kwargs:
            policy = Policy.from_kwargs(policy_kwargs)
        breaker = self.breakers.get(name)
        if breaker is None:
            validate_name(name)
            with self._lock:
                breaker = self.breakers.get(name)
                if breaker is None:
                    declared = self._declared.get(name)
                    if policy is not None and declared is not None and policy != declared:
                        raise RegistryConflictError(_conflict_message(name, declared, policy))
                    breaker = CircuitBreaker(name, policy or declared or Policy(), clock=self.clock,
                                             dispatcher=self.dispatcher, rng=self._rng)
                    for attachment in self._attached:
                        attachment.adopt(breaker)
                    self.breakers[name] = breaker
                    return breaker
        if policy is not None and policy != breaker.policy:
            raise RegistryConflictError(_conflict_message(name, breaker.policy, policy))
        return breaker

    def declare(self, name: str, policy: Policy) -> None:
        """Record the policy ``name`` will be created with, without creating it (no I/O: decorating a
        function at import time must not open a database). A different policy already declared or in
        use is a :class:`~circuitry.RegistryConflictError`."""
        validate_name(name)
        with self._lock:
            current = self.breakers.get(name)
            known = current.policy if current is not None else self._declared.get(name)
            if known is not None and known != policy:
                raise RegistryConflictError(_conflict_message(name, known, policy))
            if current is None:
                self._declared[name] = policy

    def reconfigure(self, name: str, policy: Policy | None = None, **policy_kwargs: Any) -> CircuitBreaker:
        """Give an existing (or new) breaker a new policy, explicitly. State is kept; counts restart."""
        if policy is None:
            policy = Policy.from_kwargs(policy_kwargs)
        with self._lock:
            self._declared.pop(name, None)
        breaker = self.get(name)
        breaker.reconfigure(policy)
        return breaker

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self.breakers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self.breakers.values()))

    def __len__(self) -> int:
        return len(self.breakers)

    def names(self) -> list[str]:
        return sorted(self.breakers)

    def remove(self, name: str) -> None:
        """Forget a breaker (its decorated functions recreate it with their policy on next call)."""
        with self._lock:
            self.breakers.pop(name, None)

    def clear(self) -> None:
        """Forget every breaker."""
        with self._lock:
            self.breakers.clear()

    def reset_all(self) -> None:
        """Close every circuit of this registry."""
        for breaker in self:
            breaker.reset()

    # -- hooks and attachments ----------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        self.dispatcher.add(hook)

    def remove_hook(self, hook: Hook) -> None:
        self.dispatcher.remove(hook)

    def attach(self, attachment: Any) -> None:
        """Attach something (a store) that must adopt every breaker, existing and future; if it is
        callable, it also becomes a hook (a store records failures and transitions that way)."""
        with self._lock:
            self._attached.append(attachment)
            existing = list(self.breakers.values())
        if callable(attachment):
            self.dispatcher.add(attachment)
        for breaker in existing:
            attachment.adopt(breaker)

    @property
    def store(self) -> Any:
        """The store attached to this registry, or ``None``."""
        return next((a for a in self._attached if hasattr(a, "adopt")), None)

    def detach(self, attachment: Any) -> None:
        with self._lock:
            if attachment in self._attached:
                self._attached.remove(attachment)
        if callable(attachment):
            self.dispatcher.remove(attachment)

    def __repr__(self) -> str:
        return f"<Registry {len(self.breakers)} breakers>"


def _conflict_message(name: str, old: Policy, new: Policy) -> str:
    a, b = old.as_dict(), new.as_dict()
    diffs = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k])
    return (f"circuit {name!r} is already registered with another policy ({diffs}); "
            "use Registry.reconfigure() to change it")


class _DefaultRef:
    """The faces hold this and read ``.breakers`` per call, so swapping the default registry (as
    :func:`circuitry.testing.isolated_registry` does) reaches functions decorated at import time."""

    __slots__ = ("breakers", "registry")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.breakers = registry.breakers


#: The environment variable naming the default registry's database (``:memory:`` or ``none``: no store).
DB_ENV = "CIRCUITRY_DB"
#: The default registry's database when the variable is unset, relative to the working directory at
#: first use (so every worker of one application, started in one directory, shares it).
DEFAULT_DB = "circuitry.db"


def default_db_path() -> str | None:
    """Where the default registry persists: ``$CIRCUITRY_DB``, else ``./circuitry.db``; ``None`` for none."""
    value = os.environ.get(DB_ENV)
    if value is None:
        return DEFAULT_DB
    if value.strip().lower() in ("", ":memory:", "memory", "none", "off"):
        return None
    return value


def _default_registry() -> Registry:
    path = default_db_path()
    if path is None:
        return Registry()
    from circuitry.store import SQLiteStore

    return Registry(store=SQLiteStore(path))  # opens nothing until the first breaker is created


DEFAULT = _DefaultRef(_default_registry())


def default_registry() -> Registry:
    """The process-wide registry that ``circuit(name)`` uses."""
    return DEFAULT.registry


def configure(*, db: str | os.PathLike[str] | None, **store_options: Any) -> Registry:
    """Set where the process-wide registry persists, and return it.

    Args:
        db: A SQLite file path, or ``None`` (or ``":memory:"``) to keep breakers in memory only.
        **store_options: Options of :class:`~circuitry.store.SQLiteStore` (``retention=``, ...).

    The previous store is flushed and closed; existing breakers are adopted by the new one (and take
    the state stored there, if any).

    .. versionadded:: 0.1.0
    """
    registry = DEFAULT.registry
    old = registry.store
    if old is not None:
        registry.detach(old)
        old.close()
    if db is not None and os.fspath(db) != ":memory:":
        from circuitry.store import SQLiteStore

        registry.attach(SQLiteStore(db, **store_options))
    elif store_options:
        raise ConfigurationError(f"store options given without a database: {sorted(store_options)}")
    return registry


def set_default_registry(registry: Registry) -> Registry:
    """Make ``registry`` the process-wide default; returns the previous one."""
    if not isinstance(registry, Registry):
        raise ConfigurationError(f"registry must be a Registry, got {registry!r}")
    previous = DEFAULT.registry
    DEFAULT.registry = registry
    DEFAULT.breakers = registry.breakers
    return previous
