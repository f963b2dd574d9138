"""Runners: threads that work beside a store — the analyst (patterns, recommendations, alerts) and
alert delivery. A registry starts them when a store is attached to it."""

from __future__ import annotations

from typing import Any

__all__ = ["attach"]


def attach(store: Any) -> None:
    """Give ``store`` its runners (once), if it is a sharing store."""
    from circuitry.store.engine import SharedStore

    if isinstance(store, SharedStore):
        from circuitry.runners.analyst import Analyst

        Analyst.attach(store)
