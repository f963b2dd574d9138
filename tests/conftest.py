from __future__ import annotations

import os

# The test suite's default registry keeps breakers in memory: tests that persist say where.
os.environ.setdefault("CIRCUITRY_DB", ":memory:")

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from circuitry import Registry
from circuitry.testing import CapturedEvents, FakeClock, isolated_registry


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Iterator[Registry]:
    """A fresh default registry on a fake clock, with an event-capturing hook."""
    with isolated_registry(clock=clock) as reg:
        yield reg


@pytest.fixture
def events(registry: Registry) -> Iterator[CapturedEvents]:
    captured = CapturedEvents()
    registry.add_hook(captured)
    yield captured
    registry.remove_hook(captured)


class Boom(Exception):
    pass


class Other(Exception):
    pass


def measure_in_subprocess(script: str) -> int:
    """Run ``script`` in a fresh interpreter and return the integer it prints.

    Memory measurements need a process of their own: tracemalloc sees every thread, and earlier tests
    leave store writers and alert deliverers running in this one.
    """
    import subprocess
    import sys
    import textwrap

    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CIRCUITRY_DB": ":memory:"})
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``check`` until it holds (a liveness bound for work on other threads, not a speed claim)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return check()



# -- a PostgreSQL server for the tests that need one -------------------------------------------------------

#: Set (CI sets it) to make the PostgreSQL tests fail, instead of skip, when no server can be started.
REQUIRE_POSTGRES = "CIRCUITRY_REQUIRE_POSTGRES"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throw-away PostgreSQL cluster for the whole session (see ``tests/pg_cluster.py``). Skips with the
    reason when PostgreSQL cannot be started here — or fails, when ``$CIRCUITRY_REQUIRE_POSTGRES`` is set."""
    from .pg_cluster import Cluster, ClusterError

    def unavailable(why: str) -> None:
        if os.environ.get(REQUIRE_POSTGRES, "").strip() not in ("", "0"):
            pytest.fail(f"PostgreSQL is required (${REQUIRE_POSTGRES}) but {why}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {why}")

    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        unavailable(f"psycopg is not installed ({exc}): pip install -e '.[dev]'")
    cluster = Cluster()
    try:
        cluster.start()
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        cluster.stop()
        unavailable(f"the server could not be started: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """The URL of a new, empty database on the session's server (with its password)."""
    return str(pg_cluster.create_database())
