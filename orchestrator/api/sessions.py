"""/v1/sessions/{id}/abort: stop every run of a session (its SSE route is in events.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from orchestrator.api.deps import Caller, StateDep
from orchestrator.api.problems import ApiProblem
from orchestrator.api.schemas import AbortRequest, ErrorBody, SessionAbortResponse
from orchestrator.runs import ID_PATTERN

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 422, 503)
}

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=_ERRORS)


@router.post("/{session_id}/abort", status_code=202, response_model=SessionAbortResponse)
async def abort_session(
    session_id: Annotated[str, Path(pattern=ID_PATTERN)],
    state: StateDep,
    principal: Caller,
    body: Annotated[AbortRequest | None, Body()] = None,
) -> SessionAbortResponse:
    """Stop every run of the session and their forks (queued ones never start). A later
    run submitted into the session starts afresh. Another tenant's session answers 404.
    """
    if not await state.may_use_session(session_id, principal):
        raise ApiProblem(404, f"no session {session_id!r}")
    reason = (body or AbortRequest()).reason
    stopped = await state.client.abort_session(session_id, reason, tenant=principal.tenant)
    return SessionAbortResponse(session_id=session_id, runs=stopped, abort_requested=True)
