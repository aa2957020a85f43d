"""Run one attempt of an agent turn on this worker.

The job function hands the raw payload here. We validate it, take the run's lease, load
its checkpoint (a resumed attempt) or build a fresh turn, drive the ReAct loop, publish
every output to the session's stream, and record how it ended. The loop itself knows
nothing of Redis: it sees an AbortSignal (set by the AbortWatcher), a Checkpointer, a
MemoryStore and a ForkBackend.

A turn that waits in a gather for forks still running is suspended: its record goes to
WAITING, its lease is parked and the job returns, freeing the slot. The last of those
forks to end enqueues the run's next segment (`lifecycle.end_run`), which
continues from the checkpoint like any resumed attempt.

Redis going away is weather, not death. Before the turn starts, the job waits for Redis
to come back. Once it runs, a turn that cannot publish, checkpoint or end (its writes go
unconfirmed) stops, drops what it had not delivered, and hands its run back: when Redis
answers again the lease is expired at once, and the next reaper pass queues an attempt
that resumes from the last checkpoint. Every write of the turn is fenced by its attempt
(`EventPublisher.take_over`), so a replaced attempt never writes after its successor
started, and the run's event_seq stays gap-free.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic_core
import structlog
from redis.asyncio import Redis

from orchestrator.errors import (
    OrchestratorError,
    PayloadError,
    RunNotFound,
    StaleAttempt,
    StoreUnavailable,
)
from orchestrator.events import EventOrigin, EventYield, ReactEndEvent, ResponseYield
from orchestrator.keys import Keys
from orchestrator.ports import JournalLimits, MemoryLimits, ToolSession
from orchestrator.runs import RunRecord, RunRequest, RunStatus, StatusEntry, fork_run_id
from orchestrator.runtime.agent import AgentSpec
from orchestrator.runtime.loop import run_turn
from orchestrator.runtime.state import OriginContext, TurnState
from orchestrator.settings import Settings
from orchestrator.signals import AbortSignal
from orchestrator.store.abort import AbortWatcher
from orchestrator.store.journal import RedisSessionJournal
from orchestrator.store.lifecycle import end_run
from orchestrator.store.memory import MemoryScope, RedisMemoryStore
from orchestrator.store.queue import JobQueue, job_id, turn_job_head, turn_of_job
from orchestrator.store.runs import (
    LeaseTable,
    PickedStart,
    Rider,
    RunStore,
    Start,
    Started,
    pick_start_args,
)
from orchestrator.store.streams import (
    IDLE_TTL_S,
    EventPublisher,
    LastBatch,
    StreamTtls,
    TakenOver,
)
from workers.forks import RedisForkBackend
from workers.leases import LeaseKeeper
from workers.outage import Outage, until_available
from workers.registry import AgentRegistry

_log = structlog.get_logger(__name__)


class RunCheckpointer:
    """Checkpointer port on Redis (an EndingCheckpointer): the state rides in the
    publisher's next batch, written atomically with (never ahead of) the events published
    before it, fenced by the attempt: one round trip per checkpoint, events included."""

    def __init__(self, publisher: EventPublisher) -> None:
        self._publisher = publisher

    async def save(self, state: Any) -> None:
        self.save_later(state)
        await self._publisher.flush()

    def save_later(self, state: Any) -> None:
        """Queue the state with the outputs that follow; `_drive` flushes them all before
        the run ends or parks, so it is durable by then."""
        self._publisher.save_checkpoint(state.model_dump_json().encode())

    def ending(self) -> None:
        """The turn has answered: what it publishes until its end rides in the end's
        script (`EventPublisher.hold`, then `take_last`)."""
        self._publisher.hold()


@dataclass
class Outcome:
    status: RunStatus
    response: str | None = None
    messages: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    abort_reason: str | None = None
    # WAITING: the fork ids the suspended turn waits for.
    waiting_for: list[str] | None = None
    # The turn's outputs not yet written (its publisher's last batch), for its end to
    # write in the same round trip.
    last_batch: LastBatch | None = None

    def result(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "status": self.status.value, "error": self.error}


class _LeaseLost(Exception):
    """Another attempt owns this run now; stop without recording anything."""


class TurnExecutor:
    """Everything a worker needs to run turns; one per worker process."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        registry: AgentRegistry,
        watcher: AbortWatcher,
        worker_id: str,
        queue: JobQueue,
        keeper: LeaseKeeper,
        on_event: Callable[[EventYield], None] | None = None,
    ) -> None:
        """`on_event` sees every event a turn publishes (the worker's metrics)."""
        self._redis = redis
        self._on_event = on_event or _ignore
        self._keeper = keeper
        self._keys = keys
        self._settings = settings
        self._registry = registry
        self._watcher = watcher
        self._worker_id = worker_id
        self._queue = queue
        self._runs = RunStore(redis, keys)
        self._leases = LeaseTable(redis, keys)
        # Shared by this worker's publishers: a fan-out's forks push their session
        # stream's idle TTLs back once a minute between them, not once each.
        self._stream_ttls = StreamTtls()
        self._memory_limits = MemoryLimits.from_settings(settings)
        self._journal_limits = JournalLimits.from_settings(settings)
        # The starts this worker's picks make for turns (the arq worker's `pick_start`).
        self.starts = TurnStarts(keys, settings, worker_id, self._leases)

    async def execute(
        self, payload: Any, rider: Rider | None = None, picked: PickedStart | None = None
    ) -> dict[str, Any]:
        """Run the turn `payload` asks for; its result for the job. `rider`: the job's
        finish, run by the end's script when this job ends the run (its record then
        holds the outcome; `rider.confirmed` says it was). `picked`: the
        start the job's pick made (`TurnStarts`), taken here once the payload is checked
        against it (else the run is given back and started as without it)."""
        if picked is not None and picked.used:
            picked = None
        if picked is not None:
            picked.used = True
            if not picked.started:
                picked = None
        try:
            request = RunRequest.from_dict(payload)
        except PayloadError as exc:
            return await self._reject(payload, exc, picked)
        # Nothing has happened yet: while Redis is away, wait for it (keeping the slot).
        outage = Outage(f"start of run {request.run_id}")
        adopted = await self._adopt(request, picked) if picked is not None else None
        begun = await until_available(lambda: self._begin(request, rider, adopted), outage)
        if isinstance(begun, dict):
            return begun
        return await self._run(request, *begun, rider=rider)

    async def _reject(
        self, payload: Any, exc: PayloadError, picked: PickedStart | None = None
    ) -> dict[str, Any]:
        """A malformed payload: record the error on its run if it names one, keep serving.
        A run the job's pick started is ended by that (with its lease) if the payload
        names it, else given back."""
        # Name what is wrong (field and reason), so the run's error says why it was refused.
        message = f"malformed job payload: {exc}"
        _log.warning("rejected job payload", error=message)
        run_id = payload.get("run_id") if isinstance(payload, dict) else None
        ours = picked is not None and run_id == picked.run_id
        ended = False
        if isinstance(run_id, str):
            with contextlib.suppress(OrchestratorError):
                record = await self._runs.get(run_id)
                await self._finish(
                    record,
                    Outcome(RunStatus.ERROR, error=message, error_type="PayloadError"),
                    attempt=picked.attempt if picked is not None and ours else None,
                    release=ours,
                )
                ended = True
        if picked is not None and not (ours and ended):
            await self._give_back(picked)
        return {"run_id": run_id, "status": "rejected", "error": message}

    async def _adopt(self, request: RunRequest, picked: PickedStart) -> Start | None:
        """The start the job's pick made, if it is the one `_begin` would make for
        `request` (the run, attempt, segment, session and run tree its payload names);
        else the run it started is given back (the reaper queues its next attempt) and
        None: `_begin` starts the request's run as it always did."""
        if picked.matches(
            request.run_id, request.attempt, request.segment, request.session_id,
            request.root_run_id,
        ):  # fmt: skip
            try:
                return picked.start(IDLE_TTL_S)
            except PayloadError as exc:
                _log.warning(
                    "a run started by its pick is corrupt", run_id=picked.run_id, error=str(exc)
                )
        else:
            _log.warning(
                "a job's payload is not the turn its pick started",
                job_run_id=picked.run_id,
                attempt=picked.attempt,
                segment=picked.segment,
            )
        await self._give_back(picked)
        return None

    async def _give_back(self, picked: PickedStart) -> None:
        """Give back the run the job's pick started (once Redis answers)."""
        await self.starts.unused(job_id(picked.run_id, picked.attempt, picked.segment), picked)

    async def _begin(
        self, request: RunRequest, rider: Rider | None = None, adopted: Start | None = None
    ) -> tuple[RunRecord, str | None, TakenOver | None] | dict[str, Any]:
        """Move the run to RUNNING, take its lease and take over its writes: `(record,
        abort reason, take-over)`, or the job's result if the run is not this job's to
        run. Safe to repeat after a failure.

        One script reads the abort flags, checks the record (`_current`), takes over the
        run's writes for the attempt, moves it to RUNNING and takes the lease, all or
        nothing (`RunStore.start`), unless the job's pick did all that (`adopted`)."""
        if adopted is not None:
            return adopted.record, adopted.abort_reason, adopted.taken
        try:
            start = await self._runs.start(
                request.run_id,
                session_id=request.session_id,
                root_run_id=request.root_run_id,
                attempt=request.attempt,
                worker_id=self._worker_id,
                lease_ttl_s=self._settings.lease_ttl_s,
                check=lambda current: _current(current, request),
                # The fence TTL of the publisher `_drive` makes (its default idle TTL).
                take_over_ttl_s=IDLE_TTL_S,
                segment=request.segment,
                waiting_for=[],
            )
        except RunNotFound:
            _log.warning("job for an unknown run", run_id=request.run_id)
            return {"run_id": request.run_id, "status": "rejected", "error": "unknown run"}
        if start.outcome is Started.NOT_CURRENT:
            _log.info(
                "stale attempt skipped",
                run_id=request.run_id,
                attempt=request.attempt,
                segment=request.segment,
            )
            return {"run_id": request.run_id, "status": "superseded", "error": None}
        if start.outcome is Started.ABORTED:
            # Aborted before it ever started: it never starts (a started turn is driven
            # to its aborted end instead, so its history and ReactEnd are complete).
            outcome = Outcome(RunStatus.ABORTED, abort_reason=start.abort_reason)
            await self._finish(start.record, outcome, attempt=request.attempt, rider=rider)
            return outcome.result(request.run_id)
        if start.outcome is not Started.STARTED:
            return {"run_id": request.run_id, "status": "superseded", "error": None}
        return start.record, start.abort_reason, start.taken

    async def _run(
        self,
        request: RunRequest,
        started: RunRecord,
        reason: str | None,
        taken: TakenOver | None = None,
        *,
        rider: Rider | None = None,
    ) -> dict[str, Any]:
        try:
            outcome = await self._run_leased(request, started, reason, taken)
            if outcome.status is RunStatus.WAITING:
                await self._leases.park(request.run_id, request.attempt, self._worker_id)
                return outcome.result(request.run_id)
            await self._finish(started, outcome, attempt=request.attempt, release=True, rider=rider)
        except (_LeaseLost, StaleAttempt):
            # StaleAttempt: the end's last batch was refused, a newer attempt owns the
            # run's writes (the end wrote nothing), as when a batch of the turn is refused.
            _log.warning("lease lost; another attempt owns the run", run_id=request.run_id)
            return {"run_id": request.run_id, "status": "superseded", "error": "lease lost"}
        except StoreUnavailable as exc:
            return await self._hand_back(request, exc)
        except asyncio.CancelledError:
            # Shutdown past the grace period: hand the run back at once (the next reaper
            # pass on any worker resumes it from its checkpoint).
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._leases.renew(
                        request.run_id,
                        attempt=request.attempt,
                        worker_id=self._worker_id,
                        ttl_s=0.001,
                    )
                )
            raise
        return outcome.result(request.run_id)

    async def _hand_back(self, request: RunRequest, exc: StoreUnavailable) -> dict[str, Any]:
        """The turn could not reach Redis and has stopped, writing nothing more: once Redis
        answers, expire the lease so the next reaper pass queues an attempt that resumes
        from the checkpoint (counted as a hand-back, not as a lost worker)."""
        _log.warning(
            "redis unavailable mid-turn; handing the run back",
            run_id=request.run_id,
            attempt=request.attempt,
            error=str(exc),
        )
        outage = Outage(f"hand-back of run {request.run_id}")
        await until_available(
            lambda: self._leases.hand_back(request.run_id, request.attempt), outage
        )
        return {"run_id": request.run_id, "status": "handed_back", "error": str(exc)}

    async def _run_leased(
        self,
        request: RunRequest,
        record: RunRecord,
        abort_reason: str | None,
        taken: TakenOver | None = None,
    ) -> Outcome:
        turn = asyncio.create_task(
            self._drive_until_done_or_parked(request, record, abort_reason, taken)
        )
        lost = False

        def on_lost() -> None:
            nonlocal lost
            lost = True
            turn.cancel()

        # Renewed from the keeper's own thread: this turn's own load cannot starve it.
        hold = self._keeper.hold(request.run_id, request.attempt, on_lost)
        try:
            return await turn
        except asyncio.CancelledError:
            if lost:
                raise _LeaseLost from None
            raise
        finally:
            self._keeper.drop(hold)

    async def _drive_until_done_or_parked(
        self,
        request: RunRequest,
        record: RunRecord,
        abort_reason: str | None,
        taken: TakenOver | None = None,
    ) -> Outcome:
        """Drive the turn; if it suspends in a gather, park the run as WAITING, unless its
        forks have all ended meanwhile, in which case carry straight on (taking over the
        run's writes again: `taken`, the start's take-over, is the first drive's)."""
        while True:
            outcome = await self._drive(request, record, abort_reason, taken)
            taken = None
            if outcome.status is not RunStatus.WAITING:
                return outcome
            forks = [fork_run_id(request.root_run_id, f) for f in outcome.waiting_for or []]
            # `waiting` was announced by `_drive`, before suspending.
            if await self._runs.suspend(
                request.run_id,
                attempt=request.attempt,
                segment=request.segment,
                waiting_for=forks,
            ):
                _log.info("turn suspended in gather", run_id=request.run_id, forks=len(forks))
                return outcome

    async def _drive(
        self,
        request: RunRequest,
        record: RunRecord,
        abort_reason: str | None,
        taken: TakenOver | None = None,
    ) -> Outcome:
        publisher = EventPublisher(
            self._redis,
            self._keys,
            session_id=request.session_id,
            run_id=request.run_id,
            root_run_id=request.root_run_id,
            maxlen=self._settings.stream_maxlen,
            items_per_entry=self._settings.stream_items_per_entry,
            ttl_after_end_s=self._settings.stream_retention_s,
            attempt=request.attempt,
            stream_ttls=self._stream_ttls,
            taken=taken,
        )
        try:
            outcome = await self._drive_with(request, publisher, record, abort_reason)
            if outcome.status is RunStatus.WAITING:
                # Announced with the gather's last events, before suspending: once
                # suspended, the last fork may resume the run elsewhere at once, and
                # `waiting` must never follow the resumed run's events.
                publisher.publish_status(
                    StatusEntry(run_id=request.run_id, status=RunStatus.WAITING, fork=request.fork)
                )
                await publisher.flush()
            else:
                # What is left rides in the end's script (`_finish`): one round trip.
                outcome.last_batch = await publisher.take_last()
        except StaleAttempt as exc:
            publisher.abandon()
            raise _LeaseLost from exc
        except BaseException:
            # Handed back, replaced or cancelled: what was not delivered is dropped, and
            # the next attempt redoes it from the checkpoint (which never points past it).
            publisher.abandon()
            raise
        return outcome

    async def _drive_with(
        self,
        request: RunRequest,
        publisher: EventPublisher,
        record: RunRecord,
        abort_reason: str | None,
    ) -> Outcome:
        try:
            spec = self._registry.resolve(request.agent)
            memory = self._memory_for(request, spec, record)
            state = await self._initial_state(request, spec, publisher, memory)
        except (StoreUnavailable, StaleAttempt):
            raise
        except OrchestratorError as exc:
            return Outcome(RunStatus.ERROR, error=str(exc), error_type=type(exc).__name__)
        signal = AbortSignal()
        if abort_reason is not None:
            signal.abort(abort_reason)  # a resumed turn of an aborted run tree ends at once
        self._watcher.watch(request.session_id, signal, request.root_run_id)
        forks = self._fork_backend(request, spec, record, memory)
        session = ToolSession(
            session_id=request.session_id,
            run_id=request.run_id,
            fork_id=request.fork.fork_id if request.fork is not None else None,
            journal=RedisSessionJournal(
                self._redis, self._keys, session_id=request.session_id, limits=self._journal_limits
            ),
        )
        checkpointer = RunCheckpointer(publisher)
        end: ReactEndEvent | None = None
        final: ResponseYield | None = None
        last_origin: EventOrigin | None = None
        try:
            async for output in run_turn(
                spec,
                state,
                abort=signal,
                checkpointer=checkpointer,
                memory=memory,
                origin=_origin(request, spec, state),
                forks=forks,
                session=session,
                copy_outputs=False,  # each output is published (encoded) before the next
            ):
                if isinstance(output, ResponseYield):
                    # Say which agent answered (readers of a fork tree need to know).
                    output.origin = output.origin or last_origin
                    final = output
                else:
                    last_origin = output.origin
                    if isinstance(output.event, ReactEndEvent):
                        end = output.event
                    self._on_event(output)
                publisher.publish(output)
        except (StoreUnavailable, StaleAttempt):
            raise  # weather (the run is handed back) or replaced: not the run's failure
        except OrchestratorError as exc:
            return _outcome_from(end, final, RunStatus.ERROR, exc)
        except Exception as exc:
            _log.exception("agent turn crashed", run_id=request.run_id)
            return _outcome_from(end, final, RunStatus.ERROR, exc)
        finally:
            self._watcher.unwatch(request.session_id, signal, request.root_run_id)
        if state.waiting_for and end is None:
            return Outcome(RunStatus.WAITING, waiting_for=list(state.waiting_for))
        aborted = bool(end and end.extra.get("aborted"))
        status = RunStatus.ABORTED if aborted else RunStatus.COMPLETED
        outcome = _outcome_from(end, final, status, None)
        if aborted and end is not None:
            outcome.abort_reason = str(end.extra.get("abort_reason") or signal.reason)
        return outcome

    def _memory_for(
        self, request: RunRequest, spec: AgentSpec, record: RunRecord
    ) -> RedisMemoryStore | None:
        """The run's SelfReference memory: scoped to its session (or, if the agent opts
        in, its tenant), so no other session's or tenant's turns ever reach it."""
        if spec.self_reference is None:
            return None
        scope = MemoryScope.for_run(
            spec.self_reference.memory_scope, tenant=record.tenant, session_id=request.session_id
        )
        return RedisMemoryStore(self._redis, self._keys, scope=scope, limits=self._memory_limits)

    def _fork_backend(
        self,
        request: RunRequest,
        spec: AgentSpec,
        record: RunRecord,
        memory: RedisMemoryStore | None,
    ) -> RedisForkBackend | None:
        """Forks for agents with a SelfReference (they are SelfReference primitives)."""
        if spec.self_reference is None or memory is None:
            return None
        return RedisForkBackend(
            self._redis,
            self._keys,
            self._settings,
            self._queue,
            request=request,
            tenant=record.tenant,
            memory=memory,
        )

    async def _initial_state(
        self,
        request: RunRequest,
        spec: AgentSpec,
        publisher: EventPublisher,
        memory: RedisMemoryStore | None,
    ) -> TurnState:
        # From here on this attempt owns the run's writes (an older one is refused), and
        # events an older attempt published after its last checkpoint are numbered on from.
        last, saved = await publisher.take_over_and_load()
        state = await self._saved_or_fresh_state(request, spec, saved, memory)
        if last is not None and last + 1 > state.next_event_seq:
            state.next_event_seq = last + 1
        return state

    async def _saved_or_fresh_state(
        self,
        request: RunRequest,
        spec: AgentSpec,
        saved: bytes | None,
        memory: RedisMemoryStore | None,
    ) -> TurnState:
        if saved is not None:
            _log.info(
                "resuming turn from checkpoint", run_id=request.run_id, attempt=request.attempt
            )
            return TurnState.model_validate_json(saved)
        if request.fork is not None:
            return await spec.fork_state(
                request.history or [],
                request.message or "",
                fork_id=request.fork.fork_id,
                depth=request.fork.depth,
                memory_key=request.fork.memory_key,
                session_id=request.session_id,
                agent_call_id=request.run_id,
                memory=memory,
            )
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = dict(request.args)
        if request.message is not None:
            args = (request.message,)
        if request.history is not None:
            kwargs["history"] = request.history
        template_params = request.options.get("template_params")
        if template_params:
            kwargs["_template_params"] = template_params
        fresh: TurnState = await spec.initial_state(
            args,
            kwargs,
            session_id=request.session_id,
            agent_call_id=request.run_id,
            memory=memory,
        )
        return fresh

    async def _finish(
        self,
        record: RunRecord,
        outcome: Outcome,
        *,
        attempt: int | None = None,
        release: bool = False,
        rider: Rider | None = None,
    ) -> None:
        """End the run, dropping its checkpoint and (`release`) giving up the lease of
        `attempt` in the same script (`end_run`), which also writes the turn's last
        batch of outputs first (`outcome.last_batch`; `StaleAttempt` if a newer attempt
        owns the run's writes: nothing is written). `rider` rides in its round trip."""
        ended = await end_run(
            self._redis,
            self._keys,
            self._settings,
            run_id=record.run_id,
            session_id=record.session_id,
            status=outcome.status,
            response=outcome.response,
            messages=outcome.messages,
            usage=outcome.usage,
            error=outcome.error,
            error_type=outcome.error_type,
            abort_reason=outcome.abort_reason,
            queue=self._queue,
            attempt=attempt,
            release=release,
            drop_checkpoint=True,
            batch=outcome.last_batch,
            rider=rider,
        )
        # Not ended here: it had already ended (e.g. aborted while queued); the lease of
        # this attempt still goes.
        if ended is None and release and attempt is not None:
            await self._leases.release(record.run_id, attempt)


class TurnStarts:
    """The start of a turn's run made by its job's pick, in the pick's round trip (the arq
    worker's `PickStart`): the start `TurnExecutor._begin` would make for the attempt and
    segment the job id names (`RunStore.start` with `_current`, taking over the run's
    writes), when the pick's script can prove it is that start (`PICK_START_LUA`);
    the executor checks the job's payload against it before it runs the turn."""

    def __init__(self, keys: Keys, settings: Settings, worker_id: str, leases: LeaseTable) -> None:
        self._keys = keys
        self._settings = settings
        self._worker_id = worker_id
        self._leases = leases

    def call(self, job_id: str) -> tuple[list[str], list[str]] | None:
        """The start's keys and arguments in the pick of `job_id` (None: not a turn's)."""
        turn = turn_of_job(job_id)
        if turn is None:
            return None
        run_id, attempt, segment = turn
        return pick_start_args(
            self._keys,
            run_id,
            attempt=attempt,
            segment=segment,
            worker_id=self._worker_id,
            lease_ttl_s=self._settings.lease_ttl_s,
            take_over_ttl_s=IDLE_TTL_S,
            job_head=turn_job_head(run_id),
        )

    def picked(self, job_id: str, reply: Any, at: float) -> PickedStart | None:
        """What the pick of `job_id` started (None: nothing), its start's reply being
        `reply` and the pick sent at loop time `at`."""
        turn = turn_of_job(job_id)
        if turn is None:
            return None
        started = PickedStart(*turn, reply=reply, at=at)
        return started if started.started else None

    async def unused(self, job_id: str, started: Any) -> None:
        """Give back a run a pick started that its job did not run: once Redis answers,
        its lease expires (a hand-back, not a lost worker) and the next reaper pass
        queues its next attempt."""
        assert isinstance(started, PickedStart)
        _log.warning("giving back a run its pick started", run_id=started.run_id, job_id=job_id)
        outage = Outage(f"hand-back of run {started.run_id}")
        await until_available(
            lambda: self._leases.hand_back(started.run_id, started.attempt), outage
        )


def _ignore(output: EventYield) -> None:
    pass


def _current(record: RunRecord, request: RunRequest) -> bool:
    """Is `request` the job the run is expecting now (not a stale attempt or segment)?"""
    if record.status.terminal or record.attempt != request.attempt:
        return False
    if record.status is RunStatus.WAITING:
        return request.segment == record.segment + 1
    return request.segment == record.segment


def _origin(request: RunRequest, spec: AgentSpec, state: TurnState) -> OriginContext:
    """The origin fields of the run's events: where the agent sits in its fork tree."""
    selfref_instance = request.root_run_id if spec.self_reference is not None else None
    fork = request.fork
    if fork is None:
        return OriginContext(selfref_instance_id=selfref_instance, memory_key=state.memory_key)
    return OriginContext(
        parent_agent_call_id=fork.parent_run_id,
        fork_id=fork.fork_id,
        fork_depth=fork.depth,
        fork_seq=fork.fork_seq,
        selfref_instance_id=selfref_instance,
        source_memory_key=fork.source_memory_key,
        memory_key=fork.memory_key,
        tool_name=fork.tool_name,
        tool_call_id=fork.tool_call_id,
    )


def _outcome_from(
    end: ReactEndEvent | None,
    final: ResponseYield | None,
    status: RunStatus,
    exc: BaseException | None,
) -> Outcome:
    response = final.response if final is not None else (end.final_response if end else None)
    messages = final.messages if final is not None else (end.final_messages if end else None)
    return Outcome(
        status=status,
        response=_response_text(response),
        messages=messages,
        usage=end.total_token_usage if end else None,
        error=str(exc) if exc is not None else None,
        error_type=type(exc).__name__ if exc is not None else None,
    )


def _response_text(response: Any) -> str | None:
    """The run record's response: text as is, a typed result (llm_function) as JSON."""
    if response is None or isinstance(response, str):
        return response
    return pydantic_core.to_json(response).decode()
