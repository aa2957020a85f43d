"""Just enough HTTP/1.1 on asyncio streams for the scripted model.

A framework would hide the bytes; the scripted model needs them, to drop a connection in
the middle of a body and to send an SSE line that is not JSON. Requests: Content-Length
or chunked bodies, keep-alive by default. Responses: Content-Length, or chunked
transfer encoding for SSE, so that closing early is visible to the client as a truncated
body rather than a normal end.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_HEADERS = 100
ALWAYS_HEADERS = {"X-Scripted-Model": "1", "Server": "orchestrator-scripted-model"}


class BadHTTP(Exception):
    """The bytes received are not an HTTP/1.1 request we can read."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as exc:
        raise BadHTTP("line too long") from exc


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = (await _read_line(reader)).decode("latin-1").rstrip("\r\n")
        if not line:
            return headers
        name, sep, value = line.partition(":")
        if not sep:
            raise BadHTTP(f"malformed header line: {line!r}")
        headers[name.strip().lower()] = value.strip()
    raise BadHTTP("too many headers")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = (await _read_line(reader)).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError as exc:
            raise BadHTTP("bad chunk size") from exc
        if size == 0:
            await _read_headers(reader)  # trailers
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise BadHTTP("body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise BadHTTP("bad Content-Length") from exc
    if not 0 <= length <= MAX_BODY_BYTES:
        raise BadHTTP("bad Content-Length")
    return await reader.readexactly(length)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None when the client closed it cleanly."""
    try:
        line = await _read_line(reader)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadHTTP("connection closed inside the request line") from exc
        return None
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadHTTP(f"malformed request line: {line!r}")
    method, target, _ = parts
    headers = await _read_headers(reader)
    body = await _read_body(reader, headers)
    return Request(method.upper(), target.split("?", 1)[0], headers, body)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # 529, Anthropic's "overloaded", is not in the standard list
        return _EXTRA_PHRASES.get(status, "Unknown")


_EXTRA_PHRASES = {529: "Overloaded"}


class ResponseWriter:
    """Writes responses on one connection; `closed` once the connection is finished."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.closed = False

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_phrase(status)}"]
        lines += [f"{name}: {value}" for name, value in (ALWAYS_HEADERS | headers).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        declared_length: int | None = None,
    ) -> None:
        """A whole response. `declared_length` larger than the body makes it truncated."""
        length = len(body) if declared_length is None else declared_length
        fields = {"Content-Length": str(length)} | (headers or {})
        self._writer.write(self._head(status, fields) + body)
        await self._writer.drain()

    async def send_json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        await self.send(status, body, {"Content-Type": "application/json"} | (headers or {}))

    async def start_chunked(self, status: int, headers: dict[str, str]) -> None:
        fields = {"Transfer-Encoding": "chunked"} | headers
        self._writer.write(self._head(status, fields))
        await self._writer.drain()

    async def send_chunk(self, data: bytes) -> None:
        if data:
            self._writer.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            await self._writer.drain()

    async def end_chunked(self, last: bytes = b"") -> None:
        """End the body; `last`, the final chunk, goes out in the same write (so a client
        that reads it finds the body's end with it, as it does from most servers)."""
        if last:
            self._writer.write(f"{len(last):X}\r\n".encode() + last + b"\r\n0\r\n\r\n")
        else:
            self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()

    def close(self) -> None:
        """Close the connection after flushing what was written (a mid-body close)."""
        self.closed = True
        self._writer.close()
