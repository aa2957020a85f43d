"""HTTPShards: the request bound spread over small HTTP pools, none ever over its size."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from orchestrator.llm.shards import HTTPShards

pytestmark = pytest.mark.timeout(10)


def _maker(made: list[int]) -> Callable[[int], httpx.AsyncClient]:
    def make(size: int) -> httpx.AsyncClient:
        made.append(size)
        return httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))

    return make


async def test_requests_spread_over_pools_within_their_sizes_and_the_bound() -> None:
    made: list[int] = []
    shards = HTTPShards(_maker(made), total=70, shard_size=32)
    assert shards.pools == 3
    release = asyncio.Event()
    held: dict[int, int] = {}
    started = 0

    async def one() -> None:
        nonlocal started
        async with shards.lease() as client:
            started += 1
            held[id(client)] = held.get(id(client), 0) + 1
            await release.wait()

    tasks = [asyncio.create_task(one()) for _ in range(71)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == 70, "the 71st request waits for a slot"
    assert sorted(made) == [6, 32, 32]
    assert sorted(held.values()) == [6, 32, 32], "each pool holds at most its size"
    release.set()
    await asyncio.gather(*tasks)
    assert started == 71
    await shards.aclose()


async def test_a_closed_pool_is_made_again() -> None:
    made: list[int] = []
    shards = HTTPShards(_maker(made), total=4)
    async with shards.lease() as first:
        pass
    await shards.aclose()
    assert first.is_closed
    async with shards.lease() as second:
        assert not second.is_closed
    assert made == [4, 4]
    await shards.aclose()


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        HTTPShards(_maker([]), total=0)


async def test_a_request_that_fails_or_is_cancelled_gives_its_slot_back() -> None:
    made: list[int] = []
    shards = HTTPShards(_maker(made), total=1)
    with pytest.raises(RuntimeError):
        async with shards.lease():
            raise RuntimeError("the request failed")
    entered = asyncio.Event()

    async def hang() -> None:
        async with shards.lease():
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hang())
    await entered.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(1), shards.lease() as client:
        assert not client.is_closed  # the one slot was free again
    await shards.aclose()


async def test_a_pool_that_cannot_be_made_gives_its_slot_back() -> None:
    calls = 0

    def make(size: int) -> httpx.AsyncClient:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("no pool")
        return httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))

    shards = HTTPShards(make, total=1)
    with pytest.raises(OSError, match="no pool"):
        async with shards.lease():
            pass
    async with asyncio.timeout(1), shards.lease():
        pass
    await shards.aclose()
