"""A store's life in its process: the runners beside it, interpreter exit, and ``fork()``.

Exit never waits long on the database: each store flushes for at most its ``exit_timeout`` and says
what was left. Before ``fork()`` each store lets its transaction in flight finish and closes every
connection (SQLite keeps lock bookkeeping per process: a child must not inherit it); the child starts
over, counting from the fork, and its ``multiprocessing`` exit path flushes it too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from circuitry.events import Event
    from circuitry.store.engine import SharedStore

__all__ = ["Runner", "track", "untrack"]


class Runner(Protocol):
    """Something that works beside a store's writer (the analyst): told about shared transitions,
    started with the writer, held across ``fork()``, stopped with the store."""

    def transitioned(self, event: Event) -> None:
        """A transition this process wrote to the shared history (after its transaction commits)."""
        ...

    def start(self) -> None: ...

    def hold(self) -> None:
        """Before ``fork()``: finish the I/O in flight, close connections, keep them closed."""
        ...

    def release(self) -> None:
        """After ``fork()``, in the parent: connections may open again."""
        ...

    def drop_idle(self) -> None:
        """Close the connections not in use now (they reopen on their next use)."""
        ...

    def close(self, timeout: float = 2.0) -> None: ...

    def after_fork(self) -> None: ...


_STORES: weakref.WeakSet[SharedStore] = weakref.WeakSet()
_finalizer_registered = False


def track(store: SharedStore) -> None:
    """Flush ``store`` at exit and carry it across ``fork()``. A store made inside a ``multiprocessing``
    child gets the child's exit flush too: a forked child leaves by ``os._exit`` (no ``atexit``), and
    the flush registered after ``fork()`` covers only the stores carried across it."""
    _STORES.add(store)
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None:
        _finalize_in_child()


def untrack(store: SharedStore) -> None:
    """``store`` is closed: nothing to flush at exit."""
    _STORES.discard(store)


def _close_all_at_exit() -> None:
    """At interpreter exit, flush what each open store holds — briefly: exit must stay prompt (a store
    that cannot write in ``exit_timeout`` says how many rows it leaves, see ``SharedStore.close``)."""
    for store in list(_STORES):
        with contextlib.suppress(Exception):
            store._close(store.exit_timeout, "exit")


class _Anchor:
    """Keeps the after-fork registration below alive (multiprocessing holds its objects weakly)."""


_ANCHOR = _Anchor()


def _finalize_in_child() -> None:
    """A forked ``multiprocessing`` child leaves by ``os._exit`` without running ``atexit``; its own exit
    path runs ``multiprocessing.util`` finalizers, so the flush is registered there. (A ``Process``
    child clears the finalizers inherited from its parent, then runs the after-fork hooks: the
    registration is made from one of those, so it survives.)"""
    global _finalizer_registered
    if _finalizer_registered or "multiprocessing" not in sys.modules:
        return
    _finalizer_registered = True
    with contextlib.suppress(Exception):
        import multiprocessing.util as mp_util

        def register(_: object) -> None:
            mp_util.Finalize(None, _close_all_at_exit, exitpriority=100)

        register(_ANCHOR)  # a child of os.fork() that leaves through multiprocessing's exit path
        mp_util.register_after_fork(_ANCHOR, register)  # a multiprocessing Process child


def _before_fork() -> None:
    for store in list(_STORES):
        store._before_fork()


def _after_fork_in_parent() -> None:
    for store in list(_STORES):
        store._after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _finalizer_registered
    _finalizer_registered = False
    stores = list(_STORES)
    for store in stores:
        store._after_fork_in_child()
    if any(store.links() for store in stores):
        _finalize_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
