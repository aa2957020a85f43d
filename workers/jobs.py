"""The arq job functions: decode, call the runtime, encode. Nothing else lives here.

Each job's task binds its run and session ids to the log context (every line logged
while it runs carries them) and records how long it waited in the queue and ran."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import structlog

from orchestrator.store.latency import LatencyRecorder
from orchestrator.store.runs import PickedStart
from workers.arq_jobs import JOB_FINISH, JOB_START
from workers.turns import TurnExecutor

EXECUTOR = "orchestrator_executor"
RECORDER = "orchestrator_latencies"

_log = structlog.get_logger(__name__)


def _ids(payload: Any) -> dict[str, str]:
    """The run and session ids of a payload, if it has them (it is validated later)."""
    if not isinstance(payload, dict):
        return {}
    return {
        name: value[:200]
        for name in ("run_id", "session_id")
        if isinstance(value := payload.get(name), str)
    }


async def run_turn(ctx: dict[str, Any], payload: Any) -> dict[str, Any]:
    """Run one attempt of an agent turn. `payload` is a RunRequest as JSON; it is validated
    before use and a malformed one is rejected (recorded, not raised). A turn that ends
    its run finishes its job in the same round trip (`ctx[JOB_FINISH]`), leaving no arq
    result: the run's record is the result. A run the job's pick started
    (`ctx[JOB_START]`) is taken as this job's start once the payload matches it."""
    executor: TurnExecutor = ctx[EXECUTOR]
    recorder: LatencyRecorder | None = ctx.get(RECORDER)
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(**_ids(payload)):
        enqueued = ctx.get("enqueue_time")
        if recorder is not None and isinstance(enqueued, datetime):
            recorder.observe("dispatch", time.time() - enqueued.timestamp())
        picked = ctx.get(JOB_START)
        if not isinstance(picked, PickedStart):
            picked = None
        result = await executor.execute(payload, ctx.get(JOB_FINISH), picked)
        seconds = time.monotonic() - started
        if recorder is not None:
            recorder.observe("turn", seconds)
        _log.info("job done", status=result.get("status"), seconds=round(seconds, 3))
        return result
