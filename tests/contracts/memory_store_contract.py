"""The `MemoryStore` contract: what SelfReference relies on from any memory backend.

Use it by subclassing and providing a `store` fixture (sync or async) that yields a fresh,
empty store, and a `make_store` fixture: a factory of fresh stores with given
`MemoryLimits` (the bounds and the retention):

    class TestRedisMemoryStore(MemoryStoreContract):
        @pytest.fixture
        def store(self, redis, keys):
            return RedisMemoryStore(redis, keys)

        @pytest.fixture
        def make_store(self, redis, keys):
            return lambda limits: RedisMemoryStore(redis, keys, limits=limits)

The class name has no `Test` prefix, so pytest only collects the subclasses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.errors import MemoryLimitError
from orchestrator.ports import (
    Experience,
    HistoryMemoryStore,
    MemoryLimits,
    MemorySnapshot,
    MemoryStore,
    TranscriptBase,
)

MakeStore = Callable[[MemoryLimits], MemoryStore]

SYSTEM = {"role": "system", "content": "You are terse."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def reply(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


async def start_turn(store: MemoryStore, key: str, writer: str) -> tuple[list[Any], Any]:
    """What a turn does first: read the key, build its transcript from it."""
    snapshot = await store.load(key)
    transcript = [*snapshot.messages] if snapshot.messages else [SYSTEM]
    base = TranscriptBase(revision=snapshot.revision, count=len(transcript), writer=writer)
    return transcript, base


class MemoryStoreContract:
    """Run against a fresh store per test via the subclass's `store` fixture."""

    @pytest.fixture
    def store(self) -> Any:
        raise NotImplementedError("subclasses provide a `store` fixture")

    @pytest.fixture
    def make_store(self) -> Any:
        raise NotImplementedError("subclasses provide a `make_store` fixture")

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

    # -- turns saved concurrently ----------------------------------------------------------

    async def test_every_message_write_moves_the_revision_on(self, store: MemoryStore) -> None:
        """The revision says whether anyone wrote since a turn read the key."""
        assert (await store.load("k")).revision == 0
        first = await store.save_messages("k", [user("one")])
        second = await store.save_messages("k", [user("two")])
        assert 0 < first < second
        assert (await store.load("k")).revision == second

    async def test_a_turn_saved_on_an_unchanged_key_replaces_it(self, store: MemoryStore) -> None:
        """Nobody wrote since the turn started: its transcript is the memory (as a plain
        replace would leave it)."""
        await store.save_messages("k", [SYSTEM, user("a"), reply("A")])
        transcript, base = await start_turn(store, "k", "turn-1")
        await store.save_turn("k", [*transcript, user("b"), reply("B")], base)
        assert (await store.load("k")).messages == [
            SYSTEM,
            user("a"),
            reply("A"),
            user("b"),
            reply("B"),
        ]

    async def test_two_turns_started_together_both_keep_their_messages(
        self, store: MemoryStore
    ) -> None:
        """Two runs of one session read the same memory and save one after the other: the
        second appends its own messages instead of overwriting the first's."""
        await store.save_messages("k", [SYSTEM, user("earlier")])
        first, first_base = await start_turn(store, "k", "turn-1")
        second, second_base = await start_turn(store, "k", "turn-2")
        await store.save_turn("k", [*first, user("one"), reply("ONE")], first_base)
        await store.save_turn("k", [*second, user("two"), reply("TWO")], second_base)
        assert (await store.load("k")).messages == [
            SYSTEM,
            user("earlier"),
            user("one"),
            reply("ONE"),
            user("two"),
            reply("TWO"),
        ]

    async def test_concurrent_turn_saves_lose_nothing(self, store: MemoryStore) -> None:
        """Ten turns from the same revision saving at once: every turn's messages land,
        each exactly once."""
        await store.save_messages("k", [SYSTEM])
        starts = [await start_turn(store, "k", f"turn-{i}") for i in range(10)]
        await asyncio.gather(
            *(
                store.save_turn("k", [*t, user(f"q{i}"), reply(f"a{i}")], base)
                for i, (t, base) in enumerate(starts)
            )
        )
        stored = (await store.load("k")).messages
        assert stored[0] == SYSTEM
        for i in range(10):
            assert stored.count(user(f"q{i}")) == 1
            assert stored.count(reply(f"a{i}")) == 1
            assert stored.index(user(f"q{i}")) + 1 == stored.index(reply(f"a{i}"))
        assert len(stored) == 21

    async def test_a_retried_turn_save_adds_nothing_twice(self, store: MemoryStore) -> None:
        """A turn resumed after a crash saves again: what it already added is not added
        again, and only what is new is."""
        await store.save_messages("k", [SYSTEM])
        mine, base = await start_turn(store, "k", "turn-1")
        other, other_base = await start_turn(store, "k", "turn-2")
        await store.save_turn("k", [*other, user("theirs")], other_base)
        await store.save_turn("k", [*mine, user("mine")], base)
        await store.save_turn("k", [*mine, user("mine")], base)
        await store.save_turn("k", [*mine, user("mine"), reply("MINE")], base)
        assert (await store.load("k")).messages == [
            SYSTEM,
            user("theirs"),
            user("mine"),
            reply("MINE"),
        ]

    async def test_an_explicit_history_still_replaces_what_turns_saved(
        self, store: MemoryStore
    ) -> None:
        """save_messages (a history passed to the call) replaces, whatever turns wrote."""
        transcript, base = await start_turn(store, "k", "turn-1")
        await store.save_turn("k", [*transcript, user("old")], base)
        await store.save_messages("k", [user("fresh start")])
        assert (await store.load("k")).messages == [user("fresh start")]

    # -- bounds and retention --------------------------------------------------------------

    async def test_a_transcript_over_the_byte_bound_loses_its_oldest_messages(
        self, make_store: MakeStore
    ) -> None:
        """System messages stay; the oldest others go; a tool result never outlives the
        call it answers, so what is left is still a valid history."""
        store = make_store(MemoryLimits(max_message_bytes=1024))
        arguments = '{"x": "' + "z" * 400 + '"}'
        call = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        }
        result = {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        recent = [user("r" * 500), reply("recent answer")]
        await store.save_messages("k", [SYSTEM, call, result, *recent])  # 1,206 bytes
        assert (await store.load("k")).messages == [SYSTEM, *recent]

        transcript, base = await start_turn(store, "k", "turn-1")
        await store.save_turn("k", [*transcript, user("z" * 700)], base)
        kept = (await store.load("k")).messages
        assert kept == [SYSTEM, reply("recent answer"), user("z" * 700)]

    async def test_an_experience_beyond_the_bound_is_refused_with_a_clear_error(
        self, make_store: MakeStore
    ) -> None:
        """The model reads the error and can forget an experience to make room."""
        store = make_store(MemoryLimits(max_experiences=2, max_experience_chars=50))
        first = await store.add_experience("k", "one")
        await store.add_experience("k", "two")
        with pytest.raises(MemoryLimitError, match=r"maximum of 2 experiences.*forget"):
            await store.add_experience("k", "three")
        assert await store.add_experience("k", "one") == first  # already there: fine
        with pytest.raises(MemoryLimitError, match="at most 50"):
            await store.add_experience("other", "x" * 51)
        await store.remove_experience("k", first.id)
        assert (await store.add_experience("k", "three")).text == "three"
        assert [e.text for e in (await store.load("k")).experiences] == ["two", "three"]

    async def test_a_summary_over_the_byte_bound_is_refused(self, make_store: MakeStore) -> None:
        store = make_store(MemoryLimits(max_message_bytes=1024))
        with pytest.raises(MemoryLimitError, match="at most 1024"):
            await store.set_summary("k", {"goal": "g" * 2000})
        with pytest.raises(MemoryLimitError, match="at most 1024"):
            await store.set_pending_compaction("k", {"summary": {"goal": "g" * 2000}})
        assert await store.load("k") == MemorySnapshot(key="k")

    async def test_a_record_expires_its_retention_after_its_last_write(
        self, make_store: MakeStore
    ) -> None:
        """Every write starts the retention again; a record left alone expires."""
        store = make_store(MemoryLimits(retention_s=2))
        await store.save_messages("k", [user("hello")])
        await store.add_experience("k", "a lesson")
        await asyncio.sleep(1.2)
        await store.set_summary("k", {"goal": "refresh"})
        await asyncio.sleep(1.2)  # 2.4 s after the first write, 1.2 s after the last
        assert (await store.load("k")).messages == [user("hello")]
        await asyncio.sleep(2.5)
        assert await store.load("k") == MemorySnapshot(key="k")

    # -- the one-step calls of a HistoryMemoryStore (both built-in stores) -----------------

    async def test_replace_history_writes_messages_and_summary_and_answers_the_record(
        self, store: MemoryStore
    ) -> None:
        assert isinstance(store, HistoryMemoryStore)
        await store.add_experience("k", "a lesson")
        await store.set_pending_compaction("k", {"upto": 1})
        await store.set_summary("k", {"goal": "old"})
        before = await store.save_messages("k", [user("old")])
        after = await store.replace_history("k", [SYSTEM, user("new")], {"goal": "new"})
        assert after.revision == before + 1
        assert after.messages == [SYSTEM, user("new")]
        assert after.summary == {"goal": "new"}
        assert [e.text for e in after.experiences] == ["a lesson"]
        assert after.pending_compaction == {"upto": 1}
        assert await store.load("k") == after
        cleared = await store.replace_history("k", [user("newer")], None)
        assert cleared.summary is None
        assert await store.load("k") == cleared

    async def test_replace_history_of_a_new_key_starts_it(self, store: MemoryStore) -> None:
        assert isinstance(store, HistoryMemoryStore)
        snapshot = await store.replace_history("fresh", [user("hi")], None)
        assert snapshot == MemorySnapshot(key="fresh", messages=[user("hi")], revision=1)
        assert await store.load("fresh") == snapshot

    async def test_replace_history_refuses_a_summary_over_the_bound(
        self, make_store: MakeStore
    ) -> None:
        store = make_store(MemoryLimits(max_message_bytes=1024))
        assert isinstance(store, HistoryMemoryStore)
        with pytest.raises(MemoryLimitError, match="at most 1024"):
            await store.replace_history("k", [user("x")], {"goal": "g" * 2000})
        assert await store.load("k") == MemorySnapshot(key="k")

    async def test_a_turn_save_waits_for_a_pending_compaction(self, store: MemoryStore) -> None:
        """save_turn_unless_pending writes nothing while a compaction is pending, and is a
        save_turn otherwise (concurrent saves still all land)."""
        assert isinstance(store, HistoryMemoryStore)
        await store.save_messages("k", [SYSTEM])
        mine, base = await start_turn(store, "k", "turn-1")
        other, other_base = await start_turn(store, "k", "turn-2")
        await store.set_pending_compaction("k", {"upto": 1})
        assert await store.save_turn_unless_pending("k", [*mine, user("mine")], base) is None
        assert (await store.load("k")).messages == [SYSTEM]
        await store.set_pending_compaction("k", None)
        first = await store.save_turn_unless_pending("k", [*other, user("theirs")], other_base)
        second = await store.save_turn_unless_pending("k", [*mine, user("mine")], base)
        assert first is not None
        assert second is not None
        assert second > first
        assert (await store.load("k")).messages == [SYSTEM, user("theirs"), user("mine")]

    async def test_the_pending_compaction_reads_alone(self, store: MemoryStore) -> None:
        assert isinstance(store, HistoryMemoryStore)
        assert await store.pending_compaction("k") is None
        await store.set_pending_compaction("k", {"summary": {"goal": "g"}})
        pending = await store.pending_compaction("k")
        assert pending == {"summary": {"goal": "g"}}
        pending["summary"]["goal"] = "changed"
        assert await store.pending_compaction("k") == {"summary": {"goal": "g"}}
        await store.set_pending_compaction("k", None)
        assert await store.pending_compaction("k") is None
