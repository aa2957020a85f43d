"""Fork numbering and each agent call's list of forks, in the session's keys.

Fork ids are `fork_N`, N counted per session, so every fork of a tree has its own id and
its own lane. A batch of spawns of one parent is allocated by one Lua script call
(atomic): one HMGET finds the spawns allocated before, and the new ones get consecutive
numbers with one HINCRBY, one HSET and one RPUSH, whatever the batch's size. A spawn is
named by a key the runtime derives from (agent call, tool call, n-th spawn in that call);
allocating the same spawn key again returns the fork it got the first time, which is what
makes a re-run tool's spawns idempotent (and a re-run batch costs that one HMGET).

The counter must outlive whatever names its forks, or numbering starts at fork_1 again
next to a fork_1 that still has a lane in the stream, a record, a memory key. It gets
`ttl_s` (the run retention) from each allocation, but a fork's record and the stream are
kept from the fork's end, later: so each run's end pushes the counter's TTL past both
(store/runs.py `_END_LUA`, once per session refresh window, not per fork), and an
allocation never shortens it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.keys import Keys
from orchestrator.store._codec import parse_int, resolve, text
from orchestrator.store.connection import Redis, run_scripts, translate_errors
from orchestrator.store.runs import SESSION_WINDOW_MAX_MS

__all__ = ["Allocation", "ForkTable"]

_COUNTER = "#n"
# Spawn keys per script call (Lua's unpack() has a bounded stack); the calls of a larger
# batch go in one pipeline, in order, so numbering and the limit see the earlier ones.
_CHUNK = 256


@dataclass(frozen=True)
class Allocation:
    fork_id: str
    number: int
    # 1-based place among the parent's forks.
    seq: int
    # False: this spawn key had been allocated before (a re-run tool); nothing new.
    created: bool


# Several spawns of one parent, atomically and in order, each as if allocated alone: the
# fork this spawn key got before, else the next session number if the parent has fewer
# than `limit` forks. Only HMGET when every key is known (a re-run tool's batch).
# KEYS: session counter, parent's spawns, parent's children; ARGV: limit, ttl, the
# counter's ttl, spawn keys...
# Reply per spawn key: "0:n:seq" known, "1:n:seq" new, "-1" over the limit.
_ALLOCATE_LUA = """
local n = #ARGV - 3
local known = redis.call('HMGET', KEYS[2], unpack(ARGV, 4))
local out, fresh, first = {}, {}, {}
for i = 1, n do
  local key = ARGV[i + 3]
  if known[i] then
    out[i] = '0:' .. known[i]
  elseif first[key] == nil then
    first[key] = i
    fresh[#fresh + 1] = i
  end
end
if #fresh == 0 then return out end
local count = redis.call('LLEN', KEYS[3])
local take = math.min(#fresh, math.max(0, tonumber(ARGV[1]) - count))
if take > 0 then
  local base = redis.call('HINCRBY', KEYS[1], '#n', take) - take
  local pairs_, ids = {}, {}
  for j = 1, take do
    local i = fresh[j]
    local placed = (base + j) .. ':' .. (count + j)
    out[i] = '1:' .. placed
    pairs_[#pairs_ + 1] = ARGV[i + 3]
    pairs_[#pairs_ + 1] = placed
    ids[j] = 'fork_' .. (base + j)
  end
  redis.call('HSET', KEYS[2], unpack(pairs_))
  redis.call('RPUSH', KEYS[3], unpack(ids))
  -- The counter's TTL is only pushed back: a run's end pushes it past its record and the
  -- stream (store/runs.py `_END_LUA`), which may be later than this. (PTTL, not EXPIRE
  -- GT: Redis 6.2 has no GT; -1, none yet, when the HINCRBY just made it.)
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) * 1000 then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
  end
  for k = 2, 3 do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
end
for j = take + 1, #fresh do out[fresh[j]] = '-1' end
for i = 1, n do
  if out[i] == nil then
    local again = out[first[ARGV[i + 3]]]
    out[i] = again == '-1' and '-1' or '0:' .. string.sub(again, 3)
  end
end
return out
"""


def _allocation(reply: Any) -> Allocation | None:
    # "<0 known | 1 new>:<fork number>:<place among the parent's forks>", or "-1"
    code_text, _, placed = text(reply).partition(":")
    if code_text != "0" and code_text != "1":
        return None
    number_text, _, seq_text = placed.partition(":")
    number = parse_int(number_text, "fork number")
    seq = parse_int(seq_text or "0", "fork seq")
    return Allocation(f"fork_{number}", number, seq, code_text == "1")


class ForkTable:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int = 7 * 86_400) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        # A fork ending within the refresh window an earlier end opened does not push the
        # counter (store/runs.py `_END_LUA`); its record expires at most the largest
        # window after a retention from this allocation.
        self._counter_ttl_s = ttl_s + SESSION_WINDOW_MAX_MS // 1000
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
        (got,) = await self.allocate_batches(
            session_id, [(parent_call_id, spawn_keys)], limit=limit
        )
        return got

    async def allocate_batches(
        self,
        session_id: str,
        batches: Sequence[tuple[str, Sequence[str]]],
        *,
        limit: int,
    ) -> list[list[Allocation | None]]:
        """`allocate_many` for several parents' (parent call id, spawn keys), in one round
        trip: one script call per parent (per `_CHUNK` spawns)."""
        calls = []
        sizes = []
        for parent_call_id, spawn_keys in batches:
            keys = [
                self._keys.forks(session_id),
                self._keys.spawns(session_id, parent_call_id),
                self._keys.children(session_id, parent_call_id),
            ]
            head = [str(limit), str(self._ttl_s), str(self._counter_ttl_s)]
            for start in range(0, len(spawn_keys), _CHUNK):
                chunk = list(spawn_keys[start : start + _CHUNK])
                calls.append((self._script, keys, [*head, *chunk]))
            sizes.append(len(spawn_keys))
        async with translate_errors("fork allocate"):
            replies = await run_scripts(self._redis, calls) if calls else []
        flat = iter([_allocation(item) for reply in replies for item in reply])
        return [[next(flat) for _ in range(size)] for size in sizes]

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
