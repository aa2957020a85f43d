"""The model client's HTTP/1.1 bodies, read by `H11Transport` from real sockets: a
chunked, a Content-Length and a read-to-close body arrive whole however the server's
bytes are split; chunk extensions and trailers are skipped; a body cut short or a
broken chunk is httpx's RemoteProtocolError (what the retry policy retries); a
connection is reused only after a complete keep-alive body; the chunks that arrive
together are handed on as one piece."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from orchestrator.llm.h11_transport import H11Transport
from orchestrator.llm.http import HTTPPool

pytestmark = pytest.mark.timeout(10)

Answer = Callable[[int], list[bytes]]  # request number -> the writes of its answer


class _RawServer:
    """Answers the n-th request with `answer(n)`'s byte strings, one write (and drain)
    each, with a short pause between them; closes the connection after the answer when
    `close_after` is set. Counts connections."""

    def __init__(self, answer: Answer, *, close_after: bool = False, pause: float = 0.005) -> None:
        self.answer = answer
        self.close_after = close_after
        self.pause = pause
        self.connections = 0
        self.requests = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                for part in self.answer(self.requests):
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(self.pause)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def pool(self, timeout: float = 5) -> AsyncIterator[HTTPPool]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = H11Transport(ssl_context=httpx.create_ssl_context(), max_idle=4)
        pool = HTTPPool(transport, f"http://127.0.0.1:{port}/v1/", httpx.Timeout(timeout))
        try:
            yield pool
        finally:
            await pool.aclose()
            server.close()


async def _pieces(pool: HTTPPool) -> list[bytes]:
    async with pool.stream("POST", "chat/completions", json={}) as response:
        return [piece async for piece in response.aiter_raw()]


def _chunk(data: bytes, extension: bytes = b"") -> bytes:
    return f"{len(data):x}".encode() + extension + b"\r\n" + data + b"\r\n"


BODY = b"data: one\n\ndata: two\n\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
WHOLE = _chunk(b"data: one\n\n") + _chunk(b"data: two\n\n", b";ext=1") + b"0\r\nX-T: 1\r\n\r\n"


def _byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize(
    "writes",
    [
        [CHUNKED + WHOLE],
        [CHUNKED, *_byte_by_byte(WHOLE)],
        [CHUNKED[:7], CHUNKED[7:] + WHOLE[:5], WHOLE[5:30], WHOLE[30:]],
    ],
    ids=["one-write", "byte-by-byte", "split"],
)
async def test_a_chunked_body_arrives_whole_however_it_is_split(writes: list[bytes]) -> None:
    server = _RawServer(lambda n: writes)
    async with server.pool() as pool:
        for _ in range(2):
            assert b"".join(await _pieces(pool)) == BODY
    assert server.connections == 1, "a complete chunked body leaves its connection for reuse"


async def test_chunks_that_arrive_together_are_handed_on_as_one_piece() -> None:
    server = _RawServer(lambda n: [CHUNKED, WHOLE])
    async with server.pool() as pool:
        assert await _pieces(pool) == [BODY]


async def test_a_content_length_body_is_read_to_its_length_and_the_connection_reused() -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    server = _RawServer(lambda n: [head + BODY[:4], BODY[4:]])
    async with server.pool() as pool:
        for _ in range(3):
            assert b"".join(await _pieces(pool)) == BODY
    assert server.connections == 1


async def test_a_body_without_length_ends_at_the_close_and_its_connection_is_not_reused() -> None:
    server = _RawServer(
        lambda n: [b"HTTP/1.1 200 OK\r\n\r\n", BODY[:5], BODY[5:]], close_after=True
    )
    async with server.pool() as pool:
        for _ in range(2):
            assert b"".join(await _pieces(pool)) == BODY
    assert server.connections == 2


async def test_connection_close_and_http_1_0_answers_are_not_reused() -> None:
    def answer(n: int) -> list[bytes]:
        version, extra = (b"1.0", b"") if n % 2 else (b"1.1", b"Connection: close\r\n")
        length = f"Content-Length: {len(BODY)}\r\n".encode()
        return [b"HTTP/" + version + b" 200 OK\r\n" + length + extra + b"\r\n" + BODY]

    server = _RawServer(answer, close_after=True)
    async with server.pool() as pool:
        for _ in range(2):
            assert b"".join(await _pieces(pool)) == BODY
    assert server.connections == 2


async def test_an_informational_answer_before_the_response_is_skipped() -> None:
    server = _RawServer(lambda n: [b"HTTP/1.1 100 Continue\r\n\r\n" + CHUNKED + WHOLE])
    async with server.pool() as pool:
        assert b"".join(await _pieces(pool)) == BODY


@pytest.mark.parametrize(
    "writes",
    [
        [CHUNKED + _chunk(b"data: one\n\n")[:-4]],  # closed inside a chunk
        [CHUNKED + _chunk(b"data: one\n\n")],  # closed before the last chunk
        [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + BODY],  # closed short
        [CHUNKED + b"zz\r\ndata\r\n0\r\n\r\n"],  # not a chunk size
        [CHUNKED + b"4\r\ndataXX0\r\n\r\n"],  # chunk data not followed by CRLF
    ],
    ids=["mid-chunk", "no-last-chunk", "short-length", "bad-size", "no-crlf"],
)
async def test_a_broken_body_is_a_remote_protocol_error(writes: list[bytes]) -> None:
    server = _RawServer(lambda n: writes, close_after=True)
    async with server.pool() as pool:
        with pytest.raises(httpx.RemoteProtocolError):
            await _pieces(pool)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 OK\r\n\r\n",  # no status code
        b"HTTP/2 200 OK\r\n\r\n",  # not HTTP/1.x
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["status", "version", "colon", "name", "lengths", "negative", "coding", "101"],
)
async def test_a_broken_response_head_is_a_remote_protocol_error(head: bytes) -> None:
    server = _RawServer(lambda n: [head + BODY], close_after=True)
    async with server.pool() as pool:
        with pytest.raises(httpx.RemoteProtocolError):
            await _pieces(pool)


async def test_response_headers_reach_httpx_as_sent_with_folded_lines_joined() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Long: a\r\n  b\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    server = _RawServer(lambda n: [head])
    async with server.pool() as pool:
        async with pool.stream("POST", "chat/completions", json={}) as response:
            assert await response.aread() == b"hello"
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-long"] == "a b"
        assert response.reason_phrase == "OK"


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
async def test_a_header_value_that_would_break_the_request_is_refused(value: str) -> None:
    server = _RawServer(lambda n: [CHUNKED + WHOLE])
    async with server.pool() as pool:
        with pytest.raises(httpx.LocalProtocolError):
            await _pieces_with(pool, {"X-Key": value})
    assert server.requests == 0


async def _pieces_with(pool: HTTPPool, headers: dict[str, str]) -> list[bytes]:
    async with pool.stream("POST", "chat/completions", json={}, headers=headers) as response:
        return [piece async for piece in response.aiter_raw()]


async def test_a_request_that_asks_to_close_does_not_reuse_its_connection() -> None:
    server = _RawServer(lambda n: [CHUNKED + WHOLE])
    async with server.pool() as pool:
        for _ in range(2):
            assert b"".join(await _pieces_with(pool, {"Connection": "close"})) == BODY
    assert server.connections == 2


@pytest.mark.parametrize("extra", [None, {"Authorization": "Bearer k"}])
async def test_a_request_is_sent_with_the_headers_and_body_httpx_gives_a_json_post(
    extra: dict[str, str] | None,
) -> None:
    """The pool builds its requests itself: what a server receives is what
    `httpx.Request(content=...)` with the same headers would have sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"{}")

    pool = HTTPPool(httpx.MockTransport(handler), "http://model:8000/v1/", httpx.Timeout(5))
    await pool.post("chat/completions", json={"text": "h\u00e9"}, headers=extra)
    expected = httpx.Request(
        "POST",
        "http://model:8000/v1/chat/completions",
        content='{"text":"h\u00e9"}'.encode(),
        headers={
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "Connection": "keep-alive",
            "User-Agent": f"python-httpx/{httpx.__version__}",
            "Content-Type": "application/json",
            **(extra or {}),
        },
    )
    assert seen[0].headers.raw == expected.headers.raw
    assert seen[0].content == expected.content
    assert seen[0].url == expected.url


async def test_a_body_that_stalls_longer_than_the_read_timeout_is_a_read_timeout() -> None:
    server = _RawServer(lambda n: [CHUNKED + WHOLE[:20], WHOLE[20:]], pause=1.0)
    async with server.pool(timeout=0.2) as pool:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await _pieces(pool)
        assert time.monotonic() - started < 0.8


async def test_reads_each_within_the_read_timeout_never_time_out_however_long_the_body() -> None:
    """The timeout bounds each wait for bytes, not the whole body (nor the time the
    consumer spends between reads)."""
    writes = [CHUNKED, *(_chunk(b"data: x\n\n") for _ in range(6)), b"0\r\n\r\n"]
    server = _RawServer(lambda n: writes, pause=0.12)
    async with server.pool(timeout=0.3) as pool:
        async with pool.stream("POST", "chat/completions", json={}) as response:
            received = b""
            async for piece in response.aiter_raw():
                received += piece
                await asyncio.sleep(0.4)  # a slow consumer
        assert received == b"data: x\n\n" * 6
        assert b"".join(await _pieces(pool)) == b"data: x\n\n" * 6  # and the connection is reused
    assert server.connections == 1
