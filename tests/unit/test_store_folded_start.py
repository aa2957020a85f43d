"""A job's start takes over the run's writes in the same script (`RunStore.start(
take_over_ttl_s=)`): one round trip, and the take-over exactly as strict as the
publisher's own."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import StaleAttempt
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.runs import LeaseTable, RunStore, Started
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import event_output, payloads

pytestmark = pytest.mark.timeout(10)

_TTL = 600


def _record(run_id: str = "r1", **kw: Any) -> RunRecord:
    kw.setdefault("agent", "pkg:agent")
    return RunRecord(run_id=run_id, session_id="s1", submitted_at=1000.0, **kw)


async def _start(runs: RunStore, attempt: int = 1, **kw: Any) -> Any:
    kw.setdefault("check", lambda record: record.attempt == attempt)
    return await runs.start(
        "r1",
        session_id="s1",
        root_run_id="r1",
        attempt=attempt,
        worker_id="w1",
        lease_ttl_s=60,
        take_over_ttl_s=_TTL,
        **kw,
    )


def _publisher(redis: Any, keys: Keys, attempt: int, **kw: Any) -> EventPublisher:
    return EventPublisher(
        redis, keys, session_id="s1", run_id="r1", attempt=attempt, idle_ttl_s=_TTL, **kw
    )


async def test_a_start_takes_over_the_runs_writes_in_the_same_script(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record())
    await fake_redis.hset(keys.seqs("s1"), "r1", "7")
    start = await _start(runs)
    assert start.outcome is Started.STARTED
    assert start.taken is not None
    assert start.taken.last_seq == 7
    assert start.taken.checkpoint is None
    assert await fake_redis.get(keys.run_fence("s1", "r1")) == b"1"
    assert 0 < await fake_redis.ttl(keys.run_fence("s1", "r1")) <= _TTL


async def test_a_publisher_adopts_the_starts_take_over_without_a_round_trip(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record())
    await fake_redis.hset(keys.checkpoint("s1", "r1"), mapping={"attempt": "1", "state": "s"})
    start = await _start(runs)
    publisher = _publisher(fake_redis, keys, 1, taken=start.taken)
    await fake_redis.set(keys.run_fence("s1", "r1"), "1")  # nothing reads it again:
    await fake_redis.hset(keys.seqs("s1"), "r1", "99")
    assert await publisher.take_over_and_load() == (None, b"s")
    # The next take-over of this publisher is a real one again.
    assert await publisher.take_over_and_load() == (99, b"s")
    publisher.publish(event_output(0, call="r1"))
    await publisher.flush()
    assert payloads(await StreamReader(fake_redis, keys).read("s1")) == [0]
    await publisher.close(expire=False)


async def test_a_stale_attempts_start_is_refused_past_a_newer_fence_and_writes_nothing(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record())
    newer = _publisher(fake_redis, keys, 2)
    await newer.take_over()  # attempt 2 owns the writes, its lease not (yet) taken
    start = await _start(runs, attempt=1)
    assert start.outcome is Started.WRITES_TAKEN
    assert start.taken is None
    assert (await runs.get("r1")).status is RunStatus.QUEUED
    assert await LeaseTable(fake_redis, keys).owner("r1") is None
    assert await fake_redis.get(keys.run_fence("s1", "r1")) == b"2"
    await newer.close(expire=False)


async def test_a_stale_attempts_start_is_refused_past_a_newer_checkpoint(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record(attempt=2))
    await fake_redis.hset(keys.checkpoint("s1", "r1"), mapping={"attempt": "3", "state": "s"})
    start = await _start(runs, attempt=2)
    assert start.outcome is Started.WRITES_TAKEN
    assert (await runs.get("r1")).status is RunStatus.QUEUED
    assert await LeaseTable(fake_redis, keys).owner("r1") is None
    # A refused take-over leaves no fence of its own behind.
    assert await fake_redis.get(keys.run_fence("s1", "r1")) is None


async def test_after_a_folded_start_an_older_attempt_can_no_longer_write(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record(attempt=2))
    old = _publisher(fake_redis, keys, 1)
    await old.take_over()
    start = await _start(runs, attempt=2)
    assert start.outcome is Started.STARTED
    old.publish(event_output(0, call="r1"))
    old.save_checkpoint(b"zombie")
    with pytest.raises(StaleAttempt):
        await old.flush()
    old.abandon()
    assert await StreamReader(fake_redis, keys).read("s1") == []


async def test_a_start_without_a_take_over_leaves_the_writes_alone(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record())
    start = await runs.start(
        "r1",
        session_id="s1",
        root_run_id="r1",
        attempt=1,
        worker_id="w1",
        lease_ttl_s=60,
        check=lambda record: True,
    )
    assert start.outcome is Started.STARTED
    assert start.taken is None
    assert await fake_redis.get(keys.run_fence("s1", "r1")) is None


@pytest.mark.parametrize("existed", [True, False])
async def test_a_first_checkpoint_never_keeps_a_ttl_the_key_had(
    fake_redis: Any, keys: Keys, existed: bool
) -> None:
    """A take-over that found the checkpoint key lets the first save clear its TTL; one
    that found none skips that (there is no TTL to clear)."""
    runs = RunStore(fake_redis, keys)
    await runs.create(_record())
    checkpoint = keys.checkpoint("s1", "r1")
    if existed:
        await fake_redis.hset(checkpoint, "attempt", "1")
        await fake_redis.expire(checkpoint, 100)
    start = await _start(runs)
    publisher = _publisher(fake_redis, keys, 1, taken=start.taken)
    await publisher.take_over_and_load()
    publisher.save_checkpoint(b"state")
    await publisher.flush()
    assert await fake_redis.hget(checkpoint, "state") == b"state"
    assert await fake_redis.ttl(checkpoint) == -1
    await publisher.close(expire=False)
