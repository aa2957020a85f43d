"""A private Redis Sentinel deployment for the failover test: a master, a replica and three
sentinels, every one a real `redis-server` on a free local port with its own directory.

    SentinelCluster(directory)   .start(), .url (redis+sentinel://...), .kill_master()
                                 (SIGKILL), .wait_promoted(), .stop() (everything)

Failover is tuned to be quick (down-after 1 s, failover-timeout 5 s): the sentinels see the
master down after a second, agree (quorum 2), and promote the replica.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.redisproc import REDIS_SERVER, free_port

SERVICE = "orcmaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def _ask(port: int, *words: str, timeout: float = 0.5) -> str:
    """Send one inline command and return the raw reply ('' if nobody answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            time.sleep(0.02)
            return sock.recv(65536).decode(errors="replace")
    except OSError:
        return ""


class _Process:
    def __init__(self, name: str, directory: Path, argv: list[str]) -> None:
        self.name = name
        self.directory = directory
        self.port = int(argv[argv.index("--port") + 1])
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def wait_answering(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while "PONG" not in _ask(self.port, "PING"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} on {self.port} did not start:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "log").read_text(errors="replace")[-3000:]
        return ""


class SentinelCluster:
    """Master + replica + three sentinels, all on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("no redis-server binary on PATH")
        self.directory = directory
        self.master: _Process | None = None
        self.replica: _Process | None = None
        self.sentinels: list[_Process] = []

    def _server(self, name: str, *extra: str) -> _Process:
        assert REDIS_SERVER is not None
        directory = self.directory / name
        port = free_port()
        argv = [
            REDIS_SERVER,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--logfile", str(directory / "log"),
            *extra,
        ]  # fmt: skip
        return _Process(name, directory, argv)

    def _sentinel(self, index: int, master_port: int) -> _Process:
        assert REDIS_SERVER is not None
        directory = self.directory / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    "protected-mode no",
                    f"dir {directory}",
                    f"logfile {directory / 'log'}",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2",
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {SERVICE} 1",
                    "",
                ]
            )
        )
        argv = [REDIS_SERVER, str(config), "--sentinel", "--port", str(port)]
        return _Process(f"sentinel-{index}", directory, argv)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.master = self._server("master")
        self.master.wait_answering()
        self.replica = self._server("replica", "--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.wait_answering()
        self.sentinels = [self._sentinel(i, self.master.port) for i in range(3)]
        for sentinel in self.sentinels:
            sentinel.wait_answering()
        deadline = time.monotonic() + timeout
        # Ready once the replica is in sync and every sentinel knows both its peers and
        # the replica (a sentinel that has not met the others cannot vote a failover).
        while not self._ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"sentinel cluster never became ready:\n{self.logs()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        assert self.replica is not None
        if "master_link_status:up" not in _ask(self.replica.port, "INFO", "replication"):
            return False
        for sentinel in self.sentinels:
            info = _ask(sentinel.port, "INFO", "sentinel")
            if "slaves=1" not in info or "sentinels=3" not in info:
                return False
        return True

    def master_port(self) -> int:
        """The port the sentinels currently name as the master (-1 if they cannot say)."""
        for sentinel in self.sentinels:
            reply = _ask(sentinel.port, "SENTINEL", "get-master-addr-by-name", SERVICE)
            lines = reply.split("\r\n")
            if len(lines) >= 5 and lines[4].isdigit():
                return int(lines[4])
        return -1

    def kill_master(self) -> None:
        """SIGKILL the master: no shutdown, no last write to the replica."""
        assert self.master is not None
        self.master.kill()

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Seconds until the sentinels name the replica as master."""
        assert self.replica is not None
        started = time.monotonic()
        while self.master_port() != self.replica.port:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"no failover after {timeout}s:\n{self.logs()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def logs(self) -> str:
        procs = [p for p in (self.master, self.replica, *self.sentinels) if p is not None]
        return "\n".join(f"--- {p.name} ({p.port}) ---\n{p.log()}" for p in procs)

    def stop(self) -> None:
        for proc in (*self.sentinels, self.replica, self.master):
            if proc is not None:
                proc.kill()
