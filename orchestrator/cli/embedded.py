"""A Redis for machines that have none: the demo's (and the bench's) default.

Prefers a real `redis-server` binary found on PATH (started on a free port, nothing saved
to disk); otherwise falls back to fakeredis's in-process TCP server. Either way it is a
throwaway server that lives as long as the command, and it says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from orchestrator.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux send the child SIGTERM when this process dies.

    `stop()` covers every exit Python sees (an exception, Ctrl-C, SIGTERM); this covers
    the one it cannot: SIGKILL (or the OOM killer) would otherwise leave the embedded
    redis-server running forever. libc is loaded here, before the fork, so the hook
    itself only makes one system call in the child. Elsewhere (macOS): no hook.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def _wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.02)
    return False


class EmbeddedRedis:
    """`with EmbeddedRedis() as redis: redis.url` — a temporary Redis for this process."""

    def __init__(self, *, prefer_binary: bool = True) -> None:
        self._prefer_binary = prefer_binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._fake: object | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0
        self.kind = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def label(self) -> str:
        return f"EMBEDDED Redis ({self.kind}) at {self.url} — temporary, gone when this exits"

    def start(self) -> EmbeddedRedis:
        binary = shutil.which("redis-server") if self._prefer_binary else None
        try:
            if binary:
                self._start_binary(binary)
            else:
                self._start_fake()
        except BaseException:
            # Failed or interrupted (a signal) half-way: `with` never calls __exit__ when
            # __enter__ raises, so the server started so far is stopped here.
            self.stop()
            raise
        return self

    def _start_binary(self, binary: str) -> None:
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="orchestrator-redis-")
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._tmp.name,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent_hook(),  # one prctl call in the child, see the hook
        )
        if not _wait_for_port(self.port, 10.0):
            raise ConfigError(f"embedded redis-server ({binary}) did not start")
        self.kind = f"redis-server from {binary}"

    def _start_fake(self) -> None:
        try:  # imported here: fakeredis (the embedded extra) is needed only in this case
            from fakeredis import TcpFakeServer
        except ImportError as exc:  # fakeredis is the embedded extra
            raise ConfigError(
                "no redis-server on PATH, and fakeredis is not installed: "
                "pip install 'orchestrator[embedded]'"
            ) from exc
        self.port = free_port()
        server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
        server.daemon_threads = True
        self._fake = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        if not _wait_for_port(self.port, 5.0):
            raise ConfigError("embedded fake Redis did not start")
        self.kind = "in-process fakeredis server"

    def stop(self) -> None:
        """Stop the server (idempotent). Interrupted itself, it kills the server first."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.terminate()
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except BaseException:
                proc.kill()
                raise
        if self._fake is not None:
            self._fake.shutdown()  # type: ignore[attr-defined]
            self._fake.server_close()  # type: ignore[attr-defined]
            self._fake = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def choose_redis(url: str | None) -> Iterator[tuple[str, str]]:
    """(url, label): the given URL, else the local Redis, else an embedded one."""
    url = url or os.environ.get("ORCHESTRATOR_REDIS_URL")
    if url:
        yield url, f"{url} (given)"
        return
    if _redis_answers():
        yield DEFAULT_REDIS_URL, f"real Redis at {DEFAULT_REDIS_URL}"
        return
    with EmbeddedRedis() as server:
        yield server.url, server.label
