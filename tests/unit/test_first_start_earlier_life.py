"""A run's first start (attempt 1, queued, never started) reads no event_seq and no
checkpoint (`START_FUNCTION_LUA`'s `first`), on the claim that its run id has no earlier
life, or that one it has is marked by `RunStore.mark_recreated`. Two ways a fork id gets
an earlier life that nothing marks: a re-run spawn made by a worker of the previous
version (a rolling upgrade: its `RedisForkBackend` has no `mark_recreated`), and a fork
number handed out again once the session's fork table expired (its keys expire
`run_retention_s` after the session's last allocation). Either way the new life's events
number from 0 again, repeating (agent_call_id, event_seq) pairs its earlier life left in
the stream. The first start therefore still reads the run's last event_seq (one HGET in
its script), and numbers on.
"""

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
from orchestrator.store.streams import IDLE_TTL_S
from tests.unit.test_store_pick_start import _pick
from workers.forks import RedisForkBackend

pytestmark = pytest.mark.timeout(10)


class _Arq:
    """What `JobQueue` needs of arq's pool, on fakeredis."""

    job_serializer = staticmethod(jsonserial.dumps)
    expires_extra_ms = 86_400_000

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def register_script(self, lua: str) -> Any:
        return self.redis.register_script(lua)


def _backend(redis: Any, keys: Keys, settings: Settings | None = None) -> RedisForkBackend:
    settings = settings or Settings()
    return RedisForkBackend(
        redis,
        keys,
        settings,
        JobQueue(_Arq(redis), keys),  # type: ignore[arg-type]
        request=RunRequest(run_id="root", session_id="s", agent="m:a"),
        tenant=None,
        memory=RedisMemoryStore(redis, keys),
    )


def _spawn(key: str) -> SpawnRequest:
    return SpawnRequest(
        parent_agent_call_id="root", parent_memory_key="mem", message="go", spawn_key=key
    )


async def _earlier_life_expired(redis: Any, keys: Keys, run_id: str) -> None:
    """The fork published up to event_seq 4 and ended; its record and job expired (the
    session stream and its seqs live on: other runs of the session keep publishing)."""
    jid = job_id(run_id, 1, 0)
    await redis.hset(keys.seqs("s"), run_id, "4")
    await redis.delete(keys.run(run_id), f"arq:job:{jid}")
    await redis.zrem(keys.queue(), jid)


async def _first_start_last_seq(redis: Any, keys: Keys, run_id: str) -> int | None:
    record = await RunStore(redis, keys).get(run_id)
    assert (record.status, record.attempt, record.started_at) == (RunStatus.QUEUED, 1, None)
    picked = await _pick(redis, keys, job_id(run_id, 1, 0))
    assert picked is not None, "the pick did not start the run"
    start = picked.start(IDLE_TTL_S)
    assert start.taken is not None
    return start.taken.last_seq


async def test_a_fork_re_created_by_a_previous_version_s_re_run_spawn_numbers_on(
    fake_redis: Any, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolling upgrade: the re-run spawn is made by a worker of the version before this
    round (no `mark_recreated`: its `_start_batch` creates the records at once), the
    fork's first start by a worker of this version."""
    handle = await _backend(fake_redis, keys).spawn(_spawn("k0"))
    run_id = f"root.{handle['fork_id']}"
    await _earlier_life_expired(fake_redis, keys, run_id)

    async def previous_version(self: RunStore, session_id: str, run_ids: Any) -> None:
        pass  # the previous version's re-run spawn marks nothing

    monkeypatch.setattr(RunStore, "mark_recreated", previous_version, raising=False)
    assert await _backend(fake_redis, keys).spawn(_spawn("k0")) == handle  # the re-run spawn

    last = await _first_start_last_seq(fake_redis, keys, run_id)
    assert last == 4, (
        f"the re-created fork's first start found last event_seq {last}: its events "
        "number from 0 again, over the event_seqs its earlier life left in the stream"
    )


async def test_a_fork_number_handed_out_again_after_the_fork_table_expired_numbers_on(
    fake_redis: Any, keys: Keys
) -> None:
    """The session's fork table (counter, spawns, children) expires `run_retention_s`
    after its last allocation; the fork's record `run_retention_s` after its end. Once
    both have expired, the root's next spawn is given fork_1 again: a new run under a run
    id that had a life, which nothing marks."""
    settings = Settings(run_retention_s=600)
    first = await _backend(fake_redis, keys, settings).spawn(_spawn("k0"))
    run_id = f"root.{first['fork_id']}"
    await _earlier_life_expired(fake_redis, keys, run_id)
    # The fork table's keys expired (600 s after the allocation, as the script sets; the
    # counter 60 s more, the largest refresh window of the session's ends, since round 9).
    ttl = await fake_redis.ttl(keys.forks("s"))
    assert 0 < ttl <= 660
    await fake_redis.delete(keys.forks("s"), keys.spawns("s", "root"), keys.children("s", "root"))

    again = await _backend(fake_redis, keys, settings).spawn(_spawn("k1"))  # a new spawn
    assert again["fork_id"] == first["fork_id"], "the fork number was not handed out again"

    last = await _first_start_last_seq(fake_redis, keys, run_id)
    assert last == 4, (
        f"a run id with an earlier life was first-started as one nothing has written "
        f"(last event_seq {last}): its events number from 0 again"
    )
