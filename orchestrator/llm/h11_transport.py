"""`H11Transport`: HTTP/1.1 over asyncio streams and h11, as an httpx transport.

httpx's own transport (httpcore over anyio) costs about 1 ms of CPU per streamed
chat completion on loopback, most of it in layers a model client does not need (anyio's
locks and cancel scopes, the pool's state machine). This one keeps what the requests of
a model client use: keep-alive connections to one origin (idle ones are reused
newest first, dropped after `KEEPALIVE_EXPIRY_S` or when the server closed them), TLS,
connect/read/write timeouts from the request's `timeout` extension, and httpx's
exceptions (`ConnectError`, `ReadTimeout`, `RemoteProtocolError`, ...), so the retry
policy sees exactly what it saw before. h11 parses the wire, as it does under httpcore.

The number of connections in use is bounded by the caller (`HTTPShards` leases one
request per connection); the transport keeps at most `max_idle` idle ones. Idle
connections do not outlive their event loop: when the loop shuts down (`asyncio.run`'s
end, which closes the loop's async generators) they are closed, so a model built at
import and used by several `asyncio.run` calls leaves no socket behind.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import h11
import httpx

__all__ = ["KEEPALIVE_EXPIRY_S", "H11Transport"]

# httpx's default keep-alive expiry: servers commonly close idle connections after 5-75 s.
KEEPALIVE_EXPIRY_S = 5.0
_READ_SIZE = 64 * 1024
_Origin = tuple[bytes, bytes, int]


class _Stale(Exception):
    """A reused connection that the server had closed: the request was not read."""


class _Connection:
    __slots__ = ("h11", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and now - self.idle_since < KEEPALIVE_EXPIRY_S
        )

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeouts


class H11Transport(httpx.AsyncBaseTransport):
    """Requests over kept-alive HTTP/1.1 connections (see the module docstring)."""

    def __init__(self, *, ssl_context: ssl.SSLContext, max_idle: int) -> None:
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False
        self._keeper: AsyncGenerator[None, None] | None = None

    async def _keep_until_loop_shutdown(self) -> AsyncGenerator[None, None]:
        # Started once and never resumed: the loop closes it at shutdown
        # (shutdown_asyncgens), and then the idle connections go with it.
        try:
            yield
        finally:
            self._close_idle()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        if self._keeper is None:
            self._keeper = self._keep_until_loop_shutdown()
            await anext(self._keeper)
        origin = (request.url.raw_scheme, request.url.raw_host, request.url.port or 0)
        reused = self._take_idle(origin)
        if reused is not None:
            try:
                return await self._exchange(reused, origin, request, reused=True)
            except _Stale:
                pass  # the server closed it while idle: a new connection sends it once
        connection = await self._connect(origin, request)
        return await self._exchange(connection, origin, request, reused=False)

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        return None

    def _give_back(self, origin: _Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(self, origin: _Origin, request: httpx.Request) -> _Connection:
        scheme, host, port = origin
        tls = scheme == b"https"
        hostname = host.decode("ascii")
        try:
            async with asyncio.timeout(_timeouts(request).get("connect")):
                reader, writer = await asyncio.open_connection(
                    hostname,
                    port or (443 if tls else 80),
                    ssl=self._ssl_context if tls else None,
                    server_hostname=hostname if tls else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect timeout to {hostname}", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self, connection: _Connection, origin: _Origin, request: httpx.Request, *, reused: bool
    ) -> httpx.Response:
        timeouts = _timeouts(request)
        try:
            await self._send(connection, request, timeouts.get("write"), reused=reused)
            head = await _receive(connection, request, timeouts.get("read"), reused=reused)
        except BaseException:
            connection.close()
            raise
        if not isinstance(head, h11.Response):  # pragma: no cover - h11 gives a Response
            connection.close()
            raise httpx.RemoteProtocolError("no response head", request=request)
        body = _Body(self, connection, origin, request, timeouts.get("read"))
        return httpx.Response(
            status_code=head.status_code,
            headers=head.headers.raw_items(),
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def _send(
        self,
        connection: _Connection,
        request: httpx.Request,
        timeout: float | None,
        *,
        reused: bool,
    ) -> None:
        url = request.url
        target = url.raw_path
        head = h11.Request(method=request.method, target=target, headers=list(request.headers.raw))
        content = request.content
        try:
            data = connection.h11.send(head) or b""
            if content:
                data += connection.h11.send(h11.Data(data=content)) or b""
            data += connection.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        try:
            connection.writer.write(data)
            async with asyncio.timeout(timeout):
                await connection.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("write timeout", request=request) from exc
        except OSError as exc:
            if reused:
                raise _Stale from exc
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc

    async def aclose(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.aclose()
        self._close_idle()

    def _close_idle(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


async def _receive(
    connection: _Connection, request: httpx.Request, timeout: float | None, *, reused: bool
) -> Any:
    """The next h11 event, reading from the socket as needed; httpx's errors. `reused`: a
    connection closed before any byte of the answer is `_Stale` (the server had closed it
    while it was idle, so it never read the request)."""
    heard = False
    while True:
        try:
            event = connection.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        if event is h11.NEED_DATA:
            try:
                async with asyncio.timeout(timeout):
                    data = await connection.reader.read(_READ_SIZE)
            except TimeoutError as exc:
                raise httpx.ReadTimeout("read timeout", request=request) from exc
            except OSError as exc:
                if reused and not heard:
                    raise _Stale from exc
                raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
            if not data and reused and not heard:
                raise _Stale
            heard = True
            connection.h11.receive_data(data)
            continue
        if isinstance(event, h11.ConnectionClosed):
            raise httpx.RemoteProtocolError(
                "server disconnected without sending a complete response", request=request
            )
        if isinstance(event, h11.InformationalResponse):
            continue
        return event


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives; the connection goes back to the pool at its end."""

    def __init__(
        self,
        transport: H11Transport,
        connection: _Connection,
        origin: _Origin,
        request: httpx.Request,
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._origin = origin
        self._request = request
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        try:
            while True:
                event = await _receive(connection, self._request, self._timeout, reused=False)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
        except BaseException:
            self._drop()
            raise
        self._finish()

    def _finish(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        state = connection.h11
        if state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
            self._transport._give_back(self._origin, connection)
        else:
            connection.close()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def aclose(self) -> None:
        # A body closed before its end leaves the connection mid-response: not reusable.
        self._drop()
