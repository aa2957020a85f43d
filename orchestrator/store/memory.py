"""`RedisMemoryStore`: SelfReference memory in Redis, shared by every worker.

One hash per memory record, so writers of different keys never touch each other's data,
and every write to one record is a MULTI/EXEC on that record. A store is built for one
`MemoryScope` (a session of a tenant, or every session of a tenant): the memory keys it is
given (`agent`, `agent::fork::3`) are logical names inside that scope, and
`Keys.scoped_memory` turns them into the record's name. Fields:

    messages        JSON list of chat messages
    rev             how many times messages were written (the revision a turn starts from)
    writers         JSON {"<agent call>@<revision>": n}: messages each turn already
                    appended, so a retried save adds nothing twice (the last 64 kept)
    summary         JSON object (absent: None)
    pending         JSON object, the pending compaction (absent: None)
    exp_seq         the last experience number handed out (ids are never reused)
    exp:<N>         the text of experience exp_<N>
    dedupe:<sha256> the id of the experience with that exact text

Every write refreshes the record's TTL (`MemoryLimits.retention_s`) and keeps it within
its bounds (`orchestrator.runtime.memory` has the rules, shared with the in-process store).
Adding an experience and saving a turn are optimistic transactions (WATCH the hash, read,
MULTI/EXEC the writes), so concurrent writers to one record all land.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from orchestrator.errors import PayloadError
from orchestrator.events import MessageList
from orchestrator.keys import Keys
from orchestrator.ports import Experience, MemoryLimits, MemorySnapshot, TranscriptBase
from orchestrator.runtime.memory import (
    StoredTranscript,
    bounded,
    check_experience,
    check_size,
    merge_turn,
)
from orchestrator.store._codec import dump_json, load_json, opt_text, parse_int, resolve, text
from orchestrator.store.connection import Pipeline, Redis, begin, optimistic, translate_errors

__all__ = ["MemoryScope", "RedisMemoryStore"]

log = structlog.get_logger(__name__)

_MESSAGES = "messages"
_REVISION = "rev"
_WRITERS = "writers"
_SUMMARY = "summary"
_PENDING = "pending"
_SEQ = "exp_seq"
_EXP = "exp:"
_DEDUPE = "dedupe:"


def _dedupe_field(text_: str) -> str:
    return _DEDUPE + hashlib.sha256(text_.encode()).hexdigest()


@dataclass(frozen=True)
class MemoryScope:
    """Where a worker's memory keys live: one session of a tenant (`session_id` set) or
    every session of a tenant (`session_id` None). `tenant` None is the "no tenant" scope.
    """

    tenant: str | None
    session_id: str | None

    @classmethod
    def for_run(
        cls, kind: Literal["session", "tenant"], *, tenant: str | None, session_id: str
    ) -> MemoryScope:
        """The scope of a run's memory, for a SelfReference's `memory_scope`."""
        return cls(tenant=tenant, session_id=session_id if kind == "session" else None)


class RedisMemoryStore:
    """`orchestrator.ports.MemoryStore` on Redis; see the module docstring for the layout.

    Without a `scope` the keys are not scoped at all (one memory for everyone using this
    prefix): workers always pass one. A corrupt `messages`, `rev`, `summary` or `pending`
    field makes `load` raise `PayloadError` (silently replacing history would lose it); a
    corrupt experience is skipped with a warning.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        scope: MemoryScope | None = None,
        limits: MemoryLimits | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.scope = scope
        self.limits = limits or MemoryLimits()

    def record_key(self, key: str) -> str:
        """The Redis name of memory key `key`'s record in this store's scope."""
        if self.scope is None:
            return self._keys.memory(key)
        return self._keys.scoped_memory(
            key, tenant=self.scope.tenant, session_id=self.scope.session_id
        )

    async def load(self, key: str) -> MemorySnapshot:
        """The key's record; an empty one if the key was never written (or expired)."""
        async with translate_errors("memory load"):
            raw = await resolve(self._redis.hgetall(self.record_key(key)))
        fields = {text(k): v for k, v in raw.items()}
        return MemorySnapshot(
            key=key,
            messages=_messages(key, fields.get(_MESSAGES)),
            experiences=_experiences(key, fields),
            summary=_object(key, _SUMMARY, fields.get(_SUMMARY)),
            pending_compaction=_object(key, _PENDING, fields.get(_PENDING)),
            revision=_revision(key, fields.get(_REVISION)),
        )

    async def save_messages(self, key: str, messages: MessageList) -> int:
        """Replace the key's message history; returns the new revision."""
        hash_key = self.record_key(key)
        replacement = list(messages)

        async def save(pipe: Pipeline) -> int:
            current = await self._transcript(pipe, key, hash_key, with_messages=False)
            stored = StoredTranscript(replacement, current.revision + 1, current.writers)
            return self._queue_transcript(pipe, key, hash_key, stored)

        return await optimistic(self._redis, [hash_key], save, what="memory save_messages")

    async def save_turn(self, key: str, messages: MessageList, base: TranscriptBase) -> int:
        """See `MemoryStore.save_turn`: a replace if nobody wrote since `base`, else an
        append of the turn's own messages; atomic either way."""
        hash_key = self.record_key(key)
        transcript = list(messages)

        async def save(pipe: Pipeline) -> int:
            current = await self._transcript(pipe, key, hash_key, with_messages=True)
            merged = merge_turn(current, transcript, base)
            if merged is None:
                return current.revision
            return self._queue_transcript(pipe, key, hash_key, merged)

        return await optimistic(self._redis, [hash_key], save, what="memory save_turn")

    async def _transcript(
        self, pipe: Pipeline, key: str, hash_key: str, *, with_messages: bool
    ) -> StoredTranscript:
        fields = [_REVISION, _WRITERS, *([_MESSAGES] if with_messages else [])]
        raw = await resolve(pipe.hmget(hash_key, fields))
        messages = _messages(key, raw[2]) if with_messages else []
        return StoredTranscript(messages, _revision(key, raw[0]), _writers(key, raw[1]))

    def _queue_transcript(
        self, pipe: Pipeline, key: str, hash_key: str, transcript: StoredTranscript
    ) -> int:
        kept = bounded(key, transcript, self.limits)
        begin(pipe)
        pipe.hset(
            hash_key,
            mapping={
                _MESSAGES: dump_json(kept.messages),
                _REVISION: str(kept.revision),
                _WRITERS: dump_json(kept.writers),
            },
        )
        self._queue_expire(pipe, hash_key)
        return kept.revision

    def _queue_expire(self, pipe: Pipeline, hash_key: str) -> None:
        if self.limits.retention_s is not None:
            pipe.pexpire(hash_key, max(1, int(self.limits.retention_s * 1000)))

    async def add_experience(self, key: str, text: str) -> Experience:
        """Append a durable experience (`exp_N`); an identical text returns the stored one.

        `MemoryLimitError` when the record has no room for it.
        """
        hash_key = self.record_key(key)
        dedupe = _dedupe_field(text)

        async def add(pipe: Pipeline) -> Experience:
            seq_raw, existing = await resolve(pipe.hmget(hash_key, [_SEQ, dedupe]))
            if existing is not None:
                return Experience(id=opt_text(existing) or "", text=text)
            names = await resolve(pipe.hkeys(hash_key))
            held = sum(1 for name in names if _is_experience_field(name))
            check_experience(text, held, self.limits)
            number = (0 if seq_raw is None else parse_int(seq_raw, "experience counter")) + 1
            exp_id = f"exp_{number}"
            begin(pipe)
            pipe.hset(
                hash_key,
                mapping={_SEQ: str(number), f"{_EXP}{number}": text, dedupe: exp_id},
            )
            self._queue_expire(pipe, hash_key)
            return Experience(id=exp_id, text=text)

        return await optimistic(self._redis, [hash_key], add, what="memory add_experience")

    async def remove_experience(self, key: str, experience_id: str) -> bool:
        """Forget one experience; False if the key has none with that id."""
        number = _experience_number(experience_id)
        if number is None:
            return False
        hash_key = self.record_key(key)
        field = f"{_EXP}{number}"

        async def remove(pipe: Pipeline) -> bool:
            raw = await resolve(pipe.hget(hash_key, field))
            if raw is None:
                return False
            begin(pipe)
            pipe.hdel(hash_key, field)
            with contextlib.suppress(PayloadError):  # corrupt text: no dedupe entry to drop
                pipe.hdel(hash_key, _dedupe_field(text(raw)))
            self._queue_expire(pipe, hash_key)
            return True

        return await optimistic(self._redis, [hash_key], remove, what="memory remove_experience")

    async def set_summary(self, key: str, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            check_size(summary, "the summary", self.limits)
        await self._set_optional(key, _SUMMARY, summary)

    async def set_pending_compaction(self, key: str, compaction: dict[str, Any] | None) -> None:
        if compaction is not None:
            check_size(compaction, "the compaction", self.limits)
        await self._set_optional(key, _PENDING, compaction)

    async def _set_optional(self, key: str, field: str, value: dict[str, Any] | None) -> None:
        hash_key = self.record_key(key)
        async with (
            translate_errors(f"memory set {field}"),
            self._redis.pipeline(transaction=True) as pipe,
        ):
            if value is None:
                pipe.hdel(hash_key, field)
            else:
                pipe.hset(hash_key, field, dump_json(value))
            self._queue_expire(pipe, hash_key)
            await pipe.execute()


def _is_experience_field(name: Any) -> bool:
    raw = name if isinstance(name, bytes) else str(name).encode()
    return raw.startswith(_EXP.encode())


def _experience_number(experience_id: str) -> int | None:
    prefix, _, digits = experience_id.partition("_")
    if prefix != "exp" or not digits.isdigit():
        return None
    return int(digits)


def _messages(key: str, raw: Any) -> MessageList:
    if raw is None:
        return []
    value = load_json(raw, f"memory {key!r} messages")
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise PayloadError(f"memory {key!r} messages is not a list of message objects")
    return value


def _revision(key: str, raw: Any) -> int:
    return 0 if raw is None else parse_int(raw, f"memory {key!r} revision")


def _writers(key: str, raw: Any) -> dict[str, int]:
    """The writer marks; unreadable ones are dropped (they only guard against repeats)."""
    if raw is None:
        return {}
    try:
        value = load_json(raw, f"memory {key!r} writers")
    except PayloadError as exc:
        log.warning("memory.bad_writers", key=key, error=str(exc))
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and v >= 0}


def _object(key: str, field: str, raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    value = load_json(raw, f"memory {key!r} {field}")
    if value is not None and not isinstance(value, dict):
        raise PayloadError(f"memory {key!r} {field} is not a JSON object")
    return value


def _experiences(key: str, fields: dict[str, Any]) -> list[Experience]:
    found: list[tuple[int, Experience]] = []
    for name, raw in fields.items():
        if not name.startswith(_EXP):
            continue
        digits = name[len(_EXP) :]
        try:
            if not digits.isdigit():
                raise PayloadError(f"bad experience field {name!r}")
            number = int(digits)
            found.append((number, Experience(id=f"exp_{number}", text=text(raw))))
        except PayloadError as exc:
            log.warning("memory.bad_experience", key=key, field=name, error=str(exc))
    found.sort(key=lambda pair: pair[0])
    return [experience for _, experience in found]
