"""A batch of forks inherits its parents' experiences in one round trip (not one per
fork), on fakeredis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.connections import ArqRedis

from orchestrator.keys import Keys
from orchestrator.ports import SpawnRequest
from orchestrator.runs import RunRequest
from orchestrator.settings import Settings
from orchestrator.store.memory import RedisMemoryStore
from orchestrator.store.queue import JobQueue
from workers.forks import RedisForkBackend

pytestmark = pytest.mark.timeout(20)

SYSTEM = {"role": "system", "content": "You are a test agent."}


class RoundTrips:
    """A client that counts its round trips: pipelines sent, and commands sent alone."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.count = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self._inner.pipeline(*args, **kwargs)

    async def hgetall(self, *args: Any) -> Any:
        self.count += 1
        return await self._inner.hgetall(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_batch_of_forks_inherits_experiences_in_one_round_trip(
    fake_redis: Any, keys: Keys
) -> None:
    """Spawning N forks together: one read of the parent's memory, one round trip that
    gives every fork its parent's experiences (not one per fork)."""

    parent = RedisMemoryStore(fake_redis, keys)
    await parent.add_experiences("mem", ["lesson one", "lesson two"])
    counted = RoundTrips(fake_redis)
    memory = RedisMemoryStore(counted, keys)  # type: ignore[arg-type]
    backend = RedisForkBackend(
        fake_redis,
        keys,
        Settings(),
        JobQueue(ArqRedis(connection_pool=fake_redis.connection_pool), keys),
        request=RunRequest(run_id="root", session_id="s", agent="m:a"),
        tenant=None,
        memory=memory,
    )
    spawns = [
        SpawnRequest(
            parent_agent_call_id="call_root",
            parent_memory_key="mem",
            message=f"part {i}",
            spawn_key=f"k{i}",
            context=[SYSTEM],
        )
        for i in range(5)
    ]
    handles = await asyncio.gather(*(backend.spawn(s) for s in spawns))
    assert counted.count == 2  # the parent's record read, then every fork's experiences
    for handle in handles:
        inherited = await parent.load(handle["memory_key"])
        assert [(e.id, e.text) for e in inherited.experiences] == [
            ("exp_1", "lesson one"),
            ("exp_2", "lesson two"),
        ]
