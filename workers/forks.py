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

import time
from collections.abc import Sequence
from typing import Any

import structlog

from orchestrator.errors import RunNotFound, ToolError
from orchestrator.keys import Keys
from orchestrator.ports import SpawnRequest
from orchestrator.runs import ForkInfo, RunRecord, RunRequest, RunStatus, StatusEntry, fork_run_id
from orchestrator.runtime.forks import fork_result
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis, run_scripts, translate_errors
from orchestrator.store.forks import Allocation, ForkTable
from orchestrator.store.memory import RedisMemoryStore
from orchestrator.store.queue import JobQueue
from orchestrator.store.runs import RunStore
from orchestrator.store.streams import status_call

__all__ = ["RedisForkBackend", "result_of"]

_log = structlog.get_logger(__name__)


def result_of(record: RunRecord, include_history: bool) -> dict[str, Any]:
    """The ForkResult of an ended fork run."""
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
        self._forks = ForkTable(redis, keys, ttl_s=settings.run_retention_s)
        self._runs = RunStore(redis, keys)
        # The parent's memory scope: its forks' keys live in the same one.
        self._memory = memory

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
        allocation = await self._forks.allocate(  # one atomic script: no lock needed
            parent.session_id,
            request.parent_agent_call_id,
            request.spawn_key,
            limit=self._settings.max_forks_per_agent,
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
        if not allocation.created:
            try:
                existing = await self._runs.get(run_id)
            except RunNotFound:
                existing = None
            if existing is not None:
                if existing.status is RunStatus.QUEUED:
                    # Its job may have been lost with the worker that spawned it; arq
                    # ignores the enqueue if the job is there.
                    await self._queue.enqueue(RunRequest.model_validate(existing.request))
                return
        await self._inherit_experiences(info)
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
        record = RunRecord(
            run_id=run_id,
            session_id=request.session_id,
            agent=request.agent,
            status=RunStatus.QUEUED,
            max_attempts=self._settings.max_attempts,
            submitted_at=request.submitted_at,
            tenant=self._tenant,
            request=request.model_dump(mode="json"),
            fork=info,
        )
        calls = []
        if await self._runs.create(record):
            # Readers learn of the fork (a "queued" entry) before any later event of its
            # parent, so they know to wait for its end; sent with the job, one round trip.
            status = StatusEntry(run_id=run_id, status=RunStatus.QUEUED, fork=info)
            calls.append(
                status_call(
                    self._redis,
                    self._keys,
                    status,
                    session_id=request.session_id,
                    root_run_id=info.root_run_id,
                    maxlen=self._settings.stream_maxlen,
                )
            )
        calls.append(self._queue.enqueue_call(request))
        async with translate_errors("fork start"):
            await run_scripts(self._redis, calls)
        _log.info("fork spawned", run_id=run_id, depth=info.depth, parent=info.parent_run_id)

    async def _inherit_experiences(self, info: ForkInfo) -> None:
        """The fork starts with its parent's durable experiences (its own key from now)."""
        if info.source_memory_key is None or info.memory_key is None:
            return
        parent = await self._memory.load(info.source_memory_key)
        for experience in parent.experiences:
            await self._memory.add_experience(info.memory_key, experience.text)

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
        records = await self._runs.get_many(fork_run_id(root, f) for f in wanted)
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


def _lost(fork_id: str) -> dict[str, Any]:
    return fork_result(
        fork_id,
        "error",
        error_type="ForkLost",
        error_message="the fork's run record no longer exists (expired or deleted)",
    )
