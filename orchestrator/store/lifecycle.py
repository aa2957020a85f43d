"""Ending a run: one place that moves a run to a terminal status and closes its stream."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from redis.asyncio import Redis

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus, StatusEntry
from orchestrator.settings import Settings
from orchestrator.store.runs import RunStore
from orchestrator.store.streams import EventPublisher


async def end_run(
    redis: Redis,
    keys: Keys,
    settings: Settings,
    *,
    run_id: str,
    session_id: str,
    status: RunStatus,
    from_status: Collection[RunStatus] = (RunStatus.QUEUED, RunStatus.RUNNING),
    **fields: Any,
) -> RunRecord | None:
    """Record how a run ended, append its terminal status entry to the session stream (so
    readers know it ended) and start the retention clocks. Returns None, writing nothing,
    if the run was no longer in `from_status` (it had already ended)."""
    runs = RunStore(redis, keys)
    updated = await runs.transition(
        run_id, from_status=set(from_status), to=status, finished_at=time.time(), **fields
    )
    if updated is None:
        return None
    publisher = EventPublisher(
        redis,
        keys,
        session_id=session_id,
        run_id=run_id,
        maxlen=settings.stream_maxlen,
        ttl_after_end_s=settings.stream_retention_s,
    )
    publisher.publish_status(
        StatusEntry(
            run_id=run_id,
            status=status,
            error=fields.get("error"),
            error_type=fields.get("error_type"),
            abort_reason=fields.get("abort_reason"),
            at=time.time(),
        )
    )
    await publisher.close(expire=True)
    await runs.expire(run_id, settings.run_retention_s)
    return updated
