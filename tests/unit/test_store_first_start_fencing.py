"""A run's first start (attempt 1, never started) is made by its job's pick without
reading what no earlier attempt can have left; its writes stay fenced exactly as any
attempt's: once the run is handed back and attempt 2 has started, attempt 1 can neither
publish nor checkpoint, whether or not it had published before, with or without a
checkpoint in its batch."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import StaleAttempt
from orchestrator.keys import Keys
from orchestrator.ports import SpawnRequest
from orchestrator.runs import RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.store import jsonserial
from orchestrator.store.memory import RedisMemoryStore
from orchestrator.store.queue import JobQueue, job_id
from orchestrator.store.runs import LeaseTable, RunStore, Start, Started
from orchestrator.store.streams import IDLE_TTL_S, EventPublisher, StreamReader
from tests.fixtures_redis import event_output, payloads
from tests.unit.test_store_pick_start import _given, _pick, _queue, _record, _request
from workers.forks import RedisForkBackend

pytestmark = pytest.mark.timeout(10)


async def _picked_start(redis: Any, keys: Keys, request: RunRequest) -> Start:
    picked = await _pick(redis, keys, await _queue(redis, keys, request))
    assert picked is not None, "the pick did not start the run"
    start = picked.start(IDLE_TTL_S)
    assert start.outcome is Started.STARTED
    return start


def _publisher(redis: Any, keys: Keys, attempt: int, start: Start) -> EventPublisher:
    return EventPublisher(
        redis, keys, session_id="s1", run_id="r1", attempt=attempt, taken=start.taken
    )


async def _hand_back_and_requeue(redis: Any, keys: Keys) -> RunRequest:
    """Attempt 1 hands its run back; a reaper claims it and queues attempt 2."""
    leases = LeaseTable(redis, keys)
    assert await leases.hand_back("r1", 1)
    assert await leases.claim_expired("r1") == 1
    moved = await RunStore(redis, keys).transition(
        "r1",
        from_status={RunStatus.RUNNING, RunStatus.QUEUED},
        to=RunStatus.QUEUED,
        check=lambda current: current.attempt == 1,
        attempt=2,
    )
    assert moved is not None
    return _request(attempt=2)


@pytest.mark.parametrize("checkpoint", [False, True], ids=["events", "events+checkpoint"])
@pytest.mark.parametrize("published", [False, True], ids=["silent", "published"])
async def test_a_first_attempt_is_refused_once_the_attempt_after_its_hand_back_started(
    fake_redis: Any, keys: Keys, checkpoint: bool, published: bool
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    old = _publisher(fake_redis, keys, 1, await _picked_start(fake_redis, keys, request))
    assert await old.take_over_and_load() == (None, None)
    if published:
        old.publish(event_output(0, call="r1"))
        old.save_checkpoint(b'{"by": 1}')
        await old.flush()

    second = await _hand_back_and_requeue(fake_redis, keys)
    new = _publisher(fake_redis, keys, 2, await _picked_start(fake_redis, keys, second))
    last, saved = await new.take_over_and_load()
    assert (last, saved) == ((0, b'{"by": 1}') if published else (None, None))

    old.publish(event_output(1, call="r1"))
    if checkpoint:
        old.save_checkpoint(b'{"by": "zombie"}')
    with pytest.raises(StaleAttempt):
        await old.flush()
    old.abandon()

    entries = await StreamReader(fake_redis, keys).read("s1")
    assert payloads(entries) == ([0] if published else [])
    stored = await fake_redis.hgetall(keys.checkpoint("s1", "r1"))
    assert stored == ({b"attempt": b"1", b"state": b'{"by": 1}'} if published else {})
    assert await fake_redis.get(keys.run_fence("s1", "r1")) == b"2"

    new.publish(event_output(1, call="r1"))  # the new attempt carries on
    new.save_checkpoint(b'{"by": 2}')
    await new.flush()
    assert payloads(await StreamReader(fake_redis, keys).read("s1"))[-1] == 1
    await new.close(expire=False)


async def test_a_first_attempts_checkpoint_is_refused_by_a_newer_one_when_the_fence_is_gone(
    fake_redis: Any, keys: Keys
) -> None:
    """The write fence lapsed (an idle week) after attempt 2 saved its checkpoint: the
    checkpoint's own attempt still refuses attempt 1's checkpoint."""
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    old = _publisher(fake_redis, keys, 1, await _picked_start(fake_redis, keys, request))
    await old.take_over_and_load()
    second = await _hand_back_and_requeue(fake_redis, keys)
    new = _publisher(fake_redis, keys, 2, await _picked_start(fake_redis, keys, second))
    await new.take_over_and_load()
    new.save_checkpoint(b'{"by": 2}')
    await new.flush()
    await fake_redis.delete(keys.run_fence("s1", "r1"))

    old.publish(event_output(0, call="r1"))
    old.save_checkpoint(b'{"by": "zombie"}')
    with pytest.raises(StaleAttempt):
        await old.flush()
    old.abandon()
    assert await StreamReader(fake_redis, keys).read("s1") == []
    assert await fake_redis.hget(keys.checkpoint("s1", "r1"), "state") == b'{"by": 2}'
    await new.close(expire=False)


async def test_a_fork_created_again_by_a_re_run_spawn_numbers_on_from_its_earlier_life(
    fake_redis: Any, keys: Keys
) -> None:
    """A re-run spawn whose fork's record has expired creates the fork again, under the
    same run id: its first start is not taken for a run id nothing has written, and its
    events number on from the last event_seq the earlier life published."""
    spawn = SpawnRequest(
        parent_agent_call_id="root", parent_memory_key="mem", message="go", spawn_key="k0"
    )
    handle = await _backend(fake_redis, keys).spawn(spawn)
    run_id = f"root.{handle['fork_id']}"
    jid = job_id(run_id, 1, 0)
    # Its earlier life published up to event_seq 4; then its record and job expired.
    await fake_redis.hset(keys.seqs("s"), run_id, "4")
    await fake_redis.delete(keys.run(run_id), f"arq:job:{jid}")
    await fake_redis.zrem(keys.queue(), jid)

    assert await _backend(fake_redis, keys).spawn(spawn) == handle  # the re-run spawn
    record = await RunStore(fake_redis, keys).get(run_id)
    assert (record.status, record.attempt, record.started_at) == (RunStatus.QUEUED, 1, None)
    picked = await _pick(fake_redis, keys, jid)
    assert picked is not None
    start = picked.start(IDLE_TTL_S)
    assert start.taken is not None
    assert start.taken.last_seq == 4
    assert await fake_redis.get(keys.run_fence("s", run_id)) == b"1"


class _Arq:
    """What `JobQueue` needs of arq's pool, on fakeredis."""

    job_serializer = staticmethod(jsonserial.dumps)
    expires_extra_ms = 86_400_000

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def register_script(self, lua: str) -> Any:
        return self.redis.register_script(lua)


def _backend(redis: Any, keys: Keys) -> RedisForkBackend:
    return RedisForkBackend(
        redis,
        keys,
        Settings(),
        JobQueue(_Arq(redis), keys),  # type: ignore[arg-type]
        request=RunRequest(run_id="root", session_id="s", agent="m:a"),
        tenant=None,
        memory=RedisMemoryStore(redis, keys),
    )
