"""InMemoryMemoryStore against the shared MemoryStore contract."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator.ports import MemoryLimits
from orchestrator.runtime.memory import InMemoryMemoryStore
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
