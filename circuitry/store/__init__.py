"""Stores: where breakers persist their state and history, and how processes share them.

:class:`SQLiteStore` is the default: one file, shared by every process of a host.
"""

from __future__ import annotations

from circuitry.store._sqlite import SQLiteStore, StoreHealth

__all__ = ["SQLiteStore", "StoreHealth"]
