"""Script calls sent together (`resp.call`'s batches) on the real Redis: each call runs
once, however many are made in one pass."""

from __future__ import annotations

import asyncio

import pytest

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
