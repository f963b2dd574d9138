"""The states a circuit can be in."""

from __future__ import annotations

import enum

__all__ = ["CircuitState"]


class CircuitState(str, enum.Enum):
    """A circuit's state. The values are what the store writes to ``current_state``.

    ``CLOSED``, ``OPEN`` and ``HALF_OPEN`` are the automatic states; ``FORCED_OPEN`` (refuse every call
    until reset) and ``DISABLED`` (let every call through, change nothing) are set by hand.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value
