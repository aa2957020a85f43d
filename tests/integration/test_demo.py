"""The README's demo command works with no Redis server and no API key."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("embedded", ["auto", "fake"])
def test_demo_runs_distributed_turns_on_an_embedded_redis(embedded: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "demo", "--embedded", embedded],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"},
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SCRIPTED MODEL" in out
    assert "EMBEDDED Redis" in out
    if embedded == "fake":
        assert "fakeredis" in out
    assert out.count(": completed") == 3
    assert "All three sub-agents reported back" in out
    assert "✓ get_weather" in out
    assert "The result is 395." in out
