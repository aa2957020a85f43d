"""Server-Sent Events of runs and sessions, resumable with `Last-Event-ID`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import StreamingResponse

from orchestrator.api.deps import StateDep, StreamCaller
from orchestrator.api.problems import ApiProblem
from orchestrator.api.schemas import ErrorBody
from orchestrator.api.sse import RESUME_ID_PATTERN, sse_body
from orchestrator.runs import ID_PATTERN, RunRecord, StreamEntry

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 422, 503)
}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "text/event-stream: `id:` stream id, `event:` kind, `data:` entry JSON",
        "content": {"text/event-stream": {}},
    }
}

router = APIRouter(prefix="/v1", tags=["events"], responses=_ERRORS)

LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=True)]
FromQuery = Annotated[
    str | None,
    Query(alias="from", description="Resume after this stream id ('$': only new entries)."),
]
Batched = Annotated[
    bool,
    Query(
        description="Send the entries that arrive together as one `batch` message (its "
        "data a JSON list of entries, its id the last entry's)."
    ),
]


def _resume_point(last_event_id: str | None, from_id: str | None) -> str | None:
    """Where to resume: the `Last-Event-ID` header (a reconnecting EventSource) wins over
    `?from=`."""
    chosen = last_event_id or from_id
    if chosen is None or chosen == "":
        return None
    if not RESUME_ID_PATTERN.match(chosen):
        raise ApiProblem(400, f"not a stream id: {chosen!r} (want e.g. '1700000000000-0')")
    return chosen


def _stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=_SSE_HEADERS)


async def _record_status(record: RunRecord) -> AsyncIterator[dict[str, Any]]:
    """The run's end from its record, for a stream that no longer holds the status entry
    (expired); sent without an id, since it is not a stream entry."""
    yield {
        "id": None,
        "run_id": record.run_id,
        "root_run_id": record.root_run_id,
        "kind": "status",
        "status": {
            "run_id": record.run_id,
            "status": record.status.value,
            "error": record.error,
            "error_type": record.error_type,
            "abort_reason": record.abort_reason,
            "at": record.finished_at or time.time(),
        },
    }


class _TerminalSeen:
    """Passes entries through and notes whether the run's terminal status went by."""

    def __init__(self, run_id: str, entries: AsyncIterator[StreamEntry]) -> None:
        self._run_id = run_id
        self._entries = entries
        self.seen = False

    async def __aiter__(self) -> AsyncIterator[StreamEntry]:
        async for entry in self._entries:
            status = entry.status
            if entry.run_id == self._run_id and status is not None and status.status.terminal:
                self.seen = True  # the run's own end (not one of its forks')
            yield entry


@router.get("/runs/{run_id}/events", response_class=StreamingResponse, responses=_SSE_DOC)
async def run_events(
    run_id: str,
    state: StateDep,
    principal: StreamCaller,
    last_event_id: LastEventId = None,
    from_id: FromQuery = None,
    batch: Batched = False,
) -> StreamingResponse:
    """One run's events, responses and status entries, and those of its forks; the
    stream ends once the run and every fork of it have ended. Reconnect with
    `Last-Event-ID` (or `?from=`) to resume without loss."""
    after = _resume_point(last_event_id, from_id)
    record = await state.visible_run(run_id, principal)
    ended = record.status.terminal and not await state.client.live_forks(record)
    watched = _TerminalSeen(
        run_id,
        state.client.reader.tail(
            record.session_id, after=after, run_id=run_id, follow=not ended, stop_at_terminal=True
        ),
    )

    async def closing() -> AsyncIterator[dict[str, Any]]:
        if not watched.seen:
            final = await state.client.runs.get(run_id)
            async for message in _record_status(final):
                yield message

    entries = aiter(watched)
    return _stream(
        sse_body(entries, keepalive_s=state.sse_keepalive_s, tail=closing(), batch=batch)
    )


@router.get("/sessions/{session_id}/events", response_class=StreamingResponse, responses=_SSE_DOC)
async def session_events(
    session_id: Annotated[str, Path(pattern=ID_PATTERN)],
    state: StateDep,
    principal: StreamCaller,
    last_event_id: LastEventId = None,
    from_id: FromQuery = None,
    follow: Annotated[bool, Query(description="false: send what is there, then end")] = True,
    batch: Batched = False,
) -> StreamingResponse:
    """Every entry of a session (all its runs and forks), live until the client leaves.
    Reconnect with `Last-Event-ID` (or `?from=`) to resume without loss."""
    after = _resume_point(last_event_id, from_id)
    if not await state.may_use_session(session_id, principal):
        raise ApiProblem(404, f"no session {session_id!r}")
    entries = state.client.reader.tail(session_id, after=after, follow=follow)
    return _stream(sse_body(entries, keepalive_s=state.sse_keepalive_s, batch=batch))
