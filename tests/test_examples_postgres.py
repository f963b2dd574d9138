"""The multi-host example (``examples/several_hosts/demo.py``) runs against the session's PostgreSQL
server, and shows one circuit across six processes of three hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_several_hosts_demo_runs(pg_url: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "several_hosts" / "demo.py"), pg_url],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, "CIRCUITRY_DB": "none"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for host in ("host-1", "host-2", "host-3"):
        for index in (0, 1):
            line = next(ln for ln in out.splitlines() if ln.startswith(f"{host} worker {index}:"))
            assert "closed -> open" in line and line.split(";")[0].endswith("closed"), out
            assert "refused 0 calls" not in line, out
    assert "openings recorded for all hosts together: 1" in out, out
    assert "state now: closed" in out, out
    assert "s3cret" not in out + proc.stderr  # the URL's password is never shown
