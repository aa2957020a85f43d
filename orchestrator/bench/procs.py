"""The bench's helper processes seen from the measuring one: start, watch, stop them,
and delete what they wrote under the bench's prefix afterwards."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.keys import BenchKeys
from orchestrator.store.connection import connect as connect_raw
from orchestrator.store.queue import arq_keys

__all__ = [
    "FIRST_START_TIMEOUT_S",
    "GAP_S",
    "BenchError",
    "Child",
    "delete_bench_keys",
    "free_port",
    "port_open",
]

# Sequential jobs wait a random gap first; it spans one arq poll period (0.5 s), so the
# baseline's poll phase at enqueue time is uniformly random.
GAP_S = (0.0, 0.5)
FIRST_START_TIMEOUT_S = 45.0


class BenchError(Exception):
    """The bench could not measure something (a process died, a run failed)."""


class Child:
    """A subprocess of the bench, its output kept in a log file."""

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with {code}:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def start_scripted_model(
    name: str, script: dict[str, Any], logdir: Path, env: dict[str, str]
) -> tuple[Child, str]:
    """Run `orchestrator mock-llm` with `script` on a free port, as child `name`, and
    wait until it listens: (the child, its base URL). A child that did not start is
    stopped before `BenchError` is raised."""
    port = free_port()
    path = logdir / f"{name}-script.json"
    path.write_text(json.dumps(script))
    argv = ["-m", "orchestrator.cli", "mock-llm", "--port", str(port), "--script", str(path)]
    llm = Child(name, [sys.executable, *argv], logdir, env)
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            llm.check()
            if time.monotonic() > deadline:
                raise BenchError("the scripted model did not start")
            time.sleep(0.05)
    except BaseException:
        llm.stop()
        raise
    return llm, f"http://127.0.0.1:{port}/v1"


async def delete_bench_keys(url: str, keys: BenchKeys, job_ids: Iterable[str]) -> int:
    """Delete every key under `keys`' prefix and arq's keys of these jobs (never FLUSH*)."""
    client = connect_raw(url)
    deleted = 0
    try:
        names: list[Any] = [key for jid in sorted(job_ids) for key in arq_keys(jid)]
        async for name in client.scan_iter(match=keys.pattern(), count=1000):
            names.append(name)
        for start in range(0, len(names), 500):
            deleted += int(await client.delete(*names[start : start + 500]))
    finally:
        await client.aclose()
    return deleted
