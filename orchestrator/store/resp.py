"""The wire under redis-py's asyncio connections, with less CPU per call.

A worker sends tens of Redis calls per fork, and redis-py 5's asyncio connection spends
more CPU around each call than the call itself costs Redis: it packs commands in Python,
runs every socket write in a task of its own (`asyncio.wait_for`), and before lending a
pooled connection it reads the socket under a zero timeout to check that nothing is
pending (a pass through the event loop, and a cancelled read, for every command). Here:

- `LeanConnection` (and its TLS, Unix socket and Sentinel siblings) packs commands with
  hiredis' C packer when it is installed (arq depends on it), byte for byte what redis-py
  sends; arguments hiredis does not take (a bool, an IntEnum) go through redis-py's packer,
  which says why it cannot send them. Without hiredis everything is redis-py's own.
- A write whose bytes all left for the kernel is not wrapped in a task: nothing can block.
  A write that could block (the socket's buffer is full) still waits for at most the
  socket timeout, as before.
- A pooled connection is checked for pending data without a pass through the loop: the
  data redis-py's check could see is already in the stream's buffer.
- A reply that has already arrived (the second and later replies of a pipeline) is
  returned without arming the read timeout; a reply that has to be waited for still waits
  under it (a Redis that never answers is an error after `socket_timeout`, never a hang).
- `call` and `call_many` send one command, or several in one round trip, on a pooled
  connection without building a `Pipeline` (with the connection's own retry policy, and
  a dropped or timed-out connection closed, as redis-py does).
- `LeanPool` lends an idle connection that is connected and clean without its lock and
  checks; anything else goes through redis-py's pool code.

Everything else (connecting, authentication, health checks, Sentinel discovery) is
redis-py's. `lean_pool` switches a pool made by redis-py to these connection classes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

from redis import __version__ as _REDIS_VERSION
from redis import exceptions as redis_errors
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

__all__ = [
    "HIREDIS_PACKER",
    "LEAN_SUPPORTED",
    "LeanConnection",
    "LeanPool",
    "call",
    "call_many",
    "lean_pool",
    "pack_command",
]

Command = Sequence[Any]


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    try:
        import hiredis
    except ImportError:  # redis-py then parses and packs in Python
        return None
    packer: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
    return packer


# hiredis' `pack_command`, or None when it is not installed.
HIREDIS_PACKER = _hiredis_packer()
_UTF8 = frozenset({"utf-8", "utf8", "UTF-8", "UTF8"})


def _split_name(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """redis-py's rule: a command name with spaces ("SCRIPT LOAD") is several words."""
    first = args[0]
    if isinstance(first, str):
        return tuple(first.encode().split()) + args[1:]
    if b" " in first:
        return tuple(first.split()) + args[1:]
    return args


def pack_command(
    args: tuple[Any, ...], fallback: Callable[..., list[bytes]], packer: Any = HIREDIS_PACKER
) -> list[bytes]:
    """`args` packed as redis-py's `fallback(*args)` would, by hiredis when it can."""
    if packer is None or isinstance(args[0], float):
        return fallback(*args)
    try:
        return [packer(_split_name(args))]
    except TypeError:  # a type hiredis does not take: redis-py's encoder decides
        return fallback(*args)


class LeanConnection(AbstractConnection):
    """The per-call parts of redis-py's asyncio connection, with less CPU per call (see
    the module docstring). A mixin: the concrete classes put it after redis-py's."""

    _read_deadline: float = 0.0  # of the read in progress; 0.0: none
    _read_expired: bool = False  # the watchdog failed the read in progress
    _watchdog_armed: bool = False  # its timer is scheduled (on _watchdog_loop)
    _watchdog_loop: asyncio.AbstractEventLoop | None = None

    def _packer(self) -> Any:
        encoder = self.encoder
        if encoder.encoding in _UTF8 and encoder.encoding_errors == "strict":
            return HIREDIS_PACKER
        return None  # hiredis only encodes str as strict UTF-8

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(args, super().pack_command, self._packer())

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        packer = self._packer()
        if packer is None:
            return super().pack_commands(commands)
        fallback = super().pack_command
        output: list[bytes] = []
        for command in commands:
            output += pack_command(tuple(command), fallback, packer)
        return output

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        if writer is None or not self.socket_timeout or isinstance(command, (bytes, str)):
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        writer = self._writer
        if writer is None:  # the health check failed and dropped the connection
            await super().send_packed_command(command, check_health)
            return
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                # The kernel took less than all of it: waiting for room may block.
                await super().send_packed_command([], check_health=False)
                return
            await writer.drain()  # cannot block with an empty buffer: raises if closed
        except OSError as exc:
            await self.disconnect(nowait=True)
            err_no, errmsg = ("UNKNOWN", exc.args[0]) if len(exc.args) == 1 else exc.args[:2]
            raise redis_errors.ConnectionError(
                f"Error {err_no} while writing to socket. {errmsg}."
            ) from exc
        except BaseException:
            # As redis-py: a half-sent command leaves the connection unusable.
            await self.disconnect(nowait=True)
            raise

    def _hiredis_reader(self) -> Any:
        """The hiredis reader of a connected hiredis parser, else None."""
        parser = self._parser
        if type(parser) is _AsyncHiredisParser and parser._connected:
            return cast(Any, parser)._reader
        return None

    def is_clean(self) -> bool:
        """True if nothing can be pending on this connection: no parsed reply, no unread
        bytes, no EOF or error on the stream (False: redis-py's async check decides).
        redis-py's own check (a read under a zero timeout) could see no more than this:
        its timeout fires before any newly arrived bytes wake the read."""
        reader = self._hiredis_reader()
        stream = self._reader
        if reader is None or stream is None or reader.has_data():
            return False
        return not cast(Any, stream)._buffer and not stream.at_eof() and not stream.exception()

    async def can_read_destructive(self) -> bool:
        if self.is_clean():
            return False
        # Pending data, a closed socket or another parser: redis-py reads it.
        result: bool = await super().can_read_destructive()  # type: ignore[no-untyped-call]
        return result

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        reader = self._hiredis_reader()
        if reader is not None:
            response = reader.gets(False) if disable_decoding else reader.gets()
            if response is not NOT_ENOUGH_DATA:  # arrived already: no timeout to arm
                return await self._buffered_reply(response, disconnect_on_error)
            if timeout is None and self.socket_timeout and disconnect_on_error:
                parser = cast(_AsyncHiredisParser, self._parser)
                response = await self._awaited_reply(parser, disable_decoding)
                return await self._buffered_reply(response, disconnect_on_error)
        # A caller's own timeout (a None reply when it passes), or another parser.
        return await super().read_response(
            disable_decoding,
            timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )

    async def _awaited_reply(self, parser: _AsyncHiredisParser, disable_decoding: bool) -> Any:
        """The next reply, waited for at most `socket_timeout` (redis-py's errors: the
        connection closed, and TimeoutError or ConnectionError raised)."""
        try:
            response = await self._watched(parser.read_response(disable_decoding=disable_decoding))
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise redis_errors.TimeoutError(f"Timeout reading from {self._host_error()}") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise redis_errors.ConnectionError(
                f"Error while reading from {self._host_error()} : {exc.args}"
            ) from None
        except BaseException:
            await self.disconnect(nowait=True)
            raise
        return response

    async def _watched(self, read: Awaitable[Any]) -> Any:
        """`await read`, failed with TimeoutError once `socket_timeout` has passed.

        One timer per connection watches every read, instead of one armed and cancelled
        per read (`asyncio.timeout`, ~6 µs of CPU a reply): a read notes its deadline,
        and the timer, when it fires, either moves on to the current deadline or, if it
        has passed, fails the read by setting TimeoutError on the connection's stream
        (the connection is then closed, so nothing else ever reads that stream)."""
        loop = asyncio.get_running_loop()
        assert self.socket_timeout is not None
        deadline = loop.time() + self.socket_timeout
        self._read_deadline = deadline
        self._read_expired = False
        if self._watchdog_loop is not loop:  # first read, or a new loop
            self._watchdog_loop = loop
            loop.call_at(deadline, self._watch)
        elif not self._watchdog_armed:
            loop.call_at(deadline, self._watch)
        self._watchdog_armed = True
        try:
            result = await read
        finally:
            self._read_deadline = 0.0
        if self._read_expired:  # the reply came as the deadline passed: too late
            raise TimeoutError
        return result

    def _watch(self) -> None:
        """The watchdog timer: fail the read in progress if its deadline has passed."""
        deadline = self._read_deadline
        loop = self._watchdog_loop
        if not deadline or loop is None:
            self._watchdog_armed = False  # no read in progress: the next one re-arms
            return
        if loop.time() < deadline:
            loop.call_at(deadline, self._watch)
            return
        self._watchdog_armed = False
        self._read_expired = True
        stream = self._reader
        if stream is not None:
            stream.set_exception(TimeoutError())

    async def _buffered_reply(self, response: Any, disconnect_on_error: bool) -> Any:
        """What redis-py's read_response makes of a reply its parser returned."""
        error = response
        if isinstance(response, list) and response:
            error = response[0]
        if isinstance(error, redis_errors.ConnectionError):
            if disconnect_on_error:
                await self.disconnect(nowait=True)
            raise error
        if self.health_check_interval:
            loop_time = asyncio.get_running_loop().time()
            self.next_health_check = loop_time + self.health_check_interval
        if isinstance(response, redis_errors.ResponseError):
            raise response from None
        return response


class _LeanTCP(Connection, LeanConnection):
    pass


class _LeanSSL(SSLConnection, LeanConnection):
    pass


class _LeanUnix(UnixDomainSocketConnection, LeanConnection):
    pass


class _LeanSentinel(SentinelManagedConnection, LeanConnection):
    pass


class _LeanSentinelSSL(SentinelManagedSSLConnection, LeanConnection):
    pass


_LEAN: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _LeanTCP,
    SSLConnection: _LeanSSL,
    UnixDomainSocketConnection: _LeanUnix,
    SentinelManagedConnection: _LeanSentinel,
    SentinelManagedSSLConnection: _LeanSentinelSSL,
}


# The lean connections override parts of redis-py's asyncio connection and hiredis parser
# that are not public API; they are checked against redis-py 5.3. With any other version
# installed (pyproject admits >=5.0,<6) the pools keep redis-py's own connections.
LEAN_SUPPORTED = _REDIS_VERSION.startswith("5.3.")


def lean_pool(pool: ConnectionPool) -> ConnectionPool:
    """`pool`, making lean connections from now on (a connection class redis-py does
    not ship, e.g. one a caller passed, is left as it is; so is every class when the
    installed redis-py is not one the lean classes were checked against)."""
    if LEAN_SUPPORTED:
        pool.connection_class = _LEAN.get(pool.connection_class, pool.connection_class)
    return pool


class LeanPool(ConnectionPool):
    """A connection pool of lean connections that lends an idle, clean, connected one
    without its lock and checks (redis-py's path otherwise: connecting, a busy lock,
    pending data)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lean_pool(self)

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        idle = self._available_connections
        if idle and not self._lock.locked():
            conn = idle[-1]
            if isinstance(conn, LeanConnection) and conn.is_connected and conn.is_clean():
                idle.pop()
                self._in_use_connections.add(conn)
                return conn
        conn = await super().get_connection()
        return cast(AbstractConnection, conn)


async def _disconnect_raise(conn: AbstractConnection, error: BaseException) -> None:
    """redis-py's failure step between retries: close, and give up unless retryable."""
    await conn.disconnect()
    if conn.retry_on_error is None or not isinstance(error, tuple(conn.retry_on_error)):
        raise error


async def _send_one(conn: AbstractConnection, args: Command) -> Any:
    await conn.send_packed_command(conn.pack_command(*args))
    return await conn.read_response()


async def _send_all(
    conn: AbstractConnection,
    commands: Sequence[Command],
    each: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """The commands in one write, their replies in order (a refused one's error in its
    place); `each(i, reply)` is told of every reply as soon as it is read."""
    await conn.send_packed_command(conn.pack_commands(commands))
    replies: list[Any] = []
    for i in range(len(commands)):
        try:
            reply = await conn.read_response()
        except redis_errors.ResponseError as exc:  # the connection is still in step
            reply = exc
        replies.append(reply)
        if each is not None:
            each(i, reply)
    return replies


async def call(pool: ConnectionPool, args: Command) -> Any:
    """One command on a connection of `pool`: its raw reply (no response callback), or
    the redis exception (a refused command raises `ResponseError`).

    Calls made in the same pass of the event loop (a worker's many turns flushing their
    events, starting and ending together) are sent together, one round trip on one
    connection (`_Coalesced`): each is still its own command with its own reply, run
    in the order they were made; only the socket writes and reads are shared. The
    first call of a pass waits one pass for others to join, then, alone, is sent as
    before. A call whose caller is cancelled once it is on its way may still run, as
    before; the others' calls are not affected. Not for blocking commands (the calls
    sent with one would wait for it)."""
    if _may_block(args):
        return await _call_one(pool, args)  # alone: no call waits behind it
    loop = asyncio.get_running_loop()
    batch = getattr(pool, _BATCH, None)
    size = _size(args)
    if batch is not None and batch.loop is loop and not batch.sent and batch.has_room(size):
        return await batch.join(args, size)
    if batch is not None and batch.loop is loop and not batch.sent:
        batch.send_full()  # full: it goes now, and this call leads the next one
    batch = _Coalesced(pool, loop, args, size)
    setattr(pool, _BATCH, batch)
    try:
        await asyncio.sleep(0)  # one pass: the calls made in it join this one
    except asyncio.CancelledError:
        batch.send(lead=False)  # this call is not sent; those that joined it are
        raise
    if batch.send(lead=True):
        return await _call_one(pool, args)  # alone: as a call of its own
    return await batch.lead_reply()


async def _call_one(pool: ConnectionPool, args: Command) -> Any:
    conn = await pool.get_connection()
    try:
        return await conn.retry.call_with_retry(
            lambda: _send_one(conn, args), lambda error: _disconnect_raise(conn, error)
        )
    finally:
        await pool.release(conn)


# The attributes of a pool that hold the batch of `call`s being gathered, and the round
# trips of batches on their way.
_BATCH = "_lean_coalesced"
_SENDING = "_lean_sending"
# A batch's bounds: one write of at most about this many bytes of arguments and calls.
_BATCH_BYTES = 1 << 20
_BATCH_CALLS = 128
# Commands that can block the connection (sent alone, never in a batch): B* list and
# sorted-set pops, XREAD(GROUP) with BLOCK, WAIT; the B* commands that do not block
# (BITCOUNT...) are sent alone too, which costs nothing but the shared write.
_BLOCKING = frozenset({"XREAD", "XREADGROUP", "WAIT", "WAITAOF"})


def _may_block(args: Command) -> bool:
    name = args[0]
    name = (name.decode() if isinstance(name, bytes) else str(name)).upper()
    return name.startswith("B") or name in _BLOCKING


def _size(args: Command) -> int:
    return sum(len(a) if isinstance(a, bytes | str) else 8 for a in args)


class _Coalesced:
    """The `call`s made on one pool in one pass of the event loop: the first one (the
    lead) waits a pass, then sends them all in one round trip (a task of its own, so a
    caller that gives up leaves it to the others), or itself alone as before."""

    def __init__(
        self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop, lead: Command, size: int
    ):
        self.pool = pool
        self.loop = loop
        self.sent = False
        self._commands: list[Command] = [lead]
        self._futures: list[asyncio.Future[Any]] = [loop.create_future()]
        self._bytes = size

    def has_room(self, size: int) -> bool:
        return len(self._commands) < _BATCH_CALLS and self._bytes + size <= _BATCH_BYTES

    async def join(self, args: Command, size: int) -> Any:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._bytes += size
        self._commands.append(args)
        self._futures.append(future)
        # Shielded: a caller that gives up leaves the batch to the others.
        return await asyncio.shield(future)

    def send(self, *, lead: bool) -> bool:
        """Close the batch and send it; True if the lead is alone in it (it is then sent
        by the lead's own call). Without the lead (cancelled), the others go."""
        if self.sent:  # sent when it was full: the lead's reply comes with the others
            return False
        self.sent = True
        if getattr(self.pool, _BATCH, None) is self:
            delattr(self.pool, _BATCH)
        if not lead:
            del self._commands[0], self._futures[0]
        elif len(self._commands) == 1:
            return True
        self._start()
        return False

    def send_full(self) -> None:
        """Send it now, lead and all (no call fits in it any more); the lead, when its
        pass ends, waits for its reply like the others."""
        if not self.sent:
            self.sent = True
            if getattr(self.pool, _BATCH, None) is self:
                delattr(self.pool, _BATCH)
            self._start()

    def _start(self) -> None:
        if self._commands:
            # Held by the pool until it is done: no caller may be left to hold it.
            sending: set[asyncio.Task[None]] = self.pool.__dict__.setdefault(_SENDING, set())
            task = self.loop.create_task(self._round_trip())
            sending.add(task)
            task.add_done_callback(sending.discard)

    async def lead_reply(self) -> Any:
        return await asyncio.shield(self._futures[0])

    async def _round_trip(self) -> None:
        """Send the batch; each caller gets its reply as soon as it is read, so a later
        failure (a dropped connection, a read timeout on a slow script sent after it)
        fails only the calls not answered yet. Not retried as a whole (a retry would
        run the answered calls again)."""
        futures = self._futures
        try:
            if len(self._commands) == 1:
                _settle(futures[0], await _call_one(self.pool, self._commands[0]))
                return
            conn = await self.pool.get_connection()
            try:
                await _send_all(conn, self._commands, lambda i, r: _settle(futures[i], r))
            except BaseException:
                await conn.disconnect()  # replies may be left unread: never reused so
                raise
            finally:
                await self.pool.release(conn)
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        _settle(future, exc)
            if not isinstance(exc, Exception):
                raise


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    """Give a caller its reply, or raise a refused command's error (as a call of its
    own raises it) or the failure in its call."""
    if future.done():
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
        future.exception()  # retrieved: a caller that gave up logs nothing
    else:
        future.set_result(reply)


async def call_many(pool: ConnectionPool, commands: Sequence[Command]) -> list[Any]:
    """Several commands in one round trip (no MULTI): their raw replies in order, a
    refused command's `ResponseError` in its place (as `execute(raise_on_error=False)`)."""
    conn = await pool.get_connection()
    try:
        replies: list[Any] = await conn.retry.call_with_retry(
            lambda: _send_all(conn, commands), lambda error: _disconnect_raise(conn, error)
        )
        return replies
    finally:
        await pool.release(conn)
