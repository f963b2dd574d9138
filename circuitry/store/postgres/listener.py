"""The listener: one thread and one connection per store that ``LISTEN`` on the channel the state
trigger announces changes on, note which circuits changed, and wake the writer at once.

Ordering that makes it lossless: ``LISTEN`` first, then ask for a catch-up read — so a change is either
announced to this connection or committed before the read that follows. While the connection is down
the writer polls (see :meth:`PostgresBackend.changed_states`); reconnection backs off up to two seconds.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from circuitry.instrumentation.logging import log

if TYPE_CHECKING:
    from circuitry.store.postgres.backend import PostgresBackend

__all__ = ["CHANNEL", "Listener"]

#: The channel ``circuitry_state_changed()`` notifies (payload: the circuit's name).
CHANNEL: Final = "circuitry_states"
_WAIT: Final = 0.25  # seconds one wait for notifications lasts (how soon a stop is noticed)


class Listener:
    """Notifications of changed circuits for one backend (see the module docstring)."""

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend
        self.wake: Callable[[], None] = lambda: None
        self._init()

    def _init(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self._catch_up = False
        self.listening = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._pid = os.getpid()
        self.reconnects = 0

    def ensure(self) -> None:
        """Start the thread if it is not running (first use)."""
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"circuitry-listen:{self._backend.location[-40:]}")
            self._thread.start()

    def take(self) -> tuple[set[str], bool, bool]:
        """``(changed names, catch-up read due, listening)``, clearing the first two."""
        with self._lock:
            names, self._names = self._names, set()
            catch_up, self._catch_up = self._catch_up, False
            return names, catch_up, self.listening

    def stop(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2 * _WAIT + 0.5)

    def after_fork_in_child(self) -> None:
        """The thread is gone in the child; its connection is the parent's session: cut it off."""
        from circuitry.store.postgres.backend import cut_off

        if self._conn is not None:
            cut_off(self._conn)
        self._init()

    def _run(self) -> None:
        backoff = 0.05
        failures = 0
        while not self._stopping.is_set():
            try:
                conn = self._backend.connect_raw("listener", lock_timeout=1.0)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    self._note_down(exc)
                self._stopping.wait(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            self._conn = conn
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                with self._lock:
                    self.listening = True
                    self._catch_up = True  # anything committed before LISTEN is in the read that follows
                if failures:
                    self.reconnects += 1
                    log("info", "circuitry.store_listening", location=self._backend.location,
                        note="notifications resumed; the writer reads every circuit once to catch up")
                failures = 0
                backoff = 0.05
                self.wake()
                while not self._stopping.is_set():
                    got = False
                    for note in conn.notifies(timeout=_WAIT):
                        with self._lock:
                            self._names.add(note.payload)
                        got = True
                        self.wake()
                    if got:
                        self.wake()
            except Exception as exc:
                with self._lock:
                    self.listening = False
                failures += 1
                if failures == 1:
                    self._note_down(exc)
                self._stopping.wait(backoff)
                backoff = min(2.0, backoff * 2)
            finally:
                with self._lock:
                    self.listening = False
                if os.getpid() == self._pid:
                    with contextlib.suppress(Exception):
                        conn.close()
                self._conn = None

    def _note_down(self, exc: BaseException) -> None:
        log("info", "circuitry.store_not_listening", location=self._backend.location,
            error_type=type(exc).__qualname__, error_message=self._backend.mask(str(exc))[:300],
            note="other hosts' changes are polled for until notifications resume")
