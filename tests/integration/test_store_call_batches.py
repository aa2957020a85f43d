"""Script calls sent together (`resp.call`'s batches) on the real Redis: a call runs once
however many are made in one pass, and an event publisher's first send leaves as it is
made, not a pass of the event loop later."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as sync_redis

from orchestrator.keys import Keys
from orchestrator.store.connection import Redis, run_script
from orchestrator.store.streams import EventPublisher
from tests.fixtures_redis import event_output

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

INCR = "return redis.call('INCR', KEYS[1])"


async def test_script_calls_beyond_one_batch_made_in_one_pass_each_run_once(
    redis: Redis, keys: Keys
) -> None:
    """More calls in one pass than one write carries (128): they go out in several, and
    each script runs exactly once (the first, full batch was sent a second time when
    the call that led it had waited its pass)."""
    counter = f"{keys.prefix}:count"
    script = redis.register_script(INCR)
    await run_script(redis, script, [f"{keys.prefix}:warm"], [])
    replies = await asyncio.gather(*(run_script(redis, script, [counter], []) for _ in range(300)))
    assert sorted(replies) == list(range(1, 301))
    assert int(await redis.get(counter)) == 300


def _stream_length_once_sent(redis_url: str, stream: str) -> int:
    """The stream's length after a pause in which the caller's event loop does not turn
    (a blocking wait: whatever is on its way arrives, nothing new is sent)."""
    time.sleep(0.2)
    observer = sync_redis.Redis.from_url(redis_url)
    try:
        return int(observer.xlen(stream))
    finally:
        observer.close()


async def test_a_publishers_first_event_leaves_in_the_pass_its_flusher_starts(
    redis: Redis, keys: Keys, redis_url: str
) -> None:
    """An idle publisher's event is written when the publisher's task starts (the pass
    after `publish`), not a pass later: other calls made meanwhile still go with it."""
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    publisher.publish(event_output(0))
    await publisher.flush()  # the connection is open and the script loaded
    publisher.publish(event_output(1))
    await asyncio.sleep(0)  # one pass: the publisher's task starts and sends
    assert _stream_length_once_sent(redis_url, keys.events("s1")) == 2
    await publisher.flush()
    await publisher.close(expire=False)
