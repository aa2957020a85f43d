"""The pick of a job that is not due (or has left the queue) only reads: a pick that set
its in-progress key first and deleted it again (tried in round 8, 9717a5c) modified the
key, so a client that WATCHes it
(arq's own `Worker.start_jobs`: WATCH in-progress, EXISTS, ZSCORE, MULTI PSETEX EXEC —
an arq worker of an older version in a rolling upgrade, or any tool using arq's pick)
has its transaction aborted, and the write (MULTI SET DEL EXEC) goes to the replicas and
the AOF, for a pick that changed nothing."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis as PlainRedis
from redis.exceptions import WatchError

from orchestrator.keys import Keys
from orchestrator.store.connection import Redis
from tests.integration.test_pick_start_commands import _worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_the_pick_of_a_job_not_due_leaves_its_in_progress_key_untouched(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    later = f"{keys.prefix}-later-{uuid.uuid4().hex}"
    in_progress = f"arq:in-progress:{later}"
    await redis.zadd(keys.queue(), {later: 10**15})  # due in ~30,000 years
    worker = _worker(redis, keys)
    other = PlainRedis.from_url(redis_url)
    try:
        async with other.pipeline(transaction=True) as pipe:
            # arq's pick on another worker: WATCH the in-progress key, check, then set it.
            await pipe.watch(in_progress)
            assert not await pipe.exists(in_progress)
            # Meanwhile this worker tries the job (a wake-up, or a listing it made just
            # before the job moved): not due, not picked.
            assert await worker._pick_many([later.encode()]) == [None]
            assert await redis.exists(in_progress) == 0
            pipe.multi()
            pipe.psetex(in_progress, 60_000, b"1")
            try:
                await pipe.execute()
            except WatchError:
                pytest.fail("a pick that picked nothing aborted another client's WATCH")
    finally:
        await other.aclose()
        await redis.zrem(keys.queue(), later)
        await redis.delete(in_progress)
