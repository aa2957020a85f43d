"""What a lease keeper's renewal pass costs Redis: the commands it sends and its script
runs (MONITOR on the real server, this test's keys only). One script for the pass, not
one per lease; a lease its attempt holds on this worker only has its deadline moved (one
ZADD for them all); the owner record, which already says so, is read, not written
again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from orchestrator.keys import Keys
from orchestrator.store.connection import Redis
from orchestrator.store.runs import LeaseTable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def _scripted(
    redis_url: str, redis: Redis, keys: Keys, work: Awaitable[Any]
) -> list[tuple[str, str]]:
    """(command, key) of each command a script ran on this test's keys during `work`."""
    sentinel = f"{keys.prefix}:sentinel"
    seen: list[tuple[str, str]] = []
    calls = 0
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        async with client.monitor() as monitor:

            async def read() -> None:
                while True:
                    info = await monitor.next_command()
                    words = str(info["command"]).split(" ")
                    if len(words) > 1 and words[1] == sentinel:
                        return
                    if keys.prefix not in info["command"]:
                        continue
                    if info["client_type"] == "lua":
                        seen.append((words[0].upper(), words[1] if len(words) > 1 else ""))
                    elif words[0].upper() in ("EVALSHA", "EVAL"):
                        nonlocal calls
                        calls += 1

            reader = asyncio.create_task(read())
            try:
                result = await work
                await redis.get(sentinel)
                await asyncio.wait_for(reader, 20)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        await client.aclose()
    seen.append(("calls", str(calls)))
    seen.append(("result", repr(result)))
    return seen


async def test_a_keepers_renewal_of_a_held_lease_moves_only_its_deadline(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    leases = LeaseTable(redis, keys)
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=60)
    assert await leases.renew("r2", attempt=2, worker_id="w1", ttl_s=60)
    # Its script loaded (the first call of a script Redis lacks is sent twice).
    assert await leases.renew_many([("r0", 1)], worker_id="w1", ttl_s=60) == [True]
    before = await redis.zscore(keys.leases(), "r1")
    renewal = leases.renew_many(
        [("r1", 1), ("r2", 2), ("gone", 1)], worker_id="w1", ttl_s=120, extend_only=True
    )

    seen = await _scripted(redis_url, redis, keys, renewal)

    assert seen.pop() == ("result", "[True, True, False]")
    assert seen.pop() == ("calls", "1")
    for run_id in ("r1", "r2", "gone"):
        on = [command for command, key in seen if key == keys.lease(run_id)]
        assert on == ["HMGET"], (run_id, seen)
    assert [c for c, k in seen if k == keys.leases()] == ["ZADD"]
    assert await redis.zscore(keys.leases(), "gone") is None
    # The deadline moved; the owner record is what a renewal always leaves.
    after = await redis.zscore(keys.leases(), "r1")
    assert before is not None
    assert after is not None
    assert after > before + 30_000
    owner = await leases.owner("r1")
    assert owner is not None
    assert (owner["attempt"], owner["worker"], owner["state"]) == ("1", "w1", "held")
    assert await redis.ttl(keys.lease("r1")) == -1


async def test_a_renewal_still_writes_an_owner_record_that_differs(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """Another worker's record of the same attempt (a resumed segment elsewhere), or one
    given a TTL: a renewal that takes the lease writes what it always wrote."""
    leases = LeaseTable(redis, keys)
    assert await leases.renew("r1", attempt=1, worker_id="w0", ttl_s=60)
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=60, extend_only=True)
    owner = await leases.owner("r1")
    assert owner is not None
    assert (owner["attempt"], owner["worker"], owner["state"]) == ("1", "w1", "held")
    await redis.expire(keys.lease("r1"), 600)
    await redis.hset(keys.lease("r1"), "state", "parked")
    assert not await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=60, extend_only=True)
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=60)
    assert await redis.hget(keys.lease("r1"), "state") == b"held"
    assert await redis.ttl(keys.lease("r1")) == -1
