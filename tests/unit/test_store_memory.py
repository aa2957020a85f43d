"""RedisMemoryStore on fakeredis: the MemoryStore contract plus Redis-specific guarantees."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.errors import MemoryLimitError, PayloadError
from orchestrator.keys import Keys
from orchestrator.ports import MemoryLimits, MemoryStore, TranscriptBase
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


async def test_a_corrupt_revision_is_reported_and_nothing_is_written(
    store: RedisMemoryStore, fake_redis: Any, keys: Keys
) -> None:
    await fake_redis.hset(keys.memory("k"), mapping={"rev": "x", "messages": "[]"})
    with pytest.raises(PayloadError, match="revision"):
        await store.save_messages("k", [{"role": "user", "content": "a"}])
    with pytest.raises(PayloadError, match="revision"):
        await store.replace_history("k", [{"role": "user", "content": "a"}], None)
    assert await fake_redis.hget(keys.memory("k"), "messages") == b"[]"


async def test_a_corrupt_experience_counter_is_reported(
    store: RedisMemoryStore, fake_redis: Any, keys: Keys
) -> None:
    await fake_redis.hset(keys.memory("k"), "exp_seq", "many")
    with pytest.raises(PayloadError, match="experience counter"):
        await store.add_experience("k", "a")
    assert await fake_redis.hget(keys.memory("k"), "exp:1") is None


async def test_every_write_sets_the_retention(
    store: RedisMemoryStore, fake_redis: Any, keys: Keys
) -> None:
    name = keys.memory("k")
    base = TranscriptBase(revision=0, count=0, writer="w")
    writes = [
        lambda: store.save_messages("k", [{"role": "user", "content": "a"}]),
        lambda: store.replace_history("k", [{"role": "user", "content": "b"}], {"goal": "g"}),
        lambda: store.save_turn("k", [{"role": "user", "content": "c"}], base),
        lambda: store.add_experience("k", "lesson"),
        lambda: store.remove_experience("k", "exp_1"),
        lambda: store.set_summary("k", None),
        lambda: store.set_pending_compaction("k", {"upto": 1}),
    ]
    for write in writes:
        await fake_redis.persist(name)
        await write()
        assert await fake_redis.pttl(name) > 0


async def test_a_save_from_a_stale_store_still_keeps_what_others_wrote(
    fake_redis: Any, keys: Keys
) -> None:
    """A store's remembered revision is only a guess: a turn whose store last saw the key
    before another store wrote it still appends instead of overwriting."""
    mine, theirs = RedisMemoryStore(fake_redis, keys), RedisMemoryStore(fake_redis, keys)
    system = {"role": "system", "content": "s"}
    start = await mine.replace_history("k", [system], None)
    base = TranscriptBase(revision=start.revision, count=1, writer="mine")
    other = await theirs.load("k")
    other_base = TranscriptBase(revision=other.revision, count=1, writer="theirs")
    await theirs.save_turn("k", [system, {"role": "user", "content": "theirs"}], other_base)
    await mine.save_turn("k", [system, {"role": "user", "content": "mine"}], base)
    assert [m["content"] for m in (await mine.load("k")).messages] == ["s", "theirs", "mine"]


async def test_a_same_revision_with_other_writers_is_not_overwritten(
    fake_redis: Any, keys: Keys
) -> None:
    """The compare-and-set checks the writer marks too: a record rewritten to the same
    revision behind the store's back (expired and written again) is re-read."""
    store = RedisMemoryStore(fake_redis, keys)
    system = {"role": "system", "content": "s"}
    start = await store.replace_history("k", [system], None)
    await fake_redis.hset(keys.memory("k"), "writers", '{"other@0":1}')
    base = TranscriptBase(revision=start.revision, count=1, writer="mine")
    await store.save_turn("k", [system, {"role": "user", "content": "mine"}], base)
    writers = (await fake_redis.hget(keys.memory("k"), "writers")).decode()
    assert '"other@0":1' in writers
    assert '"mine@1":1' in writers


async def test_experiences_added_together_keep_their_order_and_bounds(
    fake_redis: Any, keys: Keys
) -> None:
    store = RedisMemoryStore(fake_redis, keys, limits=MemoryLimits(max_experiences=3))
    added = await store.add_experiences("k", ["a", "b", "a"])
    assert [(e.id, e.text) for e in added] == [("exp_1", "a"), ("exp_2", "b"), ("exp_1", "a")]
    assert await store.add_experiences("k", []) == []
    with pytest.raises(MemoryLimitError, match="maximum of 3"):
        await store.add_experiences("k", ["c", "d"])
    assert [e.text for e in (await store.load("k")).experiences] == ["a", "b", "c"]
