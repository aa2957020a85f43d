"""A worker reads its queue at least every `poll_delay` however many wake-ups it hears: a
due job that no wake-up announced (a lost wake-up, a job re-queued by a path that does
not publish, arq's own enqueue, a deferred job come due) is found by the poll, even while
wake-ups, each naming a job running on another worker, keep arriving more often than
that."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from arq import func
from arq.constants import in_progress_key_prefix, job_key_prefix

from orchestrator.keys import Keys
from orchestrator.store import jsonserial
from orchestrator.store.connection import Redis, connect_arq
from orchestrator.store.jsonserial import JobDecoder
from tests.integration.workerproc import drop_job_keys
from workers.arq_worker import WakeableWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_a_job_without_a_wake_up_is_found_by_the_poll_despite_other_wake_ups(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    queue = keys.queue()
    wake = keys.wake()
    pool = connect_arq(redis_url, queue)
    started: list[str] = []

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        started.append(ctx["job_id"])

    worker = WakeableWorker(
        functions=[func(work, name="work")],
        queue_name=queue,
        redis_pool=pool,
        wake_channel=wake,
        burst=False,
        handle_signals=False,
        poll_delay=0.5,
        keep_result=60,
        retry_jobs=False,
        job_serializer=jsonserial.dumps,
        job_deserializer=JobDecoder(),
    )
    now_ms = int(time.time() * 1000)
    body = {"t": None, "f": "work", "a": [{}], "k": {}, "et": now_ms}
    held, lonely = f"held-{uuid.uuid4().hex}", f"lonely-{uuid.uuid4().hex}"
    # `held` is being run by another worker (its in-progress key is that worker's).
    await redis.set(job_key_prefix + held, json.dumps(body), px=600_000)
    await redis.set(in_progress_key_prefix + held, "w:other", px=600_000)
    await redis.zadd(queue, {held: now_ms - 1})
    running = asyncio.create_task(worker.main())
    stop = asyncio.Event()

    async def announce() -> None:
        # Other submits' wake-ups: each names its one job, which another worker runs.
        while not stop.is_set():
            await redis.publish(wake, held)
            await asyncio.sleep(0.2)

    announcer = asyncio.create_task(announce())
    try:
        await asyncio.sleep(0.8)  # subscribed, first polls done, `held` seen elsewhere
        # A due job whose own wake-up this worker did not hear.
        await redis.set(job_key_prefix + lonely, json.dumps(body), px=600_000)
        await redis.zadd(queue, {lonely: int(time.time() * 1000) - 1})
        deadline = time.monotonic() + 3.0  # 6 x poll_delay
        while lonely not in started and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # (`started` is filled by the job function)
        assert lonely in started, "a queued, due job waited > 3 s with poll_delay 0.5 s"
    finally:
        stop.set()
        await asyncio.gather(announcer, return_exceptions=True)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.aclose()
        await drop_job_keys(redis, [held, lonely])
