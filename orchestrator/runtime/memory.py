"""`InMemoryMemoryStore`, and the rules every MemoryStore applies to a record.

The default store of `SelfReference()` and the test double for the Redis-backed one: both
implement `orchestrator.ports.MemoryStore` and pass the same contract suite
(`tests/contracts/memory_store_contract.py`). The rules are plain functions both stores
call, so the two cannot drift apart:

    merge_turn          what `save_turn` stores: a replace, or an append of the turn's own
                        messages when someone else wrote since the turn started
    trim_messages       the transcript within `max_message_bytes`: oldest non-system
                        messages go first (a tool result never outlives its call)
    check_experience    refuse an experience the record has no room for
    check_size          refuse a summary or pending compaction over the byte bound
    bounded             a transcript trimmed to the bound, with a warning if it was cut
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestrator.errors import MemoryLimitError
from orchestrator.events import MessageList
from orchestrator.ports import Experience, MemoryLimits, MemorySnapshot, TranscriptBase
from orchestrator.runtime.state import copy_json

__all__ = [
    "InMemoryMemoryStore",
    "StoredTranscript",
    "bounded",
    "check_experience",
    "check_size",
    "merge_turn",
    "trim_messages",
]

_log = structlog.get_logger(__name__)

# How many (writer, base) marks a record keeps to make retried saves idempotent; older
# marks belong to turns long finished.
MAX_WRITER_MARKS = 64


@dataclass
class StoredTranscript:
    """The message part of a memory record: messages, revision, and per (writer, base)
    how many of its own messages that writer has already added."""

    messages: MessageList = field(default_factory=list)
    revision: int = 0
    writers: dict[str, int] = field(default_factory=dict)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def trim_messages(messages: MessageList, max_bytes: int) -> tuple[MessageList, int]:
    """`messages` cut to fit `max_bytes` as JSON, and how many were dropped.

    System messages stay; the oldest others go first. A tool result whose call was
    dropped goes with it, so what is left is still a valid history to send.
    """
    sizes = [_json_size(m) for m in messages]
    total = 2 + sum(sizes) + max(0, len(messages) - 1)
    if total <= max_bytes:
        return messages, 0
    dropped: set[int] = set()
    for index, message in enumerate(messages):
        if total <= max_bytes:
            break
        if message.get("role") == "system":
            continue
        dropped.add(index)
        total -= sizes[index] + 1
    kept: MessageList = []
    for index, message in enumerate(messages):
        if index in dropped:
            continue
        orphan = message.get("role") == "tool" and not any(m.get("role") != "system" for m in kept)
        if orphan:
            dropped.add(index)
            continue
        kept.append(message)
    return kept, len(dropped)


def merge_turn(
    stored: StoredTranscript,
    messages: MessageList,
    base: TranscriptBase,
    *,
    copy_messages: bool = True,
) -> StoredTranscript | None:
    """What `save_turn` leaves stored (None: nothing to write).

    Unchanged since the turn started: the transcript replaces the record. Changed: only
    the turn's own messages not added yet are appended to what is there now. The
    result holds deep copies of `messages` (`copy_messages=False`: the messages
    themselves, for a store that serializes them at once).
    """
    keep = copy_json if copy_messages else list
    mark = f"{base.writer}@{base.revision}"
    writers = dict(stored.writers)
    own = max(0, len(messages) - base.count)
    if stored.revision == base.revision:
        merged = keep(list(messages))
        writers[mark] = own
    else:
        done = min(writers.get(mark, 0), own)
        fresh = messages[base.count + done :]
        if not fresh:
            return None
        merged = [*stored.messages, *keep(list(fresh))]
        writers[mark] = done + len(fresh)
    while len(writers) > MAX_WRITER_MARKS:
        writers.pop(next(iter(writers)))
    return StoredTranscript(merged, stored.revision + 1, writers)


def bounded(key: str, transcript: StoredTranscript, limits: MemoryLimits) -> StoredTranscript:
    """`transcript` trimmed to the byte bound, with a warning when anything was dropped."""
    kept, dropped = trim_messages(transcript.messages, limits.max_message_bytes)
    if dropped:
        _log.warning(
            "memory.trimmed",
            key=key,
            dropped_messages=dropped,
            kept_messages=len(kept),
            max_message_bytes=limits.max_message_bytes,
        )
    return StoredTranscript(kept, transcript.revision, transcript.writers)


def check_experience(text: str, count: int, limits: MemoryLimits) -> None:
    """Refuse a new experience the record has no room for (`count` it holds already)."""
    if len(text) > limits.max_experience_chars:
        raise MemoryLimitError(
            f"experience is {len(text)} characters long; at most "
            f"{limits.max_experience_chars} are kept: state the lesson more briefly"
        )
    if count >= limits.max_experiences:
        raise MemoryLimitError(
            f"memory already holds the maximum of {limits.max_experiences} experiences: "
            "forget one that no longer matters (selfref_context_forget) before adding another"
        )


def check_size(value: Any, what: str, limits: MemoryLimits) -> None:
    """Refuse a summary or pending compaction larger than the transcript bound."""
    size = _json_size(value)
    if size > limits.max_message_bytes:
        raise MemoryLimitError(
            f"{what} is {size} bytes; memory keeps at most {limits.max_message_bytes}: "
            "write a shorter one"
        )


@dataclass
class _Record:
    snapshot: MemorySnapshot
    writers: dict[str, int] = field(default_factory=dict)
    last_experience_number: int = 0
    expires_at: float | None = None


class InMemoryMemoryStore:
    """Memory records per key, held in this object.

    Values are copied on the way in and on the way out, so neither the caller's lists nor
    a loaded snapshot can change what is stored. Experience ids are `exp_1`, `exp_2`, ...
    per key and are never reused, even after an experience is forgotten. Records follow
    `limits` as the Redis store does: they expire `retention_s` after their last write.
    """

    def __init__(
        self,
        limits: MemoryLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or MemoryLimits()
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def _live(self, key: str) -> _Record | None:
        record = self._records.get(key)
        if record is None:
            return None
        if record.expires_at is not None and self._clock() >= record.expires_at:
            del self._records[key]
            return None
        return record

    def _written(self, key: str) -> _Record:
        """The key's record, about to be written (its retention starts again)."""
        record = self._live(key)
        if record is None:
            record = self._records[key] = _Record(MemorySnapshot(key=key))
        retention = self.limits.retention_s
        record.expires_at = None if retention is None else self._clock() + retention
        return record

    async def load(self, key: str) -> MemorySnapshot:
        """The key's record; an empty one if the key was never written (or expired)."""
        record = self._live(key)
        if record is None:
            return MemorySnapshot(key=key)
        return record.snapshot.model_copy(deep=True)

    async def save_messages(self, key: str, messages: MessageList) -> int:
        """Replace the key's messages; returns the new revision."""
        record = self._written(key)
        stored = StoredTranscript(
            copy_json(list(messages)), record.snapshot.revision + 1, record.writers
        )
        return self._store(key, record, stored)

    async def replace_history(
        self, key: str, messages: MessageList, summary: dict[str, Any] | None
    ) -> MemorySnapshot:
        """See `HistoryMemoryStore.replace_history`."""
        if summary is not None:
            check_size(summary, "the summary", self.limits)
        await self.save_messages(key, messages)
        self._written(key).snapshot.summary = copy.deepcopy(summary)
        return await self.load(key)

    async def save_turn(self, key: str, messages: MessageList, base: TranscriptBase) -> int:
        """See `MemoryStore.save_turn`."""
        record = self._written(key)
        current = StoredTranscript(
            record.snapshot.messages, record.snapshot.revision, record.writers
        )
        merged = merge_turn(current, list(messages), base)
        if merged is None:
            return record.snapshot.revision
        return self._store(key, record, merged)

    async def save_turn_unless_pending(
        self, key: str, messages: MessageList, base: TranscriptBase
    ) -> int | None:
        """See `HistoryMemoryStore.save_turn_unless_pending`."""
        record = self._live(key)
        if record is not None and record.snapshot.pending_compaction is not None:
            return None
        return await self.save_turn(key, messages, base)

    async def pending_compaction(self, key: str) -> dict[str, Any] | None:
        """See `HistoryMemoryStore.pending_compaction`."""
        record = self._live(key)
        return None if record is None else copy.deepcopy(record.snapshot.pending_compaction)

    def _store(self, key: str, record: _Record, transcript: StoredTranscript) -> int:
        kept = bounded(key, transcript, self.limits)
        record.snapshot.messages = kept.messages
        record.snapshot.revision = kept.revision
        record.writers = kept.writers
        return kept.revision

    async def add_experience(self, key: str, text: str) -> Experience:
        """Append a durable experience; an identical text returns the one already stored.

        `MemoryLimitError` when the record has no room for it.
        """
        existing = self._live(key)
        for experience in existing.snapshot.experiences if existing else []:
            if experience.text == text:
                return experience.model_copy()
        check_experience(text, len(existing.snapshot.experiences) if existing else 0, self.limits)
        record = self._written(key)
        record.last_experience_number += 1
        experience = Experience(id=f"exp_{record.last_experience_number}", text=text)
        record.snapshot.experiences.append(experience)
        return experience.model_copy()

    async def remove_experience(self, key: str, experience_id: str) -> bool:
        record = self._live(key)
        if record is None:
            return False
        kept = [e for e in record.snapshot.experiences if e.id != experience_id]
        removed = len(kept) != len(record.snapshot.experiences)
        if removed:
            self._written(key).snapshot.experiences = kept
        return removed

    async def set_summary(self, key: str, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            check_size(summary, "the summary", self.limits)
        self._written(key).snapshot.summary = copy.deepcopy(summary)

    async def set_pending_compaction(self, key: str, compaction: dict[str, Any] | None) -> None:
        if compaction is not None:
            check_size(compaction, "the compaction", self.limits)
        self._written(key).snapshot.pending_compaction = copy.deepcopy(compaction)
