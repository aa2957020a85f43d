"""`InMemoryMemoryStore`: SelfReference memory in a dict, for one process.

The default store of `SelfReference()` and the test double for the Redis-backed one: both
implement `orchestrator.ports.MemoryStore` and pass the same contract suite
(`tests/contracts/memory_store_contract.py`).
"""

from __future__ import annotations

import copy
from typing import Any

from orchestrator.events import MessageList
from orchestrator.ports import Experience, MemorySnapshot

__all__ = ["InMemoryMemoryStore"]


class InMemoryMemoryStore:
    """Memory records per key, held in this object.

    Values are copied on the way in and on the way out, so neither the caller's lists nor
    a loaded snapshot can change what is stored. Experience ids are `exp_1`, `exp_2`, ...
    per key and are never reused, even after an experience is forgotten.
    """

    def __init__(self) -> None:
        self._records: dict[str, MemorySnapshot] = {}
        self._last_experience_number: dict[str, int] = {}

    def _record(self, key: str) -> MemorySnapshot:
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = MemorySnapshot(key=key)
        return record

    async def load(self, key: str) -> MemorySnapshot:
        """The key's record; an empty one if the key was never written."""
        record = self._records.get(key)
        if record is None:
            return MemorySnapshot(key=key)
        return record.model_copy(deep=True)

    async def save_messages(self, key: str, messages: MessageList) -> None:
        self._record(key).messages = copy.deepcopy(list(messages))

    async def add_experience(self, key: str, text: str) -> Experience:
        """Append a durable experience; an identical text returns the one already stored."""
        record = self._record(key)
        for existing in record.experiences:
            if existing.text == text:
                return existing.model_copy()
        number = self._last_experience_number.get(key, 0) + 1
        self._last_experience_number[key] = number
        experience = Experience(id=f"exp_{number}", text=text)
        record.experiences.append(experience)
        return experience.model_copy()

    async def remove_experience(self, key: str, experience_id: str) -> bool:
        record = self._records.get(key)
        if record is None:
            return False
        kept = [e for e in record.experiences if e.id != experience_id]
        removed = len(kept) != len(record.experiences)
        record.experiences = kept
        return removed

    async def set_summary(self, key: str, summary: dict[str, Any] | None) -> None:
        self._record(key).summary = copy.deepcopy(summary)

    async def set_pending_compaction(self, key: str, compaction: dict[str, Any] | None) -> None:
        self._record(key).pending_compaction = copy.deepcopy(compaction)
