"""Every example in examples/ and every Python block in README.md runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
EXPECTED = {
    "sync_quickstart.py": ["refused fast: circuit 'weather_api' is open", "sunny in Lisbon", "state: closed"],
    "async_quickstart.py": ["price: timed out", "price: 9.99", "stock: 7"],
    "failover.py": ["request 4: served by us-west", "api_us-east      open"],
    "persistence.py": ["starting state: closed", "refused: circuit 'billing_api' is open", "events stored in"],
    "multiprocess.py": ["worker 0: refused", "worker 1: refused", "worker 2: refused", "worker 3: refused"],
}


def run(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    proc = run(path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in EXPECTED.get(path.name, []):
        assert text in proc.stdout, proc.stdout
    assert path.name in EXPECTED, "give every example its expected output"


def test_persistence_example_restarts_open(tmp_path: Path) -> None:
    run(ROOT / "examples" / "persistence.py", tmp_path)
    second = run(ROOT / "examples" / "persistence.py", tmp_path)
    assert second.returncode == 0, second.stderr
    assert "starting state: open" in second.stdout
    assert "failed:" not in second.stdout  # the service is not called at all while the circuit is open


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_python_blocks_run(index: int, tmp_path: Path) -> None:
    """README blocks run as written; a block may use names defined by the blocks before it."""
    blocks = readme_blocks()
    source = "\n".join(blocks[: index + 1])
    script = tmp_path / "readme_block.py"
    script.write_text(source)
    proc = run(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
