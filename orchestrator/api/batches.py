"""/v1/batches/{id}: where a batch submitted with `Client.submit_batch` stands.

Progress only (counts, usage, cost), never the answers. A batch belongs to the tenant
whose submit made it: a tenant's key sees only its own batches (another tenant's is a 404,
like a missing one); the operator's key sees every batch.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from orchestrator.api.deps import Caller, StateDep
from orchestrator.api.schemas import ErrorBody
from orchestrator.deluge.batch import BatchProgress

__all__ = ["BatchList", "BatchView", "router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (401, 404, 503)
}

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=_ERRORS)


class BatchView(BaseModel):
    batch_id: str
    total: int
    done: int
    failed: int
    pending: int
    finished: bool
    input_tokens: int
    output_tokens: int
    cost: float
    created_at: float


class BatchList(BaseModel):
    batches: list[BatchView]


def _view(progress: BatchProgress) -> BatchView:
    return BatchView(**progress.model_dump(), pending=progress.pending, finished=progress.finished)


@router.get("", response_model=BatchList)
async def recent_batches(
    state: StateDep,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=100, description="How many, newest first.")] = 50,
) -> BatchList:
    """The latest batches (at most 100 are kept in the list), newest first."""
    return BatchList(
        batches=[
            _view(p) for p in await state.client.recent_batches(limit, tenant=principal.tenant)
        ]
    )


@router.get("/{batch_id}", response_model=BatchView)
async def batch_progress(batch_id: str, state: StateDep, principal: Caller) -> BatchView:
    """Items answered, failed and pending, with the usage and cost so far (404 for an
    unknown or expired batch)."""
    return _view(await state.client.batch_progress(batch_id, tenant=principal.tenant))
