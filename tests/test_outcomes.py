"""The outcome rule, pinned case by case (success, counted failure, ignored, cancelled) for every face,
and the sliding windows the rate rules read."""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterator

import pytest

from circuitry import CircuitBreaker, CircuitOpenError, CircuitState, Event, Registry, circuit
from circuitry._fastpath import NO_RESULT as PY_NO_RESULT
from circuitry._window import CountWindow, TimeWindow
from circuitry.testing import FakeClock

from .conftest import Boom, Other

# -- the windows -------------------------------------------------------------------------------------


def test_count_window_keeps_the_last_n_outcomes_and_their_slow_flags() -> None:
    w = CountWindow(3)
    assert w.totals(0.0) == (0, 0, 0)
    w.add(True, True, 0.0)
    w.add(False, True, 0.0)
    assert w.totals(0.0) == (2, 1, 2)
    w.add(False, False, 0.0)
    assert w.totals(0.0) == (3, 1, 2)
    w.add(False, False, 0.0)  # wraps: the first call (failed, slow) leaves
    assert w.totals(0.0) == (3, 0, 1)
    w.add(True, False, 0.0)  # the second (slow) leaves
    assert w.totals(0.0) == (3, 1, 0)
    w.add(True, True, 0.0)
    w.add(True, True, 0.0)
    assert w.totals(0.0) == (3, 3, 2)


def test_time_window_forgets_its_oldest_slices_one_by_one() -> None:
    w = TimeWindow(10.0, buckets=5)  # slices of 2 s
    w.add(True, False, 0.5)   # slice 0
    w.add(False, True, 2.5)   # slice 1
    w.add(True, True, 4.5)    # slice 2
    assert w.totals(4.5) == (3, 2, 2)
    assert w.totals(9.9) == (3, 2, 2)  # slice 4: all still inside the last 10 s
    assert w.totals(10.0) == (2, 1, 2)  # slice 5 replaces slice 0
    assert w.totals(12.0) == (1, 1, 1)  # slice 6 replaces slice 1
    w.add(False, False, 12.5)
    assert w.totals(14.0) == (1, 0, 0)  # slice 7 replaces slice 2; the new call stays
    assert w.totals(12.0) == (1, 0, 0)  # time standing still (or a reading from the past) changes nothing


def test_time_window_is_cleared_after_a_gap_as_long_as_the_window() -> None:
    w = TimeWindow(10.0, buckets=5)
    w.add(True, True, 1.0)
    w.add(True, False, 3.0)
    assert w.totals(100.0) == (0, 0, 0)
    w.add(False, False, 100.0)
    assert w.totals(100.0) == (1, 0, 0)
    assert TimeWindow(10.0, buckets=5).totals(50.0) == (0, 0, 0)


# -- durations from every face feed the slow-call rule ------------------------------------------------

SLOW = {"slow_call_duration": 1.0, "slow_call_rate_threshold": 0.5, "window_size": 4, "minimum_calls": 2,
        "failure_threshold": 100}


def _opened_by_slowness(registry: Registry, name: str) -> None:
    b = registry[name]
    assert b.state is CircuitState.OPEN
    assert b.stats().successes == 2
    assert b.take_latency() == (2, 4.0, 2.0)


def test_the_decorator_times_calls(registry: Registry, clock: FakeClock) -> None:
    @circuit("svc", **SLOW)
    def slow() -> int:
        clock.advance(2.0)
        return 1

    slow()
    assert registry["svc"].state is CircuitState.CLOSED
    slow()
    _opened_by_slowness(registry, "svc")


async def test_the_async_decorator_times_calls(registry: Registry, clock: FakeClock) -> None:
    @circuit("svc", **SLOW)
    async def slow() -> int:
        clock.advance(2.0)
        await asyncio.sleep(0)
        return 1

    await slow()
    await slow()
    _opened_by_slowness(registry, "svc")


async def test_async_with_blocks_are_timed(registry: Registry, clock: FakeClock) -> None:
    c = circuit("svc", **SLOW)
    for _ in range(2):
        async with c:
            clock.advance(2.0)
    _opened_by_slowness(registry, "svc")


def test_generators_are_timed_from_first_item_to_the_end(registry: Registry, clock: FakeClock) -> None:
    @circuit("svc", **SLOW)
    def items() -> Iterator[int]:
        yield 1
        clock.advance(2.0)
        yield 2

    for _ in range(2):
        assert list(items()) == [1, 2]
    _opened_by_slowness(registry, "svc")


async def test_async_generators_are_timed(registry: Registry, clock: FakeClock) -> None:
    @circuit("svc", **SLOW)
    async def items() -> AsyncIterator[int]:
        yield 1
        clock.advance(2.0)
        yield 2

    for _ in range(2):
        assert [i async for i in items()] == [1, 2]
    _opened_by_slowness(registry, "svc")


def test_call_times_sync_and_async_callables(registry: Registry, clock: FakeClock) -> None:
    c = circuit("svc", **SLOW)

    def slow() -> int:
        clock.advance(2.0)
        return 1

    async def aslow() -> int:
        clock.advance(2.0)
        return 1

    assert c.call(slow) == 1
    assert asyncio.run(c.call(aslow)) == 1
    _opened_by_slowness(registry, "svc")


def test_a_failed_timed_call_notes_its_latency_and_slowness(registry: Registry, clock: FakeClock) -> None:
    @circuit("svc", **{**SLOW, "slow_call_rate_threshold": 1.0, "minimum_calls": 2})
    def slow_failure() -> None:
        clock.advance(3.0)
        raise Boom()

    for _ in range(2):
        with pytest.raises(Boom):
            slow_failure()
    b = registry["svc"]
    assert b.state is CircuitState.OPEN
    assert b.take_latency() == (2, 6.0, 3.0)


# -- the rule, through the one exit --------------------------------------------------------------------


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("svc", clock=clock, failure_threshold=2, on=Boom, recovery_timeout=10)


@pytest.mark.parametrize(("exc", "counted"), [
    (None, (1, 0, 0, 0, 0)),
    (Boom(), (0, 1, 0, 0, 0)),
    (Other(), (0, 0, 1, 0, 0)),
    (KeyboardInterrupt(), (0, 0, 0, 0, 1)),
    (asyncio.CancelledError(), (0, 0, 0, 0, 1)),
    (GeneratorExit(), (0, 0, 0, 0, 1)),
])
def test_exit_sorts_each_outcome_into_one_count(breaker: CircuitBreaker, exc: BaseException | None,
                                                 counted: tuple[int, ...]) -> None:
    breaker.exit(breaker.enter(), exc)
    assert tuple(breaker.counts()) == counted
    assert breaker.consecutive_failures == counted[1]


def test_two_counted_failures_trip_and_a_success_between_resets(breaker: CircuitBreaker) -> None:
    breaker.exit(breaker.enter(), Boom())
    breaker.exit(breaker.enter(), None, "ok")
    assert breaker.consecutive_failures == 0
    breaker.exit(breaker.enter(), Boom())
    breaker.exit(breaker.enter(), Other())  # ignored: neither counts nor resets
    assert (breaker.consecutive_failures, breaker.state) == (1, CircuitState.CLOSED)
    breaker.exit(breaker.enter(), Boom())
    assert breaker.state is CircuitState.OPEN
    assert breaker.consecutive_failures == 0  # restarts on every transition
    with pytest.raises(CircuitOpenError):
        breaker.enter()


def test_exit_accepts_keywords(breaker: CircuitBreaker) -> None:
    breaker.exit(token=breaker.enter(), exc=Boom())
    breaker.exit(breaker.enter(), result="fine")
    assert tuple(breaker.counts())[:2] == (1, 1)


def test_a_stale_token_counts_but_changes_no_state(breaker: CircuitBreaker, clock: FakeClock) -> None:
    token = breaker.enter()
    breaker.force_open()
    breaker.reset()
    breaker.exit(token, Boom())
    breaker.exit(token, Boom())
    assert (breaker.state, breaker.consecutive_failures, breaker.counts().failures) == (CircuitState.CLOSED, 0, 2)
    fresh = breaker.enter()
    breaker.exit(fresh, Boom())
    assert breaker.consecutive_failures == 1
    breaker.exit(token, None)  # a stale success does not clear the new generation's failures
    assert breaker.consecutive_failures == 1


def test_result_is_failure_judges_returned_values_only(clock: FakeClock) -> None:
    b = CircuitBreaker("svc", clock=clock, failure_threshold=2, result_is_failure=lambda r: r is None)
    b.exit(b.enter(), None, None)  # a decorated function returned None: a failure
    assert b.counts().failures == 1
    b.exit(b.enter(), None)  # a `with` block has no result: a success
    assert (b.counts().successes, b.consecutive_failures) == (1, 0)
    b.exit(b.enter(), None, 5)
    assert b.counts().successes == 2


def test_a_half_open_probe_is_settled_by_its_exit(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(2):
        breaker.exit(breaker.enter(), Boom())
    clock.advance(10)
    probe = breaker.enter()
    with pytest.raises(CircuitOpenError) as info:
        breaker.enter()  # one probe at a time
    assert (info.value.state, info.value.retry_after) == ("half_open", 10.0)
    breaker.exit(probe, Other())  # ignored: the permit is given back, no decision
    assert breaker.state is CircuitState.HALF_OPEN
    probe = breaker.enter()
    breaker.exit(probe, KeyboardInterrupt())  # cancelled: given back too
    probe = breaker.enter()
    breaker.exit(probe, None, "ok")
    assert breaker.state is CircuitState.CLOSED
    s = breaker.stats()
    assert (s.successes, s.failures, s.ignored, s.cancelled, s.rejected) == (1, 2, 1, 1, 1)


# -- a store's link on the fast path -------------------------------------------------------------------


class Link:
    def __init__(self, lease: int | None = 0) -> None:
        self.failure_log: deque[BaseException] = deque(maxlen=3)
        self.lease = lease
        self.done: list[int] = []
        self.transitions: list[Event] = []

    def take_probe(self) -> int | None:
        return self.lease

    def probe_retry_after(self) -> float:
        return 2.5

    def probe_done(self, lease: int) -> None:
        self.done.append(lease)

    def transitioned(self, event: Event) -> None:
        self.transitions.append(event)


def test_every_counted_failure_reaches_the_failure_log_in_every_path(registry: Registry, clock: FakeClock) -> None:
    link = Link()
    b = registry.get("svc", failure_threshold=3, on=(Boom, KeyError))
    b.link(link)
    first, second, third = Boom("a"), KeyError("b"), Boom("c")

    @circuit("svc")
    def fail(exc: BaseException) -> None:
        raise exc

    with pytest.raises(Boom):
        fail(first)
    with pytest.raises(KeyError), circuit("svc"):
        raise second
    with pytest.raises(Other):
        fail(Other())  # ignored: not logged
    b.record_failure(b.enter(), third)
    assert list(link.failure_log) == [first, second, third]
    assert [(e.to_state, e.reason) for e in link.transitions] == [(CircuitState.OPEN, "failure_threshold")]
    b.link(None)
    assert b.linked is None


def test_a_full_failure_log_takes_no_more_and_the_count_stays_exact(registry: Registry) -> None:
    # a full log keeps what it has until the store drains it: no old exception (with its frames) is
    # freed on the caller's thread, and the counter says how many the log missed
    link = Link()
    b = registry.get("flood", failure_threshold=10**6, on=Boom)
    b.link(link)
    errors = [Boom(str(i)) for i in range(5)]

    @circuit("flood")
    def fail(exc: BaseException) -> None:
        raise exc

    async def afail(exc: BaseException) -> None:
        raise exc

    wrapped = circuit("flood")(afail)
    for exc in errors[:2]:
        with pytest.raises(Boom):
            fail(exc)
    with pytest.raises(Boom):
        asyncio.run(wrapped(errors[2]))
    with pytest.raises(Boom), circuit("flood"):
        raise errors[3]
    b.record_failure(b.enter(), errors[4])
    assert list(link.failure_log) == errors[:3]
    assert b.stats().failures == 5
    link.failure_log.clear()  # the store drained it: the next failure is logged again
    with pytest.raises(Boom):
        fail(errors[0])
    assert list(link.failure_log) == [errors[0]]


def test_a_probe_asks_the_link_and_carries_its_lease(clock: FakeClock) -> None:
    b = CircuitBreaker("svc", clock=clock, failure_threshold=1, recovery_timeout=5)
    link = Link(lease=7)
    b.link(link)
    b.exit(b.enter(), Boom())
    clock.advance(5)
    permit = b.enter()
    assert permit.lease == 7
    b.exit(permit, None)
    assert link.done == [7] and b.state is CircuitState.CLOSED
    b.exit(b.enter(), Boom())
    clock.advance(5)
    link.lease = None  # another process holds the lease
    with pytest.raises(CircuitOpenError) as info:
        b.enter()
    assert (info.value.state, info.value.retry_after) == ("half_open", 2.5)


def test_no_result_sentinels_differ_from_every_value() -> None:
    from circuitry import _accel

    assert repr(_accel.NO_RESULT) == repr(PY_NO_RESULT) == "NO_RESULT"
    assert _accel.NO_RESULT is not None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11+")
async def test_an_exception_group_is_a_failure_when_on_matches_an_exception_in_it(registry: Registry) -> None:
    # An asyncio.TaskGroup raises a group: with on=ConnectionError it was ignored, however many of the
    # group's calls to the service failed.
    @circuit("svc", failure_threshold=1, on=ConnectionError)
    async def fan_out(fail: type[Exception]) -> None:
        async def one() -> None:
            raise fail("down")

        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined,unused-ignore]
            tg.create_task(one())

    with pytest.raises(BaseExceptionGroup):  # type: ignore[name-defined,unused-ignore]  # noqa: F821
        await fan_out(ValueError)
    assert (registry["svc"].state, registry["svc"].counts().ignored) == (CircuitState.CLOSED, 1)
    with pytest.raises(BaseExceptionGroup):  # type: ignore[name-defined,unused-ignore]  # noqa: F821
        await fan_out(ConnectionError)
    assert registry["svc"].state is CircuitState.OPEN
