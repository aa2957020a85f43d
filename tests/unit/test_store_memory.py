"""RedisMemoryStore on fakeredis: the MemoryStore contract plus Redis-specific guarantees."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.ports import MemoryLimits, MemoryStore
from orchestrator.store.memory import MemoryScope, RedisMemoryStore
from tests.contracts.memory_store_contract import MemoryStoreContract

pytestmark = pytest.mark.timeout(10)


class TestRedisMemoryStoreContract(MemoryStoreContract):
    """The shared MemoryStore contract, on fakeredis."""

    @pytest.fixture
    def store(self, fake_redis: Any, keys: Keys) -> RedisMemoryStore:
        return RedisMemoryStore(fake_redis, keys)

    @pytest.fixture
    def make_store(self, fake_redis: Any, keys: Keys) -> Callable[[MemoryLimits], Any]:
        scope = MemoryScope(tenant="t", session_id="s")
        return lambda limits: RedisMemoryStore(fake_redis, keys, scope=scope, limits=limits)


@pytest.fixture
def store(fake_redis: Any, keys: Keys) -> RedisMemoryStore:
    return RedisMemoryStore(fake_redis, keys)


def test_it_is_a_memory_store(store: RedisMemoryStore) -> None:
    assert isinstance(store, MemoryStore)


async def test_an_unknown_key_loads_empty(store: RedisMemoryStore) -> None:
    snapshot = await store.load("nobody")
    assert snapshot.key == "nobody"
    assert snapshot.messages == []
    assert snapshot.experiences == []
    assert snapshot.summary is None
    assert snapshot.pending_compaction is None


async def test_everything_saved_loads_back(store: RedisMemoryStore) -> None:
    messages = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "hi"}]
    await store.save_messages("k", messages)
    await store.set_summary("k", {"text": "greeting", "n": 2})
    await store.set_pending_compaction("k", {"upto": 1})
    snapshot = await store.load("k")
    assert snapshot.messages == messages
    assert snapshot.summary == {"text": "greeting", "n": 2}
    assert snapshot.pending_compaction == {"upto": 1}
    await store.set_summary("k", None)
    await store.set_pending_compaction("k", None)
    snapshot = await store.load("k")
    assert snapshot.summary is None
    assert snapshot.pending_compaction is None


async def test_experiences_get_increasing_ids_in_order(store: RedisMemoryStore) -> None:
    ids = [(await store.add_experience("k", t)).id for t in ("a", "b", "c")]
    assert ids == ["exp_1", "exp_2", "exp_3"]
    assert [e.text for e in (await store.load("k")).experiences] == ["a", "b", "c"]


async def test_an_identical_text_is_not_added_twice(store: RedisMemoryStore) -> None:
    first = await store.add_experience("k", "same")
    again = await store.add_experience("k", "same")
    assert again == first
    assert len((await store.load("k")).experiences) == 1
    assert (await store.add_experience("k", "other")).id == "exp_2"


async def test_removed_ids_are_never_reused(store: RedisMemoryStore) -> None:
    await store.add_experience("k", "a")
    await store.add_experience("k", "b")
    assert await store.remove_experience("k", "exp_2") is True
    assert await store.remove_experience("k", "exp_2") is False
    assert await store.remove_experience("k", "not-an-id") is False
    assert (await store.add_experience("k", "b")).id == "exp_3"
    assert [e.id for e in (await store.load("k")).experiences] == ["exp_1", "exp_3"]


async def test_keys_never_touch_each_other(store: RedisMemoryStore) -> None:
    await store.save_messages("a", [{"role": "user", "content": "a"}])
    await store.add_experience("a", "only a")
    await store.add_experience("b", "only b")
    assert (await store.load("b")).messages == []
    assert [e.text for e in (await store.load("b")).experiences] == ["only b"]
    assert (await store.add_experience("b", "second b")).id == "exp_2"


async def test_concurrent_appends_to_one_key_all_land(store: RedisMemoryStore) -> None:
    results = await asyncio.gather(*(store.add_experience("k", f"t{i}") for i in range(30)))
    assert sorted(int(e.id[4:]) for e in results) == list(range(1, 31))
    assert len((await store.load("k")).experiences) == 30


async def test_two_store_instances_share_the_record(fake_redis: Any, keys: Keys) -> None:
    await RedisMemoryStore(fake_redis, keys).add_experience("k", "x")
    assert (await RedisMemoryStore(fake_redis, keys).load("k")).experiences[0].text == "x"


async def test_loaded_snapshots_are_copies(store: RedisMemoryStore) -> None:
    await store.save_messages("k", [{"role": "user", "content": "a"}])
    snapshot = await store.load("k")
    snapshot.messages.append({"role": "user", "content": "b"})
    assert len((await store.load("k")).messages) == 1


async def test_corrupt_messages_are_reported(
    store: RedisMemoryStore, fake_redis: Any, keys: Keys
) -> None:
    await fake_redis.hset(keys.memory("k"), "messages", "{oops")
    with pytest.raises(PayloadError, match="messages"):
        await store.load("k")
    await fake_redis.hset(keys.memory("k"), "messages", '["not a message"]')
    with pytest.raises(PayloadError, match="messages"):
        await store.load("k")


async def test_a_corrupt_summary_is_reported(
    store: RedisMemoryStore, fake_redis: Any, keys: Keys
) -> None:
    await fake_redis.hset(keys.memory("k"), "summary", "[1]")
    with pytest.raises(PayloadError, match="summary"):
        await store.load("k")


async def test_a_corrupt_experience_is_skipped(
    store: RedisMemoryStore, fake_redis: Any, keys: Keys
) -> None:
    await store.add_experience("k", "good")
    await fake_redis.hset(keys.memory("k"), mapping={"exp:x": "bad id", "exp:9": b"\xff"})
    assert [e.text for e in (await store.load("k")).experiences] == ["good"]
