"""Connecting to Redis, and the one place Redis exceptions become `StoreError`s.

Every adapter method runs its Redis calls inside `translate_errors()`, so callers only
ever see the orchestrator's exception tree: `StoreUnavailable` when Redis could not be
reached (worth retrying), `StoreError` for anything else, with the redis exception
chained as `__cause__`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline

from orchestrator.errors import StoreError, StoreUnavailable

__all__ = [
    "Pipeline",
    "Redis",
    "begin",
    "connect",
    "is_unavailable",
    "optimistic",
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


def connect(url: str, **kw: Any) -> Redis:
    """A redis.asyncio client for `url` that returns bytes (decode_responses=False).

    Keyword arguments go to `redis.asyncio.Redis.from_url`. Keep `socket_timeout` unset
    (or above the longest blocking read) for clients that tail streams.
    """
    kw.setdefault("decode_responses", False)
    kw.setdefault("health_check_interval", 30)
    kw.setdefault("socket_keepalive", True)
    client: Redis = aioredis.Redis.from_url(url, **kw)
    return client


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
