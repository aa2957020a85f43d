"""Script calls sent together (`resp.call`'s batches) on the real Redis: each call runs
once, however many are made in one pass, and a batch leaves as soon as it is closed."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as sync_redis

from orchestrator.keys import Keys
from orchestrator.store.connection import Redis, run_script

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


def _value_once_sent(redis_url: str, key: str) -> bytes | None:
    """The key's value after a pause in which the caller's event loop does not turn (a
    blocking wait: whatever is on its way arrives, nothing new is sent)."""
    time.sleep(0.2)
    observer = sync_redis.Redis.from_url(redis_url)
    try:
        value: bytes | None = observer.get(key)
        return value
    finally:
        observer.close()


async def test_calls_made_together_leave_in_the_pass_their_first_one_stops_waiting(
    redis: Redis, keys: Keys, redis_url: str
) -> None:
    """The first call of a pass waits that pass for others to join it; then the batch is
    written at once, not when the task reading its replies starts (a pass later)."""
    setter = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    await run_script(redis, setter, [f"{keys.prefix}:warm"], ["1"])  # connected, loaded
    first = asyncio.create_task(run_script(redis, setter, [f"{keys.prefix}:a"], ["1"]))
    second = asyncio.create_task(run_script(redis, setter, [f"{keys.prefix}:b"], ["1"]))
    await asyncio.sleep(0)  # both are made: the first waits, the second joins it
    await asyncio.sleep(0)  # the first's wait is over: the batch goes
    assert _value_once_sent(redis_url, f"{keys.prefix}:b") == b"1"
    assert await asyncio.gather(first, second) == [b"OK", b"OK"]
