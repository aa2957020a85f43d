"""A streamed answer leaves its connection for the next request, and a server that holds
the body open after `[DONE]` costs only the connection, never the answer or a long wait."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from orchestrator.llm import OpenAICompatible
from orchestrator.llm.openai_compatible import DRAIN_TIMEOUT_S

pytestmark = pytest.mark.timeout(10)

MESSAGES = [{"role": "user", "content": "hi"}]


def _chunk(data: bytes) -> bytes:
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class _SSEServer:
    """Answers every POST with a two-chunk stream and `[DONE]`; counts connections. With
    `hold_after_done` it never ends the body after `[DONE]` (nor closes the socket)."""

    def __init__(self, *, hold_after_done: bool = False, split_end: bool = False) -> None:
        self.hold_after_done = hold_after_done
        self.split_end = split_end
        self.connections = 0
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
        try:
            while await self._read_request(reader):
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
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{self.port}/v1"
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
