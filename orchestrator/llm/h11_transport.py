"""`H11Transport`: HTTP/1.1 over asyncio streams, as an httpx transport.

httpx's own transport (httpcore over anyio) costs about 1 ms of CPU per streamed
chat completion on loopback, most of it in layers a model client does not need (anyio's
locks and cancel scopes, the pool's state machine). This one keeps what the requests of
a model client use: keep-alive connections to one origin (idle ones are reused
newest first, dropped after `KEEPALIVE_EXPIRY_S` or when the server closed them), TLS,
connect/read/write timeouts from the request's `timeout` extension, and httpx's
exceptions (`ConnectError`, `ReadTimeout`, `RemoteProtocolError`, ...), so the retry
policy sees exactly what it saw before.

It was named for h11, which parsed the wire here (as it does under httpcore). h11 cost an
event object and a state-machine step per streamed chunk and a validation pass over
every head, together about a fifth of an in-process agent loop's CPU; the few forms a
client needs are parsed here instead, as strictly: a request's header names must be
tokens and no value may hold CR, LF or NUL (`LocalProtocolError`); a response's status
line and header lines must be well formed, its framing headers valid
(`RemoteProtocolError`). Bodies are read from the connection's buffer (Content-Length,
chunked, or up to the close), and the chunks that one socket read brings are handed on
as one piece.

The number of connections in use is bounded by the caller (`HTTPShards` leases one
request per connection); the transport keeps at most `max_idle` idle ones. Idle
connections do not outlive their event loop: when the loop shuts down (`asyncio.run`'s
end, which closes the loop's async generators) they are closed, so a model built at
import and used by several `asyncio.run` calls leaves no socket behind.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator

import httpx

__all__ = ["KEEPALIVE_EXPIRY_S", "H11Transport"]

# httpx's default keep-alive expiry: servers commonly close idle connections after 5-75 s.
KEEPALIVE_EXPIRY_S = 5.0
_READ_SIZE = 64 * 1024
# The longest response head (and chunk size or trailer line) accepted.
_MAX_HEAD = 64 * 1024
_HEAD_END = re.compile(rb"\n\r?\n")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00\r\n]*))?")
# The value is taken greedily and its trailing blanks stripped in Python: a lazy value
# followed by [ \t]* backtracks quadratically on a long run of blanks (seconds of a
# blocked event loop for a 30 KB header a server sends).
_HEADER_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*([^\x00\r\n]*)")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_Origin = tuple[bytes, bytes, int]


class _Stale(Exception):
    """A reused connection that the server had closed: the request was not read."""


class _ReadTimedOut(Exception):
    """Set on a connection's reader when a read has waited longer than the read timeout."""


class _ReadClock:
    """A connection's read timeout with one timer per request, not one per read.

    A read says when it starts waiting (`begin`) and when it got its bytes (`end`). The
    timer, armed by the first read, fires at most once per `timeout`: if a read has then
    been waiting for `timeout` it fails with `_ReadTimedOut` (set on the reader, which
    wakes it), otherwise the timer is armed again for the waiting read's own deadline.
    Time between reads (a slow consumer) does not count, as with a timeout per read.
    A timer per read (asyncio.timeout) cost a heap push and pop among every in-flight
    read's timer for each network read: a few percent of an agent loop's CPU.
    """

    __slots__ = ("_handle", "_loop", "_reader", "_since", "timeout")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = reader
        self._handle: asyncio.TimerHandle | None = None
        self._since: float | None = None  # when the waiting read began (None: none waits)
        self.timeout: float | None = None

    def begin(self) -> None:
        if self.timeout is None:
            return
        self._since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self.timeout, self._check)

    def end(self) -> None:
        self._since = None

    def _check(self) -> None:
        self._handle = None
        if self._since is None or self.timeout is None:
            return  # no read waits: the next one arms the timer again
        due = self._since + self.timeout
        if self._loop.time() >= due:
            # Data that came in the same pass as the timer wins (the read returns it);
            # the exception is set only on a reader with nothing to give.
            if not _has_data(self._reader):
                self._reader.set_exception(_ReadTimedOut())
                return
            self._handle = self._loop.call_at(self._loop.time() + self.timeout, self._check)
        else:
            self._handle = self._loop.call_at(due, self._check)

    def stop(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()


def _has_data(reader: asyncio.StreamReader) -> bool:
    """Whether `reader` holds bytes not read yet. asyncio's StreamReader has no public
    way to ask; its buffer (`_buffer`, a bytearray in CPython 3.11-3.13) is looked at, and
    a reader without one counts as holding data (so its connection is not reused)."""
    buffer = getattr(reader, "_buffer", None)
    return buffer is None or len(buffer) > 0


class _Connection:
    __slots__ = ("buffer", "clock", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        # What was read from the socket and not parsed yet.
        self.buffer = bytearray()
        self.clock = _ReadClock(reader)

    def usable(self, now: float) -> bool:
        # Bytes that came while it was idle (an extra response, a late body) or a read
        # error left on the reader: not lent again, they would answer the next request.
        return (
            not self.buffer
            and not _has_data(self.reader)
            and self.reader.exception() is None
            and not self.reader.at_eof()
            and not self.writer.is_closing()
            and now - self.idle_since < KEEPALIVE_EXPIRY_S
        )

    def close(self) -> None:
        self.clock.stop()
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
            connection.clock.timeout = timeouts.get("read")
            closing = await self._send(connection, request, timeouts.get("write"), reused=reused)
            head = await _receive_head(connection, request, reused=reused)
            framing = _framing(request.method, head, closing)
        except _Malformed as exc:
            connection.close()
            raise httpx.RemoteProtocolError(str(exc), request=request) from None
        except BaseException:
            connection.close()
            raise
        body = _Body(self, connection, origin, request, framing)
        return httpx.Response(
            status_code=head.status,
            headers=head.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1." + head.version, "reason_phrase": head.reason},
        )

    async def _send(
        self,
        connection: _Connection,
        request: httpx.Request,
        timeout: float | None,
        *,
        reused: bool,
    ) -> bool:
        """Write the request; True if it asked the server to close the connection."""
        data, closing = _request_bytes(request)
        writer = connection.writer
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(timeout):
                    await writer.drain()
            else:
                await writer.drain()  # all sent: it only raises if the connection was lost
        except TimeoutError as exc:
            raise httpx.WriteTimeout("write timeout", request=request) from exc
        except OSError as exc:
            if reused:
                raise _Stale from exc
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
        return closing

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


async def _fill(connection: _Connection, request: httpx.Request) -> bool:
    """One read from the socket into the connection's buffer (False: the server closed
    the connection); httpx's errors, a `ReadTimeout` after the request's read timeout."""
    clock = connection.clock
    clock.begin()
    try:
        data = await connection.reader.read(_READ_SIZE)
    except _ReadTimedOut as exc:
        raise httpx.ReadTimeout("read timeout", request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    finally:
        clock.end()
    connection.buffer += data
    return bool(data)


class _Head:
    __slots__ = ("headers", "reason", "status", "version")

    def __init__(
        self, version: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers


def _request_bytes(request: httpx.Request) -> tuple[bytes, bool]:
    """The request on the wire (its line, its headers checked, its body), and whether it
    asks the server to close the connection after the answer."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    chunked = closing = False
    for name, value in request.headers.raw:
        if _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
            raise httpx.LocalProtocolError(f"illegal header {name!r}", request=request)
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            chunked = True
        elif lowered == b"connection" and b"close" in value.lower():
            closing = True
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    content = request.content
    if chunked:
        parts += (
            (f"{len(content):x}\r\n".encode(), content, b"\r\n0\r\n\r\n")
            if content
            else (b"0\r\n\r\n",)
        )
    else:
        parts.append(content)
    return b"".join(parts), closing


def _parse_head(data: bytes) -> _Head:
    """A response head (its status line up to the blank line); `_Malformed` if broken."""
    lines = data.split(b"\n")
    status = _STATUS_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if status is None:
        raise _Malformed(f"illegal status line {lines[0][:60]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        header = _HEADER_LINE.fullmatch(line)
        if header is None:
            raise _Malformed(f"illegal header line {line[:60]!r}")
        headers.append((header[1], header[2].rstrip(b" \t")))
    return _Head(status[1], int(status[2]), status[3] or b"", headers)


async def _receive_head(connection: _Connection, request: httpx.Request, *, reused: bool) -> _Head:
    """The response's head, read and checked (informational responses skipped).
    `reused`: a connection closed before any byte of the answer is `_Stale` (the server
    had closed it while it was idle, so it never read the request)."""
    buffer = connection.buffer
    heard = bool(buffer)
    while True:
        end = _HEAD_END.search(buffer)
        if end is None:
            if len(buffer) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("response head too long", request=request)
            try:
                more = await _fill(connection, request)
            except httpx.ReadError as exc:
                if reused and not heard:
                    raise _Stale from exc
                raise
            if not more:
                if reused and not heard:
                    raise _Stale
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a complete response", request=request
                )
            heard = True
            continue
        data = bytes(buffer[: end.end()])
        del buffer[: end.end()]
        try:
            head = _parse_head(data)
        except _Malformed as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from None
        if head.status == 101:
            raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols", request=request)
        if head.status < 100:
            raise httpx.RemoteProtocolError(f"illegal status {head.status}", request=request)
        if head.status >= 200:
            return head


class _Malformed(Exception):
    """A response body that breaks HTTP/1.1's framing (the message says how)."""


class _Framing:
    """How a response body ends, parsed from the connection's buffer: `take` returns the
    body bytes the buffer holds (and consumes them), `done` is set at the body's end."""

    keep_alive = True
    done = False

    def take(self, buffer: bytearray) -> bytes:
        raise NotImplementedError

    def closed(self) -> None:
        """The server closed the connection: the end of a body that ends so, else an error."""
        raise _Malformed("peer closed connection without sending complete message body")


class _Length(_Framing):
    def __init__(self, length: int) -> None:
        self.expected = self.left = length
        self.done = length == 0

    def take(self, buffer: bytearray) -> bytes:
        n = min(self.left, len(buffer))
        data = bytes(buffer[:n])
        del buffer[:n]
        self.left -= n
        self.done = self.left == 0
        return data

    def closed(self) -> None:
        raise _Malformed(
            "peer closed connection without sending complete message body: "
            f"received {self.expected - self.left} bytes, expected {self.expected}"
        )


class _Chunked(_Framing):
    _HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

    def __init__(self) -> None:
        self.left = 0  # bytes of the current chunk still to come
        self.after_data = False  # a chunk's data ended: its CRLF comes next
        self.trailer = False  # the last chunk came: trailer lines up to a blank one

    def take(self, buffer: bytearray) -> bytes:
        parts: list[bytes] = []
        while not self.done:
            if self.left:
                if not buffer:
                    break
                n = min(self.left, len(buffer))
                parts.append(bytes(buffer[:n]))
                del buffer[:n]
                self.left -= n
                self.after_data = not self.left
                continue
            line = _take_line(buffer)
            if line is None:
                break
            if self.after_data:
                if line:
                    raise _Malformed("chunk data not followed by CRLF")
                self.after_data = False
            elif self.trailer:
                self.done = not line
            else:
                self._start_chunk(line)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _start_chunk(self, line: bytes) -> None:
        size = line.split(b";", 1)[0].strip(b" \t")
        if self._HEX.fullmatch(size) is None:
            raise _Malformed(f"bad chunk size line {line[:40]!r}")
        self.left = int(size, 16)
        self.trailer = self.left == 0

    def closed(self) -> None:
        raise _Malformed(
            "peer closed connection without sending complete message body: incomplete chunked read"
        )


class _UntilClose(_Framing):
    keep_alive = False

    def take(self, buffer: bytearray) -> bytes:
        data = bytes(buffer)
        buffer.clear()
        return data

    def closed(self) -> None:
        self.done = True


def _take_line(buffer: bytearray) -> bytes | None:
    """The buffer's first line without its LF or CRLF (consumed), or None if it has none."""
    end = buffer.find(b"\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise _Malformed("line too long in a chunked body")
        return None
    line = bytes(buffer[: end - 1 if end and buffer[end - 1] == 0x0D else end])
    del buffer[: end + 1]
    return line


def _framing(method: str, head: _Head, closing: bool) -> _Framing:
    """How the body of `head` ends (RFC 9112 6.3), and whether the connection may carry
    the next request after it; `_Malformed` for framing headers that do not parse."""
    lengths: set[bytes] = set()
    chunked = False
    keep_alive = head.version == b"1" and not closing
    for name, value in head.headers:
        name = name.lower()
        if name == b"transfer-encoding":
            if value.lower() != b"chunked":
                raise _Malformed(f"unsupported Transfer-Encoding {value[:40]!r}")
            chunked = True
        elif name == b"content-length":
            lengths.update(part.strip(b" \t") for part in value.split(b","))
        elif name == b"connection" and b"close" in value.lower():
            keep_alive = False
    if lengths and (len(lengths) > 1 or _DIGITS.fullmatch(next(iter(lengths))) is None):
        raise _Malformed(f"bad Content-Length {sorted(lengths)!r}")
    framing: _Framing
    if method == "HEAD" or head.status in (204, 304):
        framing = _Length(0)
    elif chunked:
        framing = _Chunked()
    elif lengths:
        framing = _Length(int(lengths.pop()))
    else:
        framing = _UntilClose()
    if not keep_alive:
        framing.keep_alive = False
    return framing


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives; the connection goes back to the pool at its end.
    Each step hands on all the body bytes that one read from the socket brought."""

    def __init__(
        self,
        transport: H11Transport,
        connection: _Connection,
        origin: _Origin,
        request: httpx.Request,
        framing: _Framing,
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._origin = origin
        self._request = request
        self._framing = framing

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        framing = self._framing
        try:
            while True:
                try:
                    data = framing.take(connection.buffer)
                except _Malformed as exc:
                    raise httpx.RemoteProtocolError(str(exc), request=self._request) from None
                if data:
                    yield data
                if framing.done:
                    break
                if not await _fill(connection, self._request):
                    try:
                        framing.closed()
                    except _Malformed as exc:
                        raise httpx.RemoteProtocolError(str(exc), request=self._request) from None
        except BaseException:
            self._drop()
            raise
        self._finish()

    def _finish(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if (
            self._framing.keep_alive
            and not connection.buffer
            and connection.reader.exception() is None
        ):
            connection.clock.stop()
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
