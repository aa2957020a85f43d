"""What the routes share: the client (one Redis pool), the key table, the limits.

Also the tenant rules in one place: which runs and sessions a caller may see.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from orchestrator.api.auth import ApiKeys, Principal
from orchestrator.api.problems import ApiProblem
from orchestrator.client import Client, blocking_client
from orchestrator.errors import RunNotFound
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord
from orchestrator.settings import Settings
from orchestrator.store.connection import connect_arq

__all__ = ["ApiState", "api_state", "lazy_client"]

# How many stream entries (and, failing those, recent runs) show who owns a session.
_OWNER_PROBE_ENTRIES = 200
_OWNER_PROBE_RUNS = 1000


def lazy_client(settings: Settings) -> Client:
    """A client whose Redis connections open on first use, so the API starts (and answers
    /healthz, and 503s) while Redis is down; `connect()` would wait for Redis instead.

    Its connect and read timeouts are `api_redis_timeout_s`, so a Redis that is down or
    never answers is a 503 within about that long, never a hung request."""
    timeout = settings.api_redis_timeout_s
    redis = connect_arq(
        settings.redis_url,
        Keys(settings.key_prefix).queue(),
        timeout_s=timeout,
        connect_timeout_s=timeout,
    )
    return Client(redis, settings, blocking=blocking_client(settings, timeout))


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
