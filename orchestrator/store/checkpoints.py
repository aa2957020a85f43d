"""`CheckpointStore`: one agent call's saved state, fenced by run attempt.

A checkpoint is a hash (`Keys.checkpoint(session, agent_call)`) with two fields:
`attempt` (the fence: the highest attempt that ever saved) and `state` (opaque bytes,
JSON by convention). A save by an older attempt than the fence raises `StaleAttempt`, so
a worker that was presumed dead and replaced cannot overwrite its successor's progress.
`delete` drops the state but keeps the fence for a while, so a late zombie cannot
recreate it either. A save is also refused once a later attempt has taken over the
run's writes (`Keys.run_fence`, see `EventPublisher.take_over`), even before that attempt
has saved anything.
"""

from __future__ import annotations

from orchestrator.errors import StaleAttempt
from orchestrator.keys import Keys
from orchestrator.store._codec import parse_int, resolve
from orchestrator.store.connection import Pipeline, Redis, begin, optimistic, translate_errors

__all__ = ["CheckpointStore"]

_ATTEMPT = "attempt"
_STATE = "state"


class CheckpointStore:
    """Save, load and delete fenced checkpoints of agent calls."""

    def __init__(self, redis: Redis, keys: Keys, *, fence_ttl_s: int = 86_400) -> None:
        self._redis = redis
        self._keys = keys
        self._fence_ttl_s = fence_ttl_s

    async def save(
        self,
        session_id: str,
        agent_call_id: str,
        *,
        attempt: int,
        state: bytes,
        ttl_s: int | None = None,
    ) -> None:
        """Store `state` for the agent call, as run attempt `attempt`.

        Raises `StaleAttempt` if an attempt with a higher number has already saved.
        `ttl_s` (optional) lets the checkpoint expire if nobody deletes it.
        """
        key = self._keys.checkpoint(session_id, agent_call_id)
        writes = self._keys.run_fence(session_id, agent_call_id)

        async def save(pipe: Pipeline) -> None:
            raw = await resolve(pipe.hget(key, _ATTEMPT))
            fence = None if raw is None else parse_int(raw, "checkpoint attempt")
            owner = await pipe.get(writes)
            if owner is not None:
                fence = max(fence or 0, parse_int(owner, "write fence"))
            if fence is not None and fence > attempt:
                raise StaleAttempt(
                    f"checkpoint of {agent_call_id!r} by attempt {attempt} refused:"
                    f" attempt {fence} has saved since",
                    attempt=attempt,
                    current_attempt=fence,
                )
            begin(pipe)
            pipe.hset(key, mapping={_ATTEMPT: str(attempt), _STATE: state})
            if ttl_s is None:
                pipe.persist(key)
            else:
                pipe.expire(key, ttl_s)

        await optimistic(self._redis, [key, writes], save, what="checkpoint save")

    async def load(self, session_id: str, agent_call_id: str) -> bytes | None:
        """The saved state, or None if there is none."""
        key = self._keys.checkpoint(session_id, agent_call_id)
        async with translate_errors("checkpoint load"):
            raw = await resolve(self._redis.hget(key, _STATE))
        if raw is None:
            return None
        return raw if isinstance(raw, bytes) else str(raw).encode()

    async def attempt(self, session_id: str, agent_call_id: str) -> int | None:
        """The fence: the highest attempt that saved this checkpoint, or None."""
        key = self._keys.checkpoint(session_id, agent_call_id)
        async with translate_errors("checkpoint fence read"):
            raw = await resolve(self._redis.hget(key, _ATTEMPT))
        return None if raw is None else parse_int(raw, "checkpoint attempt")

    async def delete(self, session_id: str, agent_call_id: str) -> None:
        """Drop the state; the fence stays for `fence_ttl_s` so zombies stay fenced off."""
        key = self._keys.checkpoint(session_id, agent_call_id)
        async with (
            translate_errors("checkpoint delete"),
            self._redis.pipeline(transaction=True) as pipe,
        ):
            pipe.hdel(key, _STATE)
            pipe.expire(key, self._fence_ttl_s)
            await pipe.execute()
