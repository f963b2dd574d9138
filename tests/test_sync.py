"""The sync faces: decorator, ``with``, ``call()``, generators, methods, callable objects."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest

from circuitry import CircuitOpenError, CircuitState, Registry, circuit
from circuitry.testing import CapturedEvents, FakeClock

from .conftest import Boom, Other


def test_decorated_function_keeps_name_doc_signature(registry: Registry) -> None:
    @circuit("svc")
    def fetch(url: str, *, timeout: float = 1.0) -> str:
        """Fetch it."""
        return url

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch it."
    assert str(inspect.signature(fetch)) == "(url: 'str', *, timeout: 'float' = 1.0) -> 'str'"
    assert not inspect.iscoroutinefunction(fetch)
    assert fetch("a") == "a"
    assert fetch.circuit.breaker is registry["svc"]  # type: ignore[attr-defined]


def test_the_tripping_call_raises_the_callers_own_exception(registry: Registry) -> None:
    @circuit("svc", failure_threshold=2, recovery_timeout=10)
    def f() -> None:
        raise Boom("down")

    with pytest.raises(Boom):
        f()
    with pytest.raises(Boom):
        f()  # this one opens the circuit, and still raises Boom
    with pytest.raises(CircuitOpenError) as info:
        f()
    assert info.value.name == "svc"
    assert registry["svc"].stats().failures == 2


def test_non_matching_exceptions_pass_through_as_ignored(registry: Registry) -> None:
    calls: list[str] = []

    @circuit("svc", failure_threshold=2, on=Boom)
    def f(exc: Exception | None) -> None:
        calls.append("x")
        if exc:
            raise exc

    with pytest.raises(Boom):
        f(Boom())
    with pytest.raises(Other):
        f(Other())  # ignored: does not reset the count
    with pytest.raises(Boom):
        f(Boom())
    assert registry["svc"].state is CircuitState.OPEN
    assert registry["svc"].stats().ignored == 1


def test_predicate_and_tuple_classifiers(registry: Registry) -> None:
    @circuit("pred", failure_threshold=1, on=lambda e: "retryable" in str(e))
    def f(msg: str) -> None:
        raise Other(msg)

    with pytest.raises(Other):
        f("fatal")
    assert registry["pred"].state is CircuitState.CLOSED
    with pytest.raises(Other):
        f("retryable glitch")
    assert registry["pred"].state is CircuitState.OPEN

    @circuit("tuple", failure_threshold=1, expected_exception=(KeyError, Boom))
    def g() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        g()
    assert registry["tuple"].state is CircuitState.OPEN


def test_a_broken_predicate_counts_a_failure_and_keeps_the_callers_exception(registry: Registry) -> None:
    def predicate(exc: BaseException) -> bool:
        raise RuntimeError("bug in predicate")

    @circuit("svc", failure_threshold=1, on=predicate)
    def f() -> None:
        raise Boom()

    with pytest.raises(Boom):
        f()
    assert registry["svc"].state is CircuitState.OPEN


def test_result_predicate_counts_bad_values(registry: Registry, events: CapturedEvents) -> None:
    @circuit("svc", failure_threshold=2, result_is_failure=lambda r: r is None)
    def f(v: Any) -> Any:
        return v

    assert f(None) is None  # returned to the caller, counted as a failure
    assert f(1) == 1
    assert f(None) is None
    assert f(None) is None
    assert registry["svc"].state is CircuitState.OPEN
    assert events.of(events[0].kind)[0].error_type == "result_is_failure"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exceptions_propagate_uncounted(registry: Registry, exc: type[BaseException]) -> None:
    @circuit("svc", failure_threshold=1)
    def f() -> None:
        raise exc()

    with pytest.raises(exc):
        f()
    s = registry["svc"].stats()
    assert (s.state, s.failures, s.successes, s.cancelled) == (CircuitState.CLOSED, 0, 0, 1)


def test_keyboard_interrupt_releases_a_half_open_permit(registry: Registry, clock: FakeClock) -> None:
    mode = {"raise": Boom}

    @circuit("svc", failure_threshold=1, recovery_timeout=5)
    def f() -> None:
        raise mode["raise"]()

    with pytest.raises(Boom):
        f()
    clock.advance(5)
    mode["raise"] = KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        f()
    assert registry["svc"].stats().probes_in_flight == 0
    mode["raise"] = Boom
    with pytest.raises(Boom):
        f()  # a new probe was admitted
    assert registry["svc"].state is CircuitState.OPEN


def test_with_block(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=2)
    with c as b:
        pass
    assert b is registry["svc"]
    for _ in range(2):
        with pytest.raises(Boom), c:
            raise Boom()
    with pytest.raises(CircuitOpenError), c:
        raise AssertionError("body must not run while open")
    s = registry["svc"].stats()
    assert (s.successes, s.failures, s.rejected) == (1, 2, 1)


def test_with_block_ignores_non_matching_and_counts_cancel(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=1, on=Boom)
    with pytest.raises(Other), c:
        raise Other()
    with pytest.raises(KeyboardInterrupt), c:
        raise KeyboardInterrupt
    s = registry["svc"].stats()
    assert (s.ignored, s.cancelled, s.state) == (1, 1, CircuitState.CLOSED)


def test_nested_with_blocks_of_one_circuit(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=5)
    with c:
        with pytest.raises(Boom), c:
            raise Boom()
    s = registry["svc"].stats()
    assert (s.successes, s.failures) == (1, 1)


def test_exit_without_enter_is_an_error(registry: Registry) -> None:
    with pytest.raises(RuntimeError, match="without a matching"):
        circuit("svc").__exit__(None, None, None)


def test_call_method_on_circuit_and_breaker(registry: Registry) -> None:
    c = circuit("svc", failure_threshold=1)
    assert c.call(lambda a, b=0: a + b, 1, b=2) == 3
    assert registry["svc"].call(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        c.call(divmod, 1, 0)
    with pytest.raises(CircuitOpenError):
        c.call(divmod, 1, 1)


def test_fallback_receives_the_rejection_and_the_arguments(registry: Registry) -> None:
    seen: list[Any] = []

    def cached(rejection: CircuitOpenError, item: int, *, region: str) -> str:
        seen.append((rejection.name, item, region))
        return "cached"

    @circuit("svc", failure_threshold=1, fallback=cached)
    def f(item: int, *, region: str) -> str:
        raise Boom()

    with pytest.raises(Boom):
        f(1, region="eu")  # failures are not replaced by the fallback
    assert f(2, region="us") == "cached"
    assert seen == [("svc", 2, "us")]


def test_sync_function_with_async_fallback_is_a_configuration_error(registry: Registry) -> None:
    async def fb(rej: CircuitOpenError) -> None: ...

    from circuitry import ConfigurationError

    with pytest.raises(ConfigurationError, match="fallback"):
        circuit("svc", fallback=fb)(lambda: None)


def test_generators_are_one_call_each(registry: Registry, clock: FakeClock) -> None:
    @circuit("gen", failure_threshold=1, recovery_timeout=5)
    def numbers(n: int, fail: bool = False) -> Any:
        yield from range(n)
        if fail:
            raise Boom()
        return "done"

    assert inspect.isgeneratorfunction(numbers)
    assert list(numbers(3)) == [0, 1, 2]
    g = numbers(5)
    next(g)
    g.close()  # consumer stopped early: cancelled, not counted
    with pytest.raises(Boom):
        list(numbers(2, fail=True))
    s = registry["gen"].stats()
    assert (s.successes, s.cancelled, s.failures) == (1, 1, 1)
    with pytest.raises(CircuitOpenError):
        next(numbers(1))


def test_generator_send_and_return_value_pass_through(registry: Registry) -> None:
    @circuit("echo")
    def echo() -> Any:
        total = 0
        while True:
            v = yield total
            if v is None:
                return total
            total += v

    g = echo()
    assert next(g) == 0
    assert g.send(2) == 2
    assert g.send(3) == 5
    with pytest.raises(StopIteration) as info:
        g.send(None)
    assert info.value.value == 5


def test_methods_classmethods_staticmethods(registry: Registry) -> None:
    class Client:
        def __init__(self) -> None:
            self.n = 0

        @circuit("m", failure_threshold=3)
        def method(self, x: int) -> int:
            self.n += x
            return self.n

        @circuit("cm")
        @classmethod
        def make(cls, v: int) -> tuple[type, int]:
            return cls, v

        @classmethod
        @circuit("cm2")
        def make2(cls, v: int) -> tuple[type, int]:
            return cls, v

        @circuit("sm")
        @staticmethod
        def util(v: int) -> int:
            return v * 2

    c = Client()
    assert c.method(2) == 2 and c.method(3) == 5
    assert Client.make(1) == (Client, 1)
    assert c.make2(4) == (Client, 4)
    assert Client.util(5) == 10 and c.util(6) == 12
    assert registry["m"].stats().successes == 2
    assert {"cm", "cm2", "sm"} <= set(registry.names())


def test_callable_objects_are_wrapped_transparently(registry: Registry) -> None:
    class Api:
        version = "2"

        def __call__(self, x: int) -> int:
            return x + 1

    api = circuit("obj")(Api())
    assert api(1) == 2
    assert api.version == "2"  # type: ignore[attr-defined]
    assert isinstance(api, Api)
    partial = circuit("partial")(functools.partial(pow, 2))
    assert partial(10) == 1024
    assert registry["obj"].stats().successes == 1


def test_decorating_a_non_callable_is_an_error(registry: Registry) -> None:
    from circuitry import ConfigurationError

    with pytest.raises(ConfigurationError, match="callables"):
        circuit("svc")(42)  # type: ignore[arg-type]


def test_decorator_looks_the_breaker_up_at_call_time() -> None:
    from circuitry.testing import isolated_registry

    @circuit("import_time", failure_threshold=1)
    def f() -> None:
        raise Boom()

    with isolated_registry() as first:
        with pytest.raises(Boom):
            f()
        assert first["import_time"].state is CircuitState.OPEN
    with isolated_registry() as second:
        with pytest.raises(Boom):
            f()  # a fresh registry: a fresh breaker with the decorator's policy
        assert second["import_time"].policy.failure_threshold == 1
        second.reconfigure("import_time", failure_threshold=3)
        second["import_time"].reset()
        with pytest.raises(Boom):
            f()
        assert second["import_time"].state is CircuitState.CLOSED  # reconfiguration took effect


def test_explicit_registry(clock: FakeClock) -> None:
    reg = Registry(clock=clock, hooks=[])

    @circuit("svc", registry=reg, failure_threshold=1)
    def f() -> int:
        return 1

    assert f() == 1
    assert reg["svc"].stats().successes == 1
