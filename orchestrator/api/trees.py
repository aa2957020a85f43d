"""/v1/runs/{id}/tree and /v1/runs/{id}/lane: a fork tree at a glance, and one agent's
history on demand (what the dashboard's run page loads instead of replaying every event
of the tree)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from orchestrator.api.deps import Caller, StateDep
from orchestrator.api.laneview import compact_payloads, full_payloads
from orchestrator.api.schemas import ErrorBody
from orchestrator.api.treeview import RunTree, build_tree
from orchestrator.store.trees import TreeReader

__all__ = ["LaneEntries", "router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 422, 503)
}
# A stream id, or an item id ("ms-seq.i": an output of an entry of several).
STREAM_ID = r"^\d{1,20}(-\d{1,20}(\.\d{1,5})?)?$"

router = APIRouter(prefix="/v1/runs", tags=["trees"], responses=_ERRORS)


class LaneEntries(BaseModel):
    run_id: str
    view: Literal["full", "compact"]
    entries: list[dict[str, Any]] = Field(
        description="Stream entries, shaped as in the event streams (id, run_id, kind, ...)."
    )
    next_after: str | None = Field(
        description="More entries follow: ask again with `after` set to this."
    )


def _json(body: BaseModel) -> Response:
    # Serialised once, by pydantic: a tree or lane can be megabytes of nested JSON, which
    # FastAPI's generic response encoding would walk again in Python.
    return Response(body.model_dump_json(), media_type="application/json")


@router.get("/{run_id}/tree", response_model=RunTree)
async def run_tree(run_id: str, state: StateDep, principal: Caller) -> Response:
    """The fork tree below a run: one row per agent (status, times, waits, tokens, errors,
    entries) and totals. Follow the session's events after `last_id` for what comes next.
    """
    record = await state.visible_run(run_id, principal)
    reader = TreeReader(state.client.redis, state.client.keys)
    # The stream first: records read after it are as new or newer, never older.
    scan = await reader.scan(record.session_id, record.root_run_id)
    records = await reader.records(record)
    return _json(build_tree(records, scan, generated_at=time.time()))


@router.get("/{run_id}/lane", response_model=LaneEntries)
async def run_lane(
    run_id: str,
    state: StateDep,
    principal: Caller,
    after: Annotated[
        str | None, Query(pattern=STREAM_ID, description="Only entries after this id.")
    ] = None,
    upto: Annotated[
        str | None, Query(pattern=STREAM_ID, description="Only entries up to this id.")
    ] = None,
    view: Annotated[
        Literal["full", "compact"],
        Query(description="compact: what a lane draws (see the dashboard), slimmed."),
    ] = "full",
    limit: Annotated[int, Query(ge=1, le=20_000)] = 5000,
) -> Response:
    """One agent's own entries (not its forks'), oldest first."""
    record = await state.visible_run(run_id, principal)
    reader = TreeReader(state.client.redis, state.client.keys)
    page = await reader.lane(record.session_id, run_id, after=after, upto=upto, limit=limit)
    shaped = compact_payloads if view == "compact" else full_payloads
    return _json(
        LaneEntries(
            run_id=run_id, view=view, entries=shaped(page.entries), next_after=page.next_after
        )
    )
