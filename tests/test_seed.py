"""The seed's examples (docs: database-circuit-breaker.md), with only the import changed."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from circuitry import (
    CircuitBreakerError,
    ConfigurationError,
    DatabaseCircuitBreaker,
    MultiServiceDatabaseCircuitBreaker,
    RegistryConflictError,
)

ROOT = Path(__file__).resolve().parent.parent


class ApiClient:
    def __init__(self) -> None:
        self.down = False

    async def generate(self, prompt: str, model: str) -> str:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("openrouter unavailable")
        return f"{model}: {prompt}"


async def test_basic_usage(tmp_path: Path) -> None:
    alerts: list[dict[str, Any]] = []

    def my_alert_handler(alert_data: dict[str, Any]) -> None:
        alerts.append(alert_data)

    api_client = ApiClient()
    prompt, model = "hello", "gpt"
    breaker = DatabaseCircuitBreaker(
        db_path=str(tmp_path / "pipeline.db"),
        service_name="openrouter_api",
        failure_threshold=5,
        recovery_timeout=60,
        enable_alerts=True,
        alert_callback=my_alert_handler,
    )
    result = await breaker.call(api_client.generate, prompt, model)
    assert result == "gpt: hello"
    api_client.down = True
    for _ in range(5):
        with pytest.raises(ConnectionError):
            await breaker.call(api_client.generate, prompt, model)
    rejected = False
    try:
        result = await breaker.call(api_client.generate, prompt, model)
    except CircuitBreakerError:
        rejected = True  # "Circuit is open, handle accordingly"
    assert rejected


async def test_multi_service_management(tmp_path: Path) -> None:
    class PaymentApi:
        async def process(self, transaction: dict[str, int]) -> str:
            return f"processed {transaction['amount']}"

    async def check_stock(item_id: int) -> int:
        return item_id * 2

    payment_api, transaction, item_id = PaymentApi(), {"amount": 10}, 21
    manager = MultiServiceDatabaseCircuitBreaker(db_path=str(tmp_path / "pipeline.db"), enable_alerts=True)
    breaker = await manager.get_breaker("payment_api")
    result = await breaker.call(payment_api.process, transaction)
    assert result == "processed 10"
    result = await manager.call("inventory_api", check_stock, item_id)
    assert result == 42
    attention_services = manager.get_services_needing_attention()
    assert attention_services == []
    (await manager.get_breaker("payment_api")).breaker.force_open()
    attention = manager.get_services_needing_attention()
    assert [s["service_name"] for s in attention] == ["payment_api"]


async def test_get_stats_keys_and_values(tmp_path: Path) -> None:
    breaker = DatabaseCircuitBreaker(db_path=str(tmp_path / "stats.db"), service_name="stats_api",
                                     failure_threshold=3, recovery_timeout=60)

    async def ok() -> int:
        return 1

    async def bad() -> int:
        raise TimeoutError

    for _ in range(7):
        await breaker.call(ok)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await breaker.call(bad)
    stats = breaker.get_stats()
    assert set(stats) >= {"state", "failure_count", "success_rate", "latest_pattern", "last_hour_metrics",
                          "unacknowledged_alerts"}
    assert stats["state"] == "closed"
    assert stats["failure_count"] == 2
    assert stats["success_rate"] == pytest.approx(77.8)
    hour = stats["last_hour_metrics"]
    assert set(hour) >= {"total_calls", "success_rate", "circuit_open_duration"}
    assert hour["total_calls"] == 9
    assert hour["success_rate"] == pytest.approx(77.8)
    assert hour["circuit_open_duration"] == 0


async def test_reset_and_the_alert_query(tmp_path: Path) -> None:
    db = tmp_path / "pipeline.db"
    breaker = DatabaseCircuitBreaker(db_path=str(db), service_name="svc", failure_threshold=1)

    async def bad() -> None:
        raise ValueError

    with pytest.raises(ValueError):
        await breaker.call(bad)
    assert breaker.get_stats()["state"] == "open"
    await breaker.reset()  # "Manually reset if needed"
    assert breaker.get_stats()["state"] == "closed"
    service_name = "svc"
    with sqlite3.connect(db) as conn:
        cursor = conn.cursor()
        cursor.execute("""
            SELECT * FROM circuit_breaker_alerts
            WHERE service_name = ? AND acknowledged = FALSE
            ORDER BY created_at DESC
        """, (service_name,))
        assert isinstance(cursor.fetchall(), list)


def test_recommendations_have_the_seed_keys(tmp_path: Path) -> None:
    breaker = DatabaseCircuitBreaker(db_path=str(tmp_path / "r.db"), service_name="rec")
    rec = breaker.get_recommendations()
    assert set(rec) == {"has_recommendations", "message", "current_threshold", "recommended_threshold",
                        "current_timeout", "recommended_timeout", "confidence", "primary_pattern"}


def test_example_scenarios() -> None:
    class RateLimitError(Exception):
        pass

    class OperationalError(Exception):
        pass

    breaker = DatabaseCircuitBreaker(
        service_name="api_rate_limited",
        failure_threshold=3,  # Open quickly on rate limit errors
        recovery_timeout=300,  # Wait 5 minutes before retry
        expected_exception=RateLimitError,
    )
    assert breaker.breaker.policy.on is RateLimitError
    breaker = DatabaseCircuitBreaker(
        service_name="db_heavy_query",
        failure_threshold=10,  # Allow more failures for transient issues
        recovery_timeout=30,  # Quick recovery for database
        expected_exception=(OperationalError, TimeoutError),
    )
    assert breaker.breaker.policy.failure_threshold == 10


async def test_multi_region_failover() -> None:
    async def api_call(region: str) -> str:
        if region == "us-east":
            raise ConnectionError
        return region

    manager = MultiServiceDatabaseCircuitBreaker()
    (await manager.get_breaker("api_us-east")).breaker.force_open()
    regions = ["us-east", "us-west", "eu-central"]
    result = None
    for region in regions:
        try:
            breaker = await manager.get_breaker(f"api_{region}")
            result = await breaker.call(api_call, region)
            break  # Success, exit loop
        except CircuitBreakerError:
            continue  # Try next region
    assert result == "us-west"


def test_the_migration_adds_the_tables_to_an_existing_database(tmp_path: Path) -> None:
    db = tmp_path / "pipeline.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE cards (id INTEGER PRIMARY KEY, front TEXT)")
        conn.execute("INSERT INTO cards (front) VALUES ('hola')")
    sql = (ROOT / "migrations" / "008_add_circuit_breaker_tracking.sql").read_text()
    for _ in range(2):  # idempotent: `sqlite3 pipeline.db < migrations/008_...sql` twice is fine
        with sqlite3.connect(db) as conn:
            conn.executescript(sql)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("SELECT front FROM cards").fetchall() == [("hola",)]
    assert {"circuit_breaker_states", "circuit_breaker_events", "circuit_breaker_failure_patterns",
            "circuit_breaker_metrics", "circuit_breaker_alerts"} <= tables


def test_seed_columns_exist(tmp_path: Path) -> None:
    db = tmp_path / "cols.db"
    with sqlite3.connect(db) as conn:
        conn.executescript((ROOT / "migrations" / "008_add_circuit_breaker_tracking.sql").read_text())
        cols = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in (
            "circuit_breaker_states", "circuit_breaker_events", "circuit_breaker_failure_patterns",
            "circuit_breaker_alerts")}
    assert cols["circuit_breaker_states"] >= {"service_name", "current_state", "failure_count", "failure_threshold",
                                              "recovery_timeout", "last_failure_time", "state_changed_at"}
    assert cols["circuit_breaker_events"] >= {"service_name", "event_type", "from_state", "to_state", "error_type",
                                              "error_message", "additional_data"}
    assert cols["circuit_breaker_failure_patterns"] >= {
        "service_name", "pattern_type", "time_window_seconds", "failure_count", "error_rate",
        "suggested_threshold", "suggested_timeout", "confidence_score"}
    assert cols["circuit_breaker_alerts"] >= {"service_name", "alert_type", "severity", "message", "details",
                                              "acknowledged", "created_at"}


def test_service_name_is_required() -> None:
    with pytest.raises(ConfigurationError, match="service_name"):
        DatabaseCircuitBreaker()


def test_the_migration_runner_adds_the_tables_to_an_existing_database(tmp_path: Path) -> None:
    """`python scripts/run_migrations.py` (the seed's "migration runner"), run on an application's database."""
    db = tmp_path / "pipeline.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE cards (id INTEGER PRIMARY KEY, front TEXT)")
        conn.execute("INSERT INTO cards (front) VALUES ('hola')")
    env = {k: v for k, v in os.environ.items() if k != "CIRCUITRY_DB"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "run_migrations.py"), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    first = run("pipeline.db")
    assert first.returncode == 0, first.stderr
    assert "applied migration(s) 8" in first.stdout
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("SELECT front FROM cards").fetchall() == [("hola",)]
    assert {"circuit_breaker_states", "circuit_breaker_events", "circuit_breaker_failure_patterns",
            "circuit_breaker_metrics", "circuit_breaker_alerts"} <= tables
    again = run("--db", str(db), "--json")  # idempotent
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["applied"] == []
    default = run()  # no argument: where the breakers of the examples without db_path persist
    assert default.returncode == 0, default.stderr
    assert (tmp_path / "circuitry.db").exists()
    env["CIRCUITRY_DB"] = ":memory:"
    memory = run()
    assert memory.returncode == 2 and "no database to migrate" in memory.stderr


async def test_db_path_memory_keeps_the_breakers_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``CIRCUITRY_DB=:memory:`` does: no file named ':memory:' in the working directory."""
    monkeypatch.chdir(tmp_path)
    breaker = DatabaseCircuitBreaker(db_path=":memory:", service_name="in_memory", failure_threshold=2)

    async def bad() -> None:
        raise TimeoutError

    for _ in range(2):
        with pytest.raises(TimeoutError):
            await breaker.call(bad)
    assert breaker.registry.store is None
    assert breaker.get_stats()["state"] == "open"
    assert DatabaseCircuitBreaker(db_path=":memory:", service_name="in_memory",
                                  failure_threshold=2).breaker is breaker.breaker
    manager = MultiServiceDatabaseCircuitBreaker(db_path=":memory:")
    assert (await manager.get_breaker("in_memory", failure_threshold=2)).breaker is breaker.breaker
    assert os.listdir(tmp_path) == []


async def test_get_breaker_with_another_policy_is_a_conflict(tmp_path: Path) -> None:
    manager = MultiServiceDatabaseCircuitBreaker(db_path=str(tmp_path / "pipeline.db"))
    breaker = await manager.get_breaker("other", failure_threshold=3)
    assert await manager.get_breaker("other", failure_threshold=3) is breaker
    assert await manager.get_breaker("other") is breaker
    with pytest.raises(RegistryConflictError, match="failure_threshold: 3 -> 4"):
        await manager.get_breaker("other", failure_threshold=4)
    assert breaker.breaker.policy.failure_threshold == 3


async def test_get_breaker_with_an_inline_predicate_again_is_the_same_policy() -> None:
    """get_breaker("svc", on=lambda e: ...) awaited twice raised RegistryConflictError "another policy ()"
    -- with nothing in the list -- where circuit() and DatabaseCircuitBreaker accept it: the manager
    compared policies as objects. It now compares them as the registry does."""
    manager = MultiServiceDatabaseCircuitBreaker(db_path=":memory:")

    def get(status: int) -> Any:
        return manager.get_breaker("inline_svc", on=lambda e: isinstance(e, ConnectionError) or status > 0)

    breaker = await get(1)
    assert await get(1) is breaker
    with pytest.raises(RegistryConflictError, match=r"\(on: another function '.*<lambda>'"):
        await get(0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"expected_exception": "RateLimitError"}, "^expected_exception must be an exception type"),
    ({"service_name": 123}, r"^service_name must be a str, got 123 \(int\)"),
    ({"service_name": ""}, "^service_name must be 1 to 200 characters"),
    ({"service_name": "a\nb"}, "^service_name must not contain control"),
])
def test_errors_name_the_argument_the_database_api_was_given(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        DatabaseCircuitBreaker(**{"db_path": ":memory:", "service_name": "named", **kwargs})


async def test_calling_something_not_callable_names_fn() -> None:
    breaker = DatabaseCircuitBreaker(db_path=":memory:", service_name="not_callable")
    with pytest.raises(TypeError, match=r"^fn must be callable, got None"):
        await breaker.call(None)  # type: ignore[arg-type]
    assert breaker.breaker.stats().ignored == 0  # refused before the breaker saw it


def test_after_a_restart_the_success_rate_is_the_last_hours(tmp_path: Path) -> None:
    """A new process that has decided no call yet reports the circuit's last hour, not a made-up 100 %."""
    db = tmp_path / "restart.db"
    script = (
        "import asyncio\n"
        "from circuitry import DatabaseCircuitBreaker\n"
        f"b = DatabaseCircuitBreaker(db_path={str(db)!r}, service_name='r', failure_threshold=2)\n"
        "async def bad():\n"
        "    raise TimeoutError\n"
        "async def main():\n"
        "    for _ in range(2):\n"
        "        try:\n"
        "            await b.call(bad)\n"
        "        except TimeoutError:\n"
        "            pass\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = DatabaseCircuitBreaker(db_path=str(db), service_name="r", failure_threshold=2).get_stats()
    assert stats["state"] == "open"
    assert stats["last_hour_metrics"]["success_rate"] == 0.0
    assert stats["success_rate"] == 0.0


def test_a_failing_alert_callback_is_named_in_the_log(tmp_path: Path) -> None:
    def my_alert_handler(alert: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    async def bad() -> None:
        raise TimeoutError

    breaker = DatabaseCircuitBreaker(db_path=str(tmp_path / "a.db"), service_name="logged", failure_threshold=1,
                                     alert_callback=my_alert_handler)

    def failed() -> list[Any]:
        return [e for e in logs if e["event"] == "circuitry.alert_callback_failed"]

    with capture_logs() as logs:
        with pytest.raises(TimeoutError):
            asyncio.run(breaker.call(bad))  # opens the circuit: a circuit_opened alert, delivered on a thread
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not failed():
            time.sleep(0.01)
    assert failed() and "my_alert_handler" in failed()[0]["callback"], logs
