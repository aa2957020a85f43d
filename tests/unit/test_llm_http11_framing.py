"""The HTTP/1.1 transport's framing, reuse, limits, request checks, timeouts and SSE
parsing, over real sockets: chunk sizes and trailers, Content-Length against
Transfer-Encoding, interim and bodiless responses, when a connection is reused, bounded
heads, header injection, httpx's exception types."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from orchestrator.llm.h11_transport import H11Transport
from orchestrator.llm.http import HTTPPool

pytestmark = pytest.mark.timeout(15)


async def _run(
    answer: bytes, requests: int = 1, headers: dict[str, str] | None = None
) -> tuple[list[bytes], int]:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ]
                await reader.readexactly(n[0] if n else 0)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HTTPPool(
        H11Transport(ssl_context=httpx.create_ssl_context(), max_idle=4),
        f"http://127.0.0.1:{port}/",
        httpx.Timeout(2),
    )
    try:
        bodies = [(await pool.post("x", json={}, headers=headers)).content for _ in range(requests)]
    finally:
        await pool.aclose()
        server.close()
    return bodies, connections


@pytest.mark.parametrize("size", [b"fffffffffffffffff0", b"-5", b"0x5", b"zz", b""])
async def test_bad_chunk_sizes_are_protocol_errors(size: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await _run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nab\r\n0\r\n\r\n"
        )


@pytest.mark.parametrize(
    "headers",
    [
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Content-Length: 2, 3\r\n",
        b"Content-Length: +2\r\n",
        b"Content-Length: 2x\r\n",
    ],
)
async def test_bad_framing_headers_are_protocol_errors(headers: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await _run(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\nok")


async def test_chunked_beats_content_length_and_interim_responses_are_skipped() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;a=b\r\nok\r\n0\r\nT: 1\r\n\r\n"
    )
    assert await _run(answer, requests=2) == ([b"ok", b"ok"], 1)


async def test_204_has_no_body_and_keeps_the_connection() -> None:
    assert await _run(b"HTTP/1.1 204 No Content\r\n\r\n", requests=2) == ([b"", b""], 1)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_http10_and_connection_close_answers_are_not_reused(answer: bytes) -> None:
    assert await _run(answer, requests=2) == ([b"ok", b"ok"], 2)


async def test_a_huge_head_is_refused() -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="too long"):
        await _run(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 300_000)


async def test_a_huge_chunk_line_is_refused() -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="too long"):
        await _run(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"a" * 300_000)


async def test_header_injection_is_a_local_protocol_error() -> None:
    with pytest.raises(httpx.LocalProtocolError):
        await _run(
            b"HTTP/1.1 204 No Content\r\n\r\n", headers={"Authorization": "Bearer k\r\nX: y"}
        )
