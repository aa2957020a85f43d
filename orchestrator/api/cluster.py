"""/v1/cluster: the workers, the queue and recent throughput, for the dashboard's cluster
page. The same sources as /metrics (worker heartbeats, the queue, the run indexes),
shaped for a page rather than a scraper."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from orchestrator.api.deps import Caller, StateDep
from orchestrator.api.schemas import ErrorBody
from orchestrator.llm.benched import BenchedKeyReport, read_benched_keys
from orchestrator.runs import RunStatus
from orchestrator.store.throughput import Ended, RecentEnds

__all__ = ["ClusterView", "Throughput", "WorkerView", "router", "throughput", "worker_view"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (401, 422, 503)
}

router = APIRouter(prefix="/v1", tags=["cluster"], responses=_ERRORS)


class WorkerView(BaseModel):
    worker_id: str
    host: str | None = None
    pid: int | None = None
    running: int = Field(description="Turns running now (busy slots).")
    concurrency: int = Field(description="Slots.")
    last_beat: float
    heartbeat_age_s: float
    started_at: float | None = None
    agents: int = Field(description="How many agents it serves.")
    redis_outages: int = 0
    malformed_jobs: int = 0
    benched_keys: list[BenchedKeyReport]


class Series(BaseModel):
    completed: list[int]
    failed: list[int] = Field(description="Ended with an error or aborted.")


class Throughput(BaseModel):
    """Runs (roots) and forks that ended, per `bucket_s` over the last `window_s`; the
    first bucket starts at `start` (epoch seconds)."""

    window_s: int
    bucket_s: int
    start: float
    runs: Series
    forks: Series


class ClusterView(BaseModel):
    generated_at: float
    workers: list[WorkerView]
    slots: dict[str, int] = Field(description="busy and total, over the live workers.")
    queue_depth: int
    runs_by_status: dict[str, int]
    throughput: Throughput


def _int(value: Any) -> int:
    """A count from a heartbeat (untrusted): a non-negative int, or 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(0, int(value))


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def worker_view(beat: Mapping[str, Any], now: float) -> WorkerView:
    """One live worker's heartbeat (`WorkerRegistry.list()` entry), validated."""
    last_beat = _opt_float(beat.get("last_beat")) or now
    host = beat.get("host")
    agents = beat.get("agents")
    return WorkerView(
        worker_id=str(beat.get("worker_id", "?")),
        host=host if isinstance(host, str) else None,
        pid=_int(beat.get("pid")) or None,
        running=_int(beat.get("running")),
        concurrency=_int(beat.get("concurrency")),
        last_beat=last_beat,
        heartbeat_age_s=round(max(0.0, now - last_beat), 3),
        started_at=_opt_float(beat.get("started_at")),
        agents=len(agents) if isinstance(agents, list) else 0,
        redis_outages=_int(beat.get("redis_outages")),
        malformed_jobs=_int(beat.get("malformed_jobs")),
        benched_keys=read_benched_keys(beat, now),
    )


def _series(ends: Iterable[Ended], start: float, bucket_s: int, buckets: int) -> Series:
    completed = [0] * buckets
    failed = [0] * buckets
    for end in ends:
        index = int((end.at - start) // bucket_s)
        if not 0 <= index < buckets:
            continue
        if end.status is RunStatus.COMPLETED:
            completed[index] += 1
        else:
            failed[index] += 1
    return Series(completed=completed, failed=failed)


def throughput(ends: list[Ended], *, now: float, window_s: int, bucket_s: int) -> Throughput:
    """Ends counted per bucket; the last bucket ends at `now` (whole buckets, aligned to
    the epoch, so a chart polled every few seconds does not jitter)."""
    buckets = max(1, window_s // bucket_s)
    last_start = math.floor(now / bucket_s) * bucket_s
    start = float(last_start - (buckets - 1) * bucket_s)
    return Throughput(
        window_s=buckets * bucket_s,
        bucket_s=bucket_s,
        start=start,
        runs=_series((e for e in ends if not e.is_fork), start, bucket_s, buckets),
        forks=_series((e for e in ends if e.is_fork), start, bucket_s, buckets),
    )


@router.get("/cluster", response_model=ClusterView)
async def cluster(
    state: StateDep,
    principal: Caller,
    window_s: Annotated[int, Query(ge=60, le=3600)] = 600,
    bucket_s: Annotated[int, Query(ge=5, le=600)] = 15,
) -> ClusterView:
    """Live workers (slots, heartbeat age, benched API keys), the queue's depth, runs by
    status, and how many runs and forks ended per `bucket_s` over the last `window_s`."""
    client = state.client
    now = time.time()
    workers = [worker_view(beat, now) for beat in await client.workers.list()]
    recent = RecentEnds(client.redis, client.keys, retention_s=state.settings.run_retention_s)
    ends = await recent.since(now - window_s - bucket_s)
    return ClusterView(
        generated_at=now,
        workers=workers,
        slots={
            "busy": sum(w.running for w in workers),
            "total": sum(w.concurrency for w in workers),
        },
        queue_depth=await client.queue.depth(),
        runs_by_status=await client.runs.counts_by_status(),
        throughput=throughput(ends, now=now, window_s=window_s, bucket_s=bucket_s),
    )
