"""What the routes share: the client (one Redis pool), the key table, the limits.

Also the tenant rules in one place: which runs and sessions a caller may see. A session
belongs to the tenant whose submit started it (one GET: `Client.may_access`); the open
API's caller (no tenant) is the operator and may use every session.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from orchestrator.api.auth import ApiKeys, Principal
from orchestrator.api.problems import ApiProblem
from orchestrator.client import Client
from orchestrator.errors import RunNotFound
from orchestrator.runs import RunRecord
from orchestrator.settings import Settings

__all__ = ["ApiState", "api_state", "lazy_client"]


def lazy_client(settings: Settings) -> Client:
    """A client whose Redis connections open on first use, so the API starts (and answers
    /healthz, and 503s) while Redis is down; `connect()` would wait for Redis instead.

    Its connect and read timeouts are `api_redis_timeout_s`, so a Redis that is down or
    never answers is a 503 within about that long, never a hung request."""
    return Client.lazy(settings, timeout_s=settings.api_redis_timeout_s)


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
            return await self.client.visible_run(run_id, principal.tenant)
        except RunNotFound:
            raise ApiProblem(404, f"no run {run_id!r}") from None

    async def may_use_session(self, session_id: str, principal: Principal) -> bool:
        """True if the caller may read or abort the session: it owns it, or is the
        operator. (Submits claim or check the owner atomically in `Client.submit`.)"""
        return await self.client.may_access(session_id, principal.tenant)


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state
