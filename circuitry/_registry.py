"""Registries: one breaker per name.

A process has a default registry (what ``circuit("name")`` uses) and may build explicit
:class:`Registry` objects. Getting a name creates its breaker once; asking again with a *different*
policy is a :class:`~circuitry.RegistryConflictError`, never a silent overwrite. A lookup that gives no
policy means "that circuit, whatever its policy": if it made the breaker, the first policy given for
the name sets it.

(About 500 lines: the registry and the process-wide default one -- its store, ``configure()``, its life
across ``fork()`` -- share one lock and one way of making breakers. Where the default store is, and
opening it, are in :mod:`circuitry._defaultdb`.)
"""

from __future__ import annotations

import os
import random
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from circuitry._checks import check_clock, check_rng
from circuitry._clock import SYSTEM_CLOCK, Clock
from circuitry._core import CircuitBreaker, hold_breakers, release_breakers, validate_name
from circuitry._defaultdb import default_db_path, open_default_store
from circuitry._policy import Policy
from circuitry.events import Dispatcher, Hook
from circuitry.exceptions import CircuitNotFoundError, ConfigurationError, RegistryConflictError
from circuitry.instrumentation.logging import LoggingHook, log

if TYPE_CHECKING:
    from circuitry.analysis.recommend import Recommendation
    from circuitry.store.base import Store
    from circuitry.store.engine import SharedStore

__all__ = ["Registry", "configure", "default_db_path", "default_registry", "set_default_registry"]


#: Every live registry (for the fork handler at the end of this module) and the lock around that set.
_REGISTRIES: weakref.WeakSet[Registry] = weakref.WeakSet()
_REGISTRIES_LOCK = threading.Lock()


class Registry:
    """Named breakers sharing a clock and a set of hooks.

    Args:
        clock: The clock every breaker of this registry reads (inject a fake one in tests).
        hooks: Event hooks; default: one :class:`~circuitry.instrumentation.logging.LoggingHook` logging transitions.
        rng: Random source for jitter.
        store: Where breakers persist: a :class:`~circuitry.store.Store`, or a path or URL to open
            one at (:func:`circuitry.store.open_store`).

    Raises:
        ConfigurationError: An argument is invalid (a clock without ``monotonic()`` and ``time()``, an
            rng without ``random()``, hooks that are not a list of callables); the message names it.

    .. versionadded:: 0.1.0
    """

    def __init__(self, *, clock: Clock | None = None, hooks: Iterable[Hook] | None = None,
                 rng: random.Random | None = None, store: Store | str | os.PathLike[str] | None = None) -> None:
        check_clock(clock)
        check_rng(rng)
        if hooks is not None and (not isinstance(hooks, Iterable) or isinstance(hooks, str | bytes)):
            raise ConfigurationError(f"hooks must be a list of hooks, got {hooks!r}")
        self.clock = SYSTEM_CLOCK if clock is None else clock
        self.dispatcher = Dispatcher((LoggingHook(),) if hooks is None else hooks)
        self._rng = rng
        self._lock = threading.Lock()
        with _REGISTRIES_LOCK:
            _REGISTRIES.add(self)
        # The faces read this dict directly on every call: it must only ever be mutated in place.
        self.breakers: dict[str, CircuitBreaker] = {}
        self._declared: dict[str, Policy] = {}  # policies of decorated names not called yet
        self._unset: set[str] = set()  # breakers made by a lookup without a policy: the first one given sets it
        self._inherited: set[str] = set()  # declared by the registry this one replaced as the default
        self._store: Store | None = None
        # A store to open when the first breaker is made (the default registry's): importing
        # circuitry, or decorating a function, opens nothing.
        self._store_factory: Callable[[], Store | None] | None = None
        if store is not None:
            if isinstance(store, str | os.PathLike):
                from circuitry.store import open_store

                store = open_store(store)
            self.attach(store)

    # -- lookup -------------------------------------------------------------------------------------

    def get(self, name: str, policy: Policy | None = None, **policy_kwargs: Any) -> CircuitBreaker:
        """The breaker called ``name`` — **created if there is none** (a misspelt name gives a new
        breaker, silently): to look up without creating, use ``registry[name]``, which raises
        :class:`~circuitry.CircuitNotFoundError` naming the known circuits, or ``name in registry``.

        With no policy, an existing breaker is returned whatever its policy (a new one gets the policy
        its decorators declared, else the defaults -- until a policy is given for the name: the first
        one given is then the breaker's, its state and statistics kept). With a policy that differs
        from one given before, raises :class:`~circuitry.RegistryConflictError`.
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
                    if policy is not None and declared is not None and not policy.same_as(declared):
                        if name not in self._inherited:
                            raise RegistryConflictError(_conflict_message(name, declared, policy))
                        declared = None  # a declaration of the registry replaced: this one's own wins
                    self._inherited.discard(name)
                    # What a policy given again is held against is the policy the application gave (by a call,
                    # a decorator or reconfigure()), kept on the breaker: its own may differ (an adjustment,
                    # apply_recommendation()). A breaker made by a lookup without one has none: the first
                    # policy given sets it.
                    given = policy or declared
                    if given is None:
                        self._unset.add(name)
                    breaker = CircuitBreaker(name, given or Policy(), clock=self.clock,
                                             dispatcher=self.dispatcher, rng=self._rng)
                    store = self._store if self._store_factory is None else self._open_pending_store()
                    if store is not None:
                        _adopt(store, breaker)
                    self.breakers[name] = breaker
                    return breaker
        if policy is not None and policy is not breaker.given_policy:
            with self._lock:
                self._settle(name, breaker, policy)
        return breaker

    def given_policy(self, name: str) -> Policy | None:
        """The policy the application gave for ``name`` (``None``: none yet). The breaker's own
        (``registry[name].policy``) differs from it after an adjustment."""
        breaker = self.breakers.get(name)
        return None if breaker is None or name in self._unset else breaker.given_policy

    def declare(self, name: str, policy: Policy) -> None:
        """Record the policy ``name`` will be created with, without creating it (no I/O: decorating a
        function at import time must not open a database). A different policy already declared or in
        use is a :class:`~circuitry.RegistryConflictError` (unless the breaker was made by a lookup that
        gave none: then this policy becomes its policy)."""
        validate_name(name)
        with self._lock:
            current = self.breakers.get(name)
            if current is not None:
                self._settle(name, current, policy)
                return
            known = self._declared.get(name)
            if known is not None and not known.same_as(policy) and name not in self._inherited:
                raise RegistryConflictError(_conflict_message(name, known, policy))
            self._declared[name] = policy
            self._inherited.discard(name)

    def _settle(self, name: str, breaker: CircuitBreaker, policy: Policy) -> None:
        """(Lock held.) ``policy`` is given for the existing ``breaker``: the first policy given for a
        breaker a lookup made without one becomes its policy (its state and statistics kept); another
        policy than the one given before is a conflict -- held against what was given, not against the
        breaker's own, which an adjustment may have changed. The same policy, with a reloaded module's
        classes (``importlib.reload``), becomes the breaker's too, its adjusted settings kept: else the
        breaker would go on testing exceptions against the old classes, and count none of the new ones."""
        given = breaker.given_policy
        unset = name in self._unset
        if not unset and not policy.same_as(given):
            raise RegistryConflictError(_conflict_message(name, given, policy))
        self._unset.discard(name)
        breaker.given_policy = policy
        if unset:
            breaker.reconfigure(policy)
        elif not policy.same_as(given, by_name=False):
            current = breaker.policy
            breaker.reconfigure(policy if current is given else
                                replace(policy, **{f: getattr(current, f) for f in _ADJUSTABLE}))

    def _inherit(self, declared: dict[str, Policy]) -> None:
        """Take the declarations of decorated circuits from the previous default registry, as defaults a
        declaration made here replaces (an isolated registry stays free to define a name its own way)."""
        with self._lock:
            for name, policy in declared.items():
                if name not in self.breakers and name not in self._declared:
                    self._declared[name] = policy
                    self._inherited.add(name)

    def reconfigure(self, name: str, policy: Policy | None = None, **policy_kwargs: Any) -> CircuitBreaker:
        """Give an existing (or new) breaker a new policy, explicitly. State is kept; counts restart."""
        if policy is None:
            policy = Policy.from_kwargs(policy_kwargs)
        with self._lock:
            self._declared.pop(name, None)
        breaker = self.get(name)
        with self._lock:
            self._unset.discard(name)
            breaker.given_policy = policy
        breaker.reconfigure(policy)
        return breaker

    def __getitem__(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``, which must exist (``get`` creates it instead).

        Raises:
            CircuitNotFoundError: No breaker has that name (a ``KeyError``); the message lists the
                known names and the closest ones.
        """
        try:
            return self.breakers[name]
        except KeyError:
            raise CircuitNotFoundError(name, self.names(), sorted(self._declared)) from None

    def __contains__(self, name: object) -> bool:
        return name in self.breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self.breakers.values()))

    def __len__(self) -> int:
        return len(self.breakers)

    def names(self) -> list[str]:
        return sorted(self.breakers)

    def remove(self, name: str) -> None:
        """Forget a breaker and any policy declared for its name (its decorated functions recreate it
        with their policy on their next call; the name may be declared again with another policy)."""
        with self._lock:
            breaker = self.breakers.pop(name, None)
            self._declared.pop(name, None)
            self._unset.discard(name)
            store = self._store
        if breaker is not None and store is not None:
            store.forget(breaker)

    def clear(self) -> None:
        """Forget every breaker and every declared policy."""
        with self._lock:
            dropped = list(self.breakers.values())
            self.breakers.clear()
            self._declared.clear()
            self._unset.clear()
            store = self._store
        if store is not None:
            for breaker in dropped:
                store.forget(breaker)

    def reset_all(self) -> None:
        """Close every circuit of this registry."""
        for breaker in self:
            breaker.reset()

    # -- hooks and attachments ----------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        self.dispatcher.add(hook)

    def remove_hook(self, hook: Hook) -> None:
        self.dispatcher.remove(hook)

    def attach(self, store: Store) -> None:
        """Persist every breaker of this registry, existing and future, through ``store``.

        Raises:
            ConfigurationError: ``store`` is not a store, or another store is attached already.
        """
        from circuitry.store.base import Store

        if not isinstance(store, Store):
            raise ConfigurationError(f"store must be a path, a URL or a store, got {store!r}")
        with self._lock:
            if self._store is not None and self._store is not store:
                raise ConfigurationError(f"{self!r} already persists to {self._store!r}: detach it first")
            self._store = store
            self._store_factory = None
            existing = list(self.breakers.values())
        _start_runners(store)
        for breaker in existing:
            _adopt(store, breaker)

    @property
    def store(self) -> Store | None:
        """The store this registry persists to, or ``None`` (the default registry opens its store here
        if no breaker has done so yet)."""
        if self._store_factory is not None:
            with self._lock:
                return self._open_pending_store()
        return self._store

    def detach(self, store: Store) -> None:
        """Stop persisting through ``store`` (it is not closed)."""
        with self._lock:
            if self._store is not store:
                return
            self._store = None
            existing = list(self.breakers.values())
        for breaker in existing:
            store.forget(breaker)

    # -- what the store knows, through the registry (faces reach the store only this way) -------------

    def _sharing(self) -> SharedStore | None:
        from circuitry.store.engine import SharedStore

        store = self.store
        return store if isinstance(store, SharedStore) else None

    def status(self, name: str) -> dict[str, Any] | None:
        """What the store knows of circuit ``name`` — state, the last hour's counts (this process's
        calls not yet written included), open time, alerts, pattern — or ``None`` without a store (or
        for a circuit the store has never seen). Never waits on the writer.

        Raises:
            StoreError: The database cannot be read.
        """
        store = self._sharing()
        return None if store is None else store.circuit(name)

    def needs_attention(self) -> list[dict[str, Any]] | None:
        """Circuits that are not closed, have unacknowledged alerts, or failed most of their calls in the
        last hour — every circuit in the database, not only this process's — most urgent first; ``None``
        without a store. Raises :class:`~circuitry.StoreError` if the database cannot be read."""
        store = self._sharing()
        return None if store is None else store.needs_attention()

    def recommendation(self, name: str) -> Recommendation | None:
        """Classify circuit ``name``'s recent history now and recommend settings (nothing is written);
        ``None`` without a store. Raises :class:`~circuitry.StoreError` if it has no history."""
        store = self._sharing()
        if store is None:
            return None
        from circuitry.runners.analyst import analyse_now

        return analyse_now(store, name).recommendation

    def apply_recommendation(self, name: str) -> bool:
        """Give circuit ``name`` the recommended threshold, timeout and backoff now (one explicit call);
        True if its policy changed. False without a store."""
        rec = self.recommendation(name)
        if rec is None:
            return False
        from circuitry.runners.adjuster import apply

        return apply(self.get(name), rec)

    def on_alert(self, callback: Callable[[dict[str, Any]], Any], *, service: str | None = None,
                 timeout: float = 2.0) -> bool:
        """Deliver new alerts (of ``service``, or all) to ``callback`` on threads of its own; False
        without a store (there are no alerts then)."""
        store = self._sharing()
        if store is None:
            return False
        store.add_alert_callback(callback, service=service, timeout=timeout)
        return True

    def set_alerts_enabled(self, service: str, enabled: bool) -> None:
        """Raise alerts for ``service`` or not (a store's setting; nothing without a store)."""
        store = self._sharing()
        if store is not None:
            store.set_alerts_enabled(service, enabled)

    def prepare_store(self) -> bool:
        """Create or upgrade the store's tables now, so the application's own SQL can read them at once
        (circuitry itself never needs this). True if done; False without a store or if it failed (logged)."""
        store = self._sharing()
        return store is not None and store.prepare()

    def _open_pending_store(self) -> Store | None:
        """(Lock held.) Open the store the default registry was promised, once."""
        factory, self._store_factory = self._store_factory, None
        store = None if factory is None else factory()
        if store is not None:
            self._store = store
            _start_runners(store)
        return self._store

    def __repr__(self) -> str:
        return f"<Registry {len(self.breakers)} breakers>"


def _start_runners(store: Store) -> None:
    from circuitry.runners import attach

    attach(store)


#: The settings an adjustment changes (circuitry.runners.adjuster): kept when a reload swaps the policy's classes.
_ADJUSTABLE = ("failure_threshold", "recovery_timeout", "backoff_factor", "max_recovery_timeout", "jitter")


def _conflict_message(name: str, old: Policy, new: Policy) -> str:
    return (f"circuit {name!r} is already registered with another policy ({', '.join(old.differences(new))}); "
            "use Registry.reconfigure() to change it")


class _DefaultRef:
    """The faces hold this and read ``.breakers`` per call, so swapping the default registry (as
    :func:`circuitry.testing.isolated_registry` does) reaches functions decorated at import time."""

    __slots__ = ("breakers", "declared", "isolated", "registry")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.breakers = registry.breakers
        #: The policies of circuits made for the default registry (decorators, ``circuit(name, ...)``):
        #: declared again in every registry swapped in, so a name looked up there before its decorated
        #: function first runs gets the decorator's policy, as it would in the original registry.
        self.declared: dict[str, Policy] = {}
        #: Inside :func:`circuitry.testing.isolated_registry` (a count: they nest): circuits made there
        #: stay there (one test's decorators do not reach the next test's registry).
        self.isolated = 0


def _default_registry() -> Registry:
    registry = Registry()
    registry._store_factory = open_default_store  # read $CIRCUITRY_DB and open on first use
    return registry


DEFAULT = _DefaultRef(_default_registry())


def default_registry() -> Registry:
    """The process-wide registry that ``circuit(name)`` uses."""
    return DEFAULT.registry


#: ``configure()`` without ``db=`` (a mistyped ``dbb=`` lands in the store options): said with a hint.
_REQUIRED: Any = object()


def configure(*, db: str | os.PathLike[str] | None = _REQUIRED, **store_options: Any) -> Registry:
    """Set where the process-wide registry persists, and return it.

    Args:
        db: Required: a SQLite file path, or ``None`` (or ``":memory:"``) to keep breakers in memory only.
        **store_options: Options of :class:`~circuitry.store.SQLiteStore` (``retention=``, ...).

    The previous store is flushed and closed; existing breakers are adopted by the new one (and take
    the state stored there, if any).

    .. versionadded:: 0.1.0
    """
    if db is _REQUIRED:
        import difflib

        meant = [n for n in store_options if n in ("db_path", "path", "database", "url", "file", "store")
                 or difflib.get_close_matches(n.lower(), ["db"], n=1, cutoff=0.75)]
        raise ConfigurationError("configure() needs db= (a SQLite file path, a database URL, ':memory:' or None)"
                                 + "".join(f"; {n}: did you mean db?" for n in meant))
    if db is not None and (not isinstance(db, str | os.PathLike) or not isinstance(os.fspath(db), str)):
        raise ConfigurationError(f"db must be a file path, a database URL, ':memory:' or None, got {db!r}")
    if db is not None and not os.fspath(db).strip():
        raise ConfigurationError(f"db must name a database, got {db!r} (None keeps breakers in memory)")
    new = None
    if db is not None and os.fspath(db) != ":memory:":
        from circuitry.store import open_store

        new = open_store(db, **store_options)  # invalid options fail here, before the current store is closed
    elif store_options:
        raise ConfigurationError(f"store options given without a database: {sorted(store_options)}")
    registry = DEFAULT.registry
    registry._store_factory = None
    old = registry._store
    if old is not None:
        registry.detach(old)
        old.close()
    if new is not None:
        registry.attach(new)
    return registry


def set_default_registry(registry: Registry) -> Registry:
    """Make ``registry`` the process-wide default; returns the previous one."""
    if not isinstance(registry, Registry):
        raise ConfigurationError(f"registry must be a Registry, got {registry!r}")
    registry._inherit(dict(DEFAULT.declared))
    previous = DEFAULT.registry
    DEFAULT.registry = registry
    DEFAULT.breakers = registry.breakers
    return previous


# -- fork() ----------------------------------------------------------------------------------------------

def _adopt(store: Store, breaker: CircuitBreaker) -> None:
    """``store.adopt(breaker)`` on the caller's thread, where nothing a store reads (a stored row written
    by hand, a bug) may raise into the call that made the breaker: it runs from memory, and it is said."""
    try:
        store.adopt(breaker)
    except Exception as exc:
        log("error", "circuitry.store_bug", circuit=breaker.name, error_type=type(exc).__qualname__,
            error_message=str(exc)[:500], note="the circuit runs from memory in this process")

# A registry's lock is held while a breaker is made, and while its store adopts it (which may run transition
# hooks, and wait a moment for the store's first read): a fork in that moment left the child a lock nobody
# would release, and the child's first call to that circuit hung. It cannot be taken before the fork as the
# breakers' locks are (circuitry._core.hold_breakers): a hook run under it may wait for the store's lock,
# which the store's own fork handler holds by then. So the child makes every registry's lock anew (the
# breakers dict is only changed in place, a step at a time: a breaker half made there is made again).


def _before_fork() -> None:
    hold_breakers()


def _after_fork_in_parent() -> None:
    release_breakers()


def _after_fork_in_child() -> None:
    global _REGISTRIES_LOCK
    release_breakers(child=True)
    _REGISTRIES_LOCK = threading.Lock()
    for registry in list(_REGISTRIES):
        registry._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
