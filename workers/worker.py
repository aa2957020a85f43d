"""Build and run a worker process: arq + wake-ups + abort watcher + reaper + heartbeat +
the lease keeper. Every one of them outlives a Redis outage (see workers.outage).

The heartbeat also carries what /metrics shows per worker (busy slots, benched keys,
draining) and flushes the worker's latency observations (`store.latency`); with a state
directory the worker answers a liveness probe and drains on request (`workers.state`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.worker import func

from orchestrator.aio import cancel_and_wait
from orchestrator.errors import StoreError
from orchestrator.events import EventYield, LLMCallEndEvent
from orchestrator.keys import Keys
from orchestrator.llm.benched import INFO_FIELD, report_benched_keys
from orchestrator.settings import Settings
from orchestrator.store import jsonserial as serialization
from orchestrator.store.abort import AbortWatcher
from orchestrator.store.batches import RUN_BATCH_ITEM
from orchestrator.store.jsonserial import JobDecoder
from orchestrator.store.latency import LatencyHistograms, LatencyRecorder
from orchestrator.store.queue import RUN_TURN, JobQueue, connect_queue, run_of_job
from orchestrator.store.runs import WorkerRegistry, note_read
from workers.arq_worker import WakeableWorker
from workers.batches import (
    BATCH_ITEM_TIMEOUT_S,
    BATCH_ITEM_TRIES,
    BATCHES,
    BatchRunner,
    BatchSweeper,
    run_batch_item,
)
from workers.jobs import EXECUTOR, RECORDER, run_turn
from workers.leases import LeaseKeeper
from workers.outage import Outage, until_available
from workers.reaper import Reaper
from workers.registry import AgentRegistry
from workers.state import WorkerState
from workers.turns import TurnExecutor

_log = structlog.get_logger(__name__)
# How often a worker looks for a drain request (a stat of one file).
DRAIN_POLL_S = 0.2


def worker_host(settings: Settings) -> str:
    """The host name this worker reports: ORCHESTRATOR_WORKER_HOST, else the machine's."""
    return settings.worker_host or socket.gethostname()


def new_worker_id(host: str | None = None) -> str:
    return f"{host or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class WorkerServices:
    """The long-lived parts of one worker process, started and stopped with it."""

    def __init__(
        self, pool: ArqRedis, settings: Settings, registry: AgentRegistry, worker_id: str
    ) -> None:
        self.keys = Keys(settings.key_prefix)
        self.settings = settings
        self.registry = registry
        self.worker_id = worker_id
        self.host = worker_host(settings)
        self.watcher = AbortWatcher(pool, self.keys, interval_s=settings.abort_poll_s)
        self.queue = JobQueue(pool, self.keys)
        self.keeper = LeaseKeeper(settings, self.keys, worker_id)
        self.recorder = LatencyRecorder()
        self.latencies = LatencyHistograms(pool, self.keys)
        # Batch items read model keys from the worker's environment (this is its edge).
        self.batches = BatchRunner(
            pool, self.keys, dict(os.environ), registry.modules, worker_id=worker_id
        )
        self.executor = TurnExecutor(
            pool,
            self.keys,
            settings,
            registry,
            self.watcher,
            worker_id,
            self.queue,
            self.keeper,
            on_event=self._observe,
        )
        self.decoder = JobDecoder()
        self.reaper = Reaper(pool, self.keys, settings, self.queue)
        self.heartbeats = WorkerRegistry(pool, self.keys)
        self.batch_sweeper = BatchSweeper(
            self.batches.store,
            self.heartbeats,
            interval_s=settings.reap_interval_s,
            grace_s=settings.heartbeat_s * 5,
        )
        self.state = WorkerState.from_settings(settings)
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.time()

    def record_key(self, job_id: str) -> str | None:
        """The record of the run a turn's job runs (None: not a turn's job id)."""
        run_id = run_of_job(job_id)
        return None if run_id is None else self.keys.run(run_id)

    def _observe(self, output: EventYield) -> None:
        if isinstance(output.event, LLMCallEndEvent):
            self.recorder.observe("model_call", output.event.execution_time)

    async def start(self, ctx: dict[str, Any]) -> None:
        ctx[EXECUTOR] = self.executor
        ctx[RECORDER] = self.recorder
        ctx[BATCHES] = self.batches
        self.keeper.start()
        await self.watcher.start()
        self._tasks = [
            asyncio.create_task(self.reaper.run_forever()),
            asyncio.create_task(self._beat_forever(ctx)),
            asyncio.create_task(self.batch_sweeper.run_forever()),
        ]
        if self.state.directory is not None:
            self._tasks.append(asyncio.create_task(self._drain_when_asked(ctx)))
        _log.info(
            "worker started",
            worker_id=self.worker_id,
            host=self.host,
            agents=self.registry.addresses,
            queue=self.keys.queue(),
        )

    async def stop(self, ctx: dict[str, Any]) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        await self.watcher.stop()
        await self.keeper.stop()
        with contextlib.suppress(Exception):
            await self.batches.close()
        with contextlib.suppress(Exception):
            await self.latencies.add(self.recorder.take())
        with contextlib.suppress(Exception):
            await self.heartbeats.remove(self.worker_id)

    def info(self, worker: WakeableWorker | None) -> dict[str, Any]:
        """What the heartbeat says about this worker (`orchestrator worker --check`)."""
        malformed = self.decoder.malformed + (worker.malformed_entries if worker else 0)
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": os.getpid(),
            "agents": self.registry.addresses,
            "running": len(worker.tasks) if worker is not None else 0,
            "concurrency": self.settings.concurrency,
            "draining": self.draining,
            "started_at": self._started,
            # Jobs whose arq envelope was broken: failed and removed from the queue.
            "malformed_jobs": malformed,
            "redis_outages": worker.poll_outage.outages if worker is not None else 0,
            INFO_FIELD: report_benched_keys(
                self.registry.resolve(address).llm_interface for address in self.registry.addresses
            ),
        }

    async def _beat_forever(self, ctx: dict[str, Any]) -> None:
        worker: WakeableWorker | None = ctx.get("worker")
        outage = Outage("heartbeat")
        while True:
            delay = self.settings.heartbeat_s
            self.state.touch_alive()  # Redis or not: this loop turns, so the worker lives
            observed = self.recorder.take()
            try:
                await self.heartbeats.beat(
                    self.worker_id, self.info(worker), ttl_s=self.settings.heartbeat_s * 5
                )
                await self.latencies.add(observed)
            except StoreError as exc:
                self.recorder.give_back(observed)
                delay = min(delay, outage.failed(exc))
            else:
                outage.recovered()
            await asyncio.sleep(delay)

    async def _drain_when_asked(self, ctx: dict[str, Any]) -> None:
        """Once a drain file appears: stop taking jobs, give running turns the shutdown
        grace, hand back the rest (their runs resume elsewhere), and say so in the file."""
        while True:
            await asyncio.sleep(DRAIN_POLL_S)
            if self.state.drain_requested():
                break
        worker: WakeableWorker = ctx["worker"]
        self.draining = True
        _log.info("draining: taking no more jobs", running=len(worker.tasks))
        handed_back = await worker.drain(self.settings.shutdown_grace_s, cancel_after=True)
        self.state.mark_drained(handed_back)
        _log.info("drained", handed_back=handed_back)


async def create_worker(
    settings: Settings,
    agent_modules: Sequence[str],
    *,
    handle_signals: bool = True,
    burst: bool = False,
    worker_id: str | None = None,
) -> WakeableWorker:
    """A ready-to-run worker; `await worker.async_run()` (or `serve()`) starts it."""
    registry = AgentRegistry(agent_modules)
    # A worker started while Redis is away waits for it (and says so once).
    pool = await until_available(
        lambda: connect_queue(
            settings.redis_url,
            Keys(settings.key_prefix),
            timeout_s=settings.redis_timeout_s,
            connect_timeout_s=settings.redis_connect_timeout_s,
        ),
        Outage("worker startup", max_delay_s=2.0),
    )
    services = WorkerServices(
        pool, settings, registry, worker_id or new_worker_id(worker_host(settings))
    )
    ctx: dict[str, Any] = {}

    async def on_startup(ctx: dict[str, Any]) -> None:
        await services.start(ctx)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await services.stop(ctx)

    worker = WakeableWorker(
        functions=[
            func(run_turn, name=RUN_TURN, max_tries=1, timeout=settings.job_timeout_s),
            func(
                run_batch_item,
                name=RUN_BATCH_ITEM,
                max_tries=BATCH_ITEM_TRIES,
                timeout=BATCH_ITEM_TIMEOUT_S,
            ),
        ],
        queue_name=services.keys.queue(),
        pick_claim=lambda job_id: services.batches.store.pick_claim(job_id, services.worker_id),
        # A turn's pick reads its run's record too: its start then takes one round trip.
        pick_read=services.record_key,
        picked_read=lambda _, raw: note_read(raw),
        # ... and starts it there when it can: its start then needs no round trip at all.
        pick_start=services.executor.starts,
        redis_pool=pool,
        max_jobs=settings.concurrency,
        poll_delay=settings.poll_delay_s,
        job_timeout=settings.job_timeout_s,
        keep_result=3600,
        # Our reaper resumes runs; arq must not also rerun a cancelled job.
        retry_jobs=False,
        max_tries=1,
        handle_signals=handle_signals,
        # arq wants whole seconds; round up so a grace of 0.5 s is not silently none.
        job_completion_wait=math.ceil(settings.shutdown_grace_s),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        job_serializer=serialization.dumps,
        job_deserializer=services.decoder,
        ctx=ctx,
        burst=burst,
        wake_channel=services.keys.wake(),
    )
    # arq keeps a ctx of its own when handed an empty one (`ctx or {}`): put the worker
    # in the one the startup hook and the jobs see, or the heartbeat never sees it.
    worker.ctx["worker"] = worker
    return worker


async def serve(settings: Settings, agent_modules: Sequence[str]) -> None:
    """Run a worker until SIGINT/SIGTERM (running turns get shutdown_grace_s to finish)."""
    WorkerState.from_settings(settings).prepare()
    worker_id = new_worker_id(worker_host(settings))
    # Every log line of this process (and of each job's task) says which worker wrote it.
    structlog.contextvars.bind_contextvars(worker_id=worker_id)
    worker = await create_worker(settings, agent_modules, worker_id=worker_id)
    settle_gc()
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()


# The youngest generation's threshold in a worker process (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> None:
    """Tune the cyclic garbage collector for a worker process, once it has loaded its
    code and agents. What exists then (modules, classes, validators) lives as long as
    the process: it is moved out of the collector's sight (`gc.freeze`). And the
    youngest generation is collected every GC_YOUNG_THRESHOLD net allocations instead
    of every 700: a worker's many turns in flight hold thousands of live objects, which
    each young collection scanned again and promoted, and ten of those a middle one,
    and so on into full collections. Measured (`orchestrator bench` fan-out, 2,100
    forks on one worker): collector time 2.7 s -> 1.2 s, full collections 10 -> 2
    (freeze alone: still 11 full collections). Cycles are still collected."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


def run(settings: Settings, agent_modules: Sequence[str]) -> None:
    """`serve` until SIGINT/SIGTERM, on uvloop when it is installed (the `fast` extra:
    about 12 % less worker CPU per fork in `orchestrator bench`), else on asyncio's
    own event loop."""
    try:
        import uvloop  # the optional `fast` extra
    except ImportError:
        asyncio.run(serve(settings, agent_modules))
        return
    uvloop.run(serve(settings, agent_modules))
