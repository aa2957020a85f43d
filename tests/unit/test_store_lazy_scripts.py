"""A store built for one call registers only the script that call runs (registering one
hashes its source): a run's end builds a `RunStore`, every turn a fork backend."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.memory import RedisMemoryStore
from orchestrator.store.queue import JobQueue
from orchestrator.store.runs import RunStore
from workers.forks import RedisForkBackend

pytestmark = pytest.mark.timeout(10)


class CountingRedis:
    """A client that notes each script registered with it (the rest is the client's)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.registered: list[str] = []

    def register_script(self, script: str) -> Any:
        self.registered.append(script)
        return self._inner.register_script(script)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_run_store_registers_a_script_when_first_used(fake_redis: Any, keys: Keys) -> None:
    redis = CountingRedis(fake_redis)
    runs = RunStore(redis, keys)  # type: ignore[arg-type]
    assert redis.registered == []
    assert await runs.create(RunRecord(run_id="r1", session_id="s", agent="m:a"))
    assert await runs.create(RunRecord(run_id="r2", session_id="s", agent="m:a"))
    assert len(redis.registered) == 1
    await runs.transition("r1", from_status=RunStatus.QUEUED, to=RunStatus.RUNNING)
    assert len(redis.registered) == 1  # the same compare-and-set script
    assert (await runs.get("r1")).status is RunStatus.RUNNING


async def test_a_turn_that_never_spawns_registers_no_fork_script(
    fake_redis: Any, keys: Keys
) -> None:
    redis = CountingRedis(fake_redis)
    memory = RedisMemoryStore(fake_redis, keys)
    RedisForkBackend(
        redis,  # type: ignore[arg-type]
        keys,
        Settings(),
        JobQueue(fake_redis, keys),
        request=RunRequest(run_id="root", session_id="s", agent="m:a"),
        tenant=None,
        memory=memory,
    )
    assert redis.registered == []


async def test_publishers_and_memory_stores_of_later_turns_register_no_script_again(
    fake_redis: Any, keys: Keys
) -> None:
    """A worker builds a publisher and a memory store for every turn; the scripts are
    registered with the client once, then shared (and still run)."""
    from orchestrator.store.streams import EventPublisher
    from tests.fixtures_redis import event_output

    redis = CountingRedis(fake_redis)
    for turn in range(3):
        publisher = EventPublisher(redis, keys, session_id="s", run_id=f"r{turn}")  # type: ignore[arg-type]
        publisher.publish(event_output(turn, session_id="s", call=f"r{turn}"))
        await publisher.flush()
        memory = RedisMemoryStore(redis, keys)  # type: ignore[arg-type]
        await memory.save_messages(f"k{turn}", [{"role": "user", "content": "hi"}])
        if turn == 0:
            first = len(redis.registered)
    assert len(redis.registered) == first
    assert await fake_redis.xlen(keys.events("s")) == 3
