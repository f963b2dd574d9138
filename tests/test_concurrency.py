"""Threads, coroutines and one breaker: exact counts, one probe, no serialisation."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from circuitry import CircuitOpenError, CircuitState, Registry, circuit
from circuitry.testing import FakeClock

from .conftest import Boom, Other


def _open_then_expire(registry: Registry, clock: FakeClock, name: str, **policy: Any) -> None:
    b = registry.get(name, failure_threshold=1, recovery_timeout=30, half_open_max_calls=1, **policy)
    b.record_failure(b.admit(), Boom())
    assert b.state is CircuitState.OPEN
    clock.advance(30)  # the open period has just ended


async def test_fifty_coroutines_arriving_at_half_open_send_exactly_one_probe(
        registry: Registry, clock: FakeClock) -> None:
    _open_then_expire(registry, clock, "herd")
    entered = 0
    go = asyncio.Event()

    @circuit("herd")
    async def fetch() -> str:
        nonlocal entered
        entered += 1
        await asyncio.sleep(0.01)  # the probe is still in flight while the others arrive
        return "ok"

    async def caller() -> str:
        await go.wait()
        try:
            return await fetch()
        except CircuitOpenError:
            return "rejected"

    tasks = [asyncio.ensure_future(caller()) for _ in range(50)]
    await asyncio.sleep(0)
    go.set()
    results = await asyncio.gather(*tasks)
    assert entered == 1
    assert results.count("ok") == 1 and results.count("rejected") == 49
    assert registry["herd"].state is CircuitState.CLOSED


def test_fifty_threads_arriving_at_half_open_send_exactly_one_probe(registry: Registry, clock: FakeClock) -> None:
    _open_then_expire(registry, clock, "herd")
    entered = []
    release = threading.Event()
    barrier = threading.Barrier(50)

    @circuit("herd")
    def fetch() -> str:
        entered.append(1)
        release.wait(10)  # hold the probe until every thread has tried
        return "ok"

    results: list[str] = []

    def caller() -> None:
        barrier.wait(10)
        try:
            results.append(fetch())
        except CircuitOpenError:
            results.append("rejected")
            if results.count("rejected") == 49:
                release.set()

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(entered) == 1
    assert sorted(results) == ["ok"] + ["rejected"] * 49


def test_eight_threads_hammering_one_breaker_keep_exact_counts(registry: Registry) -> None:
    per_thread = 20_000
    b = registry.get("hammer", failure_threshold=10**9, on=Boom)

    @circuit("hammer")
    def work(i: int) -> int:
        if i % 7 == 0:
            raise Boom()
        if i % 11 == 0:
            raise Other()
        return i

    def worker() -> None:
        for i in range(per_thread):
            try:
                work(i)
            except (Boom, Other):
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fails = sum(1 for i in range(per_thread) if i % 7 == 0) * 8
    ignored = sum(1 for i in range(per_thread) if i % 7 and i % 11 == 0) * 8
    s = b.stats()
    assert (s.failures, s.ignored, s.successes) == (fails, ignored, per_thread * 8 - fails - ignored)


def test_threads_exact_counts_on_the_locked_window_path(registry: Registry) -> None:
    # (failure_threshold out of reach: 5 failures in a row across threads is rare but possible)
    b = registry.get("window", failure_threshold=10**9, failure_rate_threshold=0.99, window_size=1000,
                     minimum_calls=1000)

    def worker(seed: int) -> None:
        for i in range(5000):
            p = b.admit()
            if (i + seed) % 5 == 0:
                b.record_failure(p, Boom())
            else:
                b.record_success(p)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = b.stats()
    assert (s.failures, s.successes, s.state) == (8000, 32000, CircuitState.CLOSED)
    assert b._window is not None and b._window.totals(0)[:2] == (1000, b._window.totals(0)[1])


async def test_ten_thousand_coroutines_and_eight_threads_keep_exact_counts(registry: Registry) -> None:
    b = registry.get("mixed", failure_threshold=10**9, on=Boom)

    @circuit("mixed")
    async def aio(i: int) -> int:
        await asyncio.sleep(0)
        if i % 5 == 0:
            raise Boom()
        return i

    @circuit("mixed")
    def sync(i: int) -> int:
        if i % 5 == 0:
            raise Boom()
        return i

    def thread_worker() -> None:
        for i in range(10_000):
            try:
                sync(i)
            except Boom:
                pass

    async def coro(i: int) -> None:
        try:
            await aio(i)
        except Boom:
            pass

    threads = [threading.Thread(target=thread_worker) for _ in range(8)]
    for t in threads:
        t.start()
    await asyncio.gather(*(coro(i) for i in range(10_000)))
    for t in threads:
        t.join()
    s = b.stats()
    assert s.failures == 2000 + 8 * 2000
    assert s.successes == 8000 + 8 * 8000
    assert s.calls == 10_000 * 9


def test_threads_run_through_a_closed_breaker_in_parallel(registry: Registry) -> None:
    """If the breaker held a lock across the call (pybreaker), the barrier could never fill."""
    n = 8
    barrier = threading.Barrier(n, timeout=10)

    @circuit("parallel")
    def slow() -> None:
        barrier.wait()  # returns only once all n calls are inside the function at the same time

    errors: list[BaseException] = []

    def run() -> None:
        try:
            slow()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert registry["parallel"].stats().successes == n


def test_with_block_shared_by_threads_keeps_permits_apart(registry: Registry, clock: FakeClock) -> None:
    c = circuit("shared_with", failure_threshold=10**6)
    barrier = threading.Barrier(8, timeout=10)
    outcomes: list[str] = []

    def run(k: int) -> None:
        for i in range(2000):
            try:
                with c:
                    if i == 0:
                        barrier.wait()
                    if (i + k) % 4 == 0:
                        raise Boom()
                outcomes.append("ok")
            except Boom:
                outcomes.append("failed")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = registry["shared_with"].stats()
    assert (s.successes, s.failures) == (outcomes.count("ok"), outcomes.count("failed")) == (12000, 4000)


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_never_exceeds_its_permits_under_threads(registry: Registry, clock: FakeClock,
                                                           probes: int) -> None:
    b = registry.get("permits", failure_threshold=1, recovery_timeout=1, half_open_max_calls=probes)
    b.record_failure(b.admit(), Boom())
    clock.advance(1)
    inside = 0
    peak = 0
    lock = threading.Lock()
    barrier = threading.Barrier(16, timeout=10)

    def run() -> None:
        nonlocal inside, peak
        barrier.wait()
        for _ in range(200):
            try:
                p = b.admit()
            except CircuitOpenError:
                continue
            with lock:
                inside += 1
                peak = max(peak, inside)
            with lock:
                inside -= 1
            b.record_ignored(p)  # probe ends without a verdict: permit back, still half-open

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= peak <= probes
    assert b.stats().probes_in_flight == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork() is POSIX only")
@pytest.mark.parametrize("with_store", [False, True])
def test_a_child_forked_while_threads_hold_a_breaker_lock_can_call_it(tmp_path: Any, with_store: bool) -> None:
    """Four threads keep a breaker changing state while the main thread forks: a thread holding the
    breaker's lock at the fork left the child a lock nobody would release, and the child's first call
    hung -- every child of 20 with a store attached (its before-fork wait let the threads pile up on the
    lock), 1 in 20 without; so did a fork while a thread held the registry's lock, making the breaker.
    Each child here makes 100 calls and must exit on its own."""
    import os
    import signal

    from circuitry.store import SQLiteStore

    store = SQLiteStore(tmp_path / "fork.db", poll_interval=0.01) if with_store else None
    reg = Registry(hooks=[], store=store)
    calls = iter(range(10**9))

    @circuit("payments", registry=reg, failure_threshold=2, recovery_timeout=0.01, on=ConnectionError)
    def pay() -> None:
        if next(calls) % 3:
            raise ConnectionError("down")

    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                pay()
            except (ConnectionError, CircuitOpenError):
                pass

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    hung = 0
    try:
        for _ in range(8):
            pid = os.fork()
            if pid == 0:  # the child: 100 calls, then leave without running the parent's cleanup
                signal.alarm(20)
                for _ in range(100):
                    try:
                        pay()
                    except (ConnectionError, CircuitOpenError):
                        pass
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            hung += os.WIFSIGNALED(status)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        if store is not None:
            store.close()
    assert hung == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork() is POSIX only")
def test_a_fork_while_a_hook_runs_under_the_registry_lock_does_not_deadlock(tmp_path: Any) -> None:
    """A breaker made in one thread adopts its stored state, and its transition hook runs under the registry's
    lock; the hook then asks the store (which needs the store's lock). A fork meanwhile: the store's fork
    handler held the store's lock and the registry's waited for the registry's -- each waited for the
    other, for good. Run in a child interpreter, so a deadlock fails the test instead of hanging it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, threading
        from circuitry import Registry
        from circuitry.store import open_store
        db = {str(tmp_path / "fork.db")!r}
        first = open_store(db, poll_interval=0.01)
        b = Registry(hooks=[], store=first).get("svc", failure_threshold=1, recovery_timeout=600)
        b.record_failure(b.admit(), ConnectionError())
        assert first.flush()
        first.close()
        entered, go = threading.Event(), threading.Event()

        def hook(event):
            if event.reason == "restored":
                entered.set()
                go.wait(5)  # let go just as the fork starts
                reg.status("svc")  # the store's lock
        store = open_store(db, poll_interval=0.01)
        reg = Registry(hooks=[hook], store=store)
        reg.get("other")
        maker = threading.Thread(target=lambda: reg.get("svc"), daemon=True)
        maker.start()
        assert entered.wait(10)
        threading.Timer(0.2, go.set).start()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        maker.join(10)
        print("done", maker.is_alive())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["done", "False"], proc.stderr[-2000:]


def _in_child(work: Any) -> tuple[bool, str]:
    """Run ``work()`` in a forked child: (whether it exited by itself within 10 s, what it returned)."""
    import os
    import signal

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(10)
        try:
            os.write(write, str(work()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    return not os.WIFSIGNALED(status), said


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork() is POSIX only")
def test_a_child_forked_while_hooks_change_can_add_hooks() -> None:
    """A thread adds and removes hooks (and makes circuits) while the main thread forks: a thread holding the
    dispatcher's lock at the fork left the child a lock nobody releases, and the child's next add_hook hung
    (20 children of 20)."""
    reg = Registry(hooks=[])
    for i in range(50):
        reg.get(f"svc{i}")
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            def hook(event: Any) -> None:
                pass
            reg.add_hook(hook)
            reg.remove_hook(hook)
            circuit(f"made{i % 5000}", registry=reg, failure_threshold=3)
            i += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        results = [_in_child(lambda: (reg.add_hook(print), circuit("new", registry=reg, failure_threshold=4)))
                   for _ in range(10)]
    finally:
        stop.set()
        thread.join(5)
    assert [exited for exited, _ in results] == [True] * 10


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork() is POSIX only")
def test_a_child_forked_during_a_probe_may_probe() -> None:
    """The thread probing in the parent is not copied into the child: the child's probe permit is free (it was
    held until probe_timeout, a minute here, and the child refused every call)."""
    clock = FakeClock()
    b = Registry(hooks=[], clock=clock).get("svc", failure_threshold=1, recovery_timeout=60)
    b.record_failure(b.admit(), Boom())
    clock.advance(60)
    probe = b.admit()  # another thread's probe, in flight as the process forks

    def child() -> str:
        b.record_success(b.admit())
        return b.state.value

    assert _in_child(child) == (True, "closed")
    assert b.stats().probes_in_flight == 1  # the parent's probe is the parent's
    b.record_success(probe)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork() is POSIX only")
def test_forked_workers_draw_their_own_jitter() -> None:
    """Workers forked from one parent opened for the same jittered periods (one generator, copied): processes
    that opened together probed together, which jitter is there to prevent."""

    def open_period() -> float:
        b = Registry(hooks=[], clock=FakeClock()).get("svc", failure_threshold=1, recovery_timeout=100, jitter=0.5)
        b.record_failure(b.admit(), Boom())
        return b.stats().retry_after

    periods = {_in_child(open_period)[1] for _ in range(4)}
    assert len(periods) == 4, periods
