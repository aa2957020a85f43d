"""Who owns a session, and which runs it holds: what tenant checks and session aborts read.

The first submit into a session records its tenant (`SET NX`, one key per session), so
every later submit, read, stream and abort checks ownership with one GET, however many
runs exist. The owner key lives as long as the session's stream (stream_retention_s),
refreshed by every submit and every run's end; the session's run index (root run ids,
for a session abort) lives as long, and forgets runs older than the run retention.

    owner value     "-" (the session was started without a tenant) or "t:<tenant>"
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import structlog
from redis.commands.core import AsyncScript

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.store._codec import text
from orchestrator.store.connection import Redis, run_script, translate_errors

__all__ = ["SessionOwner", "SessionTable"]

log = structlog.get_logger(__name__)

_NO_TENANT = "-"
_TENANT = "t:"

# A submit's session part in one atomic round trip: `claim`, and only if the claim admits
# the caller (the operator, or the owner's own tenant: the same test as
# `SessionOwner.admits`, on the stored value) the owner's TTL refresh, the session's abort
# flag cleared (ARGV[7] == '1') and the run noted in the index (`add_run`). A caller the
# session does not admit changes nothing.
# KEYS: owner, run index, abort flag
# ARGV: caller's owner value, '1' for the operator, ttl ms, run id, score, drop-below score,
#       clear flag. Reply: {1 admitted | 0, the owner value before (nil: new session)}.
_ENTER_LUA = """
local previous = redis.call('GET', KEYS[1])
if not previous then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
elseif ARGV[2] == '1' or previous == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  return {0, previous}
end
if ARGV[7] == '1' then redis.call('DEL', KEYS[3]) end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, previous}
"""


@dataclass(frozen=True)
class SessionOwner:
    """The tenant a session belongs to (None: it was started without one)."""

    tenant: str | None

    def __post_init__(self) -> None:
        # "" would be stored as a tenant that reads back as unreadable (admitting only
        # the operator): refused before anything is written.
        if self.tenant == "":
            raise ValueError("a tenant is a non-empty name (None: no tenant, the operator)")

    def encode(self) -> str:
        return _NO_TENANT if self.tenant is None else _TENANT + self.tenant

    @classmethod
    def decode(cls, raw: object) -> SessionOwner:
        value = text(raw)
        if value == _NO_TENANT:
            return cls(None)
        if value.startswith(_TENANT) and len(value) > len(_TENANT):
            return cls(value[len(_TENANT) :])
        raise PayloadError(f"session owner {value[:80]!r} is not readable")

    def admits(self, tenant: str | None) -> bool:
        """True if a caller acting for `tenant` may use the session. None is the
        operator (the open API, a client without a tenant): it may use every session."""
        return tenant is None or tenant == self.tenant


class SessionTable:
    """Session owners and the session's run index."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def claim(self, session_id: str, tenant: str | None, ttl_s: float) -> SessionOwner:
        """Make `tenant` the session's owner if it has none; return the owner it has.

        Atomic: of two tenants claiming a new session at once, exactly one owns it. The
        owner's own claims (and the operator's) refresh the TTL.
        """
        key = self._keys.session_owner(session_id)
        mine = SessionOwner(tenant)
        ttl_ms = max(1, int(ttl_s * 1000))
        async with translate_errors("session claim"):
            previous = await self._redis.set(key, mine.encode(), nx=True, get=True, px=ttl_ms)
        if previous is None:
            return mine
        owner = self._decode(session_id, previous)
        if owner.admits(tenant):
            await self.touch(session_id, ttl_s)
        return owner

    async def enter(
        self,
        session_id: str,
        tenant: str | None,
        run_id: str,
        *,
        submitted_at: float,
        ttl_s: float,
        keep_s: float,
        clear_abort: bool,
    ) -> SessionOwner:
        """A submit's `claim`, then (only if the owner admits `tenant`) the session's
        abort flag cleared if `clear_abort`, and `add_run`: one atomic round trip.
        Returns the owner; a caller it does not admit has changed nothing."""
        script, keys, args = self.enter_call(
            session_id,
            tenant,
            run_id,
            submitted_at=submitted_at,
            ttl_s=ttl_s,
            keep_s=keep_s,
            clear_abort=clear_abort,
        )
        async with translate_errors("session enter"):
            reply = await run_script(self._redis, script, keys, args)
        return self.entered(session_id, tenant, reply)

    def enter_call(
        self,
        session_id: str,
        tenant: str | None,
        run_id: str,
        *,
        submitted_at: float,
        ttl_s: float,
        keep_s: float,
        clear_abort: bool,
    ) -> tuple[AsyncScript, list[str], list[str]]:
        """The script call `enter` makes, for a caller sending it with others in one
        round trip (`connection.run_scripts`); `entered` reads its reply."""
        ttl_ms = max(1, int(ttl_s * 1000))
        keys = [
            self._keys.session_owner(session_id),
            self._keys.session_runs(session_id),
            self._keys.abort(session_id),
        ]
        args = [
            SessionOwner(tenant).encode(),
            "1" if tenant is None else "0",
            str(ttl_ms),
            run_id,
            repr(submitted_at * 1000.0),
            repr((time.time() - keep_s) * 1000.0),
            "1" if clear_abort else "0",
        ]
        return self._enter, keys, args

    def entered(self, session_id: str, tenant: str | None, reply: Any) -> SessionOwner:
        """The owner an `enter_call`'s reply names (the caller's own for a new session)."""
        admitted, previous = reply
        if previous is None:
            return SessionOwner(tenant)
        owner = self._decode(session_id, previous)
        # The script's test is `admits` on the stored value (an unreadable one admits
        # only the operator, as its decoding to "no tenant" does).
        assert bool(int(admitted)) == owner.admits(tenant)
        return owner

    @cached_property
    def _enter(self) -> AsyncScript:
        return self._redis.register_script(_ENTER_LUA)

    async def owner(self, session_id: str) -> SessionOwner | None:
        """The session's owner; None if it has none (never started, or expired)."""
        async with translate_errors("session owner"):
            raw = await self._redis.get(self._keys.session_owner(session_id))
        return None if raw is None else self._decode(session_id, raw)

    async def touch(self, session_id: str, ttl_s: float) -> None:
        """Keep the session's owner and run index for another `ttl_s`."""
        ttl_ms = max(1, int(ttl_s * 1000))
        async with (
            translate_errors("session touch"),
            self._redis.pipeline(transaction=True) as pipe,
        ):
            pipe.pexpire(self._keys.session_owner(session_id), ttl_ms)
            pipe.pexpire(self._keys.session_runs(session_id), ttl_ms)
            await pipe.execute()

    async def add_run(
        self, session_id: str, run_id: str, *, submitted_at: float, ttl_s: float, keep_s: float
    ) -> None:
        """Note a root run in the session's index (runs older than `keep_s` are dropped)."""
        key = self._keys.session_runs(session_id)
        async with (
            translate_errors("session add run"),
            self._redis.pipeline(transaction=True) as pipe,
        ):
            pipe.zadd(key, {run_id: submitted_at * 1000.0})
            pipe.zremrangebyscore(key, "-inf", (time.time() - keep_s) * 1000.0)
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            await pipe.execute()

    async def runs(self, session_id: str) -> list[str]:
        """The session's root run ids, oldest first."""
        async with translate_errors("session runs"):
            ids = await self._redis.zrange(self._keys.session_runs(session_id), 0, -1)
        return [text(i) for i in ids]

    @staticmethod
    def _decode(session_id: str, raw: object) -> SessionOwner:
        try:
            return SessionOwner.decode(raw)
        except PayloadError as exc:
            # Unreadable: treated as "no tenant", which only the operator may use.
            log.warning("sessions.bad_owner", session_id=session_id, error=str(exc))
            return SessionOwner(tenant=None)
