"""What the routes share: the client (one Redis pool), the key table, the limits.

Also the tenant rules in one place: which runs and sessions a caller may see.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from orchestrator.api.auth import ApiKeys, Principal
from orchestrator.api.problems import ApiProblem
from orchestrator.client import Client
from orchestrator.errors import RunNotFound
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord
from orchestrator.settings import Settings

__all__ = ["ApiState", "api_state", "lazy_client"]

# How many stream entries (and, failing those, recent runs) show who owns a session.
_OWNER_PROBE_ENTRIES = 200
_OWNER_PROBE_RUNS = 1000
# Unreachable Redis answers 503 within about this long instead of hanging a request.
_CONNECT_TIMEOUT_S = 2.0


def lazy_client(settings: Settings) -> Client:
    """A client whose Redis connections open on first use, so the API starts (and answers
    /healthz, and 503s) while Redis is down; `connect()` would wait for Redis instead."""
    from arq.connections import ArqRedis
    from redis.asyncio import ConnectionPool

    from orchestrator.store import jsonserial

    keys = Keys(settings.key_prefix)
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_keepalive=True
    )
    redis = ArqRedis(
        pool,
        job_serializer=jsonserial.dumps,
        job_deserializer=jsonserial.loads,
        default_queue_name=keys.queue(),
    )
    # The client made the pool, so closing the client closes it (as `from_url` would).
    redis.auto_close_connection_pool = True
    return Client(redis, settings)


@dataclass
class ApiState:
    settings: Settings
    client: Client
    keys: ApiKeys
    max_body_bytes: int
    sse_keepalive_s: float

    async def visible_run(self, run_id: str, principal: Principal) -> RunRecord:
        """The run's record, or 404 when it does not exist or belongs to another tenant
        (the two are indistinguishable on purpose)."""
        try:
            record = await self.client.runs.get(run_id)
        except RunNotFound:
            record = None
        if record is None or not principal.may_see(record.tenant):
            raise ApiProblem(404, f"no run {run_id!r}")
        return record

    async def session_owners(self, session_id: str) -> set[str | None]:
        """Tenants of the runs found in a session (empty: no run known in it).

        Runs that already wrote to the stream are found there; a session whose runs are
        all still queued is found among the most recent runs.
        """
        entries = await self.client.reader.read(session_id, count=_OWNER_PROBE_ENTRIES)
        owners: set[str | None] = set()
        for run_id in dict.fromkeys(e.run_id for e in entries):
            try:
                owners.add((await self.client.runs.get(run_id)).tenant)
            except RunNotFound:
                continue
        if owners:
            return owners
        recent = await self.client.runs.list(limit=_OWNER_PROBE_RUNS)
        return {r.tenant for r in recent if r.session_id == session_id}

    async def may_use_session(self, session_id: str, principal: Principal, *, new_ok: bool) -> bool:
        """True if the caller may read (or add runs to) the session: every run in it is
        the caller's. `new_ok`: a session with no runs yet counts too."""
        if principal.tenant is None:
            return True
        owners = await self.session_owners(session_id)
        return (not owners and new_ok) or owners == {principal.tenant}


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state
