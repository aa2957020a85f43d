"""Connecting to Redis, and the one place Redis exceptions become `StoreError`s.

Every adapter method runs its Redis calls inside `translate_errors()`, so callers only
ever see the orchestrator's exception tree: `StoreUnavailable` when Redis could not be
reached (worth retrying), `StoreError` for anything else, with the redis exception
chained as `__cause__`.

Every client made here has a read timeout (`socket_timeout`) as well as a connect
timeout: a Redis that accepts connections but never answers is an error after the
timeout, never a hang. A client for blocking stream reads needs a timeout above its
longest block (`StreamReader` caps its blocks below its client's timeout).

Every client is built here, from one URL: `redis://`, `rediss://`, `unix://`, or
`redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]` for a
Redis Sentinel deployment (options after `?`: `sentinel_password`, `sentinel_username`).
A Sentinel client asks the sentinels for the current master before each new connection,
so after a failover the next connection (the one a worker makes when its outage handling
retries) reaches the promoted replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit
from weakref import WeakKeyDictionary

import redis.asyncio as aioredis
from arq.connections import ArqRedis
from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from orchestrator.errors import ConfigError, StoreError, StoreUnavailable
from orchestrator.store import jsonserial
from orchestrator.store._codec import ascii_digits, resolve
from orchestrator.store.resp import LeanConnection, LeanPool, call, call_many

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "SENTINEL_SCHEME",
    "Pipeline",
    "Redis",
    "SentinelTarget",
    "begin",
    "connect",
    "connect_arq",
    "hash_fields",
    "is_unavailable",
    "optimistic",
    "parse_sentinel_url",
    "read_timeout",
    "registered_script",
    "run_script",
    "run_scripts",
    "translate_errors",
]

Redis = aioredis.Redis
T = TypeVar("T")

# Errors that say "the path to Redis failed", not "Redis refused the command".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    OSError,
)


DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0


def _options(timeout_s: float, connect_timeout_s: float, kw: dict[str, Any]) -> dict[str, Any]:
    kw.setdefault("decode_responses", False)
    kw.setdefault("health_check_interval", 30)
    kw.setdefault("socket_keepalive", True)
    kw.setdefault("socket_timeout", timeout_s)
    kw.setdefault("socket_connect_timeout", connect_timeout_s)
    return kw


SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    """A `redis+sentinel://` URL, parsed: where the sentinels are and what to ask them."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _host_port(part: str, url: str) -> tuple[str, int]:
    host, sep, port = part.rpartition(":")
    if part.startswith("[") and "]" in part:  # [ipv6]:port
        host, sep, port = part[1:].partition("]:")
    if not sep or not host or not ascii_digits(port):
        raise ConfigError(f"sentinel address {part!r} in {url!r} is not host:port")
    return host, int(port)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://[[user]:pass@]h1:p1[,h2:p2...]/service_name[/db][?options]`.

    The user and password are the master's; `?sentinel_password=` (and
    `sentinel_username=`) authenticate to the sentinels. A malformed URL is a ConfigError
    that says what is wrong (and never echoes the password)."""
    parts = urlsplit(url)
    safe = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    if parts.scheme != SENTINEL_SCHEME:
        raise ConfigError(f"not a {SENTINEL_SCHEME}:// URL: {safe!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ConfigError(f"{safe!r} names no sentinel (host:port[,host:port...])")
    sentinels = tuple(_host_port(h, safe) for h in hosts.split(",") if h)
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(f"{safe!r} wants /service_name or /service_name/db after the hosts")
    if len(path) == 2 and not ascii_digits(path[1]):
        raise ConfigError(f"the database in {safe!r} must be a number, got {path[1]!r}")
    username, _, password = userinfo.partition(":")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"sentinel_password", "sentinel_username"}
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} in {safe!r}")
    return SentinelTarget(
        sentinels=sentinels,
        service_name=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )


class _SentinelPool(LeanPool, SentinelConnectionPool):
    """A Sentinel-backed pool (of lean connections) that also closes its sentinel clients
    when it is closed (redis-py leaves them to the garbage collector)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # closing the pool, not rediscovering a master
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def _pool(url: str, options: dict[str, Any]) -> aioredis.ConnectionPool:
    """The connection pool for `url`: the one place a URL becomes connections."""
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return LeanPool.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel_options = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "username": target.sentinel_username,
        "password": target.sentinel_password,
    }
    # redis-py's sentinel module is not annotated.
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    return _SentinelPool(
        target.service_name,
        sentinel,
        is_master=True,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )


def connect(
    url: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    **kw: Any,
) -> Redis:
    """A redis.asyncio client for `url` that returns bytes (decode_responses=False).

    `timeout_s` bounds the wait for each reply, `connect_timeout_s` the wait for a
    connection; other keyword arguments go to the connection pool (as with
    `redis.asyncio.Redis.from_url`). Connections open on first use. `url` may be a
    `redis+sentinel://` URL (see the module docstring).
    """
    client: Redis = aioredis.Redis.from_pool(_pool(url, _options(timeout_s, connect_timeout_s, kw)))
    return client


def connect_arq(
    url: str,
    queue_name: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> ArqRedis:
    """Like `connect`, but a client that can also enqueue arq jobs (JSON, never pickle)."""
    pool = _pool(url, _options(timeout_s, connect_timeout_s, {}))
    client = ArqRedis(
        pool,
        job_serializer=jsonserial.dumps,
        job_deserializer=jsonserial.loads,
        default_queue_name=queue_name,
    )
    # The client made the pool, so closing the client closes it (as `from_url` would).
    client.auto_close_connection_pool = True
    return client


def read_timeout(client: Redis) -> float | None:
    """The client's read timeout in seconds (None: it waits for ever)."""
    value = client.connection_pool.connection_kwargs.get("socket_timeout")
    return float(value) if value else None


def is_unavailable(exc: BaseException) -> bool:
    """True for a connection-level failure (dropped, refused, timed out)."""
    return isinstance(exc, _UNAVAILABLE)


def to_store_error(exc: BaseException, what: str) -> StoreError:
    """The orchestrator error for a redis exception (the caller chains it with `from`)."""
    if is_unavailable(exc):
        return StoreUnavailable(f"Redis unreachable during {what}: {exc}")
    return StoreError(f"Redis {what} failed: {exc}")


@asynccontextmanager
async def translate_errors(what: str = "operation") -> AsyncIterator[None]:
    """Turn redis (and socket) errors raised inside into `StoreError` chained to the cause.

    Usable as `async with translate_errors("XADD"):` or as a decorator on a coroutine
    function: `@translate_errors("load memory")`.
    """
    try:
        yield
    except (redis_errors.RedisError, OSError) as exc:
        raise to_store_error(exc, what) from exc


def _lean(redis: Redis) -> bool:
    """True for a client made here: its connections are `resp.LeanConnection`s, and its
    script calls skip redis-py's `Pipeline` (`resp.call`, `resp.call_many`). Any other
    client (fakeredis, a caller's own) gets redis-py's pipelines, as it always did."""
    return issubclass(redis.connection_pool.connection_class, LeanConnection)


async def _evalshas(redis: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The commands in one round trip (no MULTI), a refused one's error in its place."""
    if _lean(redis):
        return await call_many(redis.connection_pool, commands)
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


# The scripts registered on each client, by source: `register_script` hashes the source
# and looks up the client's encoder each time, and objects made for one turn (a publisher,
# a memory store) would do it again every turn (about 5 % of a worker's CPU per fork).
_SCRIPTS: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()


def registered_script(redis: Redis, lua: str) -> Any:
    """`redis.register_script(lua)`, made once per client and source and then shared (a
    script object holds only the client, the source and its SHA1)."""
    try:
        scripts = _SCRIPTS[redis]
    except KeyError:
        scripts = _SCRIPTS[redis] = {}
    script = scripts.get(lua)
    if script is None:
        script = scripts[lua] = redis.register_script(lua)
    return script


async def run_script(redis: Redis, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """One EVALSHA of a registered script (`redis.register_script(...)`): one round trip,
    without a MULTI (nor, for a client made here, a `Pipeline`); loaded first if Redis
    lacks it. Redis errors are raised as redis-py's (callers translate them)."""
    for loaded in (False, True):
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            if _lean(redis):
                return await call(redis.connection_pool, command)
            (reply,) = await _pipelined(redis, command)
            return reply
        except redis_errors.NoScriptError:
            if loaded:
                raise
            script.sha = await redis.script_load(script.script)
    raise AssertionError("unreachable")


async def hash_fields(redis: Redis, key: str) -> dict[Any, Any]:
    """HGETALL `key`: its fields and their values ({} if there is no such hash). On a
    client made here it goes through `resp.call` (sent with the other calls of its loop
    pass, without redis-py's per-command layers, which cost a fork's start about as much
    CPU as the reply's parsing); any other client's `hgetall` as before. Redis errors are
    raised as redis-py's (callers translate them)."""
    if not _lean(redis):
        return dict(await resolve(redis.hgetall(key)))
    raw = await call(redis.connection_pool, ("HGETALL", key))
    if isinstance(raw, dict):  # RESP3: a map
        return raw
    pairs = iter(raw)
    return dict(zip(pairs, pairs, strict=False))


async def _pipelined(redis: Redis, command: tuple[Any, ...]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute()
        return replies


async def run_scripts(
    redis: Redis,
    calls: Sequence[tuple[Any, Sequence[Any], Sequence[Any]]],
    *,
    ordered: bool = False,
    raise_on_error: bool = True,
) -> list[Any]:
    """Several EVALSHAs (`(script, keys, args)` each) in one round trip for all of them
    (pipelined, no MULTI). Each script is atomic on its own, not the set. A script Redis
    lacks is loaded and only its calls are sent again, after the others. The first other
    error is raised (as redis-py's); the replies come in the order of `calls`.

    `ordered`: the calls must run in their order even then (a record before the job that
    names it): every call but the last is sent as EVAL with its source, which Redis never
    refuses for a missing script, so only the last can be sent again.

    `raise_on_error=False`: a call Redis refuses (its script failed: a key of the wrong
    type, out of memory) gets its `ResponseError` as its reply, and the others theirs. A
    failure of the connection is raised either way."""
    if not calls:
        return []
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    last = len(calls) - 1
    for attempt in range(2):
        commands = []
        for i in todo:
            script, keys, args = calls[i]
            if ordered and i != last:
                commands.append(("EVAL", script.script, len(keys), *keys, *args))
            else:
                commands.append(("EVALSHA", script.sha, len(keys), *keys, *args))
        results = await _evalshas(redis, commands)
        missing: list[int] = []
        for i, result in zip(todo, results, strict=True):
            if isinstance(result, redis_errors.NoScriptError) and attempt == 0:
                missing.append(i)
            elif isinstance(result, Exception) and raise_on_error:
                raise result
            else:
                replies[i] = result
        if not missing:
            return replies
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            script.sha = await redis.script_load(script.script)
        todo = missing
    return replies


def begin(pipe: Pipeline) -> None:
    """Switch a WATCHing pipeline from immediate reads to queued MULTI writes."""
    # redis-py leaves Pipeline.multi unannotated.
    cast(Any, pipe).multi()


async def optimistic(
    redis: Redis,
    watch: Sequence[str],
    body: Callable[[Pipeline], Awaitable[T]],
    *,
    what: str,
    max_retries: int = 100,
) -> T:
    """Run an optimistic (WATCH/MULTI/EXEC) transaction, retrying when a watched key changed.

    `body(pipe)` runs with `watch` WATCHed: it reads with the pipe (commands run at
    once), and if it decides to write it calls `begin(pipe)` and queues the writes, which
    are then executed atomically. If it returns without `begin`, nothing is written.
    Redis errors become `StoreError`s.
    """
    async with translate_errors(what):
        for _ in range(max_retries):
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(*watch)
                    result = await body(pipe)
                    if pipe.explicit_transaction:
                        await pipe.execute()
                    return result
            except redis_errors.WatchError:
                continue
    raise StoreError(f"Redis {what} gave up after {max_retries} conflicting attempts")
