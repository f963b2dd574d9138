"""examples/webapp/app.py runs: a tripped circuit shows in /metrics and on the dashboard, and its alert
reaches the app's own webhook receiver, signed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from .conftest import eventually

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_the_web_app_example(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "CIRCUITRY_DB": str(tmp_path / "webapp.db"),
           "WEBHOOK_SECRET": "example-secret", "CIRCUITRY_DASHBOARD_TOKEN": "example-token-0123456789"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "webapp" / "app.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: fetch(base + "/quote")[0] == 200, timeout=60), "the app did not start"
        assert [fetch(base + "/quote?fail=1")[0] for _ in range(3)] == [502, 502, 502]
        status, body = fetch(base + "/quote")
        assert status == 503 and "try again" in body  # refused fast by the open circuit
        assert eventually(lambda: any(a["alert"]["alert_type"] == "circuit_opened"
                                      for a in json.loads(fetch(base + "/hooks/received")[1] or "[]")), timeout=30)
        (opened,) = [a for a in json.loads(fetch(base + "/hooks/received")[1])
                     if a["alert"]["alert_type"] == "circuit_opened"]
        assert opened["alert"]["service_name"] == "quotes_api"

        def failures_exported() -> bool:
            _, text = fetch(base + "/metrics")
            return 'circuitry_calls_total{circuit="quotes_api",outcome="failure"} 3.0' in text

        assert eventually(failures_exported, timeout=30)
        assert 'circuitry_state_code{circuit="quotes_api"} 2.0' in fetch(base + "/metrics")[1]
        status, page = fetch(base + "/circuitry/")
        assert status == 200 and 'data-circuit="quotes_api"' in page and "Unlock actions" in page
        assert fetch(base + "/circuitry/circuit?name=quotes_api")[0] == 200
        request = urllib.request.Request(base + "/hooks/circuitry", data=b"{}", method="POST")
        assert fetch_request(request) == 401  # unsigned: refused
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "serving on" in out, err


def fetch_request(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
