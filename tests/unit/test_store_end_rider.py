"""A run's end carries other commands in its script (`Rider`: a worker's arq finish of
the job that ended the run), run only once the end is written, and confirmed only when
they all ran."""

from __future__ import annotations

import json
import uuid
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


async def test_an_end_that_writes_nothing_runs_none_of_its_riders_commands(
    fake_redis: Any, keys: Keys
) -> None:
    """An end whose record moved on meanwhile (the reaper queued attempt 2) writes
    nothing: its rider's commands do not run and it is not confirmed, so the worker
    keeps the job's outcome as arq's result and finishes the job itself."""
    runs = RunStore(fake_redis, keys)
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    record = RunRecord(run_id=run_id, session_id="s1", agent="pkg:agent", submitted_at=1000.0)
    await runs.create(record)
    await runs.transition(run_id, from_status=RunStatus.QUEUED, to=RunStatus.RUNNING)
    # Another process (the reaper) moves the run on: attempt 2, queued again.
    raw = json.loads(await fake_redis.get(keys.run(run_id)))
    raw.update(status=RunStatus.QUEUED.value, attempt=2)
    await fake_redis.set(keys.run(run_id), json.dumps(raw), keepttl=True)

    rider = Rider([("SET", "rider-ran", "1")])
    ended = await runs.end(
        run_id,
        status=RunStatus.COMPLETED,
        from_status=[RunStatus.RUNNING],
        attempt=1,
        writes=_writes(rider),
    )
    assert ended is None  # this job's end wrote nothing
    assert (await runs.get(run_id)).status is RunStatus.QUEUED
    assert await fake_redis.get("rider-ran") is None
    assert not rider.confirmed
