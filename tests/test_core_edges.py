"""The breaker's edges, each pinned: what adopt() and snapshot() carry, how outcomes reach events and
windows, what a permit says of itself, and the small helpers' exact output. (Written against the
mutants that survived the core suite: each test here fails for at least one of them.)"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog

from circuitry import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    EventKind,
    Permit,
    Policy,
    Registry,
    _faces,
    circuit,
)
from circuitry._core import _BadResultError, _short_repr, describe
from circuitry._window import TimeWindow
from circuitry.events import Dispatcher
from circuitry.testing import CapturedEvents, FakeClock, isolated_registry

from .conftest import Boom, Other


def make(clock: FakeClock, **policy: Any) -> tuple[CircuitBreaker, CapturedEvents]:
    events = CapturedEvents()
    b = CircuitBreaker("svc", clock=clock, dispatcher=Dispatcher([events]), rng=random.Random(1), **policy)
    return b, events


# -- adopt() and snapshot(): the store's side ------------------------------------------------------------


def test_adopting_an_open_state_refuses_calls_for_the_time_that_remains(clock: FakeClock) -> None:
    b, events = make(clock, recovery_timeout=30)
    wall = clock.time()
    gen = b.adopt(CircuitState.OPEN, opened_at=wall - 10, open_until=wall + 20, open_for=30, reopens=2,
                  reason="restored")
    assert gen == 1 == b.generation
    with pytest.raises(CircuitOpenError) as info:
        b.enter()
    assert (info.value.state, info.value.opened_at, info.value.retry_after) == ("open", wall - 10, 20.0)
    assert [(e.from_state, e.to_state, e.reason, e.open_for) for e in events.of(EventKind.TRANSITION)] == [
        (CircuitState.CLOSED, CircuitState.OPEN, "restored", 30)]
    snap = b.snapshot()
    assert (snap.state, snap.generation, snap.opened_at, snap.open_until, snap.open_for, snap.reopens,
            snap.consecutive_failures, snap.reason) == (CircuitState.OPEN, 1, wall - 10, wall + 20, 30.0, 2, 0,
                                                        "restored")
    clock.advance(20)
    assert b.state is CircuitState.HALF_OPEN


def test_adopted_open_periods_are_clamped_to_their_length_and_to_now(clock: FakeClock) -> None:
    b, _ = make(clock)
    wall = clock.time()
    b.adopt(CircuitState.OPEN, opened_at=wall, open_until=wall + 500, open_for=40)  # a clock jump
    assert b.stats().retry_after == 40.0
    b.adopt(CircuitState.OPEN, opened_at=wall + 1, open_until=wall - 5, open_for=40)  # already over
    assert b.stats().retry_after == 0.0
    b.adopt(CircuitState.OPEN, opened_at=wall + 2, open_until=None, open_for=None)
    assert (b.stats().retry_after, b.snapshot().open_for) == (0.0, 0.0)
    b.adopt(CircuitState.OPEN, opened_at=wall + 3, open_until=wall + 5, open_for=-3)
    assert b.snapshot().open_for == 0.0


def test_adopt_with_a_stale_expectation_changes_nothing(clock: FakeClock) -> None:
    b, events = make(clock)
    assert b.adopt(CircuitState.FORCED_OPEN, expect=5) == -1
    assert (b.state, b.generation, events) == (CircuitState.CLOSED, 0, [])
    assert b.adopt(CircuitState.FORCED_OPEN, opened_at=1.5, expect=0, reason="remote") == 1
    assert (b.state, b.stats().opened_at, b.snapshot().reason) == (CircuitState.FORCED_OPEN, 1.5, "remote")
    assert b.adopt(CircuitState.CLOSED, reopens=-4) == 2
    assert (b.stats().opened_at, b.snapshot().reopens, b.snapshot().open_until) == (None, 0, None)
    assert b.adopt(CircuitState.DISABLED, opened_at=9.0) == 3
    assert b.stats().opened_at is None


def test_adopting_the_same_state_is_no_transition(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=3)
    b.exit(b.enter(), Boom())
    assert b.adopt(CircuitState.CLOSED) == 0
    assert (events.of(EventKind.TRANSITION), b.consecutive_failures) == ([], 1)
    b.adopt(CircuitState.OPEN, opened_at=7.0, open_until=clock.time() + 5, open_for=5)
    assert b.adopt(CircuitState.OPEN, opened_at=7.0, open_until=clock.time() + 9, open_for=9) == 1
    assert b.stats().retry_after == 9.0  # the same opening, its period updated
    assert b.adopt(CircuitState.OPEN, opened_at=8.0, open_until=clock.time() + 9, open_for=9) == 2


def test_adopted_transitions_reach_hooks_but_not_the_link(clock: FakeClock) -> None:
    from .test_outcomes import Link

    b, events = make(clock)
    link = Link()
    b.link(link)
    b.adopt(CircuitState.FORCED_OPEN, reason="remote")
    b.reset()
    assert [e.reason for e in events.of(EventKind.TRANSITION)] == ["remote", "manual"]
    assert [e.reason for e in link.transitions] == ["manual"]


def test_snapshot_of_a_closed_breaker_counts_its_failures(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=5)
    for _ in range(3):
        b.exit(b.enter(), Boom())
    snap = b.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.open_until, snap.opened_at, snap.reason) == (
        CircuitState.CLOSED, 3, None, None, "initial")


def test_next_open_period_applies_backoff_without_opening(clock: FakeClock) -> None:
    b, _ = make(clock, recovery_timeout=10, backoff_factor=2, max_recovery_timeout=100)
    assert b.next_open_period() == 10.0
    b.adopt(CircuitState.HALF_OPEN, reopens=3)
    assert b.next_open_period() == 80.0
    assert b.state is CircuitState.HALF_OPEN


# -- outcomes reach events, windows and latency -----------------------------------------------------------


def test_a_rejected_result_is_a_failure_event_naming_the_value(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, result_is_failure=lambda r: r == "bad", measure_latency=True)
    token = b.enter()
    clock.advance(1.5)
    b.exit(token, None, "bad")
    fail = events.of(EventKind.FAILURE)[0]
    assert (fail.error_type, fail.error_message) == ("result_is_failure", "result rejected by result_is_failure: 'bad'")
    assert events.of(EventKind.TRANSITION)[0].error_type == "result_is_failure"
    assert b.take_latency() == (1, 1.5, 1.5)


def test_a_predicate_failure_event_names_the_exception(clock: FakeClock) -> None:
    b, events = make(clock, on=lambda e: isinstance(e, Boom), measure_latency=True)
    token = b.enter()
    clock.advance(0.5)
    b.exit(token, Boom("down"))
    fail = events.of(EventKind.FAILURE)[0]
    assert (fail.error_type, fail.error_message) == ("tests.conftest.Boom", "down")
    assert b.take_latency() == (1, 0.5, 0.5)
    assert b.take_latency() == (0, 0.0, 0.0)


def test_latency_keeps_the_count_the_sum_and_the_longest(clock: FakeClock) -> None:
    b, _ = make(clock, measure_latency=True)
    for d in (0.5, 2.0, 1.0):
        token = b.enter()
        clock.advance(d)
        b.exit(token, None)
    assert b.take_latency() == (3, 3.5, 2.0)


def test_a_stale_success_neither_feeds_the_window_nor_clears_failures(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=10, failure_rate_threshold=0.5, window_size=4, minimum_calls=4)
    stale = b.enter()
    b.force_open()
    b.reset()
    b.exit(b.enter(), Boom())
    b.exit(stale, None)  # counted, but changes nothing
    assert (b.consecutive_failures, b.counts().successes) == (1, 1)
    for _ in range(3):
        b.exit(b.enter(), Boom())
    assert b.state is CircuitState.OPEN  # 4 failures of 4 in the window: the stale success was not in it


def test_success_of_a_shadow_permit_closes_nothing(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5)
    b.set_metrics_only()
    b.exit(b.enter(), Boom())
    assert b.state is CircuitState.OPEN
    shadow = b.enter()
    assert shadow.shadow
    b.exit(shadow, None)
    assert (b.state, b.stats().would_reject) == (CircuitState.OPEN, 1)
    with pytest.raises(ConfigurationError, match="enabled must be a bool"):
        b.set_metrics_only("yes")  # type: ignore[arg-type]


def test_a_success_through_a_disabled_breaker_changes_nothing(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1)
    b.force_closed()
    for exc in (Boom(), None, Boom()):
        b.exit(b.enter(), exc)
    assert (b.state, b.counts().failures, b.counts().successes) == (CircuitState.DISABLED, 2, 1)


def test_a_call_exactly_as_long_as_the_limit_is_not_slow(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=100, slow_call_duration=1.0, slow_call_rate_threshold=1.0, window_size=2,
                minimum_calls=2)
    for d in (1.0, 1.0, 1.01):
        token = b.enter()
        clock.advance(d)
        b.exit(token, None)
    assert b.state is CircuitState.CLOSED  # the last two: one at the limit (not slow), one slow
    token = b.enter()
    clock.advance(1.01)
    b.exit(token, None)
    assert (b.state, events_reason(b)) == (CircuitState.OPEN, "slow_call_rate")


def events_reason(b: CircuitBreaker) -> str:
    return b.snapshot().reason


def test_the_failure_rate_rule_alone_ignores_slowness(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=100, failure_rate_threshold=0.5, window_size=4, minimum_calls=4,
                measure_latency=True)
    for _ in range(4):
        token = b.enter()
        clock.advance(100)
        b.exit(token, None)
    assert b.state is CircuitState.CLOSED
    b.exit(b.enter(), Boom())
    b.exit(b.enter(), Boom())
    assert (b.state, b.snapshot().reason) == (CircuitState.OPEN, "failure_rate")


def test_the_slow_rule_counts_the_fraction_of_calls(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=100, slow_call_duration=1.0, slow_call_rate_threshold=0.75, window_size=4,
                minimum_calls=4)
    for d in (2, 2, 0, 2):  # 3 slow of 4: 0.75
        token = b.enter()
        clock.advance(d)
        b.exit(token, None)
    assert b.state is CircuitState.OPEN


# -- manual control and reconfiguration --------------------------------------------------------------------


def test_resetting_a_closed_breaker_starts_a_generation_and_clears_counts(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=3)
    b.exit(b.enter(), Boom())
    b.reset()
    assert (b.generation, b.consecutive_failures, events.of(EventKind.TRANSITION)) == (1, 0, [])
    b.force_open()
    b.force_open()
    assert (b.generation, len(events.of(EventKind.TRANSITION))) == (3, 1)
    with pytest.raises(CircuitOpenError) as info:
        b.enter()
    assert (info.value.state, info.value.retry_after) == ("forced_open", None)


def test_reconfigure_restarts_counts_and_windows_in_a_new_generation(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=2)
    b.exit(b.enter(), Boom())
    b.reconfigure(Policy(failure_threshold=3))
    assert (b.generation, b.consecutive_failures, b.policy.failure_threshold) == (1, 0, 3)
    for _ in range(2):
        b.exit(b.enter(), Boom())
    assert b.state is CircuitState.CLOSED
    b.exit(b.enter(), Boom())
    assert b.state is CircuitState.OPEN


def test_a_released_probe_gives_its_lease_back(clock: FakeClock) -> None:
    from .test_outcomes import Link

    b, _ = make(clock, failure_threshold=1, recovery_timeout=5)
    link = Link(lease=4)
    b.link(link)
    b.exit(b.enter(), Boom())
    clock.advance(5)
    b.release(b.enter())
    b.record_ignored(b.enter())
    assert link.done == [4, 4]
    assert b.stats().probes_in_flight == 0
    b.release(Permit(b.generation))  # a non-probe permit: nothing to give back
    assert link.done == [4, 4]


def test_probe_retry_after_is_the_earliest_lease(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5, half_open_max_calls=2, probe_timeout=8)
    b.exit(b.enter(), Boom())
    clock.advance(5)
    b.enter()
    clock.advance(3)
    b.enter()
    with pytest.raises(CircuitOpenError) as info:
        b.enter()
    assert info.value.retry_after == 5.0
    clock.advance(5)  # the first probe's lease ran out: its permit is taken back
    assert isinstance(b.enter(), Permit)


# -- what the pieces say of themselves ------------------------------------------------------------------


def test_permits_describe_their_kind() -> None:
    assert repr(Permit(3, probe=1)) == "<Permit probe generation=3>"
    assert repr(Permit(4, shadow=True)) == "<Permit shadow generation=4>"
    assert repr(Permit(5, closed=True)) == "<Permit closed generation=5>"
    assert repr(Permit(6)) == "<Permit uncounted generation=6>"


def test_breakers_and_circuits_describe_themselves(clock: FakeClock) -> None:
    b, _ = make(clock)
    assert repr(b) == "<CircuitBreaker 'svc' closed generation=0>"
    assert repr(circuit("svc", registry=Registry(hooks=[]))) == "circuit('svc')"


def test_describe_and_short_repr_truncate(clock: FakeClock) -> None:
    assert describe(None) == (None, None)
    assert describe(Boom("x" * 600)) == ("tests.conftest.Boom", "x" * 497 + "...")
    assert describe(ValueError("v")) == ("ValueError", "v")
    assert describe(_BadResultError(7)) == ("result_is_failure", "result rejected by result_is_failure: 7")
    assert _short_repr("y" * 300) == repr("y" * 300)[:197] + "..."
    assert _short_repr("y" * 198) == repr("y" * 198)

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError

        def __str__(self) -> str:
            raise RuntimeError

    assert _short_repr(Unprintable()) == "<test_describe_and_short_repr_truncate.<locals>.Unprintable>"
    assert describe(Boom(Unprintable()))[1] in ("<unprintable>", "")


def test_policy_as_dict_names_types_and_callables() -> None:
    def judge(result: object) -> bool:
        return False

    d = Policy(on=(Boom, Other), result_is_failure=judge, failure_threshold=3).as_dict()
    assert d["on"] == ["Boom", "Other"]
    assert d["result_is_failure"].endswith("judge")
    assert d["failure_threshold"] == 3 and d["retry_after"] is None
    assert Policy(on=KeyError).as_dict()["on"] == "KeyError"


def test_a_broken_predicate_is_logged_with_its_error(registry: Registry) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("m" * 600)

    b = registry.get("svc", on=broken, failure_threshold=5)
    with structlog.testing.capture_logs() as logs:
        b.exit(b.enter(), Boom())
    assert b.counts().failures == 1
    [entry] = [e for e in logs if e["event"] == "circuitry.classifier_failed"]
    assert (entry["circuit"], entry["error_type"], entry["log_level"]) == ("svc", "RuntimeError", "error")
    assert entry["error_message"] == "m" * 500


def test_retry_after_hints_that_are_not_numbers_fall_back(clock: FakeClock) -> None:
    for hint in (None, True, "7", math.nan):
        b, _ = make(clock, failure_threshold=1, recovery_timeout=10, retry_after=lambda e, h=hint: h)
        b.exit(b.enter(), Boom())
        assert b.snapshot().open_for == 10.0, hint
    b, _ = make(clock, failure_threshold=1, recovery_timeout=10, retry_after=lambda e: 3)
    b.exit(b.enter(), Boom())
    assert b.snapshot().open_for == 3.0


def test_the_unawaited_warning_names_the_circuit_and_the_fix(registry: Registry) -> None:
    b = registry.get("svc")

    async def later() -> None:
        pass

    coro = later()
    with pytest.warns(RuntimeWarning) as record:
        b.exit(b.enter(), None, coro)
    coro.close()
    text = str(record[0].message)
    assert text.startswith("circuit 'svc': the protected call returned a coroutine")
    assert "decorate the `async def` itself" in text and "circuit(...).call(fn)" in text
    assert b.counts() == (0, 0, 1, 0, 0)


# -- the faces pass everything through ---------------------------------------------------------------------


async def test_async_wrappers_pass_arguments_and_judge_results(registry: Registry) -> None:
    @circuit("svc", failure_threshold=2, result_is_failure=lambda r: r < 0)
    async def add(a: int, b: int = 0) -> int:
        if a == 99:
            raise TypeError("from inside")
        return a + b

    assert await add(1, b=2) == 3
    assert await add(-5, b=1) == -4  # a rejected result: a failure
    with pytest.raises(TypeError):
        await add(99)  # raised inside: a failure too
    assert registry["svc"].state is CircuitState.OPEN


def test_generator_wrappers_pass_arguments_and_judge_returns(registry: Registry) -> None:
    @circuit("svc", failure_threshold=2, result_is_failure=lambda r: r == "bad")
    def walk(n: int, *, end: str = "ok") -> Iterator[int]:
        if n == 99:
            raise TypeError("from inside")
        yield from range(n)
        return end

    assert list(walk(2, end="ok")) == [0, 1]
    assert list(walk(1, end="bad")) == [0]
    with pytest.raises(TypeError):
        list(walk(99))
    assert registry["svc"].state is CircuitState.OPEN


async def test_async_generator_wrappers_pass_arguments(registry: Registry) -> None:
    @circuit("svc", failure_threshold=1)
    async def items(n: int, *, step: int = 1) -> AsyncIterator[int]:
        if n == 99:
            raise TypeError("from inside")
        for i in range(0, n, step):
            yield i

    assert [i async for i in items(4, step=2)] == [0, 2]
    with pytest.raises(TypeError):
        async for _ in items(99):
            pass
    assert registry["svc"].state is CircuitState.OPEN


async def test_generator_fallbacks_answer_refusals(registry: Registry) -> None:
    def sync_fb(rejection: CircuitOpenError, n: int) -> Iterator[str]:
        yield f"cached {n} ({rejection.state})"

    async def async_fb(rejection: CircuitOpenError, n: int) -> AsyncIterator[str]:
        yield f"cached {n}"

    @circuit("gen", failure_threshold=1, fallback=sync_fb)
    def walk(n: int) -> Iterator[str]:
        raise Boom()
        yield ""  # pragma: no cover

    @circuit("agen", failure_threshold=1, fallback=async_fb)
    async def awalk(n: int) -> AsyncIterator[str]:
        raise Boom()
        yield ""  # pragma: no cover

    with pytest.raises(Boom):
        list(walk(1))
    assert list(walk(2)) == ["cached 2 (open)"]
    with pytest.raises(Boom):
        [i async for i in awalk(1)]
    assert [i async for i in awalk(3)] == ["cached 3"]


def test_call_judges_results_of_sync_and_async_callables(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=2, result_is_failure=lambda r: r is None)
    assert c.call(lambda: None) is None

    async def nothing() -> None:
        return None

    assert asyncio.run(c.call(nothing)) is None
    assert registry["svc"].state is CircuitState.OPEN


def test_circuit_objects_are_cached_by_name_and_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(hooks=[])
    assert circuit("a", registry=reg) is circuit("a", registry=reg)
    assert circuit("a", registry=reg, failure_threshold=3) is circuit("a", registry=reg, failure_threshold=3)
    assert circuit("a", registry=reg) is not circuit("a", registry=reg, failure_threshold=3)

    def fb(rejection: CircuitOpenError) -> None:
        pass

    assert circuit("b", registry=reg, fallback=fb) is circuit("b", registry=reg, fallback=fb)
    assert circuit("b", registry=reg, fallback=fb) is not circuit("b", registry=reg)
    class Judge:  # equal to every Judge, and so unhashable: such a circuit is not cached
        def __call__(self, result: object) -> bool:
            return False

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Judge)

        __hash__ = None  # type: ignore[assignment]

    unhashable = circuit("c", registry=reg, result_is_failure=Judge())
    assert unhashable is not circuit("c", registry=reg, result_is_failure=Judge())
    assert isinstance(circuit("c", registry=reg).breaker.policy.result_is_failure, Judge)
    monkeypatch.setattr(_faces, "_CACHE_LIMIT", 2)
    _faces._cache.clear()
    first = circuit("d", registry=reg)
    circuit("e", registry=reg)
    assert circuit("d", registry=reg) is first and len(_faces._cache) == 2
    circuit("f", registry=reg)  # the cache was full: it starts over
    assert len(_faces._cache) == 1 and circuit("d", registry=reg) is not first


def test_a_circuits_breaker_comes_from_the_current_default_registry(registry: Registry) -> None:
    c = circuit("svc")
    b = c.breaker
    assert b is registry["svc"] and c.breaker is b
    with pytest.raises(ConfigurationError, match="registry must be a Registry"):
        _faces.Circuit("svc", registry=object())  # type: ignore[arg-type]


def test_time_window_slices_are_reused_round_the_ring() -> None:
    w = TimeWindow(4.0, buckets=4)  # slices of 1 s
    for t in (0.0, 1.0, 2.0, 3.0):
        w.add(True, t >= 2.0, t)
    assert w.totals(3.5) == (4, 4, 2)
    w.add(False, False, 4.0)  # slice 4 reuses slice 0's place
    assert w.totals(4.0) == (4, 3, 2)
    w.add(False, True, 6.5)  # slices 5 and 6 replace 1 and 2
    assert w.totals(6.5) == (3, 1, 2)
    assert w.totals(7.0) == (2, 0, 1)


# -- events carry what happened ---------------------------------------------------------------------------


def test_rejection_events_say_why_and_when(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=5, probe_timeout=0.5)
    b.exit(b.enter(), Boom())
    for _ in range(2):
        with pytest.raises(CircuitOpenError):
            b.enter()
    clock.advance(5)
    b.enter()  # the probe
    clock.advance(0.25)
    with pytest.raises(CircuitOpenError) as info:
        b.enter()
    assert info.value.retry_after == 0.25  # the probe's lease runs out then
    b.force_open()
    with pytest.raises(CircuitOpenError):
        b.enter()
    got = [(e.circuit, e.at, e.generation, e.to_state, e.reason) for e in events.of(EventKind.REJECTION)]
    wall = clock.time()
    assert got == [("svc", wall - 5.25, 1, CircuitState.OPEN, "open")] * 2 + [
        ("svc", wall, 2, CircuitState.HALF_OPEN, "probes_taken"),
        ("svc", wall, 3, CircuitState.FORCED_OPEN, "forced_open")]


def test_transitions_name_their_reasons_and_the_probes_exception(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=5, max_recovery_timeout=50,
                     retry_after=lambda e: getattr(e, "wait", None))
    b.exit(b.enter(), Boom())
    clock.advance(5)
    assert b.state is CircuitState.HALF_OPEN
    failing = Other("still down")
    failing.wait = 0.5  # type: ignore[attr-defined]
    b.exit(b.enter(), failing)
    assert b.stats().retry_after == 0.5  # the probe's failure set the open period
    clock.advance(0.5)
    b.exit(b.enter(), None)
    got = [(e.from_state, e.to_state, e.reason, e.error_type, e.open_for) for e in events.of(EventKind.TRANSITION)]
    assert got == [
        (CircuitState.CLOSED, CircuitState.OPEN, "failure_threshold", "tests.conftest.Boom", 5.0),
        (CircuitState.OPEN, CircuitState.HALF_OPEN, "recovery_timeout", None, None),
        (CircuitState.HALF_OPEN, CircuitState.OPEN, "probe_failed", "tests.conftest.Other", 0.5),
        (CircuitState.OPEN, CircuitState.HALF_OPEN, "recovery_timeout", None, None),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED, "probe_succeeded", None, None),
    ]
    assert [e.at for e in events.of(EventKind.TRANSITION)] == [clock.time() - 5.5, clock.time() - 0.5,
                                                               clock.time() - 0.5, clock.time(), clock.time()]


def test_a_probe_finishing_as_its_lease_ends_still_decides(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5, probe_timeout=2)
    b.exit(b.enter(), Boom())
    clock.advance(5)
    late = b.enter()
    clock.advance(2)  # exactly the lease: it has run out
    b.exit(late, None)
    assert b.state is CircuitState.CLOSED


def test_a_tiny_probe_timeout_lets_an_instant_probe_decide(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=1e-14)
    b.exit(b.enter(), Boom())
    clock.advance(1e-14)
    b.exit(b.enter(), None)
    assert b.state is CircuitState.CLOSED


def test_a_probe_of_an_older_half_open_period_is_stale(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5)
    b.exit(b.enter(), Boom())
    clock.advance(5)
    old = b.enter()
    b.adopt(CircuitState.OPEN, opened_at=1.0, open_until=clock.time(), open_for=1)  # another process
    b.adopt(CircuitState.HALF_OPEN)  # ... reopened it, and its period ended
    b.exit(old, Boom())
    assert b.state is CircuitState.HALF_OPEN


def test_timed_shadow_and_disabled_calls_are_timed(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=50, measure_latency=True)
    b.exit(b.enter(), Boom())
    b.take_latency()
    b.set_metrics_only()
    shadow = b.enter()
    clock.advance(2)
    b.exit(shadow, None)
    b.force_open()
    shadow = b.enter()
    clock.advance(3)
    b.exit(shadow, None)
    b.force_closed()
    token = b.enter()
    clock.advance(4)
    b.exit(token, None)
    assert b.take_latency() == (3, 9.0, 4.0)


def test_stats_report_retry_after_by_state(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5)
    assert (b.stats().name, b.stats().retry_after) == ("svc", 0.0)
    b.exit(b.enter(), Boom())
    clock.advance(4.5)
    assert b.stats().retry_after == 0.5
    assert b.snapshot().open_until == clock.time() + 0.5
    b.force_open()
    assert b.stats().retry_after is None


# -- open periods -----------------------------------------------------------------------------------------


def test_jitter_moves_the_period_by_the_random_draw(clock: FakeClock) -> None:
    b, events = make(clock, failure_threshold=1, recovery_timeout=100, jitter=0.5, max_recovery_timeout=1000)
    draw = random.Random(1).random()
    b.exit(b.enter(), Boom())
    assert events.of(EventKind.TRANSITION)[0].open_for == pytest.approx(100 * (1 + 0.5 * (2 * draw - 1)))


def test_backoff_from_a_one_second_timeout_and_the_cap_after_jitter(clock: FakeClock) -> None:
    b, _ = make(clock, recovery_timeout=1, backoff_factor=2)
    b.adopt(CircuitState.HALF_OPEN, reopens=1)
    assert b.next_open_period() == 2.0
    rng = random.Random()
    rng.random = lambda: 1.0  # type: ignore[method-assign]  # the largest draw: +jitter
    capped = CircuitBreaker("c", clock=clock, rng=rng, recovery_timeout=10, backoff_factor=2, jitter=0.5,
                            max_recovery_timeout=40)
    capped.adopt(CircuitState.HALF_OPEN, reopens=10)
    assert capped.next_open_period() == 40.0


def test_jitter_spreads_the_periods_at_the_cap(clock: FakeClock) -> None:
    # At the cap the +jitter half was cut to the cap itself: half the periods of a long outage were the
    # same 40.0 s, so processes that opened together kept probing together.
    capped = CircuitBreaker("c", clock=clock, rng=random.Random(3), recovery_timeout=10, backoff_factor=2,
                            jitter=0.2, max_recovery_timeout=40)
    capped.adopt(CircuitState.HALF_OPEN, reopens=10)
    periods = [capped.next_open_period() for _ in range(400)]
    assert 32.0 <= min(periods) < 32.5 and 39.5 < max(periods) <= 40.0
    assert sum(p == 40.0 for p in periods) == 0
    assert sum(p < 36.0 for p in periods) == pytest.approx(200, abs=40)  # uniform over 32-40 s


def test_a_retry_after_hint_below_a_second_is_kept(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=1, recovery_timeout=10, retry_after=lambda e: 0.25)
    b.exit(b.enter(), Boom())
    assert b.snapshot().open_for == 0.25


def test_a_retry_after_hook_that_raises_is_logged(clock: FakeClock) -> None:
    def broken(exc: BaseException) -> float:
        raise LookupError("no header")

    b, _ = make(clock, failure_threshold=1, recovery_timeout=10, retry_after=broken)
    with structlog.testing.capture_logs() as logs:
        b.exit(b.enter(), Boom())
    assert b.snapshot().open_for == 10.0
    assert [(e["event"], e["circuit"], e["error_type"], e["error_message"]) for e in logs] == [
        ("circuitry.retry_after_failed", "svc", "LookupError", "no header")]


# -- small exactnesses ------------------------------------------------------------------------------------


def test_adopt_defaults_to_a_remote_reason_and_no_reopens(clock: FakeClock) -> None:
    b, events = make(clock, recovery_timeout=10, backoff_factor=2)
    b.adopt(CircuitState.OPEN, opened_at=1.0, open_until=clock.time() + 1)
    e = events.of(EventKind.TRANSITION)[0]
    assert (e.reason, e.circuit, e.at, e.generation, e.open_for) == ("remote", "svc", clock.time(), 1, None)
    assert (b.snapshot().reopens, b.snapshot().open_for, b.stats().retry_after) == (0, 0.0, 0.0)
    b.adopt(CircuitState.HALF_OPEN)
    assert events.of(EventKind.TRANSITION)[1].open_for is None
    b.adopt(CircuitState.FORCED_OPEN, opened_at=3.0)
    b.adopt(CircuitState.HALF_OPEN)
    assert b.stats().opened_at == 3.0  # half-open keeps the opening it came from
    b.adopt(CircuitState.DISABLED)
    assert b.stats().opened_at is None


def test_policy_as_dict_names_callables_without_a_qualname() -> None:
    class Judge:
        def __call__(self, result: object) -> bool:
            return False

        def __repr__(self) -> str:
            return "<judge>"

    assert Policy(result_is_failure=Judge()).as_dict()["result_is_failure"] == "<judge>"


def test_count_and_time_windows_start_empty_and_count_per_slice() -> None:
    from circuitry._window import CountWindow

    w = CountWindow(2)
    w.add(True, True, 0.0)
    w.add(False, False, 0.0)
    w.add(False, False, 0.0)  # the first entry, and only it, leaves
    assert w.totals(0.0) == (2, 0, 0)
    t = TimeWindow(10.0)  # 20 slices of 0.5 s
    for _ in range(3):
        t.add(True, True, 0.1)
    t.add(False, False, 0.6)
    assert t.totals(0.6) == (4, 3, 3)
    assert t.totals(10.1) == (1, 0, 0)  # the first slice left, as a whole
    assert t.totals(10.0) == (1, 0, 0)
    t2 = TimeWindow(10.0, buckets=5)
    t2.add(True, False, 1.0)
    assert t2.totals(9.9) == (1, 1, 0)  # still in the last five slices
    assert t2.totals(10.0) == (0, 0, 0)  # the sixth slice replaces the first


def test_latency_keeps_the_longest_when_a_tie_follows(clock: FakeClock) -> None:
    b, _ = make(clock, measure_latency=True)
    b.record_success(b.enter(), 2.0)
    b.record_success(b.enter(), 2.0)
    assert b.take_latency() == (2, 4.0, 2.0)


def test_reconfigure_twice_counts_generations(clock: FakeClock) -> None:
    b, _ = make(clock)
    b.reconfigure(Policy(failure_threshold=2))
    b.reconfigure(Policy(failure_threshold=3))
    assert b.generation == 2


def test_stale_completions_change_nothing_on_the_locked_paths(clock: FakeClock) -> None:
    b, _ = make(clock, failure_threshold=2, on=lambda e: isinstance(e, Boom))  # not inline: the locked path
    stale = b.enter()
    b.force_open()
    b.reset()
    b.exit(b.enter(), Boom())
    b._clear_consecutive(stale)  # a racing success of the old generation
    b._trip(stale, Boom())  # a racing trip of the old generation
    assert (b.state, b.consecutive_failures) == (CircuitState.CLOSED, 1)
    b.force_open()
    b._clear_consecutive(b.generation)  # not closed: nothing to clear, nothing to open
    b._trip(b.generation, Boom())
    assert b.state is CircuitState.FORCED_OPEN


def test_a_released_plain_permit_counts_cancelled_only(clock: FakeClock) -> None:
    b, _ = make(clock)
    b.release(b.enter())
    b.exit(b.enter(), KeyboardInterrupt())
    assert b.counts() == (0, 0, 0, 0, 2)


def test_an_explicit_registry_wins_over_a_default_one_of_the_same_name(registry: Registry) -> None:
    registry.get("svc").force_open()  # the default registry's "svc" refuses everything
    mine = Registry(hooks=[])
    c = circuit("svc", registry=mine)
    with c:
        pass
    assert mine["svc"].counts().successes == 1


async def test_with_blocks_nest_and_report_mismatched_exits(registry: Registry) -> None:
    from circuitry import _fastpath

    class Face(_fastpath.WithBase):
        def _create(self) -> CircuitBreaker:
            return registry.get("svc")

    f = Face("svc", registry)
    async with f:
        async with f:
            pass
        assert registry["svc"].counts().successes == 1
    assert registry["svc"].counts().successes == 2
    with pytest.raises(RuntimeError, match=r"__aexit__ without a matching __aenter__"):
        await f.__aexit__(None, None, None)
    with pytest.raises(RuntimeError, match=r"__exit__ without a matching __enter__"):
        f.__exit__(None, None, None)


def test_wrapped_objects_use_the_fallback_and_carry_their_circuit(registry: Registry) -> None:
    import functools

    def cached(rejection: CircuitOpenError, *args: object, **kwargs: object) -> str:
        return f"cached {args} {kwargs}"

    def fetch(a: int, b: int = 0) -> str:
        raise Boom()

    c = circuit("svc", failure_threshold=1, fallback=cached)
    p = c(functools.partial(fetch, 1))
    with pytest.raises(Boom):
        p(b=2)
    assert p(b=3) == "cached () {'b': 3}"
    assert p.circuit is c


def test_fallbacks_get_keyword_arguments_in_every_face(registry: Registry) -> None:
    def fb(rejection: CircuitOpenError, n: int, *, tag: str = "") -> Iterator[str]:
        yield f"{rejection.name} {n} {tag}"

    @circuit("svc", failure_threshold=1, fallback=fb)
    def walk(n: int, *, tag: str = "") -> Iterator[str]:
        raise Boom()
        yield ""  # pragma: no cover

    with pytest.raises(Boom):
        list(walk(1))
    assert list(walk(2, tag="t")) == ["svc 2 t"]


async def test_async_generator_fallbacks_get_the_rejection_and_keywords(registry: Registry) -> None:
    async def fb(rejection: CircuitOpenError, n: int, *, tag: str = "") -> AsyncIterator[str]:
        yield f"{rejection.state} {n} {tag}"

    @circuit("svc", failure_threshold=1, fallback=fb)
    async def walk(n: int, *, tag: str = "") -> AsyncIterator[str]:
        raise Boom()
        yield ""  # pragma: no cover

    with pytest.raises(Boom):
        [i async for i in walk(1)]
    assert [i async for i in walk(2, tag="t")] == ["open 2 t"]


async def test_an_async_generator_has_no_result_to_judge(registry: Registry) -> None:
    @circuit("svc", failure_threshold=1, result_is_failure=lambda r: True)
    async def items() -> AsyncIterator[int]:
        yield 1

    assert [i async for i in items()] == [1]
    assert (registry["svc"].state, registry["svc"].counts().successes) == (CircuitState.CLOSED, 1)


def test_call_defers_only_awaitables(registry: Registry) -> None:
    class Box:  # not a plain type, not awaitable: returned as it is
        pass

    box = Box()
    assert circuit("svc").call(lambda: box) is box
    assert registry["svc"].counts().successes == 1


async def test_a_plain_function_with_a_fallback_returns_what_it_returns(registry: Registry) -> None:
    # With a fallback, the wrapper turned any awaitable result into a coroutine of its own: a Task lost
    # cancel() and add_done_callback(), and a task nobody awaited held a half-open probe for good.
    async def send(msg: str) -> str:
        return msg

    @circuit("svc", failure_threshold=1, fallback=lambda rejection, msg: None)
    def publish(msg: str) -> asyncio.Task[str]:
        return asyncio.get_running_loop().create_task(send(msg))

    task = publish("x")
    assert isinstance(task, asyncio.Task)
    assert await task == "x"
    assert registry["svc"].counts().successes == 1

    @circuit("svc2", fallback=lambda rejection, msg: None)
    def forgot(msg: str) -> Any:
        return send(msg)  # a coroutine from a plain def: warned about and not counted, fallback or not

    with pytest.warns(RuntimeWarning, match="returned a coroutine without awaiting it"):
        coro = forgot("y")
    coro.close()
    assert registry["svc2"].counts().ignored == 1


async def test_an_async_callable_gets_an_awaitable_from_a_plain_fallback(registry: Registry) -> None:
    async def fetch(city: str) -> str:
        return "live"

    class Client:
        async def __call__(self, city: str) -> str:
            return "live"

    weather = circuit("weather", fallback=lambda rejection, city: "cached")
    client = weather(Client())
    assert (await weather.call(fetch, "Lisbon"), await client("Lisbon")) == ("live", "live")
    weather.breaker.force_open()
    assert (await weather.call(fetch, "Lisbon"), await client("Lisbon")) == ("cached", "cached")
    assert weather.call(lambda city: "plain", "Lisbon") == "cached"  # a plain callable's is plain


def test_generator_fallbacks_of_the_wrong_kind_are_refused_at_decoration(registry: Registry) -> None:
    async def coro_fb(rejection: CircuitOpenError) -> None:
        pass

    async def agen_fb(rejection: CircuitOpenError) -> AsyncIterator[int]:
        yield 1

    def gen_fb(rejection: CircuitOpenError) -> Iterator[int]:
        yield 1

    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    for fb in (coro_fb, agen_fb):
        with pytest.raises(ConfigurationError, match="must be a generator or return an iterable"):
            circuit("svc", fallback=fb)(gen)
    for fb in (coro_fb, gen_fb):
        with pytest.raises(ConfigurationError, match="must be an async generator"):
            circuit("svc", fallback=fb)(agen)
    circuit("svc", fallback=lambda rejection: [1, 2])(gen)  # any iterable will do for a generator


def test_a_cached_circuit_still_checks_the_registry_in_force(registry: Registry) -> None:
    from circuitry import RegistryConflictError
    from circuitry.testing import isolated_registry

    with isolated_registry():
        circuit("svc-cached", failure_threshold=2)  # cached with this policy
    with isolated_registry() as other:
        other.get("svc-cached", failure_threshold=9)
        with pytest.raises(RegistryConflictError):
            circuit("svc-cached", failure_threshold=2)
    with isolated_registry():
        assert circuit("svc-cached", failure_threshold=2) is circuit("svc-cached", failure_threshold=2)


def test_circuit_not_found_pickles(registry: Registry) -> None:
    import pickle

    from circuitry import CircuitNotFoundError

    err = CircuitNotFoundError("paymnt", ["payment"], ["payments_v2"])
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.name, back.known, str(back)) == (CircuitNotFoundError, "paymnt", ["payment"], str(err))


def test_a_refusal_of_a_nested_call_does_not_fail_the_probe(registry: Registry, clock: FakeClock) -> None:
    # A protected function that calls itself: the inner call is refused while the outer one holds the
    # only probe, and its CircuitOpenError failed the probe -- the circuit reopened on a service that
    # answered, its open periods growing with backoff, for good.
    @circuit("svc", failure_threshold=1, recovery_timeout=10, backoff_factor=2)
    def walk(depth: int) -> int:
        return 0 if depth == 0 else 1 + walk(depth - 1)

    with pytest.raises(Boom):
        with circuit("svc"):
            raise Boom()
    clock.advance(10)
    with pytest.raises(CircuitOpenError):
        walk(2)
    b = registry["svc"]
    assert (b.state, b.stats().probes_in_flight, b.counts().failures) == (CircuitState.HALF_OPEN, 0, 1)
    # with as many probes as the nesting is deep, the nested calls are probes too, and close it
    with isolated_registry(clock=clock) as deep:
        nested = circuit("deep", failure_threshold=1, recovery_timeout=10, half_open_max_calls=3)

        @nested
        def down(depth: int) -> int:
            return 0 if depth == 0 else 1 + down(depth - 1)

        with pytest.raises(Boom):
            with nested:
                raise Boom()
        clock.advance(10)
        assert down(2) == 2
        assert deep["deep"].state is CircuitState.CLOSED


def test_fallback_check_messages_show_the_signature_needed(registry: Registry) -> None:
    import functools

    def base(rejection: CircuitOpenError) -> None:
        pass

    def forecast(city, /, days):  # type: ignore[no-untyped-def]
        pass

    forecast.__annotations__ = {"city": int, "days": "int"}
    with pytest.raises(ConfigurationError) as info:
        circuit("svc", fallback=functools.partial(base))(forecast)
    text = str(info.value)
    assert "fallback functools.partial" not in text
    assert "cannot take the calls of 'test_fallback_check_messages_show_the_signature_needed.<locals>.forecast'" in text
    assert text.endswith("so it must accept: def fallback(rejection: CircuitOpenError, city: int, /, days: int)")


def test_a_plain_open_breaker_refuses_with_the_whole_snapshot(clock: FakeClock) -> None:
    b = CircuitBreaker("svc", clock=clock, failure_threshold=1, recovery_timeout=10)  # no hooks: the gate refuses
    b.exit(b.enter(), Boom())
    opened = clock.time()
    clock.advance(4)
    with pytest.raises(CircuitOpenError) as info:
        b.enter()
    assert (info.value.name, info.value.state, info.value.opened_at, info.value.retry_after) == (
        "svc", "open", opened, 6.0)
    assert b.counts().rejected == 1


def test_a_plain_wrapper_passes_keyword_arguments(registry: Registry) -> None:
    @circuit("svc")
    def add(a: int, *, b: int = 0) -> int:
        return a + b

    assert add(1, b=2) == 3
    assert registry["svc"].counts().successes == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11+")
def test_a_probe_whose_tasks_were_refused_by_its_own_circuit_is_no_failure(clock: FakeClock) -> None:
    """A probe whose TaskGroup called the same circuit: the group holds only its own refusals, as a direct
    nested call would raise one (it was counted a failure and opened the circuit again)."""
    b, _ = make(clock, failure_threshold=1, recovery_timeout=5)
    b.exit(b.enter(), Boom())
    clock.advance(5)
    probe = b.enter()
    with pytest.raises(CircuitOpenError) as refused:
        b.enter()
    group = BaseExceptionGroup("unhandled errors in a TaskGroup", [refused.value])  # noqa: F821
    b.exit(probe, group)
    assert b.state is CircuitState.HALF_OPEN
    assert b.stats().failures == 1
    b.exit(b.enter(), BaseExceptionGroup("g", [refused.value, Boom()]))  # noqa: F821
    assert b.state is CircuitState.OPEN  # a group with anything else in it is the probe's outcome


def test_a_predicate_interrupted_gives_the_probe_back(clock: FakeClock) -> None:
    """KeyboardInterrupt inside ``result_is_failure``: the call is uncounted and its probe given back (the
    probe was kept until probe_timeout)."""

    def judge(result: object) -> bool:
        raise KeyboardInterrupt

    b, _ = make(clock, failure_threshold=1, recovery_timeout=5, result_is_failure=judge)
    b.exit(b.enter(), Boom())
    clock.advance(5)
    with pytest.raises(KeyboardInterrupt):
        b.exit(b.enter(), None, "answer")
    assert b.stats().probes_in_flight == 0
    b.enter()  # the next caller probes
