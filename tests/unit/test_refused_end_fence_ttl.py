"""An end refused in its script (its batch fenced off by a newer attempt, or its record
ended by someone else meanwhile) reads the run's write fence with GETEX (giving it the
stream's retention) and must then leave it a TTL no shorter than its stream's: the fence
is a newer attempt's (live: a publisher's idle TTL, a week; ended: the retention), and a
fence that expires before its stream lets a stale attempt write into it. With a
retention over a week the refusal used to cut the fence to a week."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import StaleAttempt
from orchestrator.events import ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store import runs as runs_module
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.streams import EventPublisher, LastBatch
from tests.fixtures_redis import event_output

pytestmark = pytest.mark.timeout(10)

_SETTINGS = Settings(stream_retention_s=30 * 86_400)  # longer than a publisher's week
_RETENTION_S = _SETTINGS.stream_retention_s


async def _started(redis: Any, keys: Keys, attempt: int) -> EventPublisher:
    assert await LeaseTable(redis, keys).renew("r1", attempt=attempt, worker_id="w", ttl_s=60)
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1", attempt=attempt)
    await publisher.take_over()
    return publisher


async def _end(redis: Any, keys: Keys, attempt: int, batch: LastBatch | None) -> Any:
    return await end_run(
        redis,
        keys,
        _SETTINGS,
        run_id="r1",
        session_id="s1",
        status=RunStatus.COMPLETED,
        attempt=attempt,
        release=True,
        drop_checkpoint=True,
        batch=batch,
    )


async def test_a_stale_attempts_refused_end_leaves_the_newer_attempts_fence_its_streams_life(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    record = RunRecord(
        run_id="r1", session_id="s1", agent="pkg:agent", status=RunStatus.RUNNING, attempt=1
    )
    await runs.create(record)
    stale = await _started(fake_redis, keys, 1)
    stale.publish(event_output(0, call="r1"))
    stale.publish(ResponseYield(response="late"))
    stale_batch = await stale.take_last()  # the turn's last batch, for its end
    assert stale_batch is not None
    # What the stale attempt's worker last wrote (its first guess at its end).
    zombie_view = runs_module._LAST_WRITTEN["r1"]

    # Attempt 2 (another worker, after a reaper's re-queue) runs and ends: its end gives
    # its fence the stream's retention.
    await runs.update("r1", attempt=2)
    newer = await _started(fake_redis, keys, 2)
    newer.publish(ResponseYield(response="done"))
    assert await _end(fake_redis, keys, 2, await newer.take_last()) is not None
    fence = keys.run_fence("s1", "r1")
    assert 0 < await fake_redis.ttl(fence) <= _RETENTION_S

    # The stale attempt's end (its worker still believes its own record is current).
    runs_module._LAST_WRITTEN["r1"] = zombie_view
    with pytest.raises(StaleAttempt):
        await _end(fake_redis, keys, 1, stale_batch)
    assert await fake_redis.get(fence) in (b"2", "2")
    assert await fake_redis.ttl(fence) >= await fake_redis.ttl(keys.events("s1")) > 0


async def test_an_end_that_finds_its_run_ended_elsewhere_leaves_the_fence_its_streams_life(
    fake_redis: Any, keys: Keys
) -> None:
    """The record was ended meanwhile by someone else (here: an end without this
    worker's batch, as a reaper's or a repeated end is): the late end's CAS miss."""
    runs = RunStore(fake_redis, keys)
    record = RunRecord(
        run_id="r1", session_id="s1", agent="pkg:agent", status=RunStatus.RUNNING, attempt=1
    )
    await runs.create(record)
    publisher = await _started(fake_redis, keys, 1)
    publisher.publish(event_output(0, call="r1"))
    batch = await publisher.take_last()
    assert batch is not None
    zombie_view = runs_module._LAST_WRITTEN["r1"]
    ended = await end_run(
        fake_redis,
        keys,
        _SETTINGS,
        run_id="r1",
        session_id="s1",
        status=RunStatus.ERROR,
        attempt=1,
        release=True,
    )
    assert ended is not None
    fence = keys.run_fence("s1", "r1")
    assert 0 < await fake_redis.ttl(fence) <= _RETENTION_S

    runs_module._LAST_WRITTEN["r1"] = zombie_view
    assert await _end(fake_redis, keys, 1, batch) is None
    assert await fake_redis.ttl(fence) >= await fake_redis.ttl(keys.events("s1")) > 0
