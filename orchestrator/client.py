"""The Python API for submitting runs and watching them from anywhere.

client = await orchestrator.connect("redis://127.0.0.1:6379/0")
run = await client.submit("myapp.agents:weather_chat", "Weather in Paris?", history=[])
async for output in run.stream():       # ResponseYield | EventYield, as in event mode
    ...
result = await run.result()
await run.abort("user_interrupt")           # this run and its forks
await client.abort_session(run.session_id)  # every run of the session
async for output in client.tail(run.session_id): ...

Tenants: a session belongs to the tenant whose submit started it. Calls made `tenant=X`
may only submit into, read and abort X's sessions (`SessionNotOwned` otherwise). Calls
made without a tenant act as the operator: they may use every session, and a run they
submit into a tenant's session belongs to that tenant.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pydantic import BaseModel

from orchestrator.deluge.batch import (
    BatchProgress,
    BatchSpec,
    decode_spec,
    encode_item,
    read_result,
)
from orchestrator.deluge.conversation import Conversation, Prompt
from orchestrator.deluge.models import ModelRegistry, default_registry
from orchestrator.deluge.response import APIResponse
from orchestrator.errors import (
    ConfigError,
    PayloadError,
    RunError,
    RunNotFound,
    SessionNotOwned,
)
from orchestrator.events import (
    EventYield,
    LLMChunkArriveEvent,
    MessageList,
    ResponseYield,
    chunk_text,
)
from orchestrator.keys import Keys
from orchestrator.runs import (
    RunRecord,
    RunRequest,
    RunStatus,
    RunStatusView,
    StreamEntry,
    fork_run_id,
)
from orchestrator.runtime.agent import AGENT_ATTRIBUTE
from orchestrator.runtime.function import FunctionSpec
from orchestrator.runtime.output import OutputParser
from orchestrator.settings import Settings
from orchestrator.store.abort import AbortFlags
from orchestrator.store.batches import BatchStore
from orchestrator.store.connection import connect_arq, translate_errors
from orchestrator.store.ends import BatchedReads, EndWatcher
from orchestrator.store.forks import ForkTable
from orchestrator.store.latency import LatencyHistograms
from orchestrator.store.lifecycle import end_run, resume_waiting_tree, waiting_segments
from orchestrator.store.queue import JobQueue
from orchestrator.store.runs import RunStore, WorkerRegistry
from orchestrator.store.sessions import SessionOwner, SessionTable
from orchestrator.store.streams import StreamReader, connect_blocking

Output = ResponseYield | EventYield


class RunResult(BaseModel):
    """How a run ended.

    `response` is the answer's text; for an `llm_function` it is the typed result as
    JSON text, and `value` gives it back typed.
    """

    run_id: str
    session_id: str
    status: RunStatus
    agent: str | None = None
    response: str | None = None
    messages: MessageList | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    abort_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.COMPLETED

    @property
    def value(self) -> Any:
        """The result as the agent returns it: for an `llm_function`, the value parsed
        into its return annotation (its module is imported here to learn the type, as
        `submit(fn)` already did); for any other agent, or when the module cannot be
        imported, the response text. Use `value_as(T)` to name the type yourself."""
        if self.response is None or self.agent is None:
            return self.response
        spec = _function_spec(self.agent)
        return self.response if spec is None else spec.output.from_json(self.response)

    def value_as(self, type_: Any) -> Any:
        """The response (JSON text, or plain text for `str`) validated as `type_`."""
        return OutputParser(type_).from_json(self.response)


def _function_spec(address: str) -> FunctionSpec | None:
    module_name, _, attr = address.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    spec = getattr(getattr(module, attr, None), AGENT_ATTRIBUTE, None)
    return spec if isinstance(spec, FunctionSpec) else None


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
        """Wait for the run to end and return it: woken by the run's end announcement
        (one pub/sub subscription per client), never by reading the session stream."""
        ended: list[RunRecord] = []
        client = self._client

        async def is_ended() -> bool:
            # Batched with the other waiters' reads; only an ended record is read whole.
            raw = await client.record_reads.get(client.keys.run(self.run_id))
            if raw is None:
                raise RunNotFound(f"no run {self.run_id!r}", run_id=self.run_id)
            if not RunStatusView.of_json(self.run_id, raw).status.terminal:
                return False
            ended.append(RunRecord.of_json(self.run_id, raw))
            return True

        def heard(raw: str) -> bool:
            # The record the end carried (untrusted, as a read's): taken only if it is
            # this run's and terminal; else (or corrupt) the waiter reads it.
            try:
                record = RunRecord.of_json(self.run_id, raw)
            except PayloadError:
                return False
            if record.run_id != self.run_id or not record.status.terminal:
                return False
            ended.append(record)
            return True

        try:
            async with asyncio.timeout(timeout):
                # Listening first, then the record: an end after the read is heard.
                await self._client.ends.wait(self.run_id, is_ended, heard)
        except TimeoutError:
            raise TimeoutError(f"run {self.run_id} still running after {timeout}s") from None
        record = ended[-1]
        return RunResult(
            run_id=record.run_id,
            session_id=record.session_id,
            status=record.status,
            agent=record.agent,
            response=record.response,
            messages=record.messages,
            usage=record.usage,
            error=record.error,
            error_type=record.error_type,
            abort_reason=record.abort_reason,
        )

    async def abort(self, reason: str = "") -> None:
        """Stop this run and every fork of it (other runs of the session go on)."""
        await self._client.abort(self.session_id, reason, run_id=self.run_id)


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
        self.sessions = SessionTable(redis, self.keys)
        self.latencies = LatencyHistograms(redis, self.keys)
        self.batches = BatchStore(redis, self.keys)
        self.ends = EndWatcher(redis, self.keys)
        self.record_reads = BatchedReads(redis)

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
        """Queue one agent turn; returns at once with a handle on it.

        The first submit into a session makes `tenant` its owner; submitting into a
        session another tenant owns raises `SessionNotOwned`.
        """
        _check_tenant(tenant)
        run_id = uuid.uuid4().hex
        session = session_id or run_id
        submitted_at = time.time()
        ttl_s, keep_s = self.settings.stream_retention_s, self.settings.run_retention_s
        claim = []
        if session_id is None:
            # A new session (named by the new run's id): nobody else can own it, abort
            # it or have read it, so its claim goes with the record and the job, in the
            # one round trip below (before the job: a worker finds the session claimed).
            owner = SessionOwner(tenant)
            claim.append(
                self.sessions.enter_call(
                    session,
                    tenant,
                    run_id,
                    submitted_at=submitted_at,
                    ttl_s=ttl_s,
                    keep_s=keep_s,
                    clear_abort=False,
                )
            )
        else:
            # Claimed, and only if that admits the caller: the session's flag cleared (an
            # abort of the session stops what is running in it now, each of those run
            # trees has its own flag too; a new turn starts afresh) and the run indexed
            # before it exists, so a session abort racing this submit still flags it.
            owner = await self.sessions.enter(
                session,
                tenant,
                run_id,
                submitted_at=submitted_at,
                ttl_s=ttl_s,
                keep_s=keep_s,
                clear_abort=True,
            )
            if not owner.admits(tenant):
                raise SessionNotOwned(session, tenant=tenant)
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
            submitted_at=submitted_at,
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
            # The operator's run in a tenant's session is that tenant's, so a session
            # (and its memory) never holds two tenants' runs.
            tenant=owner.tenant,
            request=request.model_dump(mode="json"),
        )
        # The record, then the job (a worker picking it finds the record): one round trip.
        await self.runs.create(record, then=[*claim, self.queue.enqueue_call(request)])
        return Run(self, run_id, session)

    async def may_access(self, session_id: str, tenant: str | None) -> bool:
        """True if a caller acting for `tenant` may read, join or abort the session: the
        operator (None) always; a tenant only if it owns the session."""
        if tenant is None:
            return True
        owner = await self.sessions.owner(session_id)
        return owner is not None and owner.admits(tenant)

    def run(self, run_id: str, session_id: str) -> Run:
        return Run(self, run_id, session_id)

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> Run:
        """A handle on an existing run (`RunNotFound` if it is not there or, for a
        `tenant`, not that tenant's)."""
        record = await self.visible_run(run_id, tenant)
        return Run(self, record.run_id, record.session_id)

    async def visible_run(self, run_id: str, tenant: str | None) -> RunRecord:
        """The run's record, if a caller acting for `tenant` may see it; `RunNotFound`
        otherwise (another tenant's run is indistinguishable from a missing one)."""
        record = await self.runs.get(run_id)
        if tenant is None:
            return record
        owner = await self.sessions.owner(record.session_id)
        if record.tenant != tenant or (owner is not None and not owner.admits(tenant)):
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        return record

    async def tail(
        self,
        session_id: str,
        from_id: str | None = None,
        *,
        follow: bool = True,
        tenant: str | None = None,
    ) -> AsyncIterator[Output]:
        """Every output of a session (all its runs and forks), from the start or after
        `from_id`; with follow=True it waits for more until cancelled."""
        if not await self.may_access(session_id, tenant):
            raise SessionNotOwned(session_id, tenant=tenant)
        async for entry in self.reader.tail(session_id, after=from_id, follow=follow):
            if entry.output is not None:
                yield entry.output

    async def abort(
        self, session_id: str, reason: str = "", *, run_id: str, tenant: str | None = None
    ) -> RunRecord | None:
        """Stop one run and every fork of it; other runs of the session go on.

        A run still queued ends at once; queued forks of it never start. A fork's run id
        stands for its whole tree (forks share their root's `root_run_id`). Returns the
        run's record after the abort was requested (None if it has none any more). To
        stop every run of a session, call `abort_session`.
        """
        try:
            record = await self.runs.get(run_id)
        except RunNotFound:
            return None
        if record.session_id != session_id:
            raise RunNotFound(f"no run {run_id!r} in session {session_id!r}", run_id=run_id)
        if tenant is not None and record.tenant != tenant:
            raise SessionNotOwned(session_id, tenant=tenant)  # before reading its tree
        # The tree's runs waiting in a gather are resumed, to end aborted, in the round
        # trip that sets the flag (after it: their segments see it) and pushes the abort
        # (before it: workers are woken for them before the running ones start ending),
        # at the front of the queue. One that suspends after this read is resumed by its
        # aborted forks' ends.
        forks = ForkTable(self.redis, self.keys)
        owner, segments = await asyncio.gather(
            self.sessions.owner(session_id),
            waiting_segments(self.runs, forks, session_id, record.root_run_id, root=record),
        )
        if tenant is not None and owner is not None and not owner.admits(tenant):
            raise SessionNotOwned(session_id, tenant=tenant)
        await self.flags.request_run(
            session_id,
            record.root_run_id,
            reason,
            then=self.queue.enqueue_calls(segments, front=True),
        )
        # A run still in the queue ends right here, so nobody waits for a worker.
        return await self._end_queued(record, reason) or record

    async def abort_session(
        self, session_id: str, reason: str = "", *, tenant: str | None = None
    ) -> list[str]:
        """Stop every run of the session and their forks; runs still queued never start.

        Returns the ids of the runs that were still live. A later submit into the
        session starts afresh.
        """
        if not await self.may_access(session_id, tenant):
            raise SessionNotOwned(session_id, tenant=tenant)
        await self.flags.request(session_id, reason)
        roots = await self.sessions.runs(session_id)
        records = await self.runs.get_many(roots)
        live = [records[r] for r in roots if r in records and not records[r].status.terminal]
        for record in live:
            # Its own flag too: a submit clearing the session flag must not revive it.
            await self.flags.request_run(session_id, record.run_id, reason)
        for record in live:
            await self._end_queued(record, reason)
            await self._resume_waiting(session_id, record.run_id)
        return [record.run_id for record in live]

    async def _resume_waiting(self, session_id: str, root_run_id: str) -> None:
        """The tree's runs waiting in a gather end now, not after their forks."""
        forks = ForkTable(self.redis, self.keys)
        await resume_waiting_tree(self.runs, self.queue, forks, session_id, root_run_id)

    async def _end_queued(self, record: RunRecord, reason: str) -> RunRecord | None:
        if record.status is not RunStatus.QUEUED:
            return None
        return await end_run(
            self.redis,
            self.keys,
            self.settings,
            run_id=record.run_id,
            session_id=record.session_id,
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

    @classmethod
    def lazy(cls, settings: Settings, *, timeout_s: float | None = None) -> Client:
        """A client whose Redis connections open on first use: it can be made while
        Redis is down (`connect()` waits for Redis to answer first).

        `timeout_s` bounds each connect and each reply (default: the settings'
        `redis_connect_timeout_s` and `redis_timeout_s`), so a Redis that is down or
        never answers is a `StoreUnavailable` after about that long, never a hang."""
        read_s = settings.redis_timeout_s if timeout_s is None else timeout_s
        connect_s = settings.redis_connect_timeout_s if timeout_s is None else timeout_s
        keys = Keys(settings.key_prefix)
        redis = connect_arq(
            settings.redis_url, keys.queue(), timeout_s=read_s, connect_timeout_s=connect_s
        )
        blocking = connect_blocking(
            settings.redis_url,
            timeout_s=read_s,
            connect_timeout_s=min(read_s, settings.redis_connect_timeout_s),
        )
        return cls(redis, settings, blocking=blocking)

    async def ping(self) -> None:
        """Return once Redis answers (`StoreUnavailable` if it does not in time)."""
        async with translate_errors("connect"):
            await self.redis.ping()

    async def close(self) -> None:
        try:
            await self.ends.close()
            if self.blocking is not None:
                await self.blocking.aclose()
        finally:
            await self.redis.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- batches: lm-deluge's client on the cluster (orchestrator.deluge, docs/deluge.md) --

    async def submit_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        model: str | Sequence[str] = "gpt-4o-mini",
        model_weights: Sequence[float] | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.75,
        top_p: float = 1.0,
        max_requests_per_minute: int = 1_000,
        max_tokens_per_minute: int = 100_000,
        limit_period_s: float = 60.0,
        limit_margin_s: float = 0.25,
        limiter_name: str | None = None,
        max_attempts: int = 5,
        item_attempts: int = 2,
        retry_delay: float = 0.5,
        stream: bool = False,
        tools: Sequence[str] = (),
        max_rounds: int = 5,
        registry: ModelRegistry | None = None,
        retention_s: int | None = None,
        tenant: str | None = None,
    ) -> Batch:
        """Answer many prompts (texts or `Conversation`s) on the workers, one job per
        item, with the requests/tokens-per-minute limits enforced across all workers
        together. Returns at once with a `Batch` handle (progress, results).

        Models are registered names (their registry entries travel with the batch; keys
        are read from each worker's environment). The limit is shared by every batch
        with the same `limiter_name` (default: the model names, within the tenant: two
        tenants share a limit only if they pass the same `limiter_name`). The batch
        belongs to `tenant`: only that tenant and the operator (no tenant) can read its
        progress and results. `tools` ("module:name"
        of `Tool`s in the workers' agent modules) makes each item an agent loop.
        `limit_period_s` is the limits' window (60: per minute); `limit_margin_s` widens
        it to absorb the variation of the HTTP hop (requests arrive at the provider at
        least a period apart, not just leave here so).
        """
        _check_tenant(tenant)
        names = [model] if isinstance(model, str) else list(model)
        registry = registry or default_registry
        default_limiter = "+".join(sorted(names))
        if tenant is not None:
            default_limiter = f"tenant:{tenant}:{default_limiter}"
        if not prompts:
            raise ConfigError("submit_batch needs at least one prompt")
        spec = BatchSpec(
            models=[registry.get(name) for name in names],
            model_weights=list(model_weights) if model_weights is not None else None,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            max_requests_per_minute=max_requests_per_minute,
            max_tokens_per_minute=max_tokens_per_minute,
            limit_period_s=limit_period_s,
            limit_margin_s=limit_margin_s,
            limiter_name=limiter_name or default_limiter,
            max_attempts=max_attempts,
            item_attempts=item_attempts,
            retry_delay=retry_delay,
            stream=stream,
            tools=list(tools),
            max_rounds=max_rounds,
        )
        batch_id = uuid.uuid4().hex
        await self.batches.create(
            batch_id,
            spec.model_dump_json(),
            [encode_item(prompt) for prompt in prompts],
            retention_s=retention_s or self.settings.run_retention_s,
            tenant=tenant,
        )
        await self.batches.enqueue(batch_id, list(range(len(prompts))))
        return Batch(self, batch_id, tenant=tenant)

    def batch(self, batch_id: str, *, tenant: str | None = None) -> Batch:
        """A handle on a batch submitted earlier, read as `tenant` (None: the operator)."""
        return Batch(self, batch_id, tenant=tenant)

    async def batch_progress(self, batch_id: str, *, tenant: str | None = None) -> BatchProgress:
        """Counts, usage and cost so far. `RunNotFound` for an unknown or expired id,
        and for another tenant's batch (indistinguishable from a missing one)."""
        counters = await self.batches.counters(batch_id)
        if not counters:
            raise RunNotFound(f"no batch {batch_id!r} (unknown, or expired)")
        progress = BatchProgress.from_counters(batch_id, counters)
        if not progress.visible_to(tenant):
            raise RunNotFound(f"no batch {batch_id!r} (unknown, or expired)")
        return progress

    async def recent_batches(
        self, limit: int = 100, *, tenant: str | None = None
    ) -> list[BatchProgress]:
        """The progress of the latest batches (at most 100 are kept), newest first;
        batches that expired meanwhile are left out, and a tenant sees only its own."""
        found: list[BatchProgress] = []
        recent = await self.batches.recent()
        for batch_id, counters in zip(
            recent, await self.batches.counters_many(recent), strict=True
        ):
            if counters:
                progress = BatchProgress.from_counters(batch_id, counters)
                if progress.visible_to(tenant):
                    found.append(progress)
            if len(found) >= limit:
                break
        return found

    async def batch_results(
        self, batch_id: str, *, tenant: str | None = None
    ) -> list[APIResponse | None]:
        """Every item's response in input order; None for an item not answered yet."""
        progress = await self.batch_progress(batch_id, tenant=tenant)
        stored = await self.batches.results(batch_id)
        return [
            read_result(stored[index])[0] if index in stored else None
            for index in range(progress.total)
        ]

    async def batch_conversations(
        self, batch_id: str, *, tenant: str | None = None
    ) -> list[Conversation | None]:
        """For an agent-loop batch: each item's conversation with every message added."""
        progress = await self.batch_progress(batch_id, tenant=tenant)
        stored = await self.batches.results(batch_id)
        return [
            read_result(stored[index])[1] if index in stored else None
            for index in range(progress.total)
        ]

    async def batch_spec(self, batch_id: str) -> BatchSpec:
        raw = await self.batches.spec(batch_id)
        if raw is None:
            raise RunNotFound(f"no batch {batch_id!r} (unknown, or expired)")
        return decode_spec(raw)


class Batch:
    """A handle on one submitted batch; cheap to create, safe to share."""

    def __init__(self, client: Client, batch_id: str, *, tenant: str | None = None) -> None:
        self._client = client
        self.batch_id = batch_id
        self.tenant = tenant

    def __repr__(self) -> str:
        return f"Batch(batch_id={self.batch_id!r})"

    async def progress(self) -> BatchProgress:
        return await self._client.batch_progress(self.batch_id, tenant=self.tenant)

    async def results(self) -> list[APIResponse | None]:
        return await self._client.batch_results(self.batch_id, tenant=self.tenant)

    async def wait(self, timeout: float | None = None, poll_s: float = 0.1) -> BatchProgress:
        """Return the progress once every item is done or failed (TimeoutError after
        `timeout` seconds)."""
        async with asyncio.timeout(timeout):
            while True:
                progress = await self.progress()
                if progress.finished:
                    return progress
                await asyncio.sleep(poll_s)


def _check_tenant(tenant: str | None) -> None:
    # Tenants become part of memory record names (inside a hash tag).
    if tenant is not None and (not tenant or "{" in tenant or "}" in tenant):
        raise RunError(f"tenant must be a non-empty string without '{{' or '}}': {tenant!r}")


async def connect(url: str | None = None, *, settings: Settings | None = None) -> Client:
    """Connect to the orchestrator's Redis. `url` overrides `settings.redis_url`.

    Raises `StoreUnavailable` if Redis does not answer within the settings' timeouts;
    afterwards every call raises it (instead of hanging) when Redis stops answering.
    """
    settings = settings or Settings()
    if url is not None:
        settings = settings.model_copy(update={"redis_url": url})
    client = Client.lazy(settings)
    try:
        await client.ping()
    except BaseException:
        await client.close()
        raise
    return client
