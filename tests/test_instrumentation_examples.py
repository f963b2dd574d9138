"""The observability examples (examples/observability/) run and show what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {
    "metrics_endpoint.py": (
        ['circuitry_calls_total{circuit="geocoder",outcome="failure"} 3.0',
         'circuitry_calls_total{circuit="geocoder",outcome="rejected"} 2.0',
         'circuitry_state_code{circuit="geocoder"} 2.0'],
        ["WARNING circuitry circuitry.circuit_opened circuit=geocoder from_state=closed to_state=open"]),
    "tracing.py": (
        ["checkout 2 ERROR call refused by circuit 'payments' (open); retry after",
         "circuitry.circuit_opened failure_threshold", "circuitry.call_rejected open retry after 60s"],
        []),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_observability_example_runs(name: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "observability" / name)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env={**os.environ, "CIRCUITRY_DB": ":memory:"})
    assert proc.returncode == 0, proc.stderr
    stdout, stderr = EXPECTED[name]
    for text in stdout:
        assert text in proc.stdout, proc.stdout
    for text in stderr:
        assert text in proc.stderr, proc.stderr


def test_every_observability_example_is_checked() -> None:
    assert sorted(p.name for p in (ROOT / "examples" / "observability").glob("*.py")) == sorted(EXPECTED)
