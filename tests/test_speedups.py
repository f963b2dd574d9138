"""The C accelerator (circuitry/_speedups.c) and its pure-Python twin.

Every test here but the table internals runs against whichever faces are in use; the whole face suite
also runs once more, in a subprocess, on the pure-Python faces (``CIRCUITRY_NO_SPEEDUPS=1``), so both
implementations pass the same tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitry import CircuitBreaker, CircuitOpenError, CircuitState, Registry, _accel, _faces, _fastpath, circuit
from circuitry._faces import Circuit
from circuitry.testing import FakeClock

from .conftest import Boom

PURE = bool(os.environ.get("CIRCUITRY_NO_SPEEDUPS"))
needs_c = pytest.mark.skipif(not _faces.SPEEDUPS, reason="the C accelerator is not in use (pure-Python faces)")


def _compiler_available() -> bool:
    cc = (sysconfig.get_config_var("CC") or "").split()
    return bool(cc) and shutil.which(cc[0]) is not None


def test_the_accelerator_is_in_use_wherever_it_can_be_built() -> None:
    if PURE:
        assert not _faces.SPEEDUPS
        assert Circuit.__mro__[1] is _fastpath.WithBase
    elif _compiler_available():
        # pip install built it (setup.py marks it optional only for machines without a compiler)
        assert _faces.SPEEDUPS, "a C compiler is available but circuitry._speedups did not build or import"
        assert Circuit.__mro__[1].__module__ == "circuitry._speedups"
    else:
        assert (_accel._speedups is not None) == _faces.SPEEDUPS


@pytest.mark.skipif(PURE, reason="this is the test that starts the pure-Python run")
def test_the_face_tests_pass_on_the_pure_python_faces() -> None:
    root = Path(__file__).resolve().parent.parent
    files = ["tests/test_sync.py", "tests/test_async.py", "tests/test_concurrency.py", "tests/test_memory.py",
             "tests/test_state_machine.py", "tests/test_speedups.py", "tests/test_outcomes.py",
             "tests/test_regressions.py", "tests/test_core_edges.py"]
    env = {**os.environ, "CIRCUITRY_NO_SPEEDUPS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *files],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed is not None, tail
    assert int(passed.group(1)) >= 180, tail
    assert "failed" not in proc.stdout.splitlines()[-1], tail


# -- behaviour both implementations share ------------------------------------------------------------


def test_stale_with_completion_changes_nothing(registry: Registry, clock: FakeClock) -> None:
    c = circuit("svc", failure_threshold=2)
    b = c.breaker
    c.__enter__()  # admitted in generation 0, lock-free
    b.force_open()
    b.reset()  # generation moved on twice
    b.record_failure(b.enter())  # one real failure in the new generation
    c.__exit__(Boom, Boom(), None)  # the stale entry fails: must not count towards the threshold
    assert b.state is CircuitState.CLOSED
    assert b.stats().consecutive_failures == 1


def test_a_with_block_at_half_open_holds_the_probe_and_gives_it_back(registry: Registry, clock: FakeClock) -> None:
    c = circuit("svc", failure_threshold=1, recovery_timeout=10, half_open_max_calls=1)
    with pytest.raises(Boom), c:
        raise Boom()
    clock.advance(10)
    with c:
        with pytest.raises(CircuitOpenError) as info, c:  # the only probe is taken (nested entry)
            pass
        assert info.value.state == "half_open"
    assert c.breaker.state is CircuitState.CLOSED
    with pytest.raises(Boom), c:
        raise Boom()
    clock.advance(10)
    with pytest.raises(KeyboardInterrupt), c:  # a cancelled probe gives its permit back
        raise KeyboardInterrupt
    with c:
        pass
    assert c.breaker.state is CircuitState.CLOSED


def test_timed_with_blocks_feed_the_slow_call_rule(registry: Registry, clock: FakeClock) -> None:
    c = circuit("svc", slow_call_duration=1.0, slow_call_rate_threshold=0.5, window_size=4, minimum_calls=4)
    for _ in range(4):
        with c:
            clock.advance(2.0)
    assert c.breaker.state is CircuitState.OPEN
    assert c.breaker.stats().successes == 4


def test_one_circuit_entered_by_many_threads_with_nesting(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=10**9)
    threads, rounds = 8, 500
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                with c:
                    with contextlib.suppress(Boom), c:
                        if (i + k) % 3 == 0:
                            raise Boom()
                    contextvars.ContextVar("touch").set(i)  # the thread's context is in use mid-block
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    s = c.breaker.stats()
    failures = sum(1 for k in range(threads) for i in range(rounds) if (i + k) % 3 == 0)
    assert s.failures == failures
    assert s.successes == 2 * threads * rounds - failures
    if _faces.SPEEDUPS:
        assert c._open_entries == 0


async def test_ten_thousand_tasks_inside_one_async_with(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=10**9)
    gate, all_inside = asyncio.Event(), asyncio.Event()
    inside = 0

    async def task(i: int) -> None:
        nonlocal inside
        async with c:
            inside += 1
            if inside == 10_000:
                all_inside.set()
            await gate.wait()
            if i % 7 == 0:
                raise Boom()

    tasks = [asyncio.create_task(task(i)) for i in range(10_000)]
    await all_inside.wait()
    if _faces.SPEEDUPS:
        assert c._open_entries == 10_000
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, Boom) for r in results) == len(range(0, 10_000, 7))
    s = c.breaker.stats()
    assert (s.successes, s.failures) == (10_000 - len(range(0, 10_000, 7)), len(range(0, 10_000, 7)))
    if _faces.SPEEDUPS:
        assert c._open_entries == 0
        assert c._table_capacity <= 32  # the burst's table was given back


async def test_interleaved_tasks_nest_one_circuit(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=10**9)
    order: list[str] = []

    async def task(name: str, fail_inner: bool) -> None:
        async with c:
            await asyncio.sleep(0)
            try:
                async with c:
                    order.append(name)
                    await asyncio.sleep(0)
                    if fail_inner:
                        raise Boom()
            except Boom:
                pass
            await asyncio.sleep(0)

    await asyncio.gather(task("a", True), task("b", False), task("c", True))
    s = c.breaker.stats()
    assert sorted(order) == ["a", "b", "c"]
    assert (s.successes, s.failures) == (4, 2)


@needs_c  # (a ContextVar is inherited by the child task's copy of the context: no error there)
async def test_exit_from_another_task_is_refused_and_keeps_the_entry(registry: Registry) -> None:
    c = circuit("svc")
    await c.__aenter__()

    async def other() -> None:
        await c.__aexit__(None, None, None)

    with pytest.raises(RuntimeError, match="without a matching"):
        await asyncio.create_task(other())
    await c.__aexit__(None, None, None)  # the entering task's entry was kept
    assert c.breaker.stats().successes == 1


async def test_aenter_works_with_exit_stacks_and_the_iterator_protocol(registry: Registry) -> None:
    c = circuit("svc")
    async with contextlib.AsyncExitStack() as stack:
        b = await stack.enter_async_context(c)
        assert b is c.breaker
    it = c.__aenter__().__await__()  # driven through the iterator protocol, as `yield from` does
    with pytest.raises(StopIteration) as stop:
        next(it)
    assert stop.value.value is c.breaker
    assert await c.__aexit__(None, None, None) is None
    assert c.breaker.stats().successes == 2


def test_rejection_and_counted_failure_from_the_decorator(registry: Registry, clock: FakeClock) -> None:
    @circuit("svc", failure_threshold=2, recovery_timeout=5)
    def f(fail: bool) -> int:
        if fail:
            raise Boom()
        return 1

    for _ in range(2):
        with pytest.raises(Boom):
            f(True)
    with pytest.raises(CircuitOpenError) as info:
        f(False)
    assert (info.value.name, info.value.state, info.value.retry_after) == ("svc", "open", 5.0)
    clock.advance(5)
    assert f(False) == 1  # the open period ended: the general path probes and closes
    s = registry["svc"].stats()
    assert (s.successes, s.failures, s.rejected, s.state) == (1, 2, 1, CircuitState.CLOSED)


def test_copying_a_circuit_gives_the_same_handle(registry: Registry) -> None:
    import copy

    c = circuit("svc")
    assert copy.copy(c) is c
    assert copy.deepcopy({"c": c})["c"] is c


# -- the C table's own bookkeeping ---------------------------------------------------------------------


@needs_c
def test_an_unreachable_cycle_through_an_open_entry_is_collected() -> None:
    class Marker:
        pass

    def make_cycle() -> weakref.ref[Marker]:
        c = Circuit("svc", registry=Registry(hooks=[]))
        marker = Marker()
        var: contextvars.ContextVar[object] = contextvars.ContextVar("cycle")

        def enter_and_leave_open() -> None:
            var.set((c, marker))  # the context refers to the circuit; the entry refers to the context
            c.__enter__()

        contextvars.copy_context().run(enter_and_leave_open)
        assert c._open_entries == 1
        return weakref.ref(marker)

    gone = make_cycle()
    gc.collect()
    assert gone() is None


@needs_c
def test_an_entry_outlives_nothing_it_should_not() -> None:
    reg = Registry(hooks=[])
    c = Circuit("svc", registry=reg)
    for _ in range(1000):
        with c:
            with c:
                pass
    assert (c._open_entries, c._table_capacity) == (0, 8)


# -- differential: the C types against their Python twins ------------------------------------------------

OPS = st.one_of(
    st.tuples(st.just("enter"), st.integers(0, 2)),
    st.tuples(st.just("exit"), st.integers(0, 2), st.sampled_from(["ok", "fail", "ignored", "cancel"])),
    st.tuples(st.just("call"), st.sampled_from(["ok", "fail", "ignored", "cancel", "bad_result"])),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 3.0, 11.0])),
    st.tuples(st.just("manual"), st.sampled_from(["force_open", "force_closed", "reset", "metrics_only"])),
)
POLICIES = st.sampled_from([
    {"failure_threshold": 1, "recovery_timeout": 10, "on": Boom},
    {"failure_threshold": 3, "recovery_timeout": 10, "half_open_max_calls": 2, "on": Boom},
    {"failure_threshold": 2, "recovery_timeout": 10, "slow_call_duration": 1.0, "window_size": 4,
     "minimum_calls": 2, "slow_call_rate_threshold": 0.5, "on": Boom},
    {"failure_threshold": 10, "failure_rate_threshold": 0.5, "window_size": 4, "minimum_calls": 4,
     "recovery_timeout": 10, "on": Boom},
    {"failure_threshold": 2, "recovery_timeout": 10, "on": lambda e: isinstance(e, Boom),
     "result_is_failure": lambda r: r == "bad"},
])


def _pure_breaker_class() -> type:
    """circuitry._core executed once more with the pure-Python Gate as CircuitBreaker's base."""
    spec = importlib.util.find_spec("circuitry._core")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = (_accel.Gate, _accel.NO_RESULT)
    _accel.Gate, _accel.NO_RESULT = _fastpath.Gate, _fastpath.NO_RESULT  # type: ignore[misc]
    try:
        spec.loader.exec_module(module)
    finally:
        _accel.Gate, _accel.NO_RESULT = saved  # type: ignore[misc]
    return module.CircuitBreaker  # type: ignore[no-any-return]


class _Ref:
    def __init__(self) -> None:
        self.breakers: dict[str, object] = {}


def _side(breaker_type: type, with_base: type, policy: dict[str, object]) -> tuple[object, ...]:
    clock = FakeClock()
    b = breaker_type("svc", clock=clock, **policy)
    ref = _Ref()
    ref.breakers["svc"] = b

    class Face(with_base):  # type: ignore[misc, valid-type]
        __slots__ = ()

    return Face("svc", ref), [contextvars.Context() for _ in range(3)], b, clock


_EXC = {"ok": None, "fail": Boom(), "ignored": KeyError("x"), "cancel": KeyboardInterrupt(), "bad_result": None}


def _run(face: object, flows: list[contextvars.Context], b: object, clock: FakeClock,
         op: tuple[object, ...]) -> object:
    kind = op[0]
    if kind == "advance":
        clock.advance(op[1])  # type: ignore[arg-type]
        return None
    if kind == "manual":
        if op[1] == "metrics_only":
            b.set_metrics_only(not b.metrics_only)  # type: ignore[attr-defined]
        else:
            getattr(b, op[1])()  # type: ignore[arg-type]
        return None
    try:
        if kind == "call":  # a decorator's use: enter, then exit with the result or the exception
            token = b.enter()  # type: ignore[attr-defined]
            clock.advance(0.25)
            exc = _EXC[op[1]]  # type: ignore[index]
            b.exit(token, exc, "bad" if op[1] == "bad_result" else "good")  # type: ignore[attr-defined]
            return "called"
        ctx = flows[op[1]]  # type: ignore[index]
        if kind == "enter":
            ctx.run(face.__enter__)  # type: ignore[attr-defined]
            return "entered"
        exc = _EXC[op[2]]  # type: ignore[index]
        ctx.run(face.__exit__, None if exc is None else type(exc), exc, None)  # type: ignore[attr-defined]
        return "exited"
    except CircuitOpenError as err:
        return ("refused", err.state, err.retry_after)
    except RuntimeError as err:
        return ("runtime", "without a matching" in str(err))


@needs_c
@settings(max_examples=300, deadline=None)
@given(policy=POLICIES, ops=st.lists(OPS, max_size=60))
def test_the_c_types_match_their_python_twins(policy: dict[str, object], ops: list[tuple[object, ...]]) -> None:
    """The same operations on a breaker built on the C Gate (entered through the C WithBase) and on
    one built on the Python Gate (through the Python WithBase): the same answers, the same stats."""
    sides = [_side(CircuitBreaker, _accel.WithBase, policy), _side(_PURE_BREAKER, _fastpath.WithBase, policy)]
    assert type(sides[0][2]).__mro__[1] is not type(sides[1][2]).__mro__[1]
    for op in ops:
        results = [_run(*side, op) for side in sides]
        assert results[0] == results[1], op
        stats = [dataclasses.astuple(side[2].stats()) for side in sides]  # type: ignore[attr-defined]
        assert stats[0] == stats[1], op


_PURE_BREAKER = _pure_breaker_class()


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=300))
def test_each_exit_reports_its_own_flows_innermost_entry(ops: list[tuple[int, bool]]) -> None:
    """Up to 41 flows entering and leaving one circuit in any order, with nesting: every exit reports
    the duration of its own flow's innermost entry (each entry's start time is unique), and nothing is
    left behind. This is the C table's probing, growth and back-shift deletion under random order."""
    clock = FakeClock()
    registry = Registry(clock=clock, hooks=[])
    c = Circuit("svc", registry=registry, policy=None)
    b = registry.get("svc", measure_latency=True)
    flows = [contextvars.Context() for _ in range(41)]
    stacks: list[list[float]] = [[] for _ in flows]
    for k, enter in ops:
        clock.advance(1.0)
        if enter:
            flows[k].run(c.__enter__)
            stacks[k].append(clock.monotonic())
        elif not stacks[k]:
            with pytest.raises(RuntimeError, match="without a matching"):
                flows[k].run(c.__exit__, None, None, None)
        else:
            flows[k].run(c.__exit__, None, None, None)
            took = clock.monotonic() - stacks[k].pop()
            assert b.take_latency() == (1, took, took)
        if _faces.SPEEDUPS:
            assert c._open_entries == sum(map(len, stacks))
    for k, stack in enumerate(stacks):  # leave every block still open, innermost first
        while stack:
            flows[k].run(c.__exit__, None, None, None)
            took = clock.monotonic() - stack.pop()
            assert b.take_latency() == (1, took, took)
    assert b.stats().successes == sum(1 for _, enter in ops if enter)
    if _faces.SPEEDUPS:
        assert (c._open_entries, c._table_capacity <= 32) == (0, True)


def pickled_target(x: int) -> int:
    return x * 2


pickled_target = circuit("svc-pickle")(pickled_target)  # type: ignore[assignment]


class _Holder:
    @circuit("svc-method")
    def method(self, x: int) -> tuple[object, int]:
        return self, x

    @circuit("svc-static")
    @staticmethod
    def static(x: int) -> int:
        return x


def test_a_decorated_function_pickles_by_reference_and_binds_as_a_method(registry: Registry) -> None:
    import pickle

    assert pickle.loads(pickle.dumps(pickled_target)) is pickled_target
    assert pickled_target(2) == 4
    h = _Holder()
    assert h.method(3) == (h, 3)
    assert _Holder.method(h, 4) == (h, 4)
    assert _Holder.static(5) == h.static(5) == 5
    assert registry["svc-method"].stats().successes == 2
    assert _Holder.method.__wrapped__.__name__ == "method"  # type: ignore[attr-defined]


# -- hooks that say when they listen -----------------------------------------------------------------


class _Gated:
    """A refusal and failure hook that listens only while ``on`` is set (as a tracing hook listens only
    while the current span records)."""

    def __init__(self) -> None:
        from circuitry import EventKind

        self.on = False
        self.fail_check = False
        self.kinds = frozenset({EventKind.REJECTION, EventKind.FAILURE})
        self.events: list[Any] = []
        self.asked = 0

    def listening(self) -> bool:
        self.asked += 1
        if self.fail_check:
            raise RuntimeError("the check itself failed")
        return self.on

    def __call__(self, event: Any) -> None:
        self.events.append(event)


def test_a_hook_that_does_not_listen_now_keeps_the_inline_paths_and_gets_nothing() -> None:
    clock = FakeClock()
    reg = Registry(clock=clock, hooks=[])
    hook = _Gated()
    reg.add_hook(hook)
    b = reg.get("gated", failure_threshold=3, recovery_timeout=60)

    @circuit("gated", registry=reg)
    def call(fail: bool) -> str:
        if fail:
            raise Boom
        return "ok"

    for _ in range(2):
        with pytest.raises(Boom):
            call(True)
    assert b._fail_types != ()  # counted inline while nobody listens
    assert hook.events == [] and hook.asked == 2
    hook.on = True
    with pytest.raises(Boom):
        call(True)  # the third failure trips, through the slow path: its event is built
    assert [e.kind.value for e in hook.events] == ["failure"]
    assert b.state is CircuitState.OPEN
    hook.on = False
    assert b._fast == -2  # refused inline while open, since the hook says when it listens
    with pytest.raises(CircuitOpenError):
        call(False)
    with pytest.raises(CircuitOpenError), circuit("gated", registry=reg):
        pass
    assert len(hook.events) == 1
    hook.on = True
    with pytest.raises(CircuitOpenError):
        call(False)
    assert [e.kind.value for e in hook.events] == ["failure", "rejection"]
    s = b.stats()
    assert (s.failures, s.rejected) == (3, 3)  # every call counted, events or not


def test_a_failure_whose_listening_check_saw_a_reset_is_stale() -> None:
    """The listening check runs Python code, and another thread may reset the breaker meanwhile: a failure
    of the old generation must not be counted in the new one (the gate read the generation before the
    check, and one failure after a reset then opened a threshold-2 circuit; 31 runs of 3,000 in a race)."""

    class Resetting(_Gated):
        def listening(self) -> bool:
            b.reset()  # (as another thread would, while this check ran)
            return False

    reg = Registry(clock=FakeClock(), hooks=[])
    reg.add_hook(Resetting())
    b = reg.get("reset-in-check", failure_threshold=2, recovery_timeout=60)
    assert b._fail_types != ()  # the inline path, which asks the hook
    token = b.enter()
    b.exit(token, Boom())
    assert b.consecutive_failures == 0
    b.exit(b.enter(), Boom())
    assert b.state is CircuitState.CLOSED


def test_a_listening_check_that_raises_delivers_the_events() -> None:
    reg = Registry(clock=FakeClock(), hooks=[])
    hook = _Gated()
    hook.fail_check = True
    reg.add_hook(hook)
    reg.get("raising-check", failure_threshold=1, recovery_timeout=60)
    face = circuit("raising-check", registry=reg)
    with pytest.raises(Boom), face:
        raise Boom
    with pytest.raises(CircuitOpenError), face:
        pass
    assert [e.kind.value for e in hook.events] == ["failure", "rejection"]


class _Quiet:
    def is_recording(self) -> bool:
        raise AssertionError("a quiet object is never asked")


class _Span:
    def __init__(self, on: bool, fail: bool = False) -> None:
        self.on, self.fail, self.asked = on, fail, 0

    def is_recording(self) -> bool:
        self.asked += 1
        if self.fail:
            raise RuntimeError("the span could not say")
        return self.on


class _ContextHook:
    """A refusal and failure hook whose ``listening`` is a ContextListening over ``var``."""

    def __init__(self, var: contextvars.ContextVar[Any]) -> None:
        from circuitry import EventKind
        from circuitry.events import ContextListening

        self.kinds = frozenset({EventKind.REJECTION, EventKind.FAILURE})
        self.listening = ContextListening(var, "span", _Quiet)
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event.kind.value)


@pytest.mark.parametrize("mapping", [dict, lambda d: __import__("types").MappingProxyType(d)],
                         ids=["dict", "other-mapping"])
def test_a_context_listening_check_is_answered_from_the_context_variable(mapping: Any) -> None:
    var: contextvars.ContextVar[Any] = contextvars.ContextVar("ctx")  # no default: unset is "not listening"
    reg = Registry(clock=FakeClock(), hooks=[])
    hook = _ContextHook(var)
    reg.add_hook(hook)
    b = reg.get("ctx-listening", failure_threshold=2, recovery_timeout=60)
    assert b._listen is hook.listening and b._fail_types != ()
    face = circuit("ctx-listening", registry=reg)

    def fail_once() -> None:
        with pytest.raises(Boom), face:
            raise Boom

    fail_once()  # unset
    var.set(mapping({}))
    fail_once()  # trips, nothing stored under the key
    for value in (None, _Quiet()):
        var.set(mapping({"span": value}))
        with pytest.raises(CircuitOpenError), face:
            pass
    assert hook.events == []
    off, on, broken = _Span(False), _Span(True), _Span(True, fail=True)
    for span in (off, on, broken):
        var.set(mapping({"span": span}))
        with pytest.raises(CircuitOpenError), face:
            pass
    assert (off.asked, on.asked, broken.asked) == (1, 1, 1)
    assert hook.events == ["rejection", "rejection"]  # the recording span, and the check that raised
    assert b.stats().rejected == 5 and b.stats().failures == 2


def test_a_hook_without_listening_still_gets_every_refusal_and_failure() -> None:
    from circuitry import EventKind

    reg = Registry(clock=FakeClock(), hooks=[])
    gated, plain = _Gated(), []

    def always(event: Any) -> None:
        plain.append(event.kind)

    always.kinds = frozenset({EventKind.REJECTION, EventKind.FAILURE})  # type: ignore[attr-defined]
    reg.add_hook(gated)
    reg.add_hook(always)
    b = reg.get("mixed", failure_threshold=1, recovery_timeout=60)
    assert b._listen is None and b._fail_types == ()  # someone always listens: the slow paths
    face = circuit("mixed", registry=reg)
    with pytest.raises(Boom), face:
        raise Boom
    with pytest.raises(CircuitOpenError), face:
        pass
    assert plain == [EventKind.FAILURE, EventKind.REJECTION] and len(gated.events) == 2
    reg.remove_hook(always)
    assert b._listen is not None and b._fast == -2
