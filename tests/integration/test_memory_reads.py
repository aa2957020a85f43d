"""A worker's memory reads on the real Redis: a fan-out's forks opening their turns at
once read their records together (one connection, one write), and read back what was
saved."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.keys import Keys
from orchestrator.ports import TranscriptBase
from orchestrator.store.connection import Redis, connect
from orchestrator.store.memory import RedisMemoryStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

FORKS = 20


def _connections(client: Redis) -> int:
    pool = client.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


async def test_forks_opening_together_read_their_records_on_one_connection(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    """Memory records read in one pass of the loop (HGETALL: `load`, as a fan-out's forks'
    turns do) go out together, as the worker's other calls do, instead of one connection
    (and round trip) each."""
    client = connect(redis_url)
    try:
        await client.ping()
        store = RedisMemoryStore(client, keys)
        snapshots = await asyncio.gather(*(store.load(f"k::fork::{i}") for i in range(FORKS)))
        assert [s.messages for s in snapshots] == [[]] * FORKS
        assert {s.revision for s in snapshots} == {0}
        assert _connections(client) == 1
    finally:
        await client.aclose()


async def test_a_saved_record_reads_back_whole_on_a_worker_client(redis: Redis, keys: Keys) -> None:
    """What a turn saved (its transcript, then an experience) reads back whole by `load`."""
    store = RedisMemoryStore(redis, keys)
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "héllo"}]
    base = TranscriptBase(revision=0, count=0, writer="w")
    revision = await store.save_turn("root", messages, base)
    await store.add_experience("root", "always answer briefly")
    loaded = await store.load("root")
    assert loaded.messages == messages
    assert [e.text for e in loaded.experiences] == ["always answer briefly"]
    assert loaded.revision == revision == 1  # counts the writes of the messages
