"""The model client's HTTP over real sockets: a streamed answer leaves its connection
for the next request; a server that holds the body open after `[DONE]` costs only the
connection; an idle connection the server closed is replaced without a retry; timeouts
and refused connections reach the retry policy as httpx's errors; TLS works."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from orchestrator.errors import LLMRetriesExhausted
from orchestrator.llm import OpenAICompatible
from orchestrator.llm.h11_transport import H11Transport
from orchestrator.llm.http import HTTPPool
from orchestrator.llm.openai_compatible import DRAIN_TIMEOUT_S
from orchestrator.mock_llm.testing import MockLLMThread

pytestmark = pytest.mark.timeout(10)

MESSAGES = [{"role": "user", "content": "hi"}]


def _chunk(data: bytes) -> bytes:
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class _SSEServer:
    """Answers every POST with a two-chunk stream and `[DONE]`; counts connections. With
    `hold_after_done` it never ends the body after `[DONE]` (nor closes the socket)."""

    def __init__(
        self,
        *,
        hold_after_done: bool = False,
        split_end: bool = False,
        answers_per_connection: int = 0,
        silent: bool = False,
    ) -> None:
        self.hold_after_done = hold_after_done
        self.split_end = split_end
        # >0: the next request on a connection that answered this many is not read: the
        # connection closes (as a server closing an idle connection just then does).
        self.answers_per_connection = answers_per_connection
        self.silent = silent  # read requests, never answer
        self.connections = 0
        self.requests = 0
        self.port = 0

    async def _read_request(self, reader: asyncio.StreamReader) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while await self._read_request(reader):
                if self.answers_per_connection and answered >= self.answers_per_connection:
                    break
                self.requests += 1
                answered += 1
                if self.silent:
                    await asyncio.sleep(3600)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for text in ("Hel", "lo"):
                    delta = {"choices": [{"index": 0, "delta": {"content": text}}]}
                    writer.write(_chunk(_sse(delta)))
                    await writer.drain()
                end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                writer.write(_chunk(_sse(end)) + _chunk(b"data: [DONE]\n\n"))
                await writer.drain()
                if self.hold_after_done:
                    await asyncio.sleep(3600)
                if self.split_end:
                    await asyncio.sleep(0.01)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = server.sockets[0].getsockname()[1]
        try:
            origin = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
            yield f"{origin}/v1"
        finally:
            server.close()


async def _text(model: OpenAICompatible) -> str:
    parts = []
    async for chunk in model.chat_stream(MESSAGES):
        for choice in chunk.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


@pytest.mark.parametrize("split_end", [False, True])
async def test_sequential_streams_reuse_one_connection(split_end: bool) -> None:
    server = _SSEServer(split_end=split_end)
    async with server.running() as url, OpenAICompatible("", "m", url) as model:
        for _ in range(4):
            assert await _text(model) == "Hello"
    assert server.connections == 1


async def test_a_body_held_open_after_done_ends_the_stream_soon_with_the_whole_answer() -> None:
    server = _SSEServer(hold_after_done=True)
    async with server.running() as url, OpenAICompatible("", "m", url) as model:
        started = time.monotonic()
        assert await _text(model) == "Hello"
        assert time.monotonic() - started < DRAIN_TIMEOUT_S + 1.0
        assert await _text(model) == "Hello"  # on a new connection
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced_without_a_retry() -> None:
    server = _SSEServer(answers_per_connection=1)
    async with server.running() as url, OpenAICompatible("", "m", url, retry_delay=5) as model:
        with capture_logs() as logs:
            started = time.monotonic()
            for _ in range(3):
                assert await _text(model) == "Hello"
        assert time.monotonic() - started < 2.0, "no back-off: the request was never read"
    assert not [e for e in logs if e.get("event") == "llm.retry"]
    assert server.requests == 3
    assert server.connections == 3


async def test_a_server_that_never_answers_is_a_read_timeout_for_the_retry_policy() -> None:
    server = _SSEServer(silent=True)
    async with server.running() as url:
        model = OpenAICompatible("", "m", url, timeout=0.2, max_retries=1, retry_delay=0.01)
        async with model:
            with pytest.raises(LLMRetriesExhausted) as caught:
                await _text(model)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert caught.value.attempts == 2


async def test_a_refused_connection_is_a_connect_error_for_the_retry_policy() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    model = OpenAICompatible(
        "", "m", f"http://127.0.0.1:{port}/v1", max_retries=1, retry_delay=0.01
    )
    async with model:
        with pytest.raises(LLMRetriesExhausted) as caught:
            await _text(model)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_tls_streams_and_reuses_its_connection(tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    client_side = ssl.create_default_context(cafile=str(cert))
    server = _SSEServer()
    async with server.running(tls=server_side) as url:
        pool = HTTPPool(
            H11Transport(ssl_context=client_side, max_idle=2), url + "/", httpx.Timeout(5)
        )
        for _ in range(2):
            async with pool.stream("POST", "chat/completions", json={}) as response:
                lines = [line async for line in response.aiter_lines() if line]
            assert lines[-1] == "data: [DONE]"
        await pool.aclose()
    assert server.connections == 1


def test_a_model_used_by_two_event_loops_leaves_no_socket_behind() -> None:
    """An instance built at import serves several `asyncio.run` calls: each loop's idle
    connections are closed when that loop shuts down (no 'unclosed transport')."""
    server = MockLLMThread({"model": "m", "rules": [{"reply": {"content": "Hello"}}]}).start()
    leaks: list[Any] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = leaks.append
    try:
        model = OpenAICompatible("", "m", server.base_url)
        with warnings.catch_warnings():
            warnings.simplefilter("always", ResourceWarning)
            assert asyncio.run(_text(model)) == "Hello"
            assert asyncio.run(_text(model)) == "Hello"
            gc.collect()
    finally:
        sys.unraisablehook = previous_hook
        server.stop()
    assert leaks == []
