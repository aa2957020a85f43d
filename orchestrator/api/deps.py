"""Request dependencies: who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from orchestrator.api.auth import OPEN, Principal
from orchestrator.api.problems import ApiProblem
from orchestrator.api.state import ApiState, api_state

__all__ = ["Caller", "StateDep", "StreamCaller"]

StateDep = Annotated[ApiState, Depends(api_state)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(
            401, "Authorization must be 'Bearer <api key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    return token.strip()


def _principal(state: ApiState, presented: str | None) -> Principal:
    if state.keys.open:
        return OPEN
    if presented is None:
        raise ApiProblem(401, "an API key is required", headers={"WWW-Authenticate": "Bearer"})
    tenant = state.keys.tenant_for(presented)
    if tenant is None:
        raise ApiProblem(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return Principal(tenant=tenant)


def caller(request: Request, state: StateDep) -> Principal:
    """The caller, from `Authorization: Bearer KEY`."""
    return _principal(state, _bearer(request))


def stream_caller(
    request: Request,
    state: StateDep,
    access_token: Annotated[
        str | None,
        Query(description="The API key, for clients that cannot set headers (EventSource)."),
    ] = None,
) -> Principal:
    """The caller, from the bearer header or `?access_token=`."""
    return _principal(state, _bearer(request) or access_token)


Caller = Annotated[Principal, Depends(caller)]
StreamCaller = Annotated[Principal, Depends(stream_caller)]
