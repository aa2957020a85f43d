"""`HTTPShards`: a bound on requests in flight, spread over several small HTTP pools.

httpcore's connection pool scans every connection it holds each time a request starts
or ends (and, for each idle one, polls its socket and counts the idle ones again), so one
pool sized for hundreds of concurrent streams costs CPU in proportion to its size, and
with kept-alive connections to its size squared, on every request (15 % of an in-process
agent loop's CPU at 300 loops at once with pools of 32 that kept no connection).
Several pools of at most `SHARD_SIZE` connections each keep that scan short: a request
waits for one of `total` slots, then takes the pool with the most free connections,
which has one (the pools' sizes add up to `total`), so it never waits in a pool.

`OpenAICompatible` now sends through `H11Transport`, whose idle connections are a list
(nothing scanned per request), so it uses one pool of `total`: the slots are what it needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Protocol, TypeVar

__all__ = ["SHARD_SIZE", "HTTPShards"]

SHARD_SIZE = 4


class Pool(Protocol):
    """What HTTPShards needs of a pool (an `HTTPPool`, an `httpx.AsyncClient`)."""

    @property
    def is_closed(self) -> bool: ...

    async def aclose(self) -> None: ...


P = TypeVar("P", bound=Pool)


class HTTPShards(Generic[P]):
    """`total` request slots over ceil(total / shard_size) pools made by `make(size)`.
    Belongs to the event loop it is first used in (as httpx pools do)."""

    def __init__(
        self,
        make: Callable[[int], P],
        total: int,
        shard_size: int = SHARD_SIZE,
    ) -> None:
        if total < 1 or shard_size < 1:
            raise ValueError("HTTPShards needs at least one slot and one connection per pool")
        sizes = [shard_size] * (total // shard_size)
        if total % shard_size:
            sizes.append(total % shard_size)
        self._make = make
        self._sizes = sizes
        self._clients: list[P | None] = [None] * len(sizes)
        self._busy = [0] * len(sizes)
        self._slots = asyncio.Semaphore(total)

    @property
    def pools(self) -> int:
        return len(self._sizes)

    def lease(self) -> _Lease[P]:
        """`async with shards.lease() as client`: wait for a slot; the client of the pool
        with the most free connections, for one request."""
        return _Lease(self)

    async def _take(self) -> tuple[int, P]:
        await self._slots.acquire()
        try:
            # A slot is held, so some pool is below its size: the one with the most free
            # connections is.
            i = max(range(len(self._busy)), key=self._free)
            client = self._clients[i]
            if client is None or client.is_closed:
                client = self._clients[i] = self._make(self._sizes[i])
        except BaseException:
            self._slots.release()
            raise
        self._busy[i] += 1
        return i, client

    def _give(self, i: int) -> None:
        self._busy[i] -= 1
        self._slots.release()

    def _free(self, i: int) -> int:
        return self._sizes[i] - self._busy[i]

    async def aclose(self) -> None:
        clients, self._clients = self._clients, [None] * len(self._sizes)
        for client in clients:
            if client is not None:
                await client.aclose()


class _Lease(Generic[P]):
    """One request's slot (a class, not a generator: one lives for every request in
    flight, and a generator-based context manager costs a generator, its weak reference
    in the event loop and a dict more, which the garbage collector walks)."""

    __slots__ = ("_i", "_shards")

    def __init__(self, shards: HTTPShards[P]) -> None:
        self._shards = shards
        self._i = -1

    async def __aenter__(self) -> P:
        self._i, client = await self._shards._take()
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._shards._give(self._i)
