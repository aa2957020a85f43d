"""The fork backend of a worker: forks are runs of their own, queued as arq jobs.

A fork is a run whose record carries a `ForkInfo` (parent, root, depth, memory keys,
spawning tool call). Spawning one allocates its id (`fork_N`, per session), stores its
starting context in its job payload, records it as QUEUED, announces it in the session
stream and enqueues it, so any free worker on any machine picks it up. Its events go to
the root's session stream. When it ends, `end_run` resumes its parent if the parent is
waiting in a gather for it.

Every step is idempotent, so a spawn re-run after a crash (or a tool re-run after its
turn was resumed) finds the fork it started before instead of starting another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property
from typing import Any, Generic, TypeVar

import structlog

from orchestrator.errors import PayloadError, RunNotFound, ToolError
from orchestrator.keys import Keys
from orchestrator.ports import SpawnRequest
from orchestrator.runs import (
    ForkInfo,
    RunRecord,
    RunRequest,
    RunResultView,
    RunStatus,
    StatusEntry,
    fork_run_id,
)
from orchestrator.runtime.forks import fork_result
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis, run_scripts, translate_errors
from orchestrator.store.forks import Allocation, ForkTable
from orchestrator.store.memory import RedisMemoryStore
from orchestrator.store.queue import JobQueue
from orchestrator.store.runs import RunStore
from orchestrator.store.streams import statuses_call

__all__ = ["RedisForkBackend", "result_of"]

_log = structlog.get_logger(__name__)


def result_of(record: RunRecord | RunResultView, include_history: bool) -> dict[str, Any]:
    """The ForkResult of an ended fork run (its whole record or its result view)."""
    info = record.fork
    status = {RunStatus.COMPLETED: "completed", RunStatus.ABORTED: "aborted"}.get(
        record.status, "error"
    )
    error_type, error_message = record.error_type, record.error
    if record.status is RunStatus.ABORTED:
        error_type = error_type or "AbortedError"
        error_message = error_message or record.abort_reason or "aborted"
    return fork_result(
        info.fork_id if info else record.run_id,
        status,
        response=record.response if status == "completed" else (record.response or None),
        error_type=error_type,
        error_message=error_message,
        parent_fork_id=info.parent_fork_id if info else None,
        depth=info.depth if info else 0,
        source_memory_key=info.source_memory_key if info else None,
        memory_key=info.memory_key if info else None,
        history=record.messages or [],
        include_history=include_history,
    )


class RedisForkBackend:
    """`orchestrator.ports.ForkBackend` for the turn of one run."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        queue: JobQueue,
        *,
        request: RunRequest,
        tenant: str | None,
        memory: RedisMemoryStore,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._queue = queue
        self._request = request
        self._tenant = tenant
        # The parent's memory scope: its forks' keys live in the same one.
        self._memory = memory
        self._allocations: Batcher[tuple[str, str], Allocation | None] = Batcher(
            self._allocate_batch
        )
        self._starts: Batcher[RunRequest, None] = Batcher(self._start_batch)
        self._existing: Batcher[str, RunRecord | PayloadError | None] = Batcher(
            self._existing_batch
        )
        self._requeues: Batcher[RunRequest, None] = Batcher(self._requeue_batch)
        # Forks of re-run spawns whose records had expired, to be created again.
        self._recreated: set[str] = set()

    # Built on first use: most turns (a leaf fork's) never spawn nor gather, and each
    # registers its scripts (hashing their source) when built.
    @cached_property
    def _forks(self) -> ForkTable:
        return ForkTable(self._redis, self._keys, ttl_s=self._settings.run_retention_s)

    @cached_property
    def _runs(self) -> RunStore:
        return RunStore(self._redis, self._keys)

    @property
    def depth(self) -> int:
        return self._request.fork.depth if self._request.fork is not None else 0

    async def spawn(self, request: SpawnRequest) -> dict[str, Any]:
        parent = self._request
        depth = self.depth + 1
        limit = self._settings.max_fork_depth
        if depth > limit:
            raise ToolError(
                f"fork depth limit reached: this agent is at depth {self.depth} and forks "
                f"may nest at most {limit} deep (setting max_fork_depth); do this work "
                "yourself instead"
            )
        # Spawns arriving while a batch is in flight go out together: one round trip for
        # all their allocations, one for their records, one for their jobs.
        allocation = await self._allocations.submit(
            (request.parent_agent_call_id, request.spawn_key)
        )
        if allocation is None:
            raise ToolError(
                "fork limit reached: an agent may spawn at most "
                f"{self._settings.max_forks_per_agent} forks (setting max_forks_per_agent); "
                "gather the ones you have or do the rest yourself"
            )
        info = ForkInfo(
            fork_id=allocation.fork_id,
            root_run_id=parent.root_run_id,
            parent_run_id=parent.run_id,
            parent_fork_id=parent.fork.fork_id if parent.fork is not None else None,
            depth=depth,
            fork_seq=allocation.seq,
            source_memory_key=request.parent_memory_key,
            memory_key=f"{request.parent_memory_key}::fork::{allocation.number}",
            tool_name=request.tool_name,
            tool_call_id=request.tool_call_id,
        )
        await self._start(info, allocation, request)
        return {
            "fork_id": info.fork_id,
            "parent_fork_id": info.parent_fork_id,
            "depth": info.depth,
            "source_memory_key": info.source_memory_key,
            "memory_key": info.memory_key,
            "status": "running",
        }

    async def _start(self, info: ForkInfo, allocation: Allocation, spawn: SpawnRequest) -> None:
        run_id = fork_run_id(info.root_run_id, info.fork_id)
        recreated = False
        if not allocation.created:
            # A re-run spawn (one MGET for the batch's records).
            existing = await self._existing.submit(run_id)
            if isinstance(existing, PayloadError):
                raise existing
            if existing is not None:
                if existing.status is RunStatus.QUEUED:
                    # Its job may have been lost with the worker that spawned it; arq
                    # ignores the enqueue if the job is there.
                    await self._requeues.submit(RunRequest.model_validate(existing.request))
                return
            # Its record expired (or a failed first batch never wrote it): the run is
            # created again, under an id that may have had a life.
            recreated = True
        request = RunRequest(
            run_id=run_id,
            session_id=self._request.session_id,
            agent=self._request.agent,
            message=spawn.message,
            history=spawn.context,  # the fork's own addendum replaces the parent's
            submitted_at=time.time(),
            options=dict(self._request.options),
            fork=info,
        )
        if recreated:
            self._recreated.add(run_id)
        await self._starts.submit(request)
        # Debug: a fan-out of N forks would log N lines here, and each fork's job logs its
        # own "job done" (with its run id bound) when it ends.
        _log.debug("fork spawned", run_id=run_id, depth=info.depth, parent=info.parent_run_id)

    async def _allocate_batch(self, spawns: list[tuple[str, str]]) -> list[Allocation | None]:
        """The batch's allocations: one script call per parent (normally one), all in one
        round trip."""
        by_parent: dict[str, list[int]] = {}
        for i, (parent, _) in enumerate(spawns):
            by_parent.setdefault(parent, []).append(i)
        got = await self._forks.allocate_batches(
            self._request.session_id,
            [(parent, [spawns[i][1] for i in places]) for parent, places in by_parent.items()],
            limit=self._settings.max_forks_per_agent,
        )
        results: list[Allocation | None] = [None] * len(spawns)
        for places, allocations in zip(by_parent.values(), got, strict=True):
            for i, allocation in zip(places, allocations, strict=True):
                results[i] = allocation
        return results

    async def _existing_batch(self, run_ids: list[str]) -> list[RunRecord | PayloadError | None]:
        """The records of re-run spawns' forks (one MGET); a missing one is None (its
        spawn starts it), a corrupt one the error its spawn raises."""
        found = await self._runs.get_many(run_ids)
        results: list[RunRecord | PayloadError | None] = []
        for run_id in run_ids:
            record: RunRecord | PayloadError | None = found.get(run_id)
            if record is None:  # gone, or corrupt: read it alone to tell which
                try:
                    record = await self._runs.get(run_id)
                except RunNotFound:
                    record = None
                except PayloadError as exc:
                    record = exc
            results.append(record)
        return results

    async def _requeue_batch(self, requests: list[RunRequest]) -> list[None]:
        async with translate_errors("fork requeue"):
            await run_scripts(self._queue.redis, self._queue.enqueue_calls(requests))
        return [None] * len(requests)

    async def _start_batch(self, requests: list[RunRequest]) -> list[None]:
        """Inherit experiences, create the records (one round trip), then announce the
        new ones and enqueue every job (one round trip)."""
        await self._inherit_experiences([r.fork for r in requests if r.fork is not None])
        recreated = [r.run_id for r in requests if r.run_id in self._recreated]
        if recreated:  # rare: their first starts must read what their earlier lives left
            await self._runs.mark_recreated(self._request.session_id, recreated)
            self._recreated.difference_update(recreated)
        records = [self._record_of(r) for r in requests]
        created = await self._runs.create_many(records)
        # Readers learn of each new fork (a "queued" entry) before any later event of its
        # parent, so they know to wait for its end: one script per parent for the batch
        # (one stream entry: a tree's view counts it for the parent that wrote it).
        queued: dict[tuple[str, str], list[tuple[StatusEntry, str]]] = {}
        for request, new in zip(requests, created, strict=True):
            if new:
                assert request.fork is not None
                status = StatusEntry(
                    run_id=request.run_id, status=RunStatus.QUEUED, fork=request.fork
                )
                parent = (request.session_id, request.fork.parent_run_id)
                queued.setdefault(parent, []).append((status, request.fork.root_run_id))
        calls = [
            statuses_call(
                self._redis,
                self._keys,
                statuses,
                session_id=session,
                maxlen=self._settings.stream_maxlen,
                items_per_entry=self._settings.stream_items_per_entry,
            )
            for (session, _parent), statuses in queued.items()
        ]
        calls += self._queue.enqueue_calls(requests)
        async with translate_errors("fork start"):
            await run_scripts(self._redis, calls)
        return [None] * len(requests)

    def _record_of(self, request: RunRequest) -> RunRecord:
        return RunRecord(
            run_id=request.run_id,
            session_id=request.session_id,
            agent=request.agent,
            status=RunStatus.QUEUED,
            max_attempts=self._settings.max_attempts,
            submitted_at=request.submitted_at,
            tenant=self._tenant,
            request=request.model_dump(mode="json"),
            fork=request.fork,
        )

    async def _inherit_experiences(self, infos: list[ForkInfo]) -> None:
        """Each fork starts with its parent's durable experiences (its own key from now):
        one read per parent (normally one), then one round trip for every fork of the
        batch (none when the parents have no experiences)."""
        inherited: dict[str, list[str]] = {}
        additions: list[tuple[str, list[str]]] = []
        for info in infos:
            source, key = info.source_memory_key, info.memory_key
            if source is None or key is None:
                continue
            if source not in inherited:
                parent = await self._memory.load(source)
                inherited[source] = [experience.text for experience in parent.experiences]
            additions.append((key, inherited[source]))
        await self._memory.add_experiences_to(additions)

    async def collect(
        self,
        parent_agent_call_id: str,
        fork_ids: Sequence[str] | None,
        include_history: bool,
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        children = await self._forks.children(self._request.session_id, parent_agent_call_id)
        wanted = children if fork_ids is None else list(dict.fromkeys(fork_ids))
        unknown = [f for f in wanted if f not in children]
        if unknown:
            mine = ", ".join(children) or "none"
            raise ToolError(
                f"gather_all: unknown fork id(s) {', '.join(unknown)}; your forks are: {mine}"
            )
        root = self._request.root_run_id
        records = await self._runs.results_many(fork_run_id(root, f) for f in wanted)
        results: dict[str, dict[str, Any]] = {}
        running: list[str] = []
        for fork_id in wanted:
            record = records.get(fork_run_id(root, fork_id))
            if record is None:
                results[fork_id] = _lost(fork_id)
            elif record.status.terminal:
                results[fork_id] = result_of(record, include_history)
            else:
                running.append(fork_id)
        return results, running


T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Items submitted while a batch is being processed form the next batch (nothing
    waits for a timer): `await submit(item)` returns its result, or raises the batch's
    error."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            live = [(item, future) for item, future in batch if not future.done()]
            if not live:
                continue
            try:
                results = await self._run([item for item, _ in live])
            except BaseException as exc:  # every caller of the batch sees its failure
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)


def _lost(fork_id: str) -> dict[str, Any]:
    return fork_result(
        fork_id,
        "error",
        error_type="ForkLost",
        error_message="the fork's run record no longer exists (expired or deleted)",
    )
