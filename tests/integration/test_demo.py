"""The README's demo command works with no Redis server and no API key, and stops
everything it started when it is stopped with SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.cli.embedded import free_port

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


# -- stopped by a signal ---------------------------------------------------------------------


def _redis_servers_on(port: int) -> list[int]:
    """Pids of redis-server processes serving `port` (they show `redis-server HOST:PORT`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
        except (OSError, IndexError):
            continue
        if "redis-server" in cmdline and f":{port}" in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class DemoProcess:
    """`orchestrator demo` in a subprocess, its output read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, marker: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {timeout} s:\n{self.output}"
            assert self.proc.poll() is None, f"exited before {marker!r}:\n{self.output}"
            with contextlib.suppress(queue.Empty):
                self.output += self.lines.get(timeout=min(left, 0.5))
        return self.output

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)  # it has read the pipe to its end
        while not self.lines.empty():
            self.output += self.lines.get()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.parametrize(
    ("sig", "moment", "expected_code"),
    [
        (signal.SIGTERM, "EMBEDDED Redis", 143),  # while it starts its workers
        (signal.SIGTERM, "user:", 143),  # mid-conversation, a turn running
        (signal.SIGINT, "user:", 130),
        (signal.SIGTERM, "dashboard stays open", 0),  # --keep-open: the way to leave
    ],
)
def test_a_signalled_demo_stops_its_embedded_redis_and_everything_else_it_started(
    sig: signal.Signals, moment: str, expected_code: int
) -> None:
    dashboard = free_port()
    demo = DemoProcess("--keep-open", "--dashboard-port", str(dashboard))
    redis_port = 0
    try:
        head = demo.wait_for("EMBEDDED Redis")
        found = re.search(r"EMBEDDED Redis \(redis-server.*? at redis://127\.0\.0\.1:(\d+)/", head)
        assert found, head
        redis_port = int(found.group(1))
        assert _redis_servers_on(redis_port)
        model = re.search(r"SCRIPTED MODEL at http://127\.0\.0\.1:(\d+)/", head)
        assert model, head
        llm_port = int(model.group(1))
        demo.wait_for(moment)

        demo.proc.send_signal(sig)
        code = demo.wait_exit(timeout=30)

        assert code == expected_code, demo.output
        assert f"stopped by {sig.name}" in demo.output or expected_code == 0, demo.output
        assert _redis_servers_on(redis_port) == []
        for port in (redis_port, llm_port, dashboard):
            assert not _port_answers(port), f"port {port} still answers"
    finally:
        demo.close()
        for pid in _redis_servers_on(redis_port) if redis_port else []:
            os.kill(pid, signal.SIGKILL)  # what the demo failed to stop (the test fails)


def test_a_killed_demo_takes_its_embedded_redis_server_with_it() -> None:
    """SIGKILL gives the demo no chance to clean up; the kernel stops its redis-server."""
    demo = DemoProcess("--keep-open", "--dashboard-port", str(free_port()))
    redis_port = 0
    try:
        head = demo.wait_for("EMBEDDED Redis")
        found = re.search(r"EMBEDDED Redis \(redis-server.*? at redis://127\.0\.0\.1:(\d+)/", head)
        assert found, head
        redis_port = int(found.group(1))
        assert _redis_servers_on(redis_port)

        demo.proc.send_signal(signal.SIGKILL)
        demo.wait_exit(timeout=30)

        deadline = time.monotonic() + 10
        while _redis_servers_on(redis_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _redis_servers_on(redis_port) == []
    finally:
        demo.close()
        for pid in _redis_servers_on(redis_port) if redis_port else []:
            os.kill(pid, signal.SIGKILL)
