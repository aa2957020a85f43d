"""/v1/runs: submit, read, list and abort runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from orchestrator.api.deps import Caller, StateDep
from orchestrator.api.problems import ApiProblem
from orchestrator.api.schemas import (
    AbortRequest,
    AbortResponse,
    ErrorBody,
    RunDetail,
    RunPage,
    RunSummary,
    SubmitRequest,
    SubmitResponse,
)
from orchestrator.errors import SessionNotOwned
from orchestrator.runs import AGENT_ADDRESS_PATTERN, RunStatus

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 422, 503)
}

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=_ERRORS)


@router.post("", status_code=202, response_model=SubmitResponse)
async def submit_run(body: SubmitRequest, state: StateDep, principal: Caller) -> SubmitResponse:
    """Queue one agent turn; answers at once with the run's and session's ids.

    The first run of a session makes the caller's tenant its owner; a session another
    tenant owns answers 409."""
    try:
        run = await state.client.submit(
            body.agent,
            body.message,
            history=body.history,
            session_id=body.session_id,
            args=body.args,
            template_params=body.template_params,
            max_attempts=body.max_attempts,
            tenant=principal.tenant,
        )
    except SessionNotOwned:
        raise ApiProblem(
            409, f"session {body.session_id!r} is not available to this API key"
        ) from None
    return SubmitResponse(
        run_id=run.run_id,
        session_id=run.session_id,
        status=RunStatus.QUEUED,
        links={
            "self": f"/v1/runs/{run.run_id}",
            "events": f"/v1/runs/{run.run_id}/events",
            "session_events": f"/v1/sessions/{run.session_id}/events",
            "abort": f"/v1/runs/{run.run_id}/abort",
        },
    )


@router.get("", response_model=RunPage)
async def list_runs(
    state: StateDep,
    principal: Caller,
    status: RunStatus | None = None,
    agent: Annotated[str | None, Query(pattern=AGENT_ADDRESS_PATTERN, max_length=300)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> RunPage:
    """Runs, newest first, optionally of one status and/or agent."""
    records = await state.client.runs.list(
        status=status, agent=agent, tenant=principal.tenant, offset=offset, limit=limit
    )
    return RunPage(
        runs=[RunSummary.of(r) for r in records],
        limit=limit,
        offset=offset,
        next_offset=offset + len(records) if len(records) == limit else None,
    )


@router.get("/{run_id}", response_model=RunDetail)
async def get_run(run_id: str, state: StateDep, principal: Caller) -> RunDetail:
    """Status, result (response and messages), usage and timings of one run."""
    return RunDetail.of(await state.visible_run(run_id, principal))


@router.post("/{run_id}/abort", status_code=202, response_model=AbortResponse)
async def abort_run(
    run_id: str,
    state: StateDep,
    principal: Caller,
    body: Annotated[AbortRequest | None, Body()] = None,
) -> AbortResponse:
    """Ask the run and its forks to stop (a queued run ends at once; a running one at
    its next step). Other runs of the session go on: `POST /v1/sessions/{id}/abort`
    stops them all. A run that has already ended answers 409.
    """
    record = await state.visible_run(run_id, principal)
    if record.status.terminal:
        raise ApiProblem(409, f"run {run_id!r} has already ended ({record.status.value})")
    reason = (body or AbortRequest()).reason
    await state.client.abort(record.session_id, reason, run_id=run_id, tenant=principal.tenant)
    current = await state.client.runs.get(run_id)
    return AbortResponse(
        run_id=run_id,
        session_id=record.session_id,
        status=current.status,
        abort_requested=True,
    )
