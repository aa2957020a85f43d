"""A run's end carries other commands in its round trip (`Rider`: a worker's arq finish
of the job that ended the run), sent once and confirmed only when they all ran."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.runs import EndWrites, Rider, RunStore

pytestmark = pytest.mark.timeout(10)


def _writes(rider: Rider) -> EndWrites:
    return EndWrites(session_id="s1", run_ttl_s=600, stream_ttl_s=300, rider=rider)


async def _running(runs: RunStore) -> None:
    record = RunRecord(run_id="r1", session_id="s1", agent="pkg:agent", submitted_at=1000.0)
    await runs.create(record)
    await runs.transition("r1", from_status=RunStatus.QUEUED, to=RunStatus.RUNNING)


async def test_an_end_runs_its_riders_commands_after_it_once_and_confirms_them(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await _running(runs)
    rider = Rider([("SET", "rider-key", "finished"), ("DEL", "queued-job")])
    await fake_redis.set("queued-job", "x")
    ended = await runs.end(
        "r1", status=RunStatus.COMPLETED, from_status=[RunStatus.RUNNING], writes=_writes(rider)
    )
    assert ended is not None
    assert (await runs.get("r1")).status is RunStatus.COMPLETED
    assert await fake_redis.get("rider-key") == b"finished"
    assert not await fake_redis.exists("queued-job")
    assert rider.sent
    assert rider.confirmed
    await fake_redis.delete("rider-key")
    await runs.finish(ended.record, _writes(rider))  # the rest of the end again
    assert await fake_redis.get("rider-key") is None  # sent once


async def test_a_refused_rider_command_is_not_confirmed_and_the_end_still_happens(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await _running(runs)
    await fake_redis.hset("not-a-counter", "a", "b")
    rider = Rider([("INCR", "not-a-counter")])
    await runs.end(
        "r1", status=RunStatus.COMPLETED, from_status=[RunStatus.RUNNING], writes=_writes(rider)
    )
    assert (await runs.get("r1")).status is RunStatus.COMPLETED
    assert rider.sent
    assert not rider.confirmed


async def test_an_end_whose_script_redis_lacks_still_carries_its_rider_once(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await _running(runs)
    await fake_redis.script_flush()
    rider = Rider([("INCR", "rider-count")])
    await runs.end(
        "r1", status=RunStatus.COMPLETED, from_status=[RunStatus.RUNNING], writes=_writes(rider)
    )
    assert (await runs.get("r1")).status is RunStatus.COMPLETED
    assert await fake_redis.get("rider-count") == b"1"
    assert rider.confirmed
