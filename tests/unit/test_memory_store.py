"""InMemoryMemoryStore against the shared MemoryStore contract."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator.ports import MemoryLimits, TranscriptBase
from orchestrator.runtime.memory import InMemoryMemoryStore, StoredTranscript, merge_turn
from tests.contracts.memory_store_contract import MemoryStoreContract


class TestInMemoryMemoryStore(MemoryStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryMemoryStore:
        return InMemoryMemoryStore()

    @pytest.fixture
    def make_store(self) -> Callable[[MemoryLimits], InMemoryMemoryStore]:
        return InMemoryMemoryStore


async def test_separate_stores_share_nothing() -> None:
    """Two store objects are independent (no module-level state)."""
    first, second = InMemoryMemoryStore(), InMemoryMemoryStore()
    await first.add_experience("k", "only in first")
    assert (await second.load("k")).experiences == []
    assert (await second.add_experience("k", "x")).id == "exp_1"


def test_merge_turn_copies_unless_told_the_messages_are_serialized_at_once() -> None:
    message = {"role": "user", "content": "hi", "extra": {"n": 1}}
    base = TranscriptBase(revision=0, count=0, writer="w")
    copied = merge_turn(StoredTranscript(), [message], base)
    shared = merge_turn(StoredTranscript(), [message], base, copy_messages=False)
    assert copied is not None
    assert shared is not None
    assert copied.messages == shared.messages == [message]
    assert copied.messages[0] is not message
    assert copied.messages[0]["extra"] is not message["extra"]
    assert shared.messages[0] is message
