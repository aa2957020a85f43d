"""`InMemorySessionJournal`, and the rules every SessionJournal applies.

The in-process journal (what a tool uses when no worker gave it one) and the test double
for the Redis-backed one (`orchestrator.store.journal`); both call `admit`, so they bound
a journal the same way.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ToolError
from orchestrator.ports import JournalHead, JournalLimits, JournalRecord

__all__ = ["InMemorySessionJournal", "admit", "entry_size", "new_generation"]


def new_generation() -> str:
    return uuid.uuid4().hex


def entry_size(entry: dict[str, Any]) -> int:
    """An entry's size as stored (compact JSON, UTF-8); ToolError if it is not JSON."""
    if not isinstance(entry, dict):
        raise ToolError("a journal entry must be a JSON object")
    try:
        return len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise ToolError(f"a journal entry must be JSON: {exc}") from None


def admit(stored: int, stored_bytes: int, size: int, complete: bool, limits: JournalLimits) -> bool:
    """Whether one more entry of `size` bytes is kept. Once an entry was refused the
    journal is incomplete, and later entries are not kept either (they could not be
    replayed without the missing one)."""
    return complete and stored + 1 <= limits.max_entries and stored_bytes + size <= limits.max_bytes


@dataclass
class _Journal:
    generation: str
    seq: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)
    stored_bytes: int = 0
    expires_at: float | None = None

    def head(self) -> JournalHead:
        return JournalHead(generation=self.generation, seq=self.seq, stored=len(self.entries))


class InMemorySessionJournal:
    """`orchestrator.ports.SessionJournal` held in this object (one process)."""

    def __init__(
        self,
        limits: JournalLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or JournalLimits()
        self._clock = clock
        self._journals: dict[str, _Journal] = {}

    def _live(self, name: str) -> _Journal | None:
        journal = self._journals.get(name)
        expires_at = None if journal is None else journal.expires_at
        if expires_at is not None and self._clock() >= expires_at:
            del self._journals[name]
            return None
        return journal

    def _touch(self, journal: _Journal) -> None:
        retention = self.limits.retention_s
        journal.expires_at = None if retention is None else self._clock() + retention

    async def head(self, name: str) -> JournalHead:
        journal = self._live(name)
        return JournalHead() if journal is None else journal.head()

    async def read(self, name: str) -> JournalRecord:
        journal = self._live(name)
        if journal is None:
            return JournalRecord()
        head = journal.head()
        return JournalRecord(
            generation=head.generation,
            seq=head.seq,
            stored=head.stored,
            entries=copy.deepcopy(journal.entries),
        )

    async def append(self, name: str, entry: dict[str, Any]) -> JournalHead:
        size = entry_size(entry)
        journal = self._live(name)
        if journal is None:
            journal = self._journals[name] = _Journal(new_generation())
        complete = len(journal.entries) == journal.seq
        if admit(len(journal.entries), journal.stored_bytes, size, complete, self.limits):
            journal.entries.append(copy.deepcopy(entry))
            journal.stored_bytes += size
        journal.seq += 1
        self._touch(journal)
        return journal.head()

    async def reset(self, name: str, *, complete: bool = True) -> JournalHead:
        journal = self._journals[name] = _Journal(new_generation(), seq=0 if complete else 1)
        self._touch(journal)
        return journal.head()
