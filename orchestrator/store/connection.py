"""Connecting to Redis, and the one place Redis exceptions become `StoreError`s.

Every adapter method runs its Redis calls inside `translate_errors()`, so callers only
ever see the orchestrator's exception tree: `StoreUnavailable` when Redis could not be
reached (worth retrying), `StoreError` for anything else, with the redis exception
chained as `__cause__`.

Every client made here has a read timeout (`socket_timeout`) as well as a connect
timeout: a Redis that accepts connections but never answers is an error after the
timeout, never a hang. A client for blocking stream reads needs a timeout above its
longest block (`StreamReader` caps its blocks below its client's timeout).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from arq.connections import ArqRedis
from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline

from orchestrator.errors import StoreError, StoreUnavailable
from orchestrator.store import jsonserial

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "Pipeline",
    "Redis",
    "begin",
    "connect",
    "connect_arq",
    "is_unavailable",
    "optimistic",
    "read_timeout",
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


def connect(
    url: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    **kw: Any,
) -> Redis:
    """A redis.asyncio client for `url` that returns bytes (decode_responses=False).

    `timeout_s` bounds the wait for each reply, `connect_timeout_s` the wait for a
    connection; other keyword arguments go to `redis.asyncio.Redis.from_url`. Connections
    open on first use.
    """
    client: Redis = aioredis.Redis.from_url(url, **_options(timeout_s, connect_timeout_s, kw))
    return client


def connect_arq(
    url: str,
    queue_name: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> ArqRedis:
    """Like `connect`, but a client that can also enqueue arq jobs (JSON, never pickle)."""
    pool = aioredis.ConnectionPool.from_url(url, **_options(timeout_s, connect_timeout_s, {}))
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
