"""Invalid configuration fails at construction, naming the argument."""

from __future__ import annotations

import math
from typing import Any

import pytest

from circuitry import CircuitBreaker, ConfigurationError, Policy, circuit
from circuitry.testing import isolated_registry

BAD_VALUES = {
    "failure_threshold": [0, -1, 1.5, True, "5", None, 10**12, math.nan],
    "recovery_timeout": [0, -1, math.nan, math.inf, -math.inf, True, "60", None, 1e12],
    "half_open_max_calls": [0, -3, False, 2.0, 10**6],
    "success_threshold": [0, -1, True],
    "probe_timeout": [0, -5, math.nan, math.inf],
    "failure_rate_threshold": [0, -0.1, 1.5, math.nan, True, "0.5"],
    "window_duration": [0, -1, math.inf, 10**9],
    "slow_call_duration": [0, -1, math.nan],
    "backoff_factor": [0.5, 0, -2, math.inf, 10**6],
    "jitter": [-0.1, 1.5, math.nan],
    "on": [42, "ValueError", (), (ValueError, 3), KeyboardInterrupt, (ValueError, SystemExit)],
    "result_is_failure": [3, "x"],
    "retry_after": [3],
    "measure_latency": [1, "yes", None],
}


@pytest.mark.parametrize(("argument", "value"), [(k, v) for k, vs in BAD_VALUES.items() for v in vs])
def test_bad_value_raises_configuration_error_naming_the_argument(argument: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        Policy.from_kwargs({argument: value})


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        Policy(failure_threshold=0)


def test_zero_is_not_replaced_by_the_default() -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("x", failure_threshold=0)


def test_window_size_absurd_and_minimum_calls_above_window() -> None:
    with pytest.raises(ConfigurationError, match="window_size"):
        Policy(failure_rate_threshold=0.5, window_size=10**8)
    with pytest.raises(ConfigurationError, match="minimum_calls"):
        Policy(failure_rate_threshold=0.5, window_size=10, minimum_calls=20)


def test_settings_of_a_rule_without_the_rule_are_errors() -> None:
    """slow_call_rate_threshold=0.5 or minimum_calls=3 without a rule that reads them was accepted and
    did nothing, while window_size alone was refused."""
    with pytest.raises(ConfigurationError, match=r"^slow_call_rate_threshold needs the slow-call rule: set "
                                                 "slow_call_duration"):
        circuit("noop", slow_call_rate_threshold=0.5)
    with pytest.raises(ConfigurationError, match=r"^slow_call_rate_threshold needs"):
        Policy(failure_rate_threshold=0.5, slow_call_rate_threshold=0.5)  # a failure-rate rule reads no slowness
    with pytest.raises(ConfigurationError, match=r"^minimum_calls needs a rate rule: set failure_rate_threshold "
                                                 "or slow_call_duration"):
        circuit("noop", minimum_calls=3)
    assert Policy(failure_rate_threshold=0.5, minimum_calls=3).minimum_calls == 3
    assert Policy(slow_call_duration=1.0, slow_call_rate_threshold=0.5, minimum_calls=3).slow_call_rate_threshold == 0.5


def test_window_without_rule_and_both_windows_are_errors() -> None:
    with pytest.raises(ConfigurationError, match="window_size"):
        Policy(window_size=10)
    with pytest.raises(ConfigurationError, match="exclusive"):
        Policy(failure_rate_threshold=0.5, window_size=10, window_duration=5)


def test_rate_rule_defaults_to_a_count_window_of_100() -> None:
    assert Policy(failure_rate_threshold=0.5).window_size == 100


def test_max_recovery_timeout_below_recovery_timeout() -> None:
    with pytest.raises(ConfigurationError, match="max_recovery_timeout"):
        Policy(recovery_timeout=60, max_recovery_timeout=30)


def test_unknown_argument_is_named() -> None:
    with pytest.raises(ConfigurationError, match="failure_treshold: did you mean failure_threshold"):
        Policy.from_kwargs({"failure_treshold": 3})
    with pytest.raises(ConfigurationError, match=r"^unknown policy argument\(s\): wibble$"):
        Policy.from_kwargs({"wibble": 3})


@pytest.mark.parametrize(("peer", "ours"), [("fail_max", "failure_threshold="), ("reset_timeout", "recovery_timeout="),
                                            ("ttl", "recovery_timeout="), ("exclude", "on="),
                                            ("fallback_function", "fallback="), ("listeners", "hooks")])
def test_another_librarys_argument_is_answered_with_circuitrys_name(peer: str, ours: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"{peer}: use {ours}"):
        circuit("svc", **{peer: 3})


def is_server_error(thrown_type: type, exc: BaseException) -> bool:  # circuitbreaker's predicate shape
    return getattr(exc, "status", 500) >= 500


@pytest.mark.parametrize("argument", ["on", "expected_exception", "retry_after", "result_is_failure"])
def test_a_callable_that_cannot_take_one_argument_is_refused_at_construction(argument: str) -> None:
    """circuitbreaker's two-argument predicate, passed as ``expected_exception=``, raised at every call
    (logged, where logging was set up), and a predicate that raises counts the call: three 404s opened
    the circuit that circuitbreaker kept closed."""
    with isolated_registry():
        with pytest.raises(ConfigurationError, match=rf"^{argument} is called with one argument.*'is_server_error'"):
            circuit("svc", **{argument: is_server_error})
        with pytest.raises(ConfigurationError, match=r"^(on|retry_after|result_is_failure) is called"):
            Policy(**{"on" if argument == "expected_exception" else argument: is_server_error})
        circuit("svc", **{argument: lambda value, *rest: False})  # one argument is all it needs


def test_expected_exception_alias_and_exclusive_with_on() -> None:
    assert Policy.from_kwargs({"expected_exception": KeyError}).on is KeyError
    with pytest.raises(ConfigurationError, match="expected_exception"):
        Policy.from_kwargs({"expected_exception": KeyError, "on": KeyError})


@pytest.mark.parametrize("name", ["", "x" * 201, "a\nb", "tab\there", "nul\x00", 42, None, b"bytes"])
def test_bad_names(name: object) -> None:
    with pytest.raises(ConfigurationError, match="name"):
        CircuitBreaker(name, failure_threshold=1)  # type: ignore[arg-type]
    with isolated_registry(), pytest.raises(ConfigurationError, match="name"):
        circuit(name)  # type: ignore[arg-type]


def test_bad_clock_and_policy_object() -> None:
    with pytest.raises(ConfigurationError, match="clock"):
        CircuitBreaker("x", clock=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="policy"):
        CircuitBreaker("x", policy={"failure_threshold": 3})  # type: ignore[arg-type]


def test_circuit_rejects_bad_fallback_and_registry() -> None:
    with isolated_registry():
        with pytest.raises(ConfigurationError, match="fallback"):
            circuit("x", fallback=3)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="registry"):
            circuit("y", registry="default")  # type: ignore[arg-type]


def test_valid_policy_round_trips_as_dict() -> None:
    p = Policy(failure_threshold=3, on=(KeyError, TimeoutError), recovery_timeout=1)
    d = p.as_dict()
    assert d["failure_threshold"] == 3
    assert d["on"] == ["KeyError", "TimeoutError"]
    assert d["recovery_timeout"] == 1.0


def test_comparing_predicates_never_raises_and_tells_captured_values_apart() -> None:
    """``same_value`` runs in ``Registry.get``, on the caller's thread: a predicate that captures itself
    (a recursive one) recursed without end, an unbound captured name made every later value compare
    equal, and a default whose ``==`` raises escaped into the call."""
    from circuitry._policy import same_value

    def recursive(kind: type[BaseException]) -> Any:
        def pred(e: BaseException) -> bool:
            return pred(e.__cause__) if e.__cause__ is not None else isinstance(e, kind)
        return pred

    assert same_value(recursive(ConnectionError), recursive(ConnectionError))
    assert not same_value(recursive(ConnectionError), recursive(TimeoutError))

    def unbound_first(n: int) -> Any:
        def pred(e: BaseException) -> bool:
            return later is not None and n > 0  # ``later`` is bound only after pred is made
        if n > 100:
            later = 1
        return pred

    assert not same_value(unbound_first(1), unbound_first(2))
    assert same_value(unbound_first(1), unbound_first(1))

    class Unequal:
        def __eq__(self, other: object) -> bool:
            raise ValueError("ambiguous")

        __hash__ = object.__hash__

    def with_default(d: object) -> Any:
        def pred(e: BaseException, default: object = d) -> bool:
            return True
        return pred

    assert not same_value(with_default(Unequal()), with_default(Unequal()))
    with isolated_registry():
        circuit("svc", on=recursive(ConnectionError))
        circuit("svc", on=recursive(ConnectionError))  # the same policy, written again


def test_a_policy_alike_in_its_predicate_but_not_elsewhere_is_another_policy() -> None:
    def make(threshold: int) -> Policy:
        return Policy(failure_threshold=threshold, on=lambda e: isinstance(e, OSError))

    assert make(3).same_as(make(3))
    assert not make(3).same_as(make(4))
