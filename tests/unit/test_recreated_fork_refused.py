"""A re-run spawn whose fork's record expired creates the fork again, attempt 1
(`RedisForkBackend._start`, `RunStore.mark_recreated`: "so its first start takes over its
writes as any later attempt's does"). But its earlier life's end left the lease owner
record with fence attempt + 1 for `lease_fence_ttl_s` (a day), whatever
`run_retention_s` is: with a run retention under a day, the record expires first, and
the re-created fork's start is refused (a later attempt owns the lease). The fork stays
QUEUED for ever and its parent's gather never ends."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.ports import SpawnRequest
from orchestrator.runs import RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.store import jsonserial
from orchestrator.store.memory import RedisMemoryStore
from orchestrator.store.queue import JobQueue, job_id
from orchestrator.store.runs import RunStore
from tests.unit.test_store_pick_start import _worker
from workers.forks import RedisForkBackend

pytestmark = pytest.mark.timeout(10)


class _Arq:
    job_serializer = staticmethod(jsonserial.dumps)
    expires_extra_ms = 86_400_000

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def register_script(self, lua: str) -> Any:
        return self.redis.register_script(lua)


def _backend(redis: Any, keys: Keys, settings: Settings) -> RedisForkBackend:
    return RedisForkBackend(
        redis,
        keys,
        settings,
        JobQueue(_Arq(redis), keys),  # type: ignore[arg-type]
        request=RunRequest(run_id="root", session_id="s", agent="m:a"),
        tenant=None,
        memory=RedisMemoryStore(redis, keys),
    )


async def test_a_fork_re_created_within_a_day_of_its_end_can_start(
    fake_redis: Any, keys: Keys
) -> None:
    settings = Settings(run_retention_s=3600)  # records kept an hour after their end
    spawn = SpawnRequest(
        parent_agent_call_id="root", parent_memory_key="mem", message="go", spawn_key="k0"
    )
    handle = await _backend(fake_redis, keys, settings).spawn(spawn)
    run_id = f"root.{handle['fork_id']}"
    jid = job_id(run_id, 1, 0)
    # Its earlier life (attempt 1) ended: the end released its lease as `_END_LUA` does
    # (fence attempt + 1, state released, `EndWrites.lease_fence_ttl_s`); an hour later
    # its record expired, and so did its job.
    await fake_redis.hset(
        keys.lease(run_id),
        mapping={"attempt": "1", "worker": "w0", "fence": "2", "state": "released"},
    )
    await fake_redis.expire(keys.lease(run_id), 86_400 - 3600)
    await fake_redis.delete(keys.run(run_id), f"arq:job:{jid}")
    await fake_redis.zrem(keys.queue(), jid)

    assert await _backend(fake_redis, keys, settings).spawn(spawn) == handle  # re-run spawn
    record = await RunStore(fake_redis, keys).get(run_id)
    assert (record.status, record.attempt) == (RunStatus.QUEUED, 1)

    (picked,) = await _worker(fake_redis, keys)._pick_many([jid.encode()])
    assert picked is not None
    assert picked.start is not None
    assert picked.start[0] == 1, (
        f"the re-created fork's start was refused ({picked.start}: 3 = a later attempt "
        "owns its lease): it stays queued and its parent's gather waits for ever"
    )
