"""`RedisMemoryStore`: SelfReference memory in Redis, shared by every worker.

One hash per memory record, so writers of different keys never touch each other's data.
A store is built for one `MemoryScope` (a session of a tenant, or every session of a
tenant): the memory keys it is given (`agent`, `agent::fork::3`) are logical names inside
that scope, and `Keys.scoped_memory` turns them into the record's name. Fields:

    messages        JSON list of chat messages
    rev             how many times messages were written (the revision a turn starts from)
    writers         JSON {"<agent call>@<revision>": n}: messages each turn already
                    appended, so a retried save adds nothing twice (the last 64 kept)
    summary         JSON object (absent: None)
    pending         JSON object, the pending compaction (absent: None)
    exp_seq         the last experience number handed out (ids are never reused)
    exp:<N>         the text of experience exp_<N>
    dedupe:<sha256> the id of the experience with that exact text

Every write is one Lua script (one round trip, atomic): it changes the record, refreshes
its TTL (`MemoryLimits.retention_s`, one PEXPIRE) and keeps it within its bounds
(`orchestrator.runtime.memory` has the rules, shared with the in-process store). The
scripts never parse JSON: the transcript is merged in Python and written with a
compare-and-set (`save_turn`: the write lands only if `rev` and `writers`, and for an
append the stored messages, are still what the merge was computed from; otherwise the
script answers with what is there now and the merge is redone), so concurrent writers to
one record all land. The store remembers the `rev` and `writers` it last read or wrote per
record, so a turn's save usually needs no read of its own (a stale guess only costs a
retry: the script checks it).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from orchestrator.errors import PayloadError, StoreError
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
from orchestrator.store._codec import (
    ascii_digits,
    dump_json,
    load_json,
    opt_text,
    parse_int,
    resolve,
    text,
)
from orchestrator.store.connection import (
    Redis,
    hash_fields,
    registered_script,
    run_script,
    run_scripts,
    translate_errors,
)

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

# How many records' (revision, writers) a store remembers (a hint; see the docstring).
_SEEN_RECORDS = 256
# Compare-and-set rounds before `save_turn` gives up (each lost one means another
# writer's save landed in between).
_MAX_ROUNDS = 100

# KEYS[1] the record. ARGV: messages JSON, ttl ms ('' none), summary op ('' keep, 'd'
# delete, 's' set to ARGV[4]), summary JSON, '1' to answer with the record's other fields
# (writers, pending, exp:*). Answers {0, raw rev} if the revision is corrupt
# (nothing written), else {1, new revision, writers} or {1, new revision, {name, value,
# ...}}. A record that does not exist yet (a fork's) costs HKEYS, HSET and PEXPIRE.
_SAVE_MESSAGES_LUA = """
local key = KEYS[1]
local record = ARGV[5] == '1'
local want = {'rev', 'writers'}
local has_summary, fresh = ARGV[3] == 'd', false
if record then
  local names = redis.call('HKEYS', key)
  fresh, has_summary = #names == 0, false
  for _, name in ipairs(names) do
    if name == 'summary' then
      has_summary = true
    elseif name == 'pending' or string.sub(name, 1, 4) == 'exp:' then
      want[#want + 1] = name
    end
  end
end
local values = {}
if not fresh then
  for i = 1, #want, 500 do
    local last = math.min(i + 499, #want)
    local got = redis.call('HMGET', key, unpack(want, i, last))
    for j = i, last do values[j] = got[j - i + 1] end
  end
end
local rev = 0
if values[1] then
  rev = tonumber(values[1])
  if not rev or rev ~= math.floor(rev) or rev < 0 then return {0, values[1]} end
end
rev = string.format('%d', rev + 1)
if ARGV[3] == 's' then
  redis.call('HSET', key, 'messages', ARGV[1], 'rev', rev, 'summary', ARGV[4])
else
  redis.call('HSET', key, 'messages', ARGV[1], 'rev', rev)
  if ARGV[3] == 'd' and has_summary then redis.call('HDEL', key, 'summary') end
end
if ARGV[2] ~= '' then redis.call('PEXPIRE', key, ARGV[2]) end
if not record then return {1, rev, values[2]} end
local out = {}
for j = 2, #want do
  if values[j] then
    out[#out + 1] = want[j]
    out[#out + 1] = values[j]
  end
end
return {1, rev, out}
"""

# KEYS[1] the record. ARGV: expected rev, '1' if writers was present, expected writers,
# '1' if the messages are checked too, the expected messages, messages, new rev,
# writers, ttl ms, '1' to write nothing if a compaction is pending. (Messages change only
# with rev, so they are checked only for an append, which is built on them: that is a
# save that lost a race, and rare.) Answers {2} if a compaction is pending (and that
# was asked for).
# Writes and answers {1} if the record is as expected, else answers
# {0, rev, writers, messages} (what is there now) and writes nothing.
_SAVE_TRANSCRIPT_LUA = """
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'rev', 'writers', 'pending')
if ARGV[10] == '1' and cur[3] then return {2} end
local same = tonumber(cur[1] or '0') == tonumber(ARGV[1])
if same then
  if ARGV[2] == '1' then same = cur[2] == ARGV[3] else same = cur[2] == false end
end
if same and ARGV[4] == '1' then
  same = (redis.call('HGET', key, 'messages') or '') == ARGV[5]
end
if not same then
  return {0, cur[1], cur[2], redis.call('HGET', key, 'messages')}
end
redis.call('HSET', key, 'messages', ARGV[6], 'rev', ARGV[7], 'writers', ARGV[8])
if ARGV[9] ~= '' then redis.call('PEXPIRE', key, ARGV[9]) end
return {1}
"""

# KEYS[1] the record. ARGV: dedupe field, text, how many experiences may be held, ttl ms.
# Answers {1, id} (the text is there already), {2, held} (no room), {3, raw counter}
# (corrupt counter) or {0, number} (added).
_ADD_EXPERIENCE_LUA = """
local key = KEYS[1]
local got = redis.call('HMGET', key, 'exp_seq', ARGV[1])
if got[2] then return {1, got[2]} end
local held = 0
for _, name in ipairs(redis.call('HKEYS', key)) do
  if string.sub(name, 1, 4) == 'exp:' then held = held + 1 end
end
if held >= tonumber(ARGV[3]) then return {2, held} end
local n = 0
if got[1] then
  n = tonumber(got[1])
  if not n or n ~= math.floor(n) or n < 0 then return {3, got[1]} end
end
n = n + 1
local id = string.format('%d', n)
redis.call('HSET', key, 'exp_seq', id, 'exp:' .. id, ARGV[2], ARGV[1], 'exp_' .. id)
if ARGV[4] ~= '' then redis.call('PEXPIRE', key, ARGV[4]) end
return {0, n}
"""

# KEYS[1] the record. ARGV: experience number, ttl ms. Removes exp:<N> and the dedupe
# entry that points at it; answers 1, or 0 if there was no such experience.
_REMOVE_EXPERIENCE_LUA = """
local key = KEYS[1]
local field = 'exp:' .. ARGV[1]
if redis.call('HEXISTS', key, field) == 0 then return 0 end
local id = 'exp_' .. ARGV[1]
local gone = {field}
local dedupes = {}
for _, name in ipairs(redis.call('HKEYS', key)) do
  if string.sub(name, 1, 7) == 'dedupe:' then dedupes[#dedupes + 1] = name end
end
for i = 1, #dedupes, 500 do
  local last = math.min(i + 499, #dedupes)
  local values = redis.call('HMGET', key, unpack(dedupes, i, last))
  for j = i, last do
    if values[j - i + 1] == id then gone[#gone + 1] = dedupes[j] end
  end
end
redis.call('HDEL', key, unpack(gone))
if ARGV[2] ~= '' then redis.call('PEXPIRE', key, ARGV[2]) end
return 1
"""

# KEYS[1] the record. ARGV: field, value ('' delete the field), ttl ms.
_SET_FIELD_LUA = """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


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


@dataclass(frozen=True)
class _Stored:
    """A record's transcript fields as read (raw), for a compare-and-set."""

    revision: int
    writers_raw: Any
    messages_raw: Any = None
    have_messages: bool = False


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
        self._save_messages = registered_script(redis, _SAVE_MESSAGES_LUA)
        self._save_transcript = registered_script(redis, _SAVE_TRANSCRIPT_LUA)
        self._add_experience = registered_script(redis, _ADD_EXPERIENCE_LUA)
        self._remove_experience = registered_script(redis, _REMOVE_EXPERIENCE_LUA)
        self._set_field = registered_script(redis, _SET_FIELD_LUA)
        # record name -> (revision, raw writers) last read or written by this store.
        self._seen: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def record_key(self, key: str) -> str:
        """The Redis name of memory key `key`'s record in this store's scope."""
        if self.scope is None:
            return self._keys.memory(key)
        return self._keys.scoped_memory(
            key, tenant=self.scope.tenant, session_id=self.scope.session_id
        )

    def _ttl(self) -> str:
        if self.limits.retention_s is None:
            return ""
        return str(max(1, int(self.limits.retention_s * 1000)))

    def _bounded(self, key: str, transcript: StoredTranscript) -> tuple[StoredTranscript, str]:
        """`bounded(transcript)` and its messages as JSON: serialized once when it is
        within the bound (the size `trim_messages` measures is this JSON's)."""
        raw = dump_json(transcript.messages)
        size = len(raw) if raw.isascii() else len(raw.encode())
        if size <= self.limits.max_message_bytes:
            return transcript, raw
        kept = bounded(key, transcript, self.limits)
        return kept, dump_json(kept.messages)

    def _note(self, hash_key: str, revision: int, writers_raw: Any) -> None:
        self._seen[hash_key] = (revision, writers_raw)
        self._seen.move_to_end(hash_key)
        while len(self._seen) > _SEEN_RECORDS:
            self._seen.popitem(last=False)

    async def load(self, key: str) -> MemorySnapshot:
        """The key's record; an empty one if the key was never written (or expired)."""
        hash_key = self.record_key(key)
        async with translate_errors("memory load"):
            raw = await hash_fields(self._redis, hash_key)
        fields = {text(k): v for k, v in raw.items()}
        snapshot = _snapshot(key, fields, _messages(key, fields.get(_MESSAGES)))
        self._note(hash_key, snapshot.revision, fields.get(_WRITERS))
        return snapshot

    async def pending_compaction(self, key: str) -> dict[str, Any] | None:
        """See `HistoryMemoryStore.pending_compaction`: one HGET."""
        async with translate_errors("memory load"):
            raw = await resolve(self._redis.hget(self.record_key(key), _PENDING))
        return _object(key, _PENDING, raw)

    async def save_messages(self, key: str, messages: MessageList) -> int:
        """Replace the key's message history; returns the new revision."""
        revision, _ = await self._write_messages(key, messages, summary=False, record=False)
        return revision

    async def replace_history(
        self, key: str, messages: MessageList, summary: dict[str, Any] | None
    ) -> MemorySnapshot:
        """See `HistoryMemoryStore.replace_history`: one script, one round trip."""
        if summary is not None:
            check_size(summary, "the summary", self.limits)
        _, snapshot = await self._write_messages(key, messages, summary=summary, record=True)
        assert snapshot is not None
        return snapshot

    async def _write_messages(
        self,
        key: str,
        messages: MessageList,
        *,
        summary: dict[str, Any] | Literal[False] | None,
        record: bool,
    ) -> tuple[int, MemorySnapshot | None]:
        hash_key = self.record_key(key)
        kept, messages_json = self._bounded(key, StoredTranscript(list(messages)))
        if summary is False:
            op, summary_json = "", ""
        elif summary is None:
            op, summary_json = "d", ""
        else:
            op, summary_json = "s", dump_json(summary)
        args = [messages_json, self._ttl(), op, summary_json, "1" if record else ""]
        async with translate_errors("memory save_messages"):
            reply = await run_script(self._redis, self._save_messages, [hash_key], args)
        if int(reply[0]) == 0:
            _revision(key, reply[1])  # raises for anything but a canonical integer
            raise PayloadError(f"memory {key!r} revision is not an integer: {reply[1]!r}")
        revision = int(reply[1])
        if not record:
            self._note(hash_key, revision, reply[2])
            return revision, None
        flat = reply[2]
        fields = {text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        fields[_REVISION] = str(revision)
        if summary_json:
            fields[_SUMMARY] = summary_json
        self._note(hash_key, revision, fields.get(_WRITERS))
        return revision, _snapshot(key, fields, kept.messages)

    async def save_turn(self, key: str, messages: MessageList, base: TranscriptBase) -> int:
        """See `MemoryStore.save_turn`: a replace if nobody wrote since `base`, else an
        append of the turn's own messages; atomic either way (a compare-and-set)."""
        revision = await self._save_turn(key, messages, base, unless_pending=False)
        assert revision is not None
        return revision

    async def save_turn_unless_pending(
        self, key: str, messages: MessageList, base: TranscriptBase
    ) -> int | None:
        """See `HistoryMemoryStore.save_turn_unless_pending` (the same one script)."""
        return await self._save_turn(key, messages, base, unless_pending=True)

    async def _save_turn(
        self, key: str, messages: MessageList, base: TranscriptBase, *, unless_pending: bool
    ) -> int | None:
        hash_key = self.record_key(key)
        transcript = list(messages)
        seen = self._seen.get(hash_key)
        # A replace needs only the revision and writers, which this store may know.
        stored = _Stored(seen[0], seen[1]) if seen and seen[0] == base.revision else None
        async with translate_errors("memory save_turn"):
            for _ in range(_MAX_ROUNDS):
                if stored is None:
                    raw = await resolve(
                        self._redis.hmget(hash_key, [_REVISION, _WRITERS, _MESSAGES, _PENDING])
                    )
                    if unless_pending and raw[3] is not None:
                        return None
                    stored = _Stored(_revision(key, raw[0]), raw[1], raw[2], have_messages=True)
                revision = stored.revision
                current = StoredTranscript(
                    _messages(key, stored.messages_raw) if stored.have_messages else [],
                    revision,
                    _writers(key, stored.writers_raw),
                )
                appending = revision != base.revision
                if appending and not stored.have_messages:
                    stored = None  # an append needs the stored messages: read them
                    continue
                merged = merge_turn(current, transcript, base, copy_messages=False)
                if merged is None:
                    return revision
                kept, messages_json = self._bounded(key, merged)
                writers_json = dump_json(kept.writers)
                args = [
                    str(revision),
                    "0" if stored.writers_raw is None else "1",
                    "" if stored.writers_raw is None else stored.writers_raw,
                    "1" if appending else "0",
                    (stored.messages_raw or "") if appending else "",
                    messages_json,
                    str(kept.revision),
                    writers_json,
                    self._ttl(),
                    "1" if unless_pending else "",
                ]
                reply = await run_script(self._redis, self._save_transcript, [hash_key], args)
                if int(reply[0]) == 2:
                    return None
                if int(reply[0]) == 1:
                    self._note(hash_key, kept.revision, writers_json.encode())
                    return kept.revision
                stored = _Stored(_revision(key, reply[1]), reply[2], reply[3], have_messages=True)
        raise StoreError(f"Redis memory save_turn gave up after {_MAX_ROUNDS} conflicting rounds")

    async def add_experience(self, key: str, text: str) -> Experience:
        """Append a durable experience (`exp_N`); an identical text returns the stored one.

        `MemoryLimitError` when the record has no room for it.
        """
        return (await self.add_experiences(key, [text]))[0]

    async def add_experiences(self, key: str, texts: Sequence[str]) -> list[Experience]:
        """`add_experience` of each text in turn, in one round trip (a fork inheriting its
        parent's experiences). The first refused raises `MemoryLimitError` (the others
        are added)."""
        return (await self.add_experiences_to([(key, texts)]))[0]

    async def add_experiences_to(
        self, additions: Sequence[tuple[str, Sequence[str]]]
    ) -> list[list[Experience]]:
        """`add_experiences(key, texts)` for each `(key, texts)`, all in one round trip (a
        batch of forks inheriting their parents' experiences; none if there are no
        texts). The first refused raises `MemoryLimitError` (the others are added)."""
        calls = []
        for key, texts in additions:
            hash_key = self.record_key(key)
            for text_ in texts:
                # Too long: no room at all (the script still answers an identical text).
                fits = len(text_) <= self.limits.max_experience_chars
                room = str(self.limits.max_experiences if fits else 0)
                args = [_dedupe_field(text_), text_, room, self._ttl()]
                calls.append((self._add_experience, [hash_key], args))
        async with translate_errors("memory add_experience"):
            replies = iter(await run_scripts(self._redis, calls) if calls else [])
        return [
            [_added(text_, next(replies), self.limits) for text_ in texts] for _, texts in additions
        ]

    async def remove_experience(self, key: str, experience_id: str) -> bool:
        """Forget one experience; False if the key has none with that id."""
        number = _experience_number(experience_id)
        if number is None:
            return False
        args = [str(number), self._ttl()]
        async with translate_errors("memory remove_experience"):
            removed = await run_script(
                self._redis, self._remove_experience, [self.record_key(key)], args
            )
        return bool(removed)

    async def set_summary(self, key: str, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            check_size(summary, "the summary", self.limits)
        await self._set_optional(key, _SUMMARY, summary)

    async def set_pending_compaction(self, key: str, compaction: dict[str, Any] | None) -> None:
        if compaction is not None:
            check_size(compaction, "the compaction", self.limits)
        await self._set_optional(key, _PENDING, compaction)

    async def _set_optional(self, key: str, field: str, value: dict[str, Any] | None) -> None:
        args = [field, "" if value is None else dump_json(value), self._ttl()]
        async with translate_errors(f"memory set {field}"):
            await run_script(self._redis, self._set_field, [self.record_key(key)], args)


def _added(text_: str, reply: Any, limits: MemoryLimits) -> Experience:
    """The experience an add script's reply stands for (or the error it means)."""
    status, value = int(reply[0]), reply[1]
    if status == 1:
        return Experience(id=opt_text(value) or "", text=text_)
    if status == 2:
        check_experience(text_, max(int(value), limits.max_experiences), limits)
        raise AssertionError("check_experience refuses a full record")
    if status == 3:
        parse_int(value, "experience counter")
        raise PayloadError(f"experience counter is not a count: {value!r}")
    return Experience(id=f"exp_{int(value)}", text=text_)


def _snapshot(key: str, fields: dict[str, Any], messages: MessageList) -> MemorySnapshot:
    return MemorySnapshot(
        key=key,
        messages=messages,
        experiences=_experiences(key, fields),
        summary=_object(key, _SUMMARY, fields.get(_SUMMARY)),
        pending_compaction=_object(key, _PENDING, fields.get(_PENDING)),
        revision=_revision(key, fields.get(_REVISION)),
    )


def _is_experience_field(name: Any) -> bool:
    raw = name if isinstance(name, bytes) else str(name).encode()
    return raw.startswith(_EXP.encode())


def _experience_number(experience_id: str) -> int | None:
    prefix, _, digits = experience_id.partition("_")
    if prefix != "exp" or not ascii_digits(digits):
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
            if not ascii_digits(digits):
                raise PayloadError(f"bad experience field {name!r}")
            number = int(digits)
            found.append((number, Experience(id=f"exp_{number}", text=text(raw))))
        except PayloadError as exc:
            log.warning("memory.bad_experience", key=key, field=name, error=str(exc))
    found.sort(key=lambda pair: pair[0])
    return [experience for _, experience in found]
