"""Alert delivery: hands alert dicts to a user's callback (sync or async) on threads of its own.

:class:`CallbackDeliverer` runs each callback on daemon threads with a time limit per callback, a
bounded queue, and counters for everything that went wrong. Enqueueing never waits for the callback,
and a callback that raises, hangs or calls back into a breaker never affects the protected call that
caused the alert.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from circuitry._checks import check_int, check_number
from circuitry.analysis.alerts import Alert
from circuitry.exceptions import ConfigurationError
from circuitry.instrumentation.logging import log

__all__ = ["CallbackDeliverer"]

_MAX_SECONDS: Final = 365.0 * 24 * 3600
_MAX_COUNT: Final = 1_000_000_000


def _log(level: str, event: str, **fields: Any) -> None:
    log(level, event, **fields)


class _Job:
    """One callback invocation; its outcome is settled exactly once, by the runner or the worker."""

    __slots__ = ("alert", "outcome")

    def __init__(self, alert: dict[str, Any]) -> None:
        self.alert = alert
        self.outcome: str | None = None  # "delivered", "failed" or "timed_out"


_STOP: Final = object()


@dataclass
class _Counters:
    delivered: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0


class CallbackDeliverer:
    """Delivers alert dicts to a callback without ever blocking or breaking the caller.

    :meth:`deliver` only enqueues (O(1)). A daemon worker thread takes alerts in order and runs the
    callback on a small pool of daemon *runner* threads, waiting at most ``timeout`` seconds for each:

    * a sync callback is called on a runner; an async one (or any callback returning an awaitable) is
      awaited on an event loop owned by that runner thread, under ``asyncio.wait_for(..., timeout)``;
    * a callback still running after ``timeout`` is abandoned and counted in :attr:`timed_out`; its runner
      stays busy until the callback returns. There are at most ``max_stuck`` runners: when all are stuck,
      delivery waits for one to come back while the queue absorbs new alerts (then drops them, counted);
    * a callback that raises is logged (``circuitry.alert_callback_failed``) and counted in :attr:`failed`;
    * an alert arriving at a full queue (or after :meth:`close`) is dropped, counted in :attr:`dropped`,
      and logged once per episode (``circuitry.alerts_dropped``).

    Callbacks run on other threads, after the caller's locks are released, so a callback may call back
    into a breaker (``stats()``, ``reset()``) without deadlock. All threads are daemon threads: an
    unclosed deliverer never delays interpreter exit.

    Args:
        callback: ``callback(alert_dict)``, sync or async; its return value is ignored.
        timeout: Seconds a callback may run (> 0).
        max_queue: Alerts that may wait for delivery (>= 1).
        max_stuck: Runner threads, hence callbacks that may hang at once without stalling delivery (>= 1).

    Raises:
        ConfigurationError: An argument is invalid; the message names it.

    .. versionadded:: 0.1.0
    """

    def __init__(self, callback: Callable[[dict[str, Any]], Any], *, timeout: float = 2.0,
                 max_queue: int = 1000, max_stuck: int = 4) -> None:
        if not callable(callback):
            raise ConfigurationError(f"callback must be callable, got {callback!r}")
        self._callback = callback
        self._timeout = check_number("timeout", timeout, lo=0.0, hi=_MAX_SECONDS)
        self._max_queue = check_int("max_queue", max_queue, 1, _MAX_COUNT)
        self._max_runners = check_int("max_stuck", max_stuck, 1, 1000)
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[dict[str, Any]] = deque()
        self._counters = _Counters()
        self._dropping = False  # inside a drop episode (logged once)
        self._closing = False
        self._deadline: float | None = None
        self._worker: threading.Thread | None = None
        self._jobs: deque[object] = deque()  # handed from the worker to idle runners
        self._runners = 0
        self._busy = 0  # runners given a job and not yet back (stuck ones included)
        self._idle_runners = threading.Condition(threading.Lock())

    # -- counters -----------------------------------------------------------------------------------

    @property
    def delivered(self) -> int:
        """Callbacks that returned normally."""
        return self._counters.delivered

    @property
    def failed(self) -> int:
        """Callbacks that raised."""
        return self._counters.failed

    @property
    def timed_out(self) -> int:
        """Callbacks abandoned after ``timeout`` seconds."""
        return self._counters.timed_out

    @property
    def dropped(self) -> int:
        """Alerts never handed to the callback: queue full, deliverer closed, or left at close."""
        return self._counters.dropped

    @property
    def pending(self) -> int:
        """Alerts waiting in the queue."""
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Runner threads currently busy (including those stuck in timed-out callbacks)."""
        return self._busy

    def __repr__(self) -> str:
        c = self._counters
        return (f"<CallbackDeliverer delivered={c.delivered} failed={c.failed} timed_out={c.timed_out} "
                f"dropped={c.dropped} pending={len(self._queue)}>")

    # -- enqueueing ---------------------------------------------------------------------------------

    def deliver(self, alert: Alert | Mapping[str, Any]) -> bool:
        """Queue one alert for the callback; never waits for it, never raises for a full queue.

        Args:
            alert: An :class:`Alert` (sent as :meth:`Alert.as_dict`) or an alert dict (sent as a shallow
                copy).

        Returns:
            Whether it was queued (``False``: dropped and counted).
        """
        data = alert.as_dict() if isinstance(alert, Alert) else dict(alert)
        log_drop = False
        with self._cond:
            if self._closing or len(self._queue) >= self._max_queue:
                self._counters.dropped += 1
                log_drop = not self._dropping
                self._dropping = True
                dropped = self._counters.dropped
                closing = self._closing
            else:
                if self._dropping:
                    self._dropping = False
                self._queue.append(data)
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="circuitry-alerts", daemon=True)
                    self._worker.start()
                self._cond.notify()
                return True
        if log_drop:
            _log("warning", "circuitry.alerts_dropped", reason="closed" if closing else "queue_full",
                 max_queue=self._max_queue, dropped_total=dropped,
                 service_name=data.get("service_name"), alert_type=data.get("alert_type"))
        return False

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what can be delivered within ``timeout`` seconds, then stop the worker.

        Alerts still queued at the deadline are counted in :attr:`dropped`; later :meth:`deliver`
        calls are dropped and counted. Runners stuck in callbacks are left behind (daemon threads).

        Args:
            timeout: Seconds to wait at most (>= 0).

        Returns:
            Whether the queue was drained and the worker stopped in time.
        """
        timeout = check_number("timeout", timeout, lo=0.0, hi=_MAX_SECONDS, lo_open=False)
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            worker = self._worker
            self._cond.notify_all()
        with self._idle_runners:
            self._idle_runners.notify_all()
        if worker is not None:
            worker.join(timeout + 0.5)
            return not worker.is_alive() and not self._queue
        return True

    # -- worker -------------------------------------------------------------------------------------

    def _remaining(self) -> float | None:
        deadline = self._deadline
        return None if deadline is None else deadline - time.monotonic()

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    remaining = self._remaining()
                    if remaining is not None and remaining <= 0:
                        left = len(self._queue)
                        self._queue.clear()
                        self._counters.dropped += left
                        dropped = self._counters.dropped
                        data = None
                    else:
                        data = self._queue.popleft()
                if data is None:
                    _log("warning", "circuitry.alerts_dropped", reason="closed", dropped_at_close=left,
                         dropped_total=dropped)
                    return
                self._dispatch(data)
        finally:
            self._stop_runners()

    def _claim_runner(self) -> bool:
        """Reserve an idle runner (starting one if allowed); wait while all are stuck."""
        with self._idle_runners:
            while self._busy >= self._max_runners:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle_runners.wait(0.05 if remaining is None else min(0.05, remaining))
            if self._busy >= self._runners:
                self._runners += 1
                threading.Thread(target=self._run_jobs, name=f"circuitry-alerts-{self._runners}",
                                 daemon=True).start()
            self._busy += 1
            return True

    def _dispatch(self, data: dict[str, Any]) -> None:
        if not self._claim_runner():
            with self._cond:
                self._counters.dropped += 1
            return
        job = _Job(data)
        with self._idle_runners:
            self._jobs.append(job)
            self._idle_runners.notify_all()
        end = time.monotonic() + self._timeout
        with self._cond:  # woken by the runner settling the job, or by close() setting a deadline
            while job.outcome is None:
                limit = end if self._deadline is None else min(end, self._deadline)
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        if job.outcome is None:
            self._timed_out(job)

    def _settle(self, job: _Job, outcome: Literal["delivered", "failed", "timed_out"]) -> bool:
        with self._cond:
            if job.outcome is not None:
                return False
            job.outcome = outcome
            c = self._counters
            setattr(c, outcome, getattr(c, outcome) + 1)
            self._cond.notify_all()
        return True

    def _stop_runners(self) -> None:
        with self._idle_runners:
            for _ in range(self._runners):
                self._jobs.append(_STOP)
            self._idle_runners.notify_all()

    # -- runners ------------------------------------------------------------------------------------

    def _run_jobs(self) -> None:
        loop: asyncio.AbstractEventLoop | None = None
        try:
            while True:
                with self._idle_runners:
                    while not self._jobs:
                        self._idle_runners.wait()
                    job = self._jobs.popleft()
                if not isinstance(job, _Job):
                    return
                try:
                    loop = self._run_one(job, loop)
                finally:
                    with self._idle_runners:
                        self._busy -= 1
                        self._idle_runners.notify_all()
        finally:
            with self._idle_runners:
                self._runners -= 1
            if loop is not None:
                loop.close()

    def _run_one(self, job: _Job, loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop | None:
        data = job.alert
        timed_out = False
        try:
            result = self._callback(data)
            if inspect.isawaitable(result):
                if loop is None:
                    loop = asyncio.new_event_loop()
                task = loop.create_task(_awaited(result))
                loop.run_until_complete(asyncio.wait({task}, timeout=self._timeout))
                if not task.done():
                    timed_out = True
                    task.cancel()  # a callback that ignores cancellation keeps this runner (counted) stuck
                    loop.run_until_complete(asyncio.wait({task}))
                if not task.cancelled():
                    task.result()
        except BaseException as exc:  # SystemExit & co. too: they would only end this runner thread
            self._settle(job, "failed")
            _log("error", "circuitry.alert_callback_failed", callback=repr(self._callback),
                 service_name=data.get("service_name"), alert_type=data.get("alert_type"),
                 error_type=type(exc).__qualname__, error_message=str(exc)[:500],
                 late=job.outcome == "timed_out")
        else:
            if timed_out:
                self._timed_out(job)
            else:
                self._settle(job, "delivered")
        return loop

    def _timed_out(self, job: _Job) -> None:
        if self._settle(job, "timed_out"):
            _log("warning", "circuitry.alert_callback_timed_out", callback=repr(self._callback),
                 timeout=self._timeout, service_name=job.alert.get("service_name"),
                 alert_type=job.alert.get("alert_type"))


async def _awaited(aw: Awaitable[Any]) -> Any:
    return await aw
