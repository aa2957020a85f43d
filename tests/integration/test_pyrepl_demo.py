"""`orchestrator demo --pyrepl`: an agent answers a data question by writing and running
Python (scripted model, embedded Redis, in-process worker), its output streamed live, and
a follow-up question reuses the interpreter's variables."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def test_the_pyrepl_demo_answers_by_running_code_and_keeps_its_variables() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "demo",
            "--pyrepl",
            "--embedded",
            "fake",
            "--dashboard-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"},
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SCRIPTED MODEL" in out
    assert out.count(": completed") == 2
    # The code's output, streamed line by line as kernel_stdout events while it ran.
    streamed = [line for line in out.splitlines() if "kernel_stdout" in line]
    assert len(streamed) >= 5, out
    assert any("largest growth: Apr (+32); average: 150.67" in line for line in streamed)
    # The follow-up used the variables the first turn left in the interpreter.
    assert '"return_value": "209.0"' in out.replace("\n", "")
