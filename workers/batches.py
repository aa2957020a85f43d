"""The batch item job: decode, answer with the lm-deluge client, record. One job per item.

Every worker answering a batch shares its rate limit through `RedisRateLimiter` (one
name per batch spec). An item whose answer is still an error after its retries, or that
ran out of `BATCH_ITEM_TIMEOUT_S`, is recorded as failed, with the error, never dropped.
A worker claims each item as it picks its job, in the same script that marks the job in
progress (`{batch}:claims`, `WakeableWorker`'s pick). Every worker's `BatchSweeper`
re-queues the items whose claim is lost: claimed by a worker whose heartbeat has lapsed,
or whose job is no longer in progress with no result recorded (it ended with an error
before recording one). One sweeper wins each, by an atomic take of the claim; up to
`MAX_ITEM_RUNS` runs, then the item is recorded as failed. A result is counted once
however many runs there were.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections import OrderedDict
from typing import Any

import structlog

from orchestrator.deluge import LLMClient, Tool
from orchestrator.deluge.batch import (
    BatchProgress,
    BatchSpec,
    client_for,
    decode_item,
    decode_spec,
    result_json,
    run_item,
)
from orchestrator.deluge.response import APIResponse
from orchestrator.errors import OrchestratorError, PayloadError, StoreUnavailable
from orchestrator.keys import Keys
from orchestrator.runtime.tools import Tool as RuntimeTool
from orchestrator.store.batches import BatchStore
from orchestrator.store.rate_limits import RedisRateLimiter
from orchestrator.store.runs import WorkerRegistry
from workers.outage import Outage

BATCHES = "orchestrator_batches"
BATCH_ITEM_TRIES = 3
# arq's timeout for one item job; the item gives up a little earlier, to record why.
BATCH_ITEM_TIMEOUT_S = 600
_RECORD_GRACE_S = 10
# Runs of one item whose worker died before it ended, before it is recorded as failed.
MAX_ITEM_RUNS = 3
_CLIENTS_KEPT = 8  # batches whose client (and connections) a worker keeps

_log = structlog.get_logger(__name__)


class BatchRunner:
    """Answers batch items on one worker; keeps a client per recent batch."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        environ: dict[str, str],
        tool_modules: list[str],
        worker_id: str = "",
    ) -> None:
        self._redis = redis
        self.worker_id = worker_id
        self._keys = keys
        self._environ = environ
        self._tool_modules = set(tool_modules)
        self.store = BatchStore(redis, keys)
        self._batches: OrderedDict[str, tuple[BatchSpec, LLMClient, list[Tool]]] = OrderedDict()

    async def run(self, payload: Any) -> dict[str, Any]:
        batch_id, index, run = _decode_payload(payload)
        with structlog.contextvars.bound_contextvars(batch_id=batch_id, item=index, run=run):
            # Claimed already: the pick of this job wrote the claim.
            try:
                spec, client, tools = await self._batch(batch_id)
                raw = await self.store.item(batch_id, index)
                if raw is None:
                    raise PayloadError(f"batch {batch_id} has no item {index} (expired?)")
                async with asyncio.timeout(BATCH_ITEM_TIMEOUT_S - _RECORD_GRACE_S):
                    response, conversation = await run_item(client, spec, decode_item(raw), tools)
            except TimeoutError:
                message = f"gave up after {BATCH_ITEM_TIMEOUT_S - _RECORD_GRACE_S} s"
                response, conversation = APIResponse(is_error=True, error_message=message), None
            except PayloadError as exc:
                _log.warning("batch item unreadable", error=str(exc))
                response, conversation = APIResponse(is_error=True, error_message=str(exc)), None
            except OrchestratorError as exc:  # a config problem (missing key, unknown tool)
                response, conversation = APIResponse(is_error=True, error_message=str(exc)), None
            await self.store.record(
                batch_id,
                index,
                result_json(index, response, conversation),
                failed=response.is_error,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
                cost=response.cost,
            )
            return {"batch_id": batch_id, "index": index, "is_error": response.is_error}

    async def _batch(self, batch_id: str) -> tuple[BatchSpec, LLMClient, list[Tool]]:
        kept = self._batches.get(batch_id)
        if kept is not None:
            self._batches.move_to_end(batch_id)
            return kept
        raw = await self.store.spec(batch_id)
        if raw is None:
            raise PayloadError(f"batch {batch_id} not found (expired?)")
        spec = decode_spec(raw)
        limiter = RedisRateLimiter(
            self._redis,
            self._keys,
            spec.limiter_name,
            max_requests=spec.max_requests_per_minute,
            max_tokens=spec.max_tokens_per_minute,
            period_s=spec.limit_period_s,
            margin_s=spec.limit_margin_s,
        )
        kept = (spec, client_for(spec, limiter, self._environ), self._tools(spec.tools))
        self._batches[batch_id] = kept
        while len(self._batches) > _CLIENTS_KEPT:
            _, (_, old, _) = self._batches.popitem(last=False)
            await old.aclose()
        return kept

    def _tools(self, addresses: list[str]) -> list[Tool]:
        """Tools named "module:name", from the modules this worker was started with only
        (a batch spec comes from Redis: it must not make the worker import anything)."""
        found: list[Tool] = []
        for address in addresses:
            module_name, _, name = address.partition(":")
            if module_name not in self._tool_modules:
                raise OrchestratorError(
                    f"tool {address!r}: module {module_name!r} is not one of this "
                    f"worker's --agents modules"
                )
            value = getattr(importlib.import_module(module_name), name, None)
            if not isinstance(value, RuntimeTool):
                raise OrchestratorError(f"tool {address!r} is not a Tool")
            found.append(value if isinstance(value, Tool) else _as_deluge_tool(value))
        return found

    async def close(self) -> None:
        while self._batches:
            _, (_, client, _) = self._batches.popitem()
            await client.aclose()


def _read_claim(raw: str) -> tuple[str, int, float]:
    """(worker, run, at) of a claim; an unreadable one reads as lost for good."""
    try:
        claim = json.loads(raw)
        return str(claim["worker"]), int(claim["run"]), float(claim["at"])
    except (ValueError, KeyError, TypeError):
        return "", MAX_ITEM_RUNS, 0.0


def _as_deluge_tool(tool: RuntimeTool) -> Tool:
    return Tool.from_function(tool.func, name=tool.name, description=tool.description)


def _decode_payload(payload: Any) -> tuple[str, int, int]:
    if (
        isinstance(payload, dict)
        and isinstance(payload.get("batch_id"), str)
        and isinstance(payload.get("index"), int)
        and isinstance(payload.get("run", 1), int)
    ):
        return payload["batch_id"], payload["index"], payload.get("run", 1)
    raise PayloadError(f"not a batch item payload: {str(payload)[:200]}")


class BatchSweeper:
    """Finds items whose worker died while running them and queues them again.

    A claim older than `grace_s` counts as lost when its worker has no live heartbeat, or
    when arq no longer has its job in progress (the job ended without recording a result:
    it raised, say, because Redis went away mid-record). Fresher claims are left alone, so
    a worker that has not beaten yet is not taken for dead."""

    def __init__(
        self, store: BatchStore, workers: WorkerRegistry, *, interval_s: float, grace_s: float
    ) -> None:
        self.store = store
        self.workers = workers
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.outage = Outage("batch sweeper")
        self.requeued = 0

    async def run_forever(self) -> None:
        while True:
            delay = self.interval_s
            try:
                await self.sweep_once()
            except StoreUnavailable as exc:
                delay = self.outage.failed(exc)
            except OrchestratorError as exc:
                _log.warning("batch sweep failed", error=str(exc))
            else:
                self.outage.recovered()
            await asyncio.sleep(delay)

    async def sweep_once(self) -> int:
        """One pass over the unfinished batches; how many items were re-queued."""
        live = {str(w["worker_id"]) for w in await self.workers.list()}
        requeued = 0
        for batch_id in await self.store.active():
            counters = await self.store.counters(batch_id)
            if not counters or BatchProgress.from_counters(batch_id, counters).finished:
                await self.store.forget(batch_id)
                continue
            requeued += await self._sweep_batch(batch_id, live)
        self.requeued += requeued
        return requeued

    async def _sweep_batch(self, batch_id: str, live: set[str]) -> int:
        claims = await self.store.claims(batch_id)
        now = time.time()
        old = {i: _read_claim(raw) for i, raw in claims.items()}
        old = {i: claim for i, claim in old.items() if now - claim[2] >= self.grace_s}
        # A live worker's claim is still lost when its job is no longer in progress.
        running = await self.store.in_progress(
            batch_id, {i: run for i, (worker, run, _) in old.items() if worker in live}
        )
        requeued = 0
        for index, (worker, run, _) in old.items():
            if worker not in live or index not in running:
                requeued += await self._recover(batch_id, index, claims[index], run, worker, live)
        return requeued

    async def _recover(
        self, batch_id: str, index: int, raw: str, run: int, worker: str, live: set[str]
    ) -> int:
        if not await self.store.take_claim(batch_id, index, raw):
            return 0  # another sweeper took it (or the result came in)
        lost = "its worker died" if worker not in live else "its job ended without a result"
        if run >= MAX_ITEM_RUNS:
            message = f"{lost} {run} times while running it"
            response = APIResponse(is_error=True, error_message=message)
            await self.store.record(
                batch_id,
                index,
                result_json(index, response, None),
                failed=True,
                input_tokens=0,
                output_tokens=0,
                cost=0.0,
            )
            return 0
        _log.warning(f"batch item lost ({lost}): queued again", batch_id=batch_id,
                     item=index, worker=worker, run=run + 1)  # fmt: skip
        await self.store.enqueue(batch_id, [index], run=run + 1)
        return 1


async def run_batch_item(ctx: dict[str, Any], payload: Any) -> dict[str, Any]:
    """Answer one item of a batch and record its result."""
    runner: BatchRunner = ctx[BATCHES]
    return await runner.run(payload)
