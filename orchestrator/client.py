"""The Python API for submitting runs and watching them from anywhere.

client = await orchestrator.connect("redis://127.0.0.1:6379/0")
run = await client.submit("myapp.agents:weather_chat", "Weather in Paris?", history=[])
async for output in run.stream():       # ResponseYield | EventYield, as in event mode
    ...
result = await run.result()
await run.abort("user_interrupt")
async for output in client.tail(run.session_id): ...
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel

from orchestrator.errors import RunError
from orchestrator.events import (
    EventYield,
    LLMChunkArriveEvent,
    MessageList,
    ResponseYield,
    chunk_text,
)
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest, RunStatus, StreamEntry, fork_run_id
from orchestrator.settings import Settings
from orchestrator.store.abort import AbortFlags
from orchestrator.store.connection import Redis
from orchestrator.store.connection import connect as connect_redis
from orchestrator.store.forks import ForkTable
from orchestrator.store.lifecycle import end_run
from orchestrator.store.queue import JobQueue, connect_queue
from orchestrator.store.runs import RunStore, WorkerRegistry
from orchestrator.store.streams import DEFAULT_BLOCK_MS, StreamReader

Output = ResponseYield | EventYield


class RunResult(BaseModel):
    """How a run ended."""

    run_id: str
    session_id: str
    status: RunStatus
    response: str | None = None
    messages: MessageList | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    abort_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.COMPLETED


def agent_address(agent: str | Callable[..., Any]) -> str:
    """`module:function` for an agent given as that string or as the function itself."""
    if isinstance(agent, str):
        if ":" not in agent:
            raise RunError(f"agent address {agent!r} must look like 'module:function'")
        return agent
    module = getattr(agent, "__module__", None)
    name = getattr(agent, "__name__", None)
    if not module or not name:
        raise RunError(f"cannot address agent {agent!r}; pass 'module:function'")
    return f"{module}:{name}"


class Run:
    """A handle on one submitted run; cheap to create, safe to share."""

    def __init__(self, client: Client, run_id: str, session_id: str) -> None:
        self._client = client
        self.run_id = run_id
        self.session_id = session_id
        self.last_stream_id: str | None = None

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, session_id={self.session_id!r})"

    async def entries(self, from_id: str | None = None) -> AsyncIterator[StreamEntry]:
        """Every stream entry of this run and its forks (events, responses, statuses),
        ending once the run and every fork of it have ended."""
        reader = self._client.reader
        async for entry in reader.tail(
            self.session_id, after=from_id, run_id=self.run_id, stop_at_terminal=True
        ):
            self.last_stream_id = entry.id
            yield entry

    async def stream(self, from_id: str | None = None) -> AsyncIterator[Output]:
        """This run's outputs as they happen, from the start or after `from_id`.

        Ends when the run ends. Resume after a disconnect with `stream(run.last_stream_id)`.
        """
        async for entry in self.entries(from_id):
            if entry.output is not None:
                yield entry.output

    async def stream_tuples(
        self, from_id: str | None = None
    ) -> AsyncIterator[tuple[str, MessageList]]:
        """`(chunk, history)` like `enable_event=False` text mode: text deltas, then `""`
        with the whole turn's history."""
        history: MessageList = []
        async for output in self.stream(from_id):
            if isinstance(output, EventYield):
                event = output.event
                if isinstance(event, LLMChunkArriveEvent) and output.origin.fork_id is None:
                    delta = chunk_text(event.chunk)
                    if delta:
                        yield delta, history
            elif output.origin is None or output.origin.fork_id is None:
                history = output.messages
        yield "", history

    async def status(self) -> RunRecord:
        return await self._client.runs.get(self.run_id)

    async def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run to end (pushed through the stream, not polled) and return it."""
        # The stream's end is noted before the record is read: an end written after the
        # read is after this point in the stream, so only the new entries are read.
        seen = await self._client.reader.last_id(self.session_id)
        record = await self.status()
        if not record.status.terminal:
            try:
                async with asyncio.timeout(timeout):
                    await self._wait_for_end(seen)
            except TimeoutError:
                raise TimeoutError(f"run {self.run_id} still running after {timeout}s") from None
            record = await self.status()
        return RunResult(
            run_id=record.run_id,
            session_id=record.session_id,
            status=record.status,
            response=record.response,
            messages=record.messages,
            usage=record.usage,
            error=record.error,
            error_type=record.error_type,
            abort_reason=record.abort_reason,
        )

    async def abort(self, reason: str = "") -> None:
        await self._client.abort(self.session_id, reason, run_id=self.run_id)

    async def _wait_for_end(self, after: str) -> None:
        async for entry in self._client.reader.tail(
            self.session_id, after=after, run_id=self.run_id
        ):
            status = entry.status
            if entry.run_id == self.run_id and status is not None and status.status.terminal:
                return


class Client:
    """Submit runs, read their streams, abort them. Create with `await connect(url)`."""

    def __init__(self, redis: Any, settings: Settings, *, blocking: Any = None) -> None:
        """`blocking`: a client for blocking stream reads (its read timeout above the
        block time); by default `redis` serves them too, with blocks cut to fit."""
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = redis
        self.blocking = blocking
        self.runs = RunStore(redis, self.keys)
        self.reader = StreamReader(redis, self.keys, blocking=blocking)
        self.queue = JobQueue(redis, self.keys)
        self.flags = AbortFlags(redis, self.keys)
        self.workers = WorkerRegistry(redis, self.keys)

    async def submit(
        self,
        agent: str | Callable[..., Any],
        message: str | None = None,
        *,
        history: MessageList | None = None,
        session_id: str | None = None,
        args: dict[str, Any] | None = None,
        template_params: dict[str, Any] | None = None,
        max_attempts: int | None = None,
        tenant: str | None = None,
    ) -> Run:
        """Queue one agent turn; returns at once with a handle on it."""
        run_id = uuid.uuid4().hex
        session = session_id or run_id
        options: dict[str, Any] = {}
        if template_params:
            options["template_params"] = template_params
        request = RunRequest(
            run_id=run_id,
            session_id=session,
            agent=agent_address(agent),
            message=message,
            args=args or {},
            history=history,
            attempt=1,
            submitted_at=time.time(),
            options=options,
        )
        record = RunRecord(
            run_id=run_id,
            session_id=session,
            agent=request.agent,
            status=RunStatus.QUEUED,
            attempt=1,
            max_attempts=max_attempts or self.settings.max_attempts,
            submitted_at=request.submitted_at,
            tenant=tenant,
            request=request.model_dump(mode="json"),
        )
        if session_id is not None:
            # An abort stops what is running in the session now; a new turn starts afresh.
            await self.flags.clear(session)
        await self.runs.create(record)
        await self.queue.enqueue(request)
        return Run(self, run_id, session)

    def run(self, run_id: str, session_id: str) -> Run:
        return Run(self, run_id, session_id)

    async def get_run(self, run_id: str) -> Run:
        record = await self.runs.get(run_id)
        return Run(self, record.run_id, record.session_id)

    async def tail(
        self, session_id: str, from_id: str | None = None, *, follow: bool = True
    ) -> AsyncIterator[Output]:
        """Every output of a session (all its runs and forks), from the start or after
        `from_id`; with follow=True it waits for more until cancelled."""
        async for entry in self.reader.tail(session_id, after=from_id, follow=follow):
            if entry.output is not None:
                yield entry.output

    async def abort(self, session_id: str, reason: str = "", *, run_id: str | None = None) -> None:
        """Abort everything running in a session. Runs still queued never start."""
        await self.flags.request(session_id, reason)
        if run_id is None:
            return
        # A run still in the queue ends right here, so nobody waits for a worker.
        await end_run(
            self.redis,
            self.keys,
            self.settings,
            run_id=run_id,
            session_id=session_id,
            status=RunStatus.ABORTED,
            from_status={RunStatus.QUEUED},
            abort_reason=reason,
        )

    async def live_forks(self, record: RunRecord) -> int:
        """How many forks spawned by this run have not ended yet (its direct forks; a
        fork's own forks keep it live until they end)."""
        fork_ids = await ForkTable(self.redis, self.keys).children(record.session_id, record.run_id)
        run_ids = [fork_run_id(record.root_run_id, fork_id) for fork_id in fork_ids]
        forks = await self.runs.get_many(run_ids)
        return sum(1 for fork in forks.values() if not fork.status.terminal)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        agent: str | None = None,
        tenant: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[RunRecord]:
        return await self.runs.list(
            status=status, agent=agent, tenant=tenant, offset=offset, limit=limit
        )

    async def close(self) -> None:
        try:
            if self.blocking is not None:
                await self.blocking.aclose()
        finally:
            await self.redis.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(url: str | None = None, *, settings: Settings | None = None) -> Client:
    """Connect to the orchestrator's Redis. `url` overrides `settings.redis_url`.

    Raises `StoreUnavailable` if Redis does not answer within the settings' timeouts;
    afterwards every call raises it (instead of hanging) when Redis stops answering.
    """
    settings = settings or Settings()
    if url is not None:
        settings = settings.model_copy(update={"redis_url": url})
    redis = await connect_queue(
        settings.redis_url,
        Keys(settings.key_prefix),
        timeout_s=settings.redis_timeout_s,
        connect_timeout_s=settings.redis_connect_timeout_s,
    )
    return Client(redis, settings, blocking=blocking_client(settings, settings.redis_timeout_s))


def blocking_client(settings: Settings, timeout_s: float) -> Redis:
    """A client for blocking stream reads: its read timeout is `timeout_s` past the block."""
    return connect_redis(
        settings.redis_url,
        timeout_s=timeout_s + DEFAULT_BLOCK_MS / 1000,
        connect_timeout_s=min(timeout_s, settings.redis_connect_timeout_s),
    )
