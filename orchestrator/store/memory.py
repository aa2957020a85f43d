"""`RedisMemoryStore`: SelfReference memory in Redis, shared by every worker.

One hash per memory key (`Keys.memory(key)`), so writers of different keys never touch
each other's data, and every write to one key is a single-key command or a MULTI/EXEC
on that key. Fields:

    messages        JSON list of chat messages
    summary         JSON object (absent: None)
    pending         JSON object, the pending compaction (absent: None)
    exp_seq         the last experience number handed out (ids are never reused)
    exp:<N>         the text of experience exp_<N>
    dedupe:<sha256> the id of the experience with that exact text

Adding an experience is an optimistic transaction (WATCH the hash, read the counter and
the dedupe field, MULTI/EXEC the three writes), so two writers appending to the same key
both land, with distinct ids, and the same text twice lands once.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import structlog

from orchestrator.errors import PayloadError
from orchestrator.events import MessageList
from orchestrator.keys import Keys
from orchestrator.ports import Experience, MemorySnapshot
from orchestrator.store._codec import dump_json, load_json, opt_text, parse_int, resolve, text
from orchestrator.store.connection import Pipeline, Redis, begin, optimistic, translate_errors

__all__ = ["RedisMemoryStore"]

log = structlog.get_logger(__name__)

_MESSAGES = "messages"
_SUMMARY = "summary"
_PENDING = "pending"
_SEQ = "exp_seq"
_EXP = "exp:"
_DEDUPE = "dedupe:"


def _dedupe_field(text_: str) -> str:
    return _DEDUPE + hashlib.sha256(text_.encode()).hexdigest()


class RedisMemoryStore:
    """`orchestrator.ports.MemoryStore` on Redis; see the module docstring for the layout.

    A corrupt `messages`, `summary` or `pending` field makes `load` raise `PayloadError`
    (silently replacing history would lose it); a corrupt experience is skipped with a
    warning.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def load(self, key: str) -> MemorySnapshot:
        """The key's record; an empty one if the key was never written."""
        async with translate_errors("memory load"):
            raw = await resolve(self._redis.hgetall(self._keys.memory(key)))
        fields = {text(k): v for k, v in raw.items()}
        return MemorySnapshot(
            key=key,
            messages=_messages(key, fields.get(_MESSAGES)),
            experiences=_experiences(key, fields),
            summary=_object(key, _SUMMARY, fields.get(_SUMMARY)),
            pending_compaction=_object(key, _PENDING, fields.get(_PENDING)),
        )

    async def save_messages(self, key: str, messages: MessageList) -> None:
        """Replace the key's message history."""
        value = dump_json(list(messages))
        async with translate_errors("memory save_messages"):
            await resolve(self._redis.hset(self._keys.memory(key), _MESSAGES, value))

    async def add_experience(self, key: str, text: str) -> Experience:
        """Append a durable experience (`exp_N`); an identical text returns the stored one."""
        hash_key = self._keys.memory(key)
        dedupe = _dedupe_field(text)

        async def add(pipe: Pipeline) -> Experience:
            seq_raw, existing = await resolve(pipe.hmget(hash_key, [_SEQ, dedupe]))
            if existing is not None:
                return Experience(id=opt_text(existing) or "", text=text)
            number = (0 if seq_raw is None else parse_int(seq_raw, "experience counter")) + 1
            exp_id = f"exp_{number}"
            begin(pipe)
            pipe.hset(
                hash_key,
                mapping={_SEQ: str(number), f"{_EXP}{number}": text, dedupe: exp_id},
            )
            return Experience(id=exp_id, text=text)

        return await optimistic(self._redis, [hash_key], add, what="memory add_experience")

    async def remove_experience(self, key: str, experience_id: str) -> bool:
        """Forget one experience; False if the key has none with that id."""
        number = _experience_number(experience_id)
        if number is None:
            return False
        hash_key = self._keys.memory(key)
        field = f"{_EXP}{number}"

        async def remove(pipe: Pipeline) -> bool:
            raw = await resolve(pipe.hget(hash_key, field))
            if raw is None:
                return False
            begin(pipe)
            pipe.hdel(hash_key, field)
            with contextlib.suppress(PayloadError):  # corrupt text: no dedupe entry to drop
                pipe.hdel(hash_key, _dedupe_field(text(raw)))
            return True

        return await optimistic(self._redis, [hash_key], remove, what="memory remove_experience")

    async def set_summary(self, key: str, summary: dict[str, Any] | None) -> None:
        await self._set_optional(key, _SUMMARY, summary)

    async def set_pending_compaction(self, key: str, compaction: dict[str, Any] | None) -> None:
        await self._set_optional(key, _PENDING, compaction)

    async def _set_optional(self, key: str, field: str, value: dict[str, Any] | None) -> None:
        hash_key = self._keys.memory(key)
        async with translate_errors(f"memory set {field}"):
            if value is None:
                await resolve(self._redis.hdel(hash_key, field))
            else:
                await resolve(self._redis.hset(hash_key, field, dump_json(value)))


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
