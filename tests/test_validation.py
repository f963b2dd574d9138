"""Bad input gets a clear error at construction, naming the argument, and nothing is lost: the database
API, registries and stores (the policy's own checks are in ``test_policy.py``)."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitry import (
    ConfigurationError,
    DatabaseCircuitBreaker,
    MultiServiceDatabaseCircuitBreaker,
    Registry,
    configure,
)
from circuitry.analysis.alerts import AlertPolicy
from circuitry.store import SQLiteStore

from .conftest import eventually


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., tuple[Registry, SQLiteStore]]]:
    made: list[SQLiteStore] = []

    def factory(name: str = "circuits.db", **options: Any) -> tuple[Registry, SQLiteStore]:
        options.setdefault("poll_interval", 0.01)
        store = SQLiteStore(tmp_path / name, **options)
        made.append(store)
        return Registry(hooks=[], store=store), store

    yield factory
    for store in made:
        store.close(timeout=2)


def fail(breaker: DatabaseCircuitBreaker, n: int = 1) -> None:
    async def down() -> None:
        raise ConnectionError("down")

    async def run() -> None:
        for _ in range(n):
            with pytest.raises(ConnectionError):
                await breaker.call(down)

    asyncio.run(run())


# -- db_path, registry, on= --------------------------------------------------------------------------------


@pytest.mark.parametrize("db_path", ["", "   ", 5, b"x.db"])
def test_db_path_that_names_no_file_is_refused(db_path: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="db_path"):
        DatabaseCircuitBreaker(db_path=db_path, service_name="a")
    with pytest.raises(ConfigurationError, match="db_path"):
        MultiServiceDatabaseCircuitBreaker(db_path=db_path)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_no_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"db_path.*directory"):
        DatabaseCircuitBreaker(db_path=tmp_path, service_name="a")
    with pytest.raises(ConfigurationError, match=r"db_path.*directory"):
        MultiServiceDatabaseCircuitBreaker(db_path=str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"path.*directory"):
        SQLiteStore(tmp_path)
    with pytest.raises(ConfigurationError, match="path"):
        SQLiteStore("")
    assert list(tmp_path.iterdir()) == []


def test_on_and_expected_exception_are_one_setting(tmp_path: Path) -> None:
    db = str(tmp_path / "on.db")
    assert DatabaseCircuitBreaker(db_path=db, service_name="on", on=KeyError).breaker.policy.on is KeyError
    assert DatabaseCircuitBreaker(db_path=db, service_name="ee",
                                  expected_exception=KeyError).breaker.policy.on is KeyError
    with pytest.raises(ConfigurationError, match="expected_exception"):
        DatabaseCircuitBreaker(db_path=db, service_name="both", on=KeyError, expected_exception=KeyError)


def test_registry_and_unknown_policy_arguments_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="registry"):
        DatabaseCircuitBreaker(service_name="a", registry=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"db_path.*registry"):
        DatabaseCircuitBreaker(db_path="a.db", service_name="a", registry=Registry(hooks=[]))
    with pytest.raises(ConfigurationError, match="failure_treshold"):
        DatabaseCircuitBreaker(db_path="a.db", service_name="a", failure_treshold=3)
    assert list(tmp_path.iterdir()) == []  # refused before anything was opened


def test_configure_refuses_a_db_that_is_no_path() -> None:
    with pytest.raises(ConfigurationError, match="db"):
        configure(db=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="db"):
        configure(db="")


def test_configure_without_db_says_which_argument_was_meant() -> None:
    """configure(dbb="x.db") raised a bare TypeError ("missing 1 required keyword-only argument: 'db'"),
    where a mistyped policy argument gets "did you mean"."""
    with pytest.raises(ConfigurationError, match=r"^configure\(\) needs db= .*; dbb: did you mean db\?$"):
        configure(dbb="x.db")
    with pytest.raises(ConfigurationError, match=r"; db_path: did you mean db\?$"):
        configure(db_path="x.db")  # (the database API's name)
    with pytest.raises(ConfigurationError, match=r"^configure\(\) needs db= \(a SQLite file path, a database URL, "
                                                 r"':memory:' or None\)$"):
        configure()


# -- the manager --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argument", "kwargs"), [
    ("enable_alerts", {"enable_alerts": 1}),
    ("alert_callback", {"alert_callback": 5}),
    ("failure_threshold", {"failure_threshold": 0}),
    ("failure_treshold", {"failure_treshold": 3}),
    ("service_name", {"service_name": "x"}),
    ("expected_exception", {"on": KeyError, "expected_exception": KeyError}),
])
def test_the_manager_checks_its_arguments_at_construction(argument: str, kwargs: dict[str, Any],
                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        MultiServiceDatabaseCircuitBreaker(db_path=str(tmp_path / "m.db"), **kwargs)


# -- get_stats ------------------------------------------------------------------------------------------------


def test_stats_of_an_unreadable_store_follow_this_processs_counts(make: Any, tmp_path: Path) -> None:
    reg, _ = make("gone.db")
    (tmp_path / "gone.db").mkdir()  # the database cannot be read (a directory took its place)
    breaker = DatabaseCircuitBreaker(registry=reg, service_name="svc", failure_threshold=10)
    fail(breaker, 6)
    stats = breaker.get_stats()
    assert "store_error" in stats
    assert stats["success_rate"] == 0.0
    assert stats["last_hour_metrics"]["success_rate"] == 0.0
    assert stats["last_hour_metrics"]["total_calls"] == 6


# -- alerts: per handle, one delivery per callback -----------------------------------------------------------


def test_one_delivery_per_alert_per_callback(make: Any) -> None:
    reg, store = make()
    got: list[dict[str, Any]] = []
    b1 = DatabaseCircuitBreaker(registry=reg, service_name="svc", failure_threshold=1, alert_callback=got.append)
    b2 = DatabaseCircuitBreaker(registry=reg, service_name="svc", failure_threshold=1, alert_callback=got.append)
    assert b1.breaker is b2.breaker
    fail(b1)
    assert eventually(lambda: len(got) >= 1)
    store.close(timeout=5)  # the analyst finishes, its deliverers drain: a second delivery would be in by now
    assert [a["alert_type"] for a in got] == ["circuit_opened"]


def test_a_breaker_built_per_request_leaves_no_callback_behind(make: Any) -> None:
    reg, store = make()
    handler: list[dict[str, Any]] = []
    for _ in range(20):
        DatabaseCircuitBreaker(registry=reg, service_name="svc", alert_callback=handler.append)
    for i in range(20):  # a new callback each time
        DatabaseCircuitBreaker(registry=reg, service_name="svc", alert_callback=lambda a, i=i: handler.append(a))
        gc.collect()
    assert len(store.alert_callbacks) <= 2


def test_enable_alerts_belongs_to_the_handle(make: Any) -> None:
    reg, store = make()
    got1: list[dict[str, Any]] = []
    got2: list[dict[str, Any]] = []
    b1 = DatabaseCircuitBreaker(registry=reg, service_name="svc", failure_threshold=1, alert_callback=got1.append)
    b2 = DatabaseCircuitBreaker(registry=reg, service_name="svc", failure_threshold=1, enable_alerts=False,
                                alert_callback=got2.append)
    assert b1.enable_alerts is True and b2.enable_alerts is False
    fail(b1)
    assert eventually(lambda: [a["alert_type"] for a in got1] == ["circuit_opened"])
    assert [a["alert_type"] for a in store.alerts("svc")] == ["circuit_opened"]
    del b1
    gc.collect()
    assert "svc" in store.muted  # the handle left disables them: the service's alerts are no longer raised
    store.close(timeout=5)
    assert got2 == []


# -- stores ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alert_policy", [{"high_failure_rate": 0.2}, 5, "default"])
def test_alert_policy_must_be_an_alert_policy(alert_policy: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="alert_policy"):
        SQLiteStore(tmp_path / "a.db", alert_policy=alert_policy)
    policy = AlertPolicy(high_failure_rate=0.2)
    assert SQLiteStore(tmp_path / "a.db", alert_policy=policy).alert_policy is policy


def test_postgres_store_checks_alert_policy_and_names_itself() -> None:
    pytest.importorskip("psycopg")
    from circuitry.store import PostgresStore

    with pytest.raises(ConfigurationError, match="alert_policy"):
        PostgresStore("postgresql://u@localhost:1/db", alert_policy={"high_failure_rate": 0.2})
    with pytest.raises(ConfigurationError, match=r"PostgresStore\(\) got an unknown argument 'retension'"):
        PostgresStore("postgresql://u@localhost:1/db", retension=60)


def test_unknown_store_argument_names_the_class_called(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"SQLiteStore\(\) got an unknown argument 'retension'.*retention"):
        SQLiteStore(tmp_path / "a.db", retension=60)


class _NoRandom:
    pass


@pytest.mark.parametrize(("argument", "kwargs"), [
    ("clock", {"clock": 5}),
    ("clock", {"clock": random.Random()}),
    ("rng", {"rng": 5}),
    ("rng", {"rng": _NoRandom()}),
    ("hooks", {"hooks": 5}),
])
def test_registry_checks_clock_rng_and_hooks(argument: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        Registry(**kwargs)


def test_sqlite_store_checks_its_clock(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="clock"):
        SQLiteStore(tmp_path / "a.db", clock=5)


def test_sqlite_store_takes_a_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "url.db"
    store = SQLiteStore(f"sqlite:///{db}")
    assert store.path == db
    reg = Registry(hooks=[], store=store)
    reg.get("svc")
    assert store.flush()
    store.close()
    assert db.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []  # no "sqlite:" directory
    with pytest.raises(ConfigurationError, match="path"):
        SQLiteStore("postgresql://u@localhost/db")


def test_a_breaker_checks_its_rng_and_open_store_its_target() -> None:
    from circuitry import CircuitBreaker
    from circuitry.store import open_reader, open_store

    with pytest.raises(ConfigurationError, match="rng must have a random"):
        CircuitBreaker("svc", rng=5)  # type: ignore[arg-type]
    for target in (5, "", "  "):
        with pytest.raises(ConfigurationError, match="target must be a file path or a database URL"):
            open_store(target)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="target must be a file path or a database URL"):
            open_reader(target)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf"), "1"])
def test_the_fake_clock_moves_by_finite_amounts_only(seconds: object) -> None:
    """``advance(inf)`` was taken: the breaker then stayed half-open after a successful probe."""
    from circuitry.testing import FakeClock

    clock = FakeClock()
    with pytest.raises(ValueError, match="seconds must be a finite number"):
        clock.advance(seconds)  # type: ignore[arg-type]
    assert clock.monotonic() == FakeClock().monotonic()


def test_auto_apply_takes_a_bool_or_an_adjust_policy(tmp_path: Path) -> None:
    from circuitry.analysis.adjust import AdjustPolicy
    from circuitry.runners.analyst import Analyst
    from circuitry.store import SQLiteStore

    store = SQLiteStore(tmp_path / "a.db", auto_apply=AdjustPolicy(cooldown=3600.0))
    analyst = Analyst.attach(store)
    assert analyst.auto_apply and analyst.adjuster.policy.cooldown == 3600.0
    assert not Analyst.attach(SQLiteStore(tmp_path / "b.db")).auto_apply
    with pytest.raises(ConfigurationError, match="auto_apply must be a bool or an AdjustPolicy"):
        SQLiteStore(tmp_path / "c.db", auto_apply="yes")  # type: ignore[arg-type]
