"""Exceptions raised by circuitry.

The tree::

    Exception
    ├── CircuitBreakerError          (the database API's name; catch this to catch every rejection)
    │   └── CircuitOpenError         (a call was refused: the circuit is open or its probes are taken)
    ├── StoreError                   (raised by explicit store operations, never into a protected call)
    │   └── SchemaVersionError       (the database was written by a newer circuitry)
    ├── KeyError
    │   └── CircuitNotFoundError     (``registry[name]`` for a name no breaker has; says the close ones)
    └── ValueError
        └── ConfigurationError       (an argument is invalid; raised at construction, names the argument)
            └── RegistryConflictError  (a name is already registered with another policy)

A rejection is a *fresh* :class:`CircuitOpenError` every time: it carries a snapshot of the breaker
(``name``, ``state``, ``opened_at``, ``retry_after``) and nothing else, so it keeps no frames or
breaker internals alive however many rejections a program handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "CircuitBreakerError",
    "CircuitNotFoundError",
    "CircuitOpenError",
    "ConfigurationError",
    "RegistryConflictError",
    "SchemaVersionError",
    "StoreError",
]


class ConfigurationError(ValueError):
    """An invalid argument, raised at construction; the message names the argument."""


class RegistryConflictError(ConfigurationError):
    """A breaker name is already registered with a different policy.

    Registries never overwrite by name: reconfigure explicitly with :meth:`Registry.reconfigure`. A
    reference that gives no policy (``circuit("pay").breaker``) fixes none: the first policy given for
    the name after it is the breaker's, and only a policy contradicting one given before is a conflict.
    """


class CircuitNotFoundError(KeyError):
    """``registry[name]`` for a name no breaker of that registry has.

    Attributes:
        name: The name asked for.
        known: The names the registry has.

    .. versionadded:: 0.1.0
    """

    def __init__(self, name: str, known: list[str], declared: Sequence[str] = ()) -> None:
        super().__init__(name)
        self.name = name
        self.known = known
        self._declared = [n for n in declared if n not in known]

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (process pools): the arguments, not KeyError's
        return (type(self), (self.name, self.known, self._declared))

    def __str__(self) -> str:
        import difflib

        text = f"no circuit named {self.name!r} in this registry"
        if not isinstance(self.name, str):
            return text
        if self.name in self._declared:  # decorated, never called: that is the whole story
            return (f"{text} yet: {self.name!r} is declared (decorated) but not yet called, and circuits are "
                    "created on their first call; `name in registry` says whether it exists")
        close = difflib.get_close_matches(self.name, [*self.known, *self._declared], n=3, cutoff=0.6)
        if close:
            text += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        if self.known:
            shown = ", ".join(repr(n) for n in self.known[:20])
            text += ("." if not close else "") + f" Known: {shown}" + (
                f" and {len(self.known) - 20} more" if len(self.known) > 20 else "")
        if self._declared:
            text += (". Circuits are created on their first call: declared but not yet called: "
                     + ", ".join(repr(n) for n in self._declared[:20]))
        return text


class StoreError(Exception):
    """An explicit store operation failed (opening, migrating, querying).

    Protected calls never see this: while the store is failing, breakers go on from memory.
    """


class SchemaVersionError(StoreError):
    """The database's schema is newer than this circuitry understands; upgrade circuitry."""


class CircuitBreakerError(Exception):
    """Base class of the errors a circuit raises instead of calling the protected function."""


class CircuitOpenError(CircuitBreakerError):
    """A call was refused because the circuit is open (or half-open with every probe taken).

    The attributes are a snapshot taken at the moment of rejection:

    Attributes:
        name: The breaker's name.
        state: The state's value at rejection (``"open"``, ``"half_open"`` or ``"forced_open"``).
        opened_at: Wall-clock time (seconds since the epoch) when the circuit last opened, or ``None``.
        retry_after: Seconds until the circuit may admit a call: the rest of the open period; while
            half-open with every probe taken, the time until the earliest probe's lease runs out (an
            upper bound: a probe may finish sooner); ``None`` when forced open.
    """

    # The snapshot lives in ``args`` (set by the C-level ``BaseException.__new__``), so building one
    # costs no Python-level ``__init__``: rejections are the hot path of an outage.
    __slots__ = ()

    @property
    def name(self) -> str:
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def state(self) -> str:
        return self.args[1]  # type: ignore[no-any-return]

    @property
    def opened_at(self) -> float | None:
        return self.args[2]  # type: ignore[no-any-return]

    @property
    def retry_after(self) -> float | None:
        return self.args[3]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        if len(self.args) != 4:
            return super().__str__()
        name, state, _, retry_after = self.args
        if retry_after is None:
            return f"circuit {name!r} is {state}; calls are refused until it is reset"
        return f"circuit {name!r} is {state}; retry after {retry_after:.3f}s"

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[object, ...]]:
        return (type(self), self.args)
