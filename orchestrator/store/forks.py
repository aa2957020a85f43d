"""Fork numbering and each agent call's list of forks, in the session's keys.

Fork ids are `fork_N`, N counted per session, so every fork of a tree has its own id and
its own lane. A spawn is named by a key the runtime derives from (agent call, tool call,
n-th spawn in that call); allocating the same spawn key again returns the fork it got
the first time, which is what makes a re-run tool's spawns idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.keys import Keys
from orchestrator.store._codec import parse_int, resolve, text
from orchestrator.store.connection import Pipeline, Redis, begin, optimistic, translate_errors

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


class ForkTable:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int = 7 * 86_400) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def allocate(
        self, session_id: str, parent_call_id: str, spawn_key: str, *, limit: int
    ) -> Allocation | None:
        """A fork id for this spawn (the same one for the same key), or None if the parent
        already has `limit` forks.

        Only the parent's own keys are watched; the session counter is a plain HINCRBY,
        so forks of different parents never conflict (a retried allocation may skip a
        number, which is harmless).
        """
        counter = self._keys.forks(session_id)
        spawns = self._keys.spawns(session_id, parent_call_id)
        children = self._keys.children(session_id, parent_call_id)

        async def allocate(pipe: Pipeline) -> Allocation | None:
            existing = await resolve(pipe.hget(spawns, spawn_key))
            if existing is not None:
                # "<fork number>:<place among the parent's forks>"
                number_text, _, seq_text = text(existing).partition(":")
                number = parse_int(number_text, "fork number")
                seq = parse_int(seq_text or "0", "fork seq")
                return Allocation(f"fork_{number}", number, seq, False)
            count = int(await resolve(pipe.llen(children)))
            if count >= limit:
                return None
            number = int(await resolve(self._redis.hincrby(counter, _COUNTER, 1)))
            fork_id = f"fork_{number}"
            begin(pipe)
            pipe.hset(spawns, spawn_key, f"{number}:{count + 1}")
            pipe.rpush(children, fork_id)
            for key in (counter, spawns, children):
                pipe.expire(key, self._ttl_s)
            return Allocation(fork_id, number, count + 1, True)

        return await optimistic(self._redis, [spawns, children], allocate, what="fork allocate")

    async def children(self, session_id: str, parent_call_id: str) -> list[str]:
        """The fork ids `parent_call_id` has spawned, in spawn order."""
        async with translate_errors("fork list"):
            raw = await resolve(
                self._redis.lrange(self._keys.children(session_id, parent_call_id), 0, -1)
            )
        return [text(c) for c in raw]
