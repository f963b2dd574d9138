"""Registries (get-or-create, conflicts, iteration, memory) and event hooks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from circuitry import (
    CircuitBreakerError,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    Event,
    EventKind,
    Registry,
    RegistryConflictError,
    StructlogHook,
    circuit,
    default_registry,
)
from circuitry.testing import CapturedEvents, FakeClock, capture_events, isolated_registry

from .conftest import Boom, measure_in_subprocess


def test_get_or_create_returns_the_same_breaker(registry: Registry) -> None:
    a = registry.get("svc", failure_threshold=3)
    assert registry.get("svc") is a
    assert registry.get("svc", failure_threshold=3) is a
    assert "svc" in registry and len(registry) == 1 and list(registry) == [a]


def test_a_conflicting_policy_is_an_error_not_an_overwrite(registry: Registry) -> None:
    a = registry.get("svc", failure_threshold=3)
    with pytest.raises(RegistryConflictError, match="failure_threshold: 3 -> 4"):
        registry.get("svc", failure_threshold=4)
    with pytest.raises(RegistryConflictError):
        circuit("svc", failure_threshold=7)
    assert registry["svc"] is a and a.policy.failure_threshold == 3


def test_a_predicate_written_inline_is_the_same_policy_each_time(registry: Registry) -> None:
    """``with circuit("billing", on=lambda e: ...)`` makes a new function on every run: compared as objects,
    the second run was "another policy" with an empty list of differences. The same code with the same
    captured values is the same policy; other captured values are a conflict that names the argument."""

    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    def billing(limit: int) -> Any:
        return circuit("billing", registry=registry, failure_threshold=2,
                       on=lambda e: not (isinstance(e, HTTPError) and e.status < limit))

    for _ in range(3):
        with billing(500):
            pass
    with pytest.raises(HTTPError), billing(500):
        raise HTTPError(404)  # not counted: the first run's predicate is the one in force, and it is alike
    assert registry["billing"].stats().failures == 0
    with pytest.raises(RegistryConflictError, match=r"\(on: another function '.*<lambda>'"):
        billing(400)


def test_a_lookup_without_a_policy_leaves_the_policy_to_the_first_one_given(registry: Registry) -> None:
    """``circuit("pay").breaker`` (a health endpoint imported first) made the breaker with the defaults,
    and the decorator declared later was refused: RegistryConflictError (failure_threshold: 5 -> 3), so
    whether an application started depended on its import order. A lookup without a policy means "the
    circuit of that name"; the first policy given sets it, on the same breaker, its state kept."""
    looked_up = circuit("pay").breaker
    looked_up.force_open()

    @circuit("pay", failure_threshold=3)
    def charge() -> int:
        return 1

    assert charge.circuit.breaker is looked_up and looked_up.policy.failure_threshold == 3
    assert looked_up.state is CircuitState.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        charge()
    assert looked_up.stats().rejected == 1
    with pytest.raises(RegistryConflictError, match="failure_threshold: 3 -> 4"):
        circuit("pay", failure_threshold=4)  # a policy was given: another one is a conflict
    assert circuit("pay").breaker is looked_up and looked_up.policy.failure_threshold == 3

    plain = registry.get("plain")
    assert registry.get("plain", failure_threshold=2) is plain and plain.policy.failure_threshold == 2
    with pytest.raises(RegistryConflictError, match="failure_threshold: 2 -> 5"):
        registry.get("plain", failure_threshold=5)
    registry.get("given", failure_threshold=5)  # the defaults, given: they are its policy now
    with pytest.raises(RegistryConflictError, match="failure_threshold: 5 -> 3"):
        registry.get("given", failure_threshold=3)


def test_an_adjusted_circuit_is_still_named_with_the_policy_the_code_gives(registry: Registry) -> None:
    """Automatic adjustment (or apply_recommendation) changes a breaker's settings; the code goes on naming
    the circuit with the policy it always gave. Every such call raised RegistryConflictError
    (recovery_timeout: 15.0 -> 60.0): 145 lookups of 145 per worker in a review's run, and the README's
    failover loop, which names its circuits per request."""
    from dataclasses import replace

    from circuitry.runners.adjuster import _reconfigure, settings_of

    b = registry.get("payments", failure_threshold=5, recovery_timeout=60, on=ConnectionError)
    adjusted = replace(settings_of(b), threshold=6, timeout=15.0)
    assert _reconfigure(b, adjusted)  # as the analyst adjusts it, and every process follows
    for _ in range(3):
        assert registry.get("payments", failure_threshold=5, recovery_timeout=60, on=ConnectionError) is b
        with circuit("payments", failure_threshold=5, recovery_timeout=60, on=ConnectionError):
            pass
    assert (b.policy.failure_threshold, b.policy.recovery_timeout) == (6, 15.0)  # the adjustment stands
    assert registry.given_policy("payments") is not None
    assert registry.given_policy("payments").failure_threshold == 5  # type: ignore[union-attr]
    with pytest.raises(RegistryConflictError, match="failure_threshold: 5 -> 7"):
        registry.get("payments", failure_threshold=7, recovery_timeout=60, on=ConnectionError)
    registry.reconfigure("payments", failure_threshold=7)  # the application's own change: given now
    assert registry.get("payments", failure_threshold=7) is b and b.policy.failure_threshold == 7


def test_the_failover_test_runs_first_in_a_fresh_process(registry: Registry) -> None:
    """docs/how-to/failover.md's test opens circuits by hand before the code under test names their
    policy: run first, it raised RegistryConflictError."""
    import asyncio

    async def fetch() -> str:
        for region in ("us-east", "eu-central"):
            try:
                async with circuit(f"fo_{region}", failure_threshold=3, on=ConnectionError):
                    return region
            except CircuitOpenError:
                continue
        raise RuntimeError("no region")

    circuit("fo_us-east").breaker.force_open()
    assert asyncio.run(fetch()) == "eu-central"
    assert registry["fo_us-east"].policy.on is ConnectionError


def _module(folder: Any, name: str, source: str) -> Any:
    import importlib
    import sys
    import textwrap

    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_a_reloaded_module_declares_its_circuits_again_and_its_classes_count(
        registry: Registry, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """importlib.reload() of unchanged code raised RegistryConflictError ("on: another function
    'PaymentError'"): the reloaded module's class is a new object. A class of the same module and name is
    the same setting -- and the breaker must then test exceptions against the new class, or the reloaded
    module's failures would never count."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    mod = _module(tmp_path, "circuitry_reload_pay", """
        from circuitry import circuit

        class PaymentError(Exception):
            pass

        @circuit("reload_pay", failure_threshold=2, on=PaymentError)
        def charge(fail: bool) -> str:
            if fail:
                raise PaymentError("declined")
            return "charged"
    """)
    assert mod.charge(False) == "charged"
    breaker = registry["reload_pay"]
    old_class = mod.PaymentError
    mod = importlib.reload(mod)
    assert mod.PaymentError is not old_class
    assert mod.charge.circuit.breaker is breaker and breaker.policy.on is mod.PaymentError
    for _ in range(2):
        with pytest.raises(mod.PaymentError):
            mod.charge(True)
    assert breaker.stats().failures == 2 and breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        mod.charge(False)


def test_a_reloaded_module_with_inline_predicates_is_the_same_policy(
        registry: Registry, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload compiles the module again: its lambdas have new code objects, equal to the old ones, and
    comparing code objects by identity made the unchanged module "another policy". A changed module is
    still a conflict."""
    import importlib
    import textwrap

    monkeypatch.syspath_prepend(str(tmp_path))
    source = """
        from circuitry import circuit

        @circuit("reload_pred", on=lambda exc: isinstance(exc, ConnectionError),
                 failure_threshold=THRESHOLD,
                 result_is_failure=lambda r: r is None)
        def call() -> int:
            return 1
    """
    mod = _module(tmp_path, "circuitry_reload_pred", source.replace("THRESHOLD", "2"))
    assert mod.call() == 1
    mod = importlib.reload(mod)
    assert mod.call() == 1 and registry["reload_pred"].policy.failure_threshold == 2
    (tmp_path / "circuitry_reload_pred.py").write_text(
        textwrap.dedent(source).replace("THRESHOLD", "30").replace("r is None", "r is None or r == 0"))
    with pytest.raises(RegistryConflictError, match="failure_threshold: 2 -> 30, result_is_failure: another function"):
        importlib.reload(mod)


def test_a_conflict_between_classes_of_one_name_says_class() -> None:
    """Two classes of one name were called "another function 'PaymentError'"."""
    from circuitry import Policy

    def local_class() -> type[Exception]:
        class PaymentError(Exception):
            pass
        return PaymentError

    one, two = local_class(), local_class()  # a class made inside a function is a new class each run
    assert not Policy(on=one).same_as(Policy(on=two))
    assert Policy(on=(one,)).differences(Policy(on=(two,))) == [
        f"on: another class ['{__name__}.{one.__qualname__}'] of the same name (a class defined inside a "
        "function is a new class on every run of it: define it once, at module level)"]
    other = type("PaymentError", (Exception,), {"__module__": "billing.errors", "__qualname__": "PaymentError"})
    mine = type("PaymentError", (Exception,), {"__module__": "shop.errors", "__qualname__": "PaymentError"})
    assert Policy(on=mine).differences(Policy(on=other)) == [
        "on: another class, 'shop.errors.PaymentError' -> 'billing.errors.PaymentError'"]


def test_registry_conflict_error_is_a_configuration_error() -> None:
    assert issubclass(RegistryConflictError, ValueError)
    assert issubclass(CircuitOpenError, CircuitBreakerError)


def test_concurrent_get_or_create_makes_one_breaker() -> None:
    reg = Registry(hooks=[])
    got = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        got.append(reg.get("race"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in got}) == 1


def test_reset_all_and_remove(registry: Registry) -> None:
    for name in ("a", "b"):
        registry.get(name).force_open()
    registry.reset_all()
    assert all(b.state is CircuitState.CLOSED for b in registry)
    registry.remove("a")
    assert registry.names() == ["b"]
    registry.clear()
    assert len(registry) == 0


def test_isolated_registry_restores_the_default() -> None:
    before = default_registry()
    with isolated_registry() as reg:
        assert default_registry() is reg
    assert default_registry() is before


def test_a_decorators_policy_holds_in_a_registry_swapped_in_later() -> None:
    """A function decorated before the default registry was swapped (an import-time decorator under
    ``isolated_registry``) keeps its policy there, even when its name is looked up before it runs;
    the swapped-in registry may still define the name its own way."""
    @circuit("swap-declared", failure_threshold=3, recovery_timeout=7)
    def call() -> int:
        return 1

    with isolated_registry() as reg:
        looked_up = reg.get("swap-declared")  # before the function first runs
        assert (looked_up.policy.failure_threshold, looked_up.policy.recovery_timeout) == (3, 7)
        assert call() == 1 and call.circuit.breaker is looked_up
    with isolated_registry() as reg:
        @circuit("swap-declared", failure_threshold=9)  # this registry's own definition wins
        def other() -> int:
            return 2

        assert other() == 2 and reg["swap-declared"].policy.failure_threshold == 9
    with isolated_registry() as reg:  # the previous isolated registry's own definition stayed there
        assert reg.get("swap-declared").policy.failure_threshold == 3
    assert default_registry().get("swap-declared").policy.failure_threshold == 3
    default_registry().remove("swap-declared")


def test_idle_breakers_cost_little_memory() -> None:
    per_breaker = measure_in_subprocess("""
        import tracemalloc
        from circuitry import Registry
        reg = Registry(hooks=[])
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            reg.get(f"svc-{i}")
        print((tracemalloc.get_traced_memory()[0] - base) // 2000)
    """)
    assert per_breaker < 2048, per_breaker  # measured about 1.3 KB: bounded, independent of traffic


def test_an_idle_breakers_memory_does_not_grow_with_traffic() -> None:
    grown = measure_in_subprocess("""
        import tracemalloc
        from circuitry import Registry
        class Boom(Exception):
            pass
        reg = Registry(hooks=[])
        b = reg.get("svc", failure_rate_threshold=0.5, window_size=50, minimum_calls=50)

        def traffic(n):
            for i in range(n):
                p = b.admit()
                if i % 3:
                    b.record_success(p)
                else:
                    b.record_failure(p, Boom())

        traffic(1000)  # warm up every path once (interpreter caches, free lists)
        tracemalloc.start()
        traffic(1000)  # what tracing itself allocates once (on 3.10, a few frames: ~6 KB)
        base = tracemalloc.get_traced_memory()[0]
        traffic(20_000)
        print(tracemalloc.get_traced_memory()[0] - base)
    """)
    assert grown < 2048, grown


def test_hooks_receive_frozen_events(registry: Registry, clock: FakeClock) -> None:
    with capture_events(registry) as events:
        b = registry.get("svc", failure_threshold=1, recovery_timeout=5)
        b.record_failure(b.admit(), Boom("x"))
        with pytest.raises(CircuitOpenError):
            b.admit()
    assert [e.kind for e in events] == [EventKind.FAILURE, EventKind.TRANSITION, EventKind.REJECTION]
    with pytest.raises(AttributeError):
        events[0].circuit = "other"  # type: ignore[misc]
    assert events[1].as_dict()["event"] == "circuitry.circuit_opened"


def test_a_hook_that_raises_never_changes_a_calls_outcome(registry: Registry) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    registry.add_hook(broken)

    @circuit("svc", failure_threshold=1)
    def f(fail: bool) -> int:
        if fail:
            raise Boom()
        return 1

    assert f(False) == 1
    with pytest.raises(Boom):
        f(True)
    with pytest.raises(CircuitOpenError):
        f(False)


def test_hooks_run_after_the_lock_is_released(registry: Registry) -> None:
    seen = []

    def reenter(event: Event) -> None:
        b = registry["svc"]
        assert not b._lock.locked()
        seen.append((event.name, b.state))  # calling back into the breaker must not deadlock

    registry.add_hook(reenter)
    b = registry.get("svc", failure_threshold=1)
    b.record_failure(b.admit(), Boom())
    with pytest.raises(CircuitOpenError):
        b.admit()
    assert [n for n, _ in seen] == ["circuitry.call_failed", "circuitry.circuit_opened",
                                    "circuitry.call_rejected"]


def test_hook_kinds_filter_what_is_built(registry: Registry) -> None:
    only = CapturedEvents()
    only.kinds = frozenset({EventKind.TRANSITION})  # type: ignore[misc]
    registry.add_hook(only)
    b = registry.get("svc", failure_threshold=2)
    b.record_failure(b.admit(), Boom())
    assert only == []
    b.record_failure(b.admit(), Boom())
    assert only.names() == ["circuitry.circuit_opened"]
    assert registry.dispatcher.failure == ()


@pytest.mark.parametrize("kinds", [{"transition"}, "transition", [EventKind.TRANSITION]])
def test_hook_kinds_may_be_given_by_value(registry: Registry, kinds: Any) -> None:
    """``kinds = {"transition"}`` (the values, as strings) wanted transitions and got nothing, silently."""
    seen: list[str] = []

    def on_event(evt: Event) -> None:  # any parameter name
        seen.append(evt.kind.value)

    on_event.kinds = kinds  # type: ignore[attr-defined]
    registry.add_hook(on_event)
    b = registry.get("svc", failure_threshold=1)
    b.record_failure(b.admit(), Boom())
    assert seen == ["transition"]


@pytest.mark.parametrize("kinds", [{"transitions"}, {"open"}, 3])
def test_hook_kinds_that_are_no_event_kinds_are_refused(registry: Registry, kinds: Any) -> None:
    def on_event(evt: Event) -> None:
        pass

    on_event.kinds = kinds  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"kinds=.*'transition', 'rejection', 'failure'"):
        registry.add_hook(on_event)
    with pytest.raises(ConfigurationError, match="kinds="):
        Registry(hooks=[on_event])


def test_exactly_one_event_per_transition(registry: Registry, clock: FakeClock, events: CapturedEvents) -> None:
    b = registry.get("svc", failure_threshold=1, recovery_timeout=1)
    for _ in range(20):
        b.record_failure(b.admit(), Boom())
        clock.advance(1)
        b.state
        b.state
        b.record_success(b.admit())
    assert events.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")] * 20


def test_structlog_hook_logs_dotted_past_tense_names() -> None:
    from structlog.testing import capture_logs

    hook = StructlogHook(kinds=EventKind)
    reg = Registry(hooks=[hook], clock=FakeClock())
    b = reg.get("svc", failure_threshold=1)
    with capture_logs() as logs:
        b.record_failure(b.admit(), Boom("down"))
        with pytest.raises(CircuitOpenError):
            b.admit()
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("circuitry.call_failed", "debug"),
        ("circuitry.circuit_opened", "warning"),
        ("circuitry.call_rejected", "info"),
    ]
    assert logs[1]["circuit"] == "svc" and logs[1]["reason"] == "failure_threshold"


def test_non_callable_hook_is_rejected() -> None:
    from circuitry import ConfigurationError

    with pytest.raises(ConfigurationError, match="hooks"):
        Registry(hooks=[42])  # type: ignore[list-item]


def test_hooks_added_later_see_what_decorated_calls_do(registry: Registry) -> None:
    """The faces count failures and refuse calls inline only while nobody listens; a hook added later
    switches them to the path that emits events, and removing it switches back."""

    @circuit("late", failure_threshold=2, recovery_timeout=60)
    def f() -> None:
        raise Boom()

    with pytest.raises(Boom):
        f()
    captured = CapturedEvents()
    registry.add_hook(captured)
    with pytest.raises(Boom):
        f()  # counted, and emitted: the second failure opens the circuit
    with pytest.raises(CircuitOpenError):
        f()
    assert captured.names() == ["circuitry.call_failed", "circuitry.circuit_opened", "circuitry.call_rejected"]
    registry.remove_hook(captured)
    with pytest.raises(CircuitOpenError):
        f()
    assert len(captured) == 3
    assert registry["late"].stats().rejected == 2


def test_two_decorations_with_different_policies_conflict_before_any_call(registry: Registry) -> None:
    circuit("declared", failure_threshold=3)
    assert "declared" not in registry  # declared, not created
    with pytest.raises(RegistryConflictError, match="failure_threshold: 3 -> 4"):
        circuit("declared", failure_threshold=4)
    assert registry.get("declared").policy.failure_threshold == 3  # created with the declared policy
