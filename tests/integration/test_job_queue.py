"""The job queue's batched enqueue on real Redis: arq reads what it writes, a job id arq
already holds is left alone, and a batch wakes idle workers once."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix
from arq.jobs import Job

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest
from orchestrator.store.connection import Redis, run_scripts
from orchestrator.store.queue import JobQueue, arq_keys, connect_queue, job_id
from orchestrator.store.runs import RunStore

pytestmark = pytest.mark.timeout(20)


def _request(n: int) -> RunRequest:
    return RunRequest(
        run_id=f"{uuid.uuid4().hex}", session_id="s1", agent="tests.agents:echo", message=f"m{n}"
    )


async def test_a_batch_of_jobs_is_queued_once_each_with_one_wake_up(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    arq = await connect_queue(redis_url, keys)
    requests = [_request(n) for n in range(3)]
    jids = [job_id(r.run_id, r.attempt) for r in requests]
    pubsub: Any = redis.pubsub()
    try:
        queue = JobQueue(arq, keys)
        await queue.enqueue(requests[1])  # already queued: left as it is
        await pubsub.subscribe(keys.wake())
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        replies = await run_scripts(arq, queue.enqueue_calls(requests))
        assert replies == [2]
        queued = {m.decode() for m in await redis.zrange(keys.queue(), 0, -1)}
        assert queued == set(jids)
        for request, jid in zip(requests, jids, strict=True):
            info = await Job(
                jid, arq, _queue_name=keys.queue(), _deserializer=arq.job_deserializer
            ).info()
            assert info is not None
            assert info.function == "run_turn"
            assert RunRequest.from_dict(info.args[0]) == request
        wakes = []
        while (message := await pubsub.get_message(timeout=0.3)) is not None:
            wakes.append(message)
        assert len(wakes) == 1
        # Nothing new: no job and no wake-up.
        assert await run_scripts(arq, queue.enqueue_calls(requests)) == [0]
        await asyncio.sleep(0)
        assert await pubsub.get_message(timeout=0.3) is None
    finally:
        await pubsub.aclose()
        await redis.delete(*(k for jid in jids for k in arq_keys(jid)))
        await arq.aclose()


async def test_a_batchs_jobs_are_taken_in_the_order_they_were_queued(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    """Jobs of one batch get rising scores, so the queue hands them out first come first
    served, not by job id (fork_10 before fork_2 when the scores are equal)."""
    arq = await connect_queue(redis_url, keys)
    root = uuid.uuid4().hex
    requests = [
        RunRequest(run_id=f"{root}.fork_{n}", session_id="s1", agent="tests.agents:echo")
        for n in (2, 10, 1, 30, 3)
    ]
    jids = [job_id(r.run_id, r.attempt) for r in requests]
    try:
        await run_scripts(arq, JobQueue(arq, keys).enqueue_calls(requests))
        queued = [m.decode() for m in await redis.zrange(keys.queue(), 0, -1)]
        assert queued == jids
    finally:
        await redis.delete(*(k for jid in jids for k in arq_keys(jid)))
        await arq.aclose()


async def test_queue_depth_counts_waiting_jobs_not_the_ones_workers_are_running(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    """arq keeps a running job in its queue until it returns; the depth that autoscaling
    adds to the busy slots must not count it a second time. A deferred job is waiting."""
    arq = await connect_queue(redis_url, keys)
    requests = [_request(n) for n in range(4)]
    jids = [job_id(r.run_id, r.attempt) for r in requests]
    try:
        queue = JobQueue(arq, keys)
        await run_scripts(arq, queue.enqueue_calls(requests[:3]))
        await redis.zadd(keys.queue(), {jids[3]: (time.time() + 3600) * 1000})  # deferred
        assert await queue.depth() == 4
        # Two taken by a worker (arq's in-progress key), as arq marks them.
        for jid in jids[:2]:
            await redis.psetex(in_progress_key_prefix + jid, 60_000, b"1")
        assert await queue.depth() == 2
        await redis.delete(in_progress_key_prefix + jids[0])
        await redis.zrem(keys.queue(), jids[0])  # it returned
        assert await queue.depth() == 2
    finally:
        await redis.delete(*(k for jid in jids for k in arq_keys(jid)))
        await arq.aclose()


async def test_ordered_script_calls_keep_their_order_when_redis_lacks_a_script(
    redis: Redis, keys: Keys
) -> None:
    """A script Redis lacks is loaded and sent again after the others; `ordered` calls
    (a record, then the job naming it) must still run in their order."""
    seen = keys.prefix + ":order"
    first = redis.register_script("return redis.call('RPUSH', KEYS[1], 'first')")
    second = redis.register_script("return redis.call('RPUSH', KEYS[1], 'second')")
    await redis.script_load(second.script)
    try:
        first.sha = "0" * 40  # as after a restart or a failover: Redis lacks it
        await run_scripts(redis, [(first, [seen], []), (second, [seen], [])])
        assert await redis.lrange(seen, 0, -1) == [b"second", b"first"]  # reordered
        await redis.delete(seen)
        first.sha = "0" * 40
        await run_scripts(redis, [(first, [seen], []), (second, [seen], [])], ordered=True)
        assert await redis.lrange(seen, 0, -1) == [b"first", b"second"]
    finally:
        await redis.delete(seen)


async def test_a_submits_job_is_queued_after_its_record_even_when_redis_lost_the_script(
    redis: Redis, keys: Keys
) -> None:
    record = RunRecord(run_id=uuid.uuid4().hex, session_id="s1", agent="tests.agents:echo")
    seen = keys.prefix + ":found"
    probe = redis.register_script(
        "return redis.call('RPUSH', KEYS[2], redis.call('EXISTS', KEYS[1]))"
    )
    store = RunStore(redis, keys)
    store._cas.sha = "0" * 40  # Redis lacks the create's script
    try:
        assert await store.create(record, then=[(probe, [keys.run(record.run_id), seen], [])])
        assert await redis.lrange(seen, 0, -1) == [b"1"]  # the record existed already
    finally:
        await redis.delete(seen)
