"""/healthz, /readyz and /metrics: for probes and scrapers (no API key needed; they
show aggregate figures only, never run ids or contents)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from orchestrator.api.deps import StateDep
from orchestrator.api.metrics import CONTENT_TYPE, MetricsSnapshot, WorkerGauges
from orchestrator.api.problems import problem_response
from orchestrator.errors import ConfigError, StoreError
from orchestrator.llm.benched import read_benched_keys

__all__ = ["OPEN_WARNING", "router"]

OPEN_WARNING = (
    "this API was started without API keys: anyone who can reach it can submit, read and "
    "abort every run"
)
# Latency and token figures cover this many of the most recent runs.
METRICS_WINDOW = 200

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(state: StateDep) -> dict[str, Any]:
    """The process is up (Redis is not consulted: see /readyz)."""
    body: dict[str, Any] = {"status": "ok", "auth": "open" if state.keys.open else "api_keys"}
    if state.keys.open:
        body["warning"] = OPEN_WARNING
    return body


@router.get("/readyz", responses={503: {"description": "Redis is not reachable"}})
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when Redis answers."""
    try:
        depth = await state.client.queue.depth()
    except StoreError as exc:
        return problem_response(503, "store_unavailable", f"Redis is not reachable: {exc}")
    return JSONResponse({"status": "ready", "redis": "ok", "queue_depth": depth})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format: queue depth, runs by status, dispatch latency, tokens,
    the API keys workers have benched after a 401/403, per-worker slots, and latency
    histograms (dispatch, turn, model call) over every worker."""
    client = state.client
    workers = await client.workers.list()
    now = time.time()
    benched = {str(w.get("worker_id")): read_benched_keys(w, now) for w in workers}
    snapshot = MetricsSnapshot.from_runs(
        await client.runs.list(limit=METRICS_WINDOW),
        queue_depth=await client.queue.depth(),
        runs_by_status=await client.runs.counts_by_status(),
        live_workers=len(workers),
        open_api=state.keys.open,
        benched_keys=[(worker, key) for worker, keys in benched.items() for key in keys],
        workers=[
            WorkerGauges.from_heartbeat(w, len(benched[str(w.get("worker_id"))])) for w in workers
        ],
        histograms=await client.latencies.read(),
    )
    try:
        registry = state.metrics()
    except ConfigError as exc:  # prometheus-client (the metrics extra) is not installed
        return problem_response(501, "metrics_unavailable", str(exc))
    return PlainTextResponse(registry.render(snapshot), media_type=CONTENT_TYPE)
