"""The `MemoryStore` contract: what SelfReference relies on from any memory backend.

Use it by subclassing and providing a `store` fixture (sync or async) that yields a fresh,
empty store:

    class TestRedisMemoryStore(MemoryStoreContract):
        @pytest.fixture
        async def store(self, redis_client):
            return RedisMemoryStore(redis_client, namespace="t")

The class name has no `Test` prefix, so pytest only collects the subclasses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.ports import Experience, MemorySnapshot, MemoryStore


class MemoryStoreContract:
    """Run against a fresh store per test via the subclass's `store` fixture."""

    @pytest.fixture
    def store(self) -> Any:
        raise NotImplementedError("subclasses provide a `store` fixture")

    def test_implements_the_memory_store_protocol(self, store: Any) -> None:
        """The store satisfies the MemoryStore Protocol SelfReference is written against."""
        assert isinstance(store, MemoryStore)

    async def test_unwritten_key_loads_as_an_empty_record(self, store: MemoryStore) -> None:
        """Loading a key nobody wrote gives an empty record for that key, not an error."""
        snapshot = await store.load("never-written")
        assert snapshot == MemorySnapshot(key="never-written")

    async def test_saved_messages_load_back_equal(self, store: MemoryStore) -> None:
        """Messages round-trip unchanged, including nested tool calls and non-ASCII text."""
        messages = [
            {"role": "system", "content": "你是助手"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ]
        await store.save_messages("k", messages)
        assert (await store.load("k")).messages == messages

    async def test_saving_messages_replaces_the_previous_list(self, store: MemoryStore) -> None:
        """save_messages is a replace, not an append."""
        await store.save_messages("k", [{"role": "user", "content": "one"}])
        await store.save_messages("k", [{"role": "user", "content": "two"}])
        assert (await store.load("k")).messages == [{"role": "user", "content": "two"}]

    async def test_experience_ids_count_up_from_exp_1(self, store: MemoryStore) -> None:
        """Experiences get ids exp_1, exp_2, ... in the order they are added."""
        first = await store.add_experience("k", "prefer metric units")
        second = await store.add_experience("k", "user is in Paris")
        assert (first.id, second.id) == ("exp_1", "exp_2")
        assert (await store.load("k")).experiences == [first, second]

    async def test_identical_experience_is_not_added_twice(self, store: MemoryStore) -> None:
        """Adding the same text again returns the stored experience and stores nothing new."""
        first = await store.add_experience("k", "prefer metric units")
        again = await store.add_experience("k", "prefer metric units")
        assert again == first
        assert len((await store.load("k")).experiences) == 1

    async def test_remove_experience_reports_whether_it_removed(self, store: MemoryStore) -> None:
        """remove_experience removes by id and says False for an unknown id."""
        kept = await store.add_experience("k", "keep me")
        gone = await store.add_experience("k", "drop me")
        assert await store.remove_experience("k", gone.id) is True
        assert await store.remove_experience("k", gone.id) is False
        assert await store.remove_experience("other", "exp_1") is False
        assert (await store.load("k")).experiences == [kept]

    async def test_experience_ids_are_not_reused_after_removal(self, store: MemoryStore) -> None:
        """A forgotten id never names a different experience later (the model may cite it)."""
        await store.add_experience("k", "a")
        second = await store.add_experience("k", "b")
        await store.remove_experience("k", second.id)
        third = await store.add_experience("k", "c")
        assert third.id not in {"exp_1", second.id}

    async def test_concurrent_adds_get_distinct_ids(self, store: MemoryStore) -> None:
        """Experiences added concurrently all survive, each with its own id."""
        added = await asyncio.gather(*(store.add_experience("k", f"fact {i}") for i in range(10)))
        assert len({e.id for e in added}) == 10
        assert {e.text for e in (await store.load("k")).experiences} == {
            f"fact {i}" for i in range(10)
        }

    async def test_summary_is_set_and_cleared(self, store: MemoryStore) -> None:
        """set_summary stores a dict; None clears it."""
        summary = {"goal": "ship", "discoveries": ["a", "b"]}
        await store.set_summary("k", summary)
        assert (await store.load("k")).summary == summary
        await store.set_summary("k", None)
        assert (await store.load("k")).summary is None

    async def test_pending_compaction_is_set_and_cleared(self, store: MemoryStore) -> None:
        """set_pending_compaction stores a dict; None clears it."""
        pending = {"summary": {"goal": "g"}, "remember": ["x"], "rendered_summary": "..."}
        await store.set_pending_compaction("k", pending)
        assert (await store.load("k")).pending_compaction == pending
        await store.set_pending_compaction("k", None)
        assert (await store.load("k")).pending_compaction is None

    async def test_keys_are_isolated(self, store: MemoryStore) -> None:
        """Writes to one key never show up under another."""
        await store.save_messages("a", [{"role": "user", "content": "for a"}])
        await store.add_experience("a", "a's lesson")
        await store.set_summary("a", {"goal": "a"})
        await store.set_pending_compaction("a", {"summary": {"goal": "a"}})
        b = await store.load("b")
        assert b == MemorySnapshot(key="b")
        await store.add_experience("b", "a's lesson")
        assert [e.text for e in (await store.load("a")).experiences] == ["a's lesson"]
        assert await store.remove_experience("b", "exp_1") in (True, False)
        assert [e.text for e in (await store.load("a")).experiences] == ["a's lesson"]

    async def test_caller_mutations_do_not_reach_stored_state(self, store: MemoryStore) -> None:
        """Changing the lists passed in, or a loaded snapshot, leaves the store unchanged."""
        messages = [{"role": "user", "content": "hi", "meta": {"n": 1}}]
        summary = {"goal": "g", "discoveries": ["x"]}
        await store.save_messages("k", messages)
        await store.set_summary("k", summary)
        messages[0]["meta"]["n"] = 2
        messages.append({"role": "user", "content": "extra"})
        summary["discoveries"].append("y")

        loaded = await store.load("k")
        assert loaded.messages == [{"role": "user", "content": "hi", "meta": {"n": 1}}]
        assert loaded.summary == {"goal": "g", "discoveries": ["x"]}

        loaded.messages.clear()
        assert loaded.summary is not None
        loaded.summary["goal"] = "changed"
        loaded.experiences.append(Experience(id="exp_99", text="injected"))
        reloaded = await store.load("k")
        assert len(reloaded.messages) == 1
        assert reloaded.summary == {"goal": "g", "discoveries": ["x"]}
        assert reloaded.experiences == []

    async def test_returned_experience_is_a_copy(self, store: MemoryStore) -> None:
        """Editing the Experience returned by add_experience does not edit the stored one."""
        experience = await store.add_experience("k", "original")
        experience.text = "edited"
        assert [e.text for e in (await store.load("k")).experiences] == ["original"]
