"""The mistakes a new user makes, answered clearly (issue 11's table), one test per row."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import circuitry
from circuitry import (
    CircuitNotFoundError,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    Registry,
    circuit,
)

from .conftest import Boom

ROOT = Path(__file__).resolve().parent.parent


def test_decorating_a_class_is_refused_with_what_to_do(registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match=r"protects calls, not classes.*Decorate the methods"):
        @circuit("svc")
        class Client:
            def get(self) -> int:
                return 1


def test_bare_decorator_says_to_give_a_name() -> None:
    with pytest.raises(ConfigurationError, match=r'write @circuit\("name"\)'):
        @circuit  # type: ignore[arg-type]
        def fetch() -> None:
            pass


def test_a_typo_in_a_registry_lookup_names_the_circuits_and_the_close_one(registry: Registry) -> None:
    registry.get("weather_api")
    registry.get("payment_api")
    with pytest.raises(CircuitNotFoundError) as info:
        registry["wether_api"]
    text = str(info.value)
    assert "did you mean 'weather_api'?" in text
    assert "'payment_api'" in text
    assert isinstance(info.value, KeyError) and info.value.name == "wether_api"


def test_a_lookup_of_a_decorated_but_never_called_circuit_says_when_circuits_are_made(registry: Registry) -> None:
    @circuit("inventory_api", failure_threshold=3)
    def stock() -> int:
        return 1

    with pytest.raises(CircuitNotFoundError) as info:
        registry["inventory_api"]
    text = str(info.value)  # it said "did you mean 'inventory_api'?", the very name asked for
    assert "'inventory_api' is declared (decorated) but not yet called" in text and "first call" in text
    assert "did you mean" not in text
    stock()
    assert registry["inventory_api"].policy.failure_threshold == 3


def test_get_creates_a_missing_circuit_and_says_so(registry: Registry) -> None:
    assert "typo" not in registry
    registry.get("typo")
    assert "typo" in registry
    doc = registry.get.__doc__ or ""
    assert "created if there is none" in doc and "registry[name]" in doc


def test_a_fallback_missing_the_rejection_argument_fails_at_decoration(registry: Registry) -> None:
    def cached(city: str) -> str:
        return city

    with pytest.raises(ConfigurationError) as info:
        @circuit("weather_api", fallback=cached)
        def forecast(city: str, days: int = 1) -> str:
            return city

    assert "def cached(rejection: CircuitOpenError, city: str, days: int = 1)" in str(info.value)


def test_fallbacks_that_fit_are_accepted(registry: Registry) -> None:
    def exact(rejection: CircuitOpenError, city: str, *, units: str = "C") -> str:
        return f"cached {city}"

    def loose(rejection: CircuitOpenError, *args: object, **kwargs: object) -> str:
        return "cached"

    for fb in (exact, loose):
        @circuit(f"svc-{fb.__name__}", failure_threshold=1, fallback=fb)
        def forecast(city: str, *, units: str = "C") -> str:
            raise Boom()

        with pytest.raises(Boom):
            forecast("Lisbon")
        assert forecast("Lisbon", units="F").startswith("cached")


def test_a_sync_function_returning_a_coroutine_warns_and_is_not_a_success(registry: Registry) -> None:
    async def fetch() -> int:
        return 1

    @circuit("svc")
    def wrong() -> object:
        return fetch()

    with pytest.warns(RuntimeWarning, match="returned a coroutine without awaiting it") as record:
        coro = wrong()
    coro.close()  # type: ignore[attr-defined]
    # the warning points at the caller's line, not into circuitry (under mutation testing, a trampoline)
    assert not record[0].filename.startswith(str(Path(circuitry.__file__).parent)), record[0].filename
    s = registry["svc"].stats()
    assert (s.successes, s.ignored) == (0, 1)


def test_call_awaits_what_a_sync_callable_returns(registry: Registry) -> None:
    import asyncio

    async def fetch() -> int:
        raise Boom()

    c = circuit("svc", failure_threshold=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Boom):
            asyncio.run(c.call(lambda: fetch()))
    assert registry["svc"].state is CircuitState.OPEN


def test_the_failover_loop_fails_over_on_the_services_own_errors(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "failover.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("request")]
    assert lines[:3] == ["request 0: served by us-west (us-east failed: ConnectionError)",
                         "request 1: served by us-west (us-east failed: ConnectionError)",
                         "request 2: served by us-west (us-east refused: open)"]


def test_decorated_functions_carry_a_typed_circuit(registry: Registry) -> None:
    @circuit("svc")
    def get() -> int:
        return 1

    assert get.circuit is circuit("svc")
    assert get.circuit.breaker is registry.get("svc")


def test_an_installed_circuitry_is_typed_for_code_in_another_folder(tmp_path: Path) -> None:
    """README's install (pip install -e .) gives mypy, run from the user's folder, the package and
    its types: a decorated function keeps its signature and has a typed ``circuit``."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        from circuitry import Circuit, circuit

        @circuit("x")
        def f(a: int) -> int:
            return a

        class Client:
            @circuit("y")
            def get(self, key: str) -> int:
                return len(key)

        n: int = f(1)
        m: int = Client().get("k")
        c: Circuit = f.circuit
    """))
    bad = tmp_path / "bad.py"
    bad.write_text('from circuitry import circuit\n\n@circuit("x")\ndef f(a: int) -> int:\n    return a\n\nf("no")\n')
    ok = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py"],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "bad.py"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert wrong.returncode == 1 and 'incompatible type "str"; expected "int"' in wrong.stdout, wrong.stdout
