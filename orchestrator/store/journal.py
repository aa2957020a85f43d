"""`RedisSessionJournal`: session journals in Redis, readable from every worker.

One hash per journal (`Keys.journal(session_id, name)`), in the session's hash slot:

    gen       the journal's generation (a new one at every reset)
    seq       entries appended since then (kept or refused)
    stored    entries kept: e:1 .. e:<stored>
    bytes     their total size
    e:<n>     one entry (JSON object)

Appends are optimistic transactions (WATCH the hash, read the counters, MULTI/EXEC), so
concurrent appenders all land, in some order. Every write refreshes the TTL
(`JournalLimits.retention_s`); `orchestrator.runtime.journal.admit` bounds the entries.
What is read back is untrusted: a corrupt entry makes the record incomplete (a replay
then reports the state lost), never an exception.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.ports import JournalHead, JournalLimits, JournalRecord
from orchestrator.runtime.journal import admit, entry_size, new_generation
from orchestrator.store._codec import dump_json, opt_text, parse_int, resolve, text
from orchestrator.store.connection import Pipeline, Redis, begin, optimistic, translate_errors

__all__ = ["RedisSessionJournal"]

_log = structlog.get_logger(__name__)

_GEN = "gen"
_SEQ = "seq"
_STORED = "stored"
_BYTES = "bytes"
_ENTRY = "e:"


class RedisSessionJournal:
    """`orchestrator.ports.SessionJournal` for one session, on Redis."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        session_id: str,
        limits: JournalLimits | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.session_id = session_id
        self.limits = limits or JournalLimits()

    def _key(self, name: str) -> str:
        return self._keys.journal(self.session_id, name)

    async def head(self, name: str) -> JournalHead:
        async with translate_errors("journal head"):
            raw = await resolve(self._redis.hmget(self._key(name), [_GEN, _SEQ, _STORED]))
        return _head(name, raw)

    async def read(self, name: str) -> JournalRecord:
        async with translate_errors("journal read"):
            raw = await resolve(self._redis.hgetall(self._key(name)))
        fields = {text(k): v for k, v in raw.items()}
        head = _head(name, [fields.get(_GEN), fields.get(_SEQ), fields.get(_STORED)])
        entries: list[dict[str, Any]] = []
        for number in range(1, head.stored + 1):
            entry = _entry(fields.get(f"{_ENTRY}{number}"))
            if entry is None:
                _log.warning("journal.bad_entry", name=name, entry=number)
                break  # the rest cannot be replayed without this one
            entries.append(entry)
        return JournalRecord(
            generation=head.generation,
            seq=max(head.seq, head.stored),
            stored=len(entries),
            entries=entries,
        )

    async def append(self, name: str, entry: dict[str, Any]) -> JournalHead:
        size = entry_size(entry)
        encoded = dump_json(entry)
        key = self._key(name)

        async def add(pipe: Pipeline) -> JournalHead:
            raw = await resolve(pipe.hmget(key, [_GEN, _SEQ, _STORED, _BYTES]))
            head = _head(name, raw[:3])
            generation = head.generation or new_generation()
            stored_bytes = _count(name, _BYTES, raw[3])
            writes: dict[str, str] = {_GEN: generation, _SEQ: str(head.seq + 1)}
            stored = head.stored
            if admit(head.stored, stored_bytes, size, head.complete, self.limits):
                stored += 1
                writes.update(
                    {
                        f"{_ENTRY}{stored}": encoded,
                        _STORED: str(stored),
                        _BYTES: str(stored_bytes + size),
                    }
                )
            begin(pipe)
            pipe.hset(key, mapping=writes)
            self._queue_expire(pipe, key)
            return JournalHead(generation=generation, seq=head.seq + 1, stored=stored)

        return await optimistic(self._redis, [key], add, what="journal append")

    async def reset(self, name: str, *, complete: bool = True) -> JournalHead:
        key = self._key(name)
        head = JournalHead(generation=new_generation(), seq=0 if complete else 1, stored=0)
        async with (
            translate_errors("journal reset"),
            self._redis.pipeline(transaction=True) as pipe,
        ):
            pipe.delete(key)
            pipe.hset(
                key,
                mapping={
                    _GEN: head.generation or "",
                    _SEQ: str(head.seq),
                    _STORED: "0",
                    _BYTES: "0",
                },
            )
            self._queue_expire(pipe, key)
            await pipe.execute()
        return head

    def _queue_expire(self, pipe: Pipeline, key: str) -> None:
        if self.limits.retention_s is not None:
            pipe.pexpire(key, max(1, int(self.limits.retention_s * 1000)))


def _count(name: str, field: str, raw: Any) -> int:
    if raw is None:
        return 0
    try:
        value = parse_int(raw, f"journal {name!r} {field}")
    except PayloadError as exc:
        _log.warning("journal.bad_counter", name=name, field=field, error=str(exc))
        return 0
    return max(0, value)


def _head(name: str, raw: list[Any]) -> JournalHead:
    try:
        generation = opt_text(raw[0])
    except PayloadError:
        generation = None
    if not generation:
        return JournalHead()
    seq = _count(name, _SEQ, raw[1])
    stored = _count(name, _STORED, raw[2])
    # A stored count above seq is corrupt: believe neither more than the other.
    return JournalHead(generation=generation, seq=max(seq, stored), stored=stored)


def _entry(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(text(raw))
    except (PayloadError, ValueError):
        return None
    return value if isinstance(value, dict) else None
