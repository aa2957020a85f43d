"""A fork's end in a session another end has just kept: the housekeeping commands its
script runs, seen on the real Redis (MONITOR, this test's keys only). The session's
retention is checked with one read, not pushed back again; the lease is released
without being read first; the write fence is read and given its retention at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from orchestrator.events import ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.streams import EventPublisher
from tests.fixtures_redis import event_output

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

_SETTINGS = Settings()


async def _started(redis: Redis, keys: Keys, run_id: str) -> EventPublisher:
    """A fork started by attempt 1 that has checkpointed."""
    record = RunRecord(
        run_id=run_id,
        session_id="s1",
        agent="pkg:agent",
        status=RunStatus.RUNNING,
        attempt=1,
        submitted_at=1000.0,
    )
    await RunStore(redis, keys).create(record)
    assert await LeaseTable(redis, keys).renew(run_id, attempt=1, worker_id="w", ttl_s=60)
    publisher = EventPublisher(redis, keys, session_id="s1", run_id=run_id, attempt=1)
    await publisher.take_over()
    publisher.publish(event_output(0, call=run_id))
    publisher.save_checkpoint(b'{"at": "start"}')
    await publisher.flush()
    return publisher


async def _end(redis: Redis, keys: Keys, run_id: str, publisher: EventPublisher) -> Any:
    """The fork's end, its response in its publisher's last batch (as a turn's is)."""
    publisher.publish(ResponseYield(response="done"))
    batch = await publisher.take_last()
    assert batch is not None
    return await end_run(
        redis,
        keys,
        _SETTINGS,
        run_id=run_id,
        session_id="s1",
        status=RunStatus.COMPLETED,
        attempt=1,
        release=True,
        drop_checkpoint=True,
        batch=batch,
    )


async def _scripted(
    redis_url: str, redis: Redis, keys: Keys, work: Awaitable[Any]
) -> list[tuple[str, str]]:
    """(command, key) of each command a script ran on this test's keys during `work`."""
    sentinel = f"{keys.prefix}:sentinel"
    seen: list[tuple[str, str]] = []
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        async with client.monitor() as monitor:

            async def read() -> None:
                while True:
                    info = await monitor.next_command()
                    words = str(info["command"]).split(" ")
                    if len(words) > 1 and words[1] == sentinel:
                        return
                    if info["client_type"] == "lua" and keys.prefix in info["command"]:
                        seen.append((words[0].upper(), words[1] if len(words) > 1 else ""))

            reader = asyncio.create_task(read())
            try:
                await work
                await redis.get(sentinel)
                await asyncio.wait_for(reader, 20)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        await client.aclose()
    return seen


async def test_a_forks_end_in_a_kept_session_runs_no_housekeeping_twice(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    first = await _started(redis, keys, "p.fork_1")
    second = await _started(redis, keys, "p.fork_2")
    await redis.set(keys.session_owner("s1"), "-", px=1_000)
    assert await _end(redis, keys, "p.fork_1", first) is not None

    seen = await _scripted(redis_url, redis, keys, _end(redis, keys, "p.fork_2", second))

    def on(key: str) -> list[str]:
        return [command for command, name in seen if name == key]

    # The end ran (its terminal entry), and the fork's keys got what they always get.
    assert "XADD" in on(keys.events("s1"))
    assert on(keys.lease("p.fork_2")) == ["HSET", "EXPIRE"]
    assert on(keys.run_fence("s1", "p.fork_2")) == ["GETEX"]
    assert on(keys.checkpoint("s1", "p.fork_2")) == ["HDEL", "EXPIRE"]
    # The session's retention: one read of the stream's TTL, kept by the first end.
    session = {keys.events("s1"), keys.seqs("s1"), keys.session_owner("s1")}
    session.add(keys.session_runs("s1"))
    ttls = {"EXPIRE", "PEXPIRE", "PTTL", "TTL"}
    assert [(c, k) for c, k in seen if c in ttls and k in session] == [("PTTL", keys.events("s1"))]
    # Every key the end leaves still expires, the owner after the stream.
    for key in (
        keys.events("s1"),
        keys.seqs("s1"),
        keys.lease("p.fork_2"),
        keys.run_fence("s1", "p.fork_2"),
        keys.checkpoint("s1", "p.fork_2"),
    ):
        assert 0 < await redis.pttl(key) <= _SETTINGS.stream_retention_s * 1000, key
    assert await redis.pttl(keys.session_owner("s1")) > await redis.pttl(keys.events("s1"))
