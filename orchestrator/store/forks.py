"""Fork numbering and each agent call's list of forks, in the session's keys.

Fork ids are `fork_N`, N counted per session, so every fork of a tree has its own id and
its own lane. Allocation is one Lua script per spawn (atomic), and a batch of spawns
sends its scripts in one pipeline. A spawn is named by a key the runtime derives from
(agent call, tool call, n-th spawn in that call); allocating the same spawn key again
returns the fork it got the first time, which is what makes a re-run tool's spawns
idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.keys import Keys
from orchestrator.store._codec import parse_int, resolve, text
from orchestrator.store.connection import Redis, run_scripts, translate_errors

__all__ = ["Allocation", "ForkTable"]

_COUNTER = "#n"


@dataclass(frozen=True)
class Allocation:
    fork_id: str
    number: int
    # 1-based place among the parent's forks.
    seq: int
    # False: this spawn key had been allocated before (a re-run tool); nothing new.
    created: bool


# One spawn's fork number, atomically: the one this spawn key got before, else the next
# session number if the parent has fewer than `limit` forks.
# KEYS: session counter, parent's spawns, parent's children; ARGV: spawn key, limit, ttl
# Reply: {0, "n:seq"} known, {1, "n:seq"} new, {-1} over the limit.
_ALLOCATE_LUA = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return {0, existing} end
local count = redis.call('LLEN', KEYS[3])
if count >= tonumber(ARGV[2]) then return {-1} end
local number = redis.call('HINCRBY', KEYS[1], '#n', 1)
local placed = number .. ':' .. (count + 1)
redis.call('HSET', KEYS[2], ARGV[1], placed)
redis.call('RPUSH', KEYS[3], 'fork_' .. number)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return {1, placed}
"""


def _allocation(reply: Any) -> Allocation | None:
    code = int(reply[0])
    if code < 0:
        return None
    # "<fork number>:<place among the parent's forks>"
    number_text, _, seq_text = text(reply[1]).partition(":")
    number = parse_int(number_text, "fork number")
    seq = parse_int(seq_text or "0", "fork seq")
    return Allocation(f"fork_{number}", number, seq, code == 1)


class ForkTable:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int = 7 * 86_400) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._script = redis.register_script(_ALLOCATE_LUA)

    async def allocate(
        self, session_id: str, parent_call_id: str, spawn_key: str, *, limit: int
    ) -> Allocation | None:
        """A fork id for this spawn (the same one for the same key), or None if the parent
        already has `limit` forks. One script call: atomic, one round trip."""
        (allocation,) = await self.allocate_many(
            session_id, parent_call_id, [spawn_key], limit=limit
        )
        return allocation

    async def allocate_many(
        self, session_id: str, parent_call_id: str, spawn_keys: Sequence[str], *, limit: int
    ) -> list[Allocation | None]:
        """`allocate` for several spawns of one parent, in order, in one round trip."""
        keys = [
            self._keys.forks(session_id),
            self._keys.spawns(session_id, parent_call_id),
            self._keys.children(session_id, parent_call_id),
        ]
        calls = [(self._script, keys, [k, str(limit), str(self._ttl_s)]) for k in spawn_keys]
        async with translate_errors("fork allocate"):
            replies = await run_scripts(self._redis, calls)
        return [_allocation(reply) for reply in replies]

    async def allocated(self, session_id: str) -> int:
        """How many fork numbers the session has handed out (its highest `fork_N`)."""
        async with translate_errors("fork count"):
            raw = await resolve(self._redis.hget(self._keys.forks(session_id), _COUNTER))
        return 0 if raw is None else parse_int(raw, "fork counter")

    async def children(self, session_id: str, parent_call_id: str) -> list[str]:
        """The fork ids `parent_call_id` has spawned, in spawn order."""
        async with translate_errors("fork list"):
            raw = await resolve(
                self._redis.lrange(self._keys.children(session_id, parent_call_id), 0, -1)
            )
        return [text(c) for c in raw]
