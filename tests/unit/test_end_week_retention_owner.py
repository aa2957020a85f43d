"""With a stream retention of a week (`stream_retention_s` = 604800, the publishers' idle
TTL, `IDLE_TTL_S`), a run's end must not take the stream's TTL a publisher has just set
(a week) for one an end set within its window and skip the owner check: the session's
owner (claimed at submit with the retention) would expire before the stream, the owning
tenant lose access to a stream that is still there, and another tenant's submit could
claim the session and read it."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.events import ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.sessions import SessionTable
from orchestrator.store.streams import IDLE_TTL_S, EventPublisher
from tests.fixtures_redis import event_output

pytestmark = pytest.mark.timeout(10)

_WEEK = Settings(stream_retention_s=IDLE_TTL_S)
_TURN_MS = 600_000  # how long the turn ran after its submit


async def _submitted_and_ran(redis: Any, keys: Keys) -> str:
    """Session s1 claimed by tenant "a" at submit (as `Client.submit` does), then a turn
    that ran ten minutes: its owner's TTL is the retention less those ten minutes."""
    await SessionTable(redis, keys).claim("s1", "a", ttl_s=_WEEK.stream_retention_s)
    owner = keys.session_owner("s1")
    await redis.pexpire(owner, await redis.pttl(owner) - _TURN_MS)
    record = RunRecord(
        run_id="r1", session_id="s1", agent="pkg:agent", status=RunStatus.RUNNING, attempt=1
    )
    await RunStore(redis, keys).create(record)
    return owner


async def test_a_week_of_retention_the_owner_outlives_the_stream_after_a_plain_end(
    fake_redis: Any, keys: Keys
) -> None:
    owner = await _submitted_and_ran(fake_redis, keys)
    # The turn's outputs: the publisher gives the stream its idle TTL (a week).
    publisher = EventPublisher(fake_redis, keys, session_id="s1", run_id="r1")
    publisher.publish(event_output(0, call="r1"))
    await publisher.close(expire=False)
    ended = await end_run(
        fake_redis, keys, _WEEK, run_id="r1", session_id="s1", status=RunStatus.COMPLETED
    )
    assert ended is not None
    assert await fake_redis.pttl(owner) > await fake_redis.pttl(keys.events("s1"))


async def test_a_week_of_retention_the_owner_outlives_the_stream_after_a_turns_end(
    fake_redis: Any, keys: Keys
) -> None:
    """The worker's path: the turn's last batch folded into its end."""
    owner = await _submitted_and_ran(fake_redis, keys)
    assert await LeaseTable(fake_redis, keys).renew("r1", attempt=1, worker_id="w", ttl_s=60)
    publisher = EventPublisher(fake_redis, keys, session_id="s1", run_id="r1", attempt=1)
    await publisher.take_over()
    publisher.publish(event_output(0, call="r1"))
    await publisher.flush()  # a batch during the turn: the stream's idle TTL (a week)
    publisher.publish(ResponseYield(response="done"))
    batch = await publisher.take_last()
    ended = await end_run(
        fake_redis,
        keys,
        _WEEK,
        run_id="r1",
        session_id="s1",
        status=RunStatus.COMPLETED,
        attempt=1,
        release=True,
        drop_checkpoint=True,
        batch=batch,
    )
    assert ended is not None
    assert await fake_redis.pttl(owner) > await fake_redis.pttl(keys.events("s1"))
