"""An arq `Worker` that is woken when work arrives, and that outlives Redis outages.

arq's worker sleeps `poll_delay` (0.5 s) between queue reads, so a job waits 250 ms on
average before it starts. This worker keeps arq's polling as a fallback but also listens
on a pub/sub channel that `JobQueue.enqueue` publishes to, and re-reads the queue the
moment a message arrives or one of its own jobs frees a slot. Redis load is unchanged
at idle (one subscribed connection, no faster polling).

arq lets a Redis error out of its poll loop, which ends the worker, and loses a slot for
good when one hits while a job is being picked. Here an outage is weather: the poll loop
and the wake listener log it once, retry with a capped backoff and carry on when Redis is
back; a slot is given back if picking its job failed; and a job whose bookkeeping failed
is repaired once Redis answers (picked again if it never started, removed if it ran);
a pick whose reply was lost is undone, if it happened.

arq's run_job reads a job after picking it and finishes it in a transaction of its own,
one round trip each, and formats every job's arguments for a log line nobody sees. Here
the pick reads it too and the finish is one script (`workers.arq_jobs`); the run keeps
arq's semantics (tries and max_tries, Retry, the timeout, aborts, results, hooks,
counters, arq's log lines when its logger is enabled) in the job's own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    keep_cronjob_progress,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import args_to_string, ms_to_datetime, timestamp_ms, to_ms, truncate
from arq.worker import JobExecutionFailed, Retry, RetryJob, Worker
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from orchestrator.aio import cancel_and_wait
from orchestrator.errors import StoreError
from orchestrator.store.connection import (
    is_unavailable,
    run_script,
    run_scripts,
    translate_errors,
)
from orchestrator.store.queue import wake_hint
from orchestrator.store.runs import Rider
from workers.arq_jobs import (
    FINISH_LUA,
    JOB_FINISH,
    JOB_START,
    PICK_LUA,
    PICK_MANY_CHUNK,
    PICK_MANY_LUA,
    REPAIR_PICK_LUA,
    RETRY_TTL_S,
    RUNNING,
    Picked,
    finish_args,
    finish_commands,
)
from workers.outage import Outage, until_available

# The keys and args a job's pick adds (a batch item's claim), or None.
PickClaim = Callable[[str], "tuple[list[str], list[str]] | None"]
# The key a job's pick also reads (a turn's run record), or None; and who is told the
# value read, `(job id, value)`, before the job runs.
PickRead = Callable[[str], "str | None"]
PickedRead = Callable[[str, bytes], None]


class StartedByPick(Protocol):
    """What a job's pick started for it; the job function sets `used` once it took it."""

    used: bool


class PickStart(Protocol):
    """A start a job's pick also makes (a turn's run), in the same script: its keys and
    arguments (`call`, after the key `PickRead` names), what it started (`picked`, given
    the start's reply: None if nothing), and undoing a start its job never took."""

    def call(self, job_id: str) -> tuple[list[str], list[str]] | None: ...

    def picked(self, job_id: str, reply: Any, at: float) -> StartedByPick | None: ...

    async def unused(self, job_id: str, started: StartedByPick) -> None: ...


_log = structlog.get_logger(__name__)
# arq's own logger: the job lines it would write are written the same (when enabled).
_arq_log = logging.getLogger("arq.worker")

# What a worker's poll loop survives: the path to Redis failing, or Redis refusing for a
# while (loading its data after a restart, out of memory, a replica not yet promoted).
_REDIS_FAILURES: tuple[type[BaseException], ...] = (redis_errors.RedisError, OSError)
# How long the wake listener waits for one message before checking its connection.
_LISTEN_S = 1.0
# At most this many job ids named by wake-ups are kept for the next pick (the poll that
# follows finds any others).
_HINTS = 64
# How long a job another worker was found running is not tried again. arq keeps running
# jobs in the queue, at its head: with every slot of 2 workers x 100 busy, each poll
# listed some 100 jobs of the other worker before a queued one, each a refused pick.
_ELSEWHERE_S = 1.0
# How long close() lets job tasks that are still running finish before arq cancels them.
_CLOSE_GRACE_S = 1.0
# A job that ended with no result to record (arq's `no_result`: a retry).
_NO_RESULT: Any = object()


@dataclass(slots=True)
class _Call:
    """What a picked job calls, as far as it is known (arq's defaults until decoded)."""

    job_try: int
    name: str = "<unknown>"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    enqueue_job_try: int | None = None
    enqueue_time_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: Any  # _NO_RESULT when there is none to record
    success: bool
    finish: bool  # False: the job stays queued (a retry)
    incr_score: int | None
    finished_ms: int


def _log_start(call: _Call, ref: str, start_ms: int, score: int) -> None:
    extra = f" try={call.job_try}" if call.job_try > 1 else ""
    if (start_ms - score) > 1200:
        extra += f" delayed={(start_ms - score) / 1000:0.2f}s"
    shown = args_to_string(call.args, call.kwargs)
    waited = (start_ms - call.enqueue_time_ms) / 1000
    _arq_log.info("%6.2fs → %s(%s)%s", waited, ref, shown, extra)


class WakeableWorker(Worker):
    """arq Worker + wake-ups on a pub/sub channel + surviving Redis outages + arq's job
    bookkeeping in two round trips per job (`workers.arq_jobs`)."""

    def __init__(
        self,
        *args: Any,
        wake_channel: str,
        pick_claim: PickClaim | None = None,
        pick_read: PickRead | None = None,
        picked_read: PickedRead | None = None,
        pick_start: PickStart | None = None,
        **kwargs: Any,
    ) -> None:
        """`pick_claim(job_id)`: what picking that job also claims (a batch item).
        `pick_read(job_id)`: a key picking that job also reads (in the same round trip);
        `picked_read(job_id, value)` gets its value, if any, before the job runs, unless
        `pick_start` (with `pick_read`: a turn's start, which reads that key) started
        something for the job with the pick: that goes to the job as `ctx[JOB_START]`."""
        super().__init__(*args, **kwargs)
        self._scripts: dict[str, Any] = {}
        self._pick_claim = pick_claim
        self._pick_read = pick_read
        self._picked_read = picked_read
        self._pick_start = pick_start
        # What this worker's picks write in the in-progress key (arq writes "1").
        self._picker = f"w:{uuid.uuid4().hex}"
        self._wake_channel = wake_channel
        self._wake = asyncio.Event()
        # Job ids the wake-ups named since the last poll: picked straight away, without
        # the queue read first (one round trip less from an enqueue to the job's start).
        self._hints: list[bytes] = []
        # Job ids another worker was running when this one tried them, and when: not
        # tried again for `_ELSEWHERE_S` (it finishes or is repaired by then, mostly).
        self._elsewhere: dict[bytes, float] = {}
        self._elsewhere_pruned = 0.0
        # The next pass reads the queue (False only after wake-ups that each named the
        # one job they queued, and that job was picked or found running elsewhere).
        self._poll_due = True
        # When the queue was last read: it is read at least every `poll_delay_s` however
        # many wake-ups came (jobs queued without one this worker heard: a lost wake-up,
        # a retry or deferred job coming due, arq's own enqueue).
        self._last_poll = 0.0
        self._listener: asyncio.Task[None] | None = None
        self._started: set[str] = set()  # job ids whose function has been called
        self.poll_outage = Outage("queue poll")
        self.malformed_entries = 0  # queue entries that are not job ids (removed)

    def wake(self) -> None:
        """Read the queue now, not at the next poll."""
        self._poll_due = True
        self._wake.set()

    async def drain(self, timeout: float, *, cancel_after: bool = False) -> int:
        """Stop taking jobs and wait (up to `timeout`) for the running ones to finish.
        With `cancel_after`, cancel those still running then (a cancelled turn hands its
        run back, to be resumed elsewhere from its checkpoint). Returns how many were."""
        self.allow_pick_jobs = False
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        late = [t for t in pending if not t.done()]
        if cancel_after and late:
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=5.0)
        return len(late)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        # A slot just freed up: look for queued work now, not at the next poll.
        self.wake()

    async def close(self) -> None:
        await cancel_and_wait(self._listener)
        # arq's close cancels the job tasks still running and then gathers them, which
        # raises CancelledError out of close() for a job that was only finishing its
        # bookkeeping (its result written a moment later). Take no new job and give
        # those a moment.
        await self.drain(_CLOSE_GRACE_S)
        await super().close()

    async def main(self) -> None:
        # Same as arq's main() except for the wait between iterations and outages. The
        # pool is always passed in by create_worker(), so arq's pool creation is not needed.
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._listener = asyncio.create_task(self._listen())
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                try:
                    await self._start_hinted()
                    overdue = loop.time() - self._last_poll >= self.poll_delay_s
                    if self._poll_due or self.burst or overdue:
                        self._poll_due = False
                        self._last_poll = loop.time()
                        await self._poll_iteration()
                    if self.burst and await self._burst_done():
                        return
                except _REDIS_FAILURES as exc:
                    self._poll_due = True
                    await asyncio.sleep(self.poll_outage.failed(exc))
                    continue
                self.poll_outage.recovered()
                until_poll = self._last_poll + self.poll_delay_s - loop.time()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, until_poll))
                except TimeoutError:
                    self._poll_due = True
        finally:
            await cancel_and_wait(self._listener)

    async def _start_hinted(self) -> None:
        """Pick the jobs the wake-ups named, if a slot is free (like the poll, whose queue
        read then skips them as running). A hint that is not a job, not due or taken by
        another worker is only a refused pick; the poll still reads the queue."""
        hints, self._hints = self._hints, []
        if not hints:
            return
        if self.allow_pick_jobs and not self.burst and self.job_counter < self.max_jobs:
            await self.start_jobs(hints)
        # A job a wake-up named that is neither running here nor elsewhere (not picked
        # for want of a slot, not due, gone): the queue is read, as without the hint.
        settled = {job_id.encode() for job_id in self.tasks} | self._elsewhere.keys()
        if any(hint not in settled for hint in hints):
            self._poll_due = True

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started():
            await asyncio.gather(*self.tasks.values())
            return True
        if await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    # -- picking and running jobs -------------------------------------------------------

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, except that the jobs for all the slots free at the moment are
        picked in one round trip (arq picked them one after the other), a slot is given
        back when picking its job fails (arq kept it: every outage cost the worker slots
        for good), a pick whose reply was lost is undone once Redis answers, and a picked
        job runs without another read. The jobs this worker is running (they stay queued
        until they finish) are not picked again, nor for a moment those another worker
        was found running: arq's pick would only refuse them."""
        running = {job_id.encode() for job_id, task in self.tasks.items() if not task.done()}
        running |= self._running_elsewhere()
        listed = (raw_id for raw_id in job_ids if raw_id not in running)
        for first in listed:
            await self.sem.acquire()  # waits for a free slot, like arq
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            batch = [first]
            while self.job_counter < self.max_jobs and not self.sem.locked():
                raw_id = next(listed, None)
                if raw_id is None:
                    break
                await self.sem.acquire()  # free: does not wait
                self.job_counter += 1
                batch.append(raw_id)
            await self._start_batch(batch)

    async def _start_batch(self, raw_ids: list[bytes]) -> None:
        """Pick these jobs (a slot taken for each) and start those that are ours."""
        at = self.loop.time()
        try:
            picks = await self._pick_many(raw_ids)
        except BaseException as exc:
            for _ in raw_ids:
                self._give_slot_back()
            if isinstance(exc, _REDIS_FAILURES):
                for raw_id in raw_ids:
                    await self._repair_pick(raw_id)
            raise
        for raw_id, picked in zip(raw_ids, picks, strict=True):
            if picked is None:
                self._give_slot_back()
                continue
            job_id = raw_id.decode()
            started = None
            if picked.start is not None and self._pick_start is not None:
                started = self._pick_start.picked(job_id, picked.start, at)
            if started is None and picked.read is not None and self._picked_read is not None:
                self._picked_read(job_id, picked.read)
            task = self.loop.create_task(self._run_picked(job_id, picked, started))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _running_elsewhere(self) -> set[bytes]:
        """The job ids found running on another worker less than `_ELSEWHERE_S` ago."""
        now = time.monotonic()
        if now - self._elsewhere_pruned >= _ELSEWHERE_S:
            self._elsewhere_pruned = now
            since = now - _ELSEWHERE_S
            self._elsewhere = {k: t for k, t in self._elsewhere.items() if t > since}
        return set(self._elsewhere)

    def _give_slot_back(self) -> None:
        self.job_counter -= 1
        self.sem.release()

    async def _pick(self, raw_id: bytes) -> Picked | None:
        """Mark the job in progress, count its try and read it; None if it is not ours to
        run (running elsewhere, finished, not due, or not a job)."""
        (picked,) = await self._pick_many([raw_id])
        return picked

    async def _pick_many(self, raw_ids: list[bytes]) -> list[Picked | None]:
        """`_pick` for several jobs in one round trip (`arq_jobs.PICK_LUA` each: arq took
        six per job, one job after the other). A job whose queue or keys hold the wrong
        type is not picked; any other refusal is raised (the picks are then repaired)."""
        picks: list[Picked | None] = [None] * len(raw_ids)
        calls: list[tuple[int, list[str], list[str]]] = []
        for n, raw_id in enumerate(raw_ids):
            try:
                job_id = raw_id.decode()
            except UnicodeDecodeError:
                self.malformed_entries += 1
                _log.warning("queue entry that is not a job id removed", entry=repr(raw_id[:100]))
                await self.pool.zrem(self.queue_name, raw_id)
                continue
            calls.append((n, *self._pick_call(job_id)))
        now = time.monotonic()
        for (n, _, _), reply in zip(calls, await self._send_picks(calls), strict=True):
            if reply == RUNNING:
                self._elsewhere[raw_ids[n]] = now
            elif not isinstance(reply, redis_errors.ResponseError):
                picks[n] = Picked.from_reply(reply)
            elif not _wrong_type(reply):
                raise reply  # Redis refuses writes (out of memory, a read-only replica)
        return picks

    async def _send_picks(self, calls: list[tuple[int, list[str], list[str]]]) -> list[Any]:
        """The replies of these picks (`PICK_LUA` each), in one round trip: a lone job's
        pick on its own, several jobs' in one script call per `PICK_MANY_CHUNK` of them
        (`PICK_MANY_LUA`), instead of a call each. A reply is the job's `ResponseError`
        when its script refused it."""
        if len(calls) == 1:
            (_, keys, args), script = calls[0], self._script(PICK_LUA)
            return await run_scripts(self.pool, [(script, keys, args)], raise_on_error=False)
        script = self._script(PICK_MANY_LUA)
        chunks = [calls[i : i + PICK_MANY_CHUNK] for i in range(0, len(calls), PICK_MANY_CHUNK)]
        many = []
        for chunk in chunks:
            keys = [key for _, k, _ in chunk for key in k]
            args = [str(len(chunk))]
            for _, k, a in chunk:
                args += [str(len(k)), str(len(a))]
            args += [arg for _, _, a in chunk for arg in a]
            many.append((script, keys, args))
        replies: list[Any] = []
        for chunk, reply in zip(
            chunks, await run_scripts(self.pool, many, raise_on_error=False), strict=True
        ):
            if isinstance(reply, list) and len(reply) == len(chunk):
                replies += reply
            elif isinstance(reply, redis_errors.ResponseError):
                replies += [reply] * len(chunk)  # the whole script refused (out of memory)
            else:  # the picks may have happened: raised as a Redis failure, they are repaired
                raise redis_errors.RedisError(f"job pick: unexpected reply: {reply!r:.200}")
        return replies

    def _pick_call(self, job_id: str) -> tuple[list[str], list[str]]:
        keys = [
            in_progress_key_prefix + job_id,
            self.queue_name,
            job_key_prefix + job_id,
            retry_key_prefix + job_id,
            abort_jobs_ss,
        ]
        args = [
            job_id,
            str(timestamp_ms()),
            str(int(self.in_progress_timeout_s * 1000)),
            self._picker,
            "1" if self.allow_abort_jobs else "0",
        ]
        claim = self._pick_claim(job_id) if self._pick_claim is not None else None
        if claim is not None:
            keys += claim[0]
            args += claim[1]
        elif self._pick_read is not None and (read := self._pick_read(job_id)) is not None:
            keys.append(read)
            start = self._pick_start.call(job_id) if self._pick_start is not None else None
            if start is not None:
                keys += start[0]
                args += start[1]
        return keys, args

    def _script(self, lua: str) -> Any:
        script = self._scripts.get(lua)
        if script is None:
            script = self._scripts[lua] = self.pool.register_script(lua)
        return script

    async def _repair_pick(self, raw_id: bytes) -> None:
        """A pick failed on the way to or from Redis: it may have happened. Once Redis
        answers, undo it if it did and the job is still this worker's (not counted as a
        try, picked again by whoever comes first)."""
        try:
            job_id = raw_id.decode()
        except UnicodeDecodeError:
            return  # never picked: not a job id
        keys = [in_progress_key_prefix + job_id, retry_key_prefix + job_id]

        async def repair() -> Any:
            async with translate_errors("job pick repair"):
                return await run_script(
                    self.pool, self._script(REPAIR_PICK_LUA), keys, [self._picker]
                )

        try:
            undone = await until_available(repair, Outage(f"repair of the pick of {job_id}"))
        except StoreError as exc:
            _log.warning("job pick repair failed", job_id=job_id, error=repr(exc))
            return
        if undone:
            _log.warning("a pick whose reply was lost was undone", job_id=job_id)
            self.wake()

    async def _run_picked(
        self, job_id: str, picked: Picked, started: StartedByPick | None = None
    ) -> None:
        try:
            await self._run(job_id, picked, started)
        except Exception as exc:  # a Redis failure in the bookkeeping, or a broken hook
            await self._repair(job_id, exc)
        finally:
            self._started.discard(job_id)
            if started is not None and not started.used:
                await self._undo_start(job_id, started)

    async def _undo_start(self, job_id: str, started: StartedByPick) -> None:
        """The job never took what its pick started for it (it failed before its function
        ran, or its function ignores it): undo that (`PickStart.unused`)."""
        assert self._pick_start is not None
        started.used = True
        try:
            await asyncio.shield(self._pick_start.unused(job_id, started))
        except Exception as exc:
            _log.warning("undoing a start made by a pick failed", job_id=job_id, error=repr(exc))

    async def _run(self, job_id: str, picked: Picked, started: StartedByPick | None = None) -> None:
        """arq's run_job for a job `_pick` has read: the same checks, hooks, counters,
        logs, timeout, result and finish, without arq's second read of the job."""
        start_ms = timestamp_ms()
        call = _Call(job_try=picked.job_try)
        failure = self._decode(job_id, picked, call)
        if failure is not None:
            return await self._fail(job_id, call, failure, start_ms)
        function = self.functions.get(call.name)
        if function is None:
            _arq_log.warning("job %s, function %r not found", job_id, call.name)
            missing = JobExecutionFailed(f"function {call.name!r} not found")
            return await self._fail(job_id, call, missing, start_ms)
        cron = hasattr(function, "next_run")
        ref = call.name if cron else f"{job_id}:{call.name}"
        if call.enqueue_job_try and call.enqueue_job_try > call.job_try:
            call.job_try = call.enqueue_job_try
            await self.pool.setex(retry_key_prefix + job_id, RETRY_TTL_S, str(call.job_try))
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if call.job_try > max_tries:
            waited = (timestamp_ms() - call.enqueue_time_ms) / 1000
            _arq_log.warning("%6.2fs ! %s max retries %d exceeded", waited, ref, max_tries)
            exceeded = JobExecutionFailed(f"max {max_tries} retries exceeded")
            return await self._fail(job_id, call, exceeded, start_ms, ref)
        await self._call(job_id, picked.score, call, function, ref, cron, started)

    def _decode(self, job_id: str, picked: Picked, call: _Call) -> BaseException | None:
        """Fill `call` from the picked job; the failure to record if it cannot run."""
        if picked.broken:
            self.malformed_entries += 1
            _log.warning("job whose keys are not arq's removed", job_id=job_id)
            return JobExecutionFailed("job keys of the wrong type")
        if picked.payload is None:
            _arq_log.warning("job %s expired", job_id)
            return JobExecutionFailed("job expired")
        try:
            name, args, kwargs, enqueue_job_try, enqueued_ms = deserialize_job_raw(
                picked.payload, deserializer=self.job_deserializer
            )
        except SerializationError as exc:
            _arq_log.warning("deserializing job %s failed: %s", job_id, exc)
            return exc
        call.name, call.args, call.kwargs = name, tuple(args), kwargs
        call.enqueue_job_try, call.enqueue_time_ms = enqueue_job_try, enqueued_ms
        if picked.aborted:
            waited = (timestamp_ms() - enqueued_ms) / 1000
            _arq_log.info("%6.2fs ⊘ %s:%s aborted before start", waited, job_id, name)
            return asyncio.CancelledError()
        return None

    async def _fail(
        self,
        job_id: str,
        call: _Call,
        exc: BaseException,
        start_ms: int,
        ref: str | None = None,
    ) -> None:
        """arq's finish_failed_job: a job that could not run is recorded as failed and
        removed (with its result, kept for keep_result)."""
        self.jobs_failed += 1
        result = self._result(job_id, call, False, exc, start_ms, timestamp_ms(), ref)
        keep = self.keep_result_forever or self.keep_result_s > 0
        await asyncio.shield(
            self._finish(
                job_id,
                finish=True,
                result=result if keep else None,
                result_ms=None if self.keep_result_forever else to_ms(self.keep_result_s),
            )
        )

    def _result(
        self,
        job_id: str,
        call: _Call,
        success: bool,
        result: Any,
        start_ms: int,
        finished_ms: int,
        ref: str | None = None,
    ) -> bytes | None:
        return serialize_result(
            call.name,
            call.args,
            call.kwargs,
            call.job_try,
            call.enqueue_time_ms,
            success,
            result,
            start_ms,
            finished_ms,
            ref or f"{job_id}:{call.name}",
            self.queue_name,
            job_id=job_id,
            serializer=self.job_serializer,
        )

    async def _call(
        self,
        job_id: str,
        score: int,
        call: _Call,
        function: Any,
        ref: str,
        cron: bool,
        started: StartedByPick | None = None,
    ) -> None:
        ctx = {
            **self.ctx,
            "job_id": job_id,
            "job_try": call.job_try,
            "enqueue_time": ms_to_datetime(call.enqueue_time_ms),
            "score": score,
        }
        rider = None if cron else Rider(self._finish_commands(job_id))
        if rider is not None:
            ctx[JOB_FINISH] = rider
        if started is not None:
            ctx[JOB_START] = started
        self._started.add(job_id)
        if self.on_job_start:
            await self.on_job_start(ctx)
        start_ms = timestamp_ms()
        if _arq_log.isEnabledFor(logging.INFO):  # arq formats the payload eagerly
            _log_start(call, ref, start_ms, score)
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        outcome = await self._execute(job_id, score, call, function, ref, ctx, timeout_s)
        forever = (
            self.keep_result_forever
            if function.keep_result_forever is None
            else function.keep_result_forever
        )
        keep_s = self.keep_result_s if function.keep_result_s is None else function.keep_result_s
        result_data = None
        finished = rider is not None and rider.confirmed  # by the job (`JOB_FINISH`)
        if not finished and outcome.result is not _NO_RESULT and (forever or keep_s > 0):
            result_data = self._result(
                job_id, call, outcome.success, outcome.result, start_ms, outcome.finished_ms, ref
            )
        if self.on_job_end:
            await self.on_job_end(ctx)
        if not finished:
            await asyncio.shield(
                self._finish(
                    job_id,
                    finish=outcome.finish,
                    result=result_data,
                    result_ms=None if forever else to_ms(keep_s),
                    incr_score=outcome.incr_score,
                    keep_in_progress_ms=to_ms(keep_cronjob_progress) if cron else None,
                )
            )
        if self.after_job_end:
            await self.after_job_end(ctx)

    async def _execute(
        self,
        job_id: str,
        score: int,
        call: _Call,
        function: Any,
        ref: str,
        ctx: dict[str, Any],
        timeout_s: float | None,
    ) -> _Outcome:
        """Run the function in this task (arq made one more per job), under its timeout;
        an abort (`job_tasks`) cancels it here."""
        started = time.monotonic()
        task = asyncio.current_task()
        assert task is not None
        self.job_tasks[job_id] = task
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    result = await function.coroutine(ctx, *call.args, **call.kwargs)
            finally:
                del self.job_tasks[job_id]
        except (Exception, asyncio.CancelledError) as exc:
            return self._failed(job_id, score, exc, ref, time.monotonic() - started)
        self.jobs_complete += 1
        if _arq_log.isEnabledFor(logging.INFO):
            shown = "" if result is None or not self.log_results else truncate(repr(result))
            _arq_log.info("%6.2fs ← %s ● %s", time.monotonic() - started, ref, shown)
        return _Outcome(result, True, True, None, timestamp_ms())

    def _failed(
        self, job_id: str, score: int, exc: BaseException, ref: str, took: float
    ) -> _Outcome:
        """arq's handling of a job that raised (or was cancelled or timed out)."""
        finished_ms = timestamp_ms()
        if self.retry_jobs and isinstance(exc, Retry):
            incr_score = exc.defer_score
            _arq_log.info("%6.2fs ↻ %s retrying job in %0.2fs", took, ref, (incr_score or 0) / 1000)
            if incr_score:
                incr_score += timestamp_ms() - score
            self.jobs_retried += 1
            return _Outcome(_NO_RESULT, False, False, incr_score, finished_ms)
        if job_id in self.aborting_tasks and isinstance(exc, asyncio.CancelledError):
            _arq_log.info("%6.2fs ⊘ %s aborted", took, ref)
            self.aborting_tasks.remove(job_id)
            self.jobs_failed += 1
            return _Outcome(exc, False, True, None, finished_ms)
        if self.retry_jobs and isinstance(exc, asyncio.CancelledError | RetryJob):
            _arq_log.info("%6.2fs ↻ %s cancelled, will be run again", took, ref)
            self.jobs_retried += 1
            return _Outcome(_NO_RESULT, False, False, None, finished_ms)
        extra = getattr(exc, "extra", None)
        if callable(extra):
            extra = extra()
        _arq_log.error(
            "%6.2fs ! %s failed, %s: %s", took, ref, type(exc).__name__, exc,
            exc_info=exc, extra={"extra": extra},
        )  # fmt: skip
        self.jobs_failed += 1
        return _Outcome(exc, False, True, None, finished_ms)

    async def _finish(
        self,
        job_id: str,
        *,
        finish: bool,
        result: bytes | None,
        result_ms: int | None,
        incr_score: int | None = None,
        keep_in_progress_ms: int | None = None,
    ) -> None:
        """arq's finish_job / finish_failed_job as one script (`arq_jobs.FINISH_LUA`)."""
        script, keys, args = self._finish_call(
            job_id,
            finish=finish,
            result=result,
            result_ms=result_ms,
            incr_score=incr_score,
            keep_in_progress_ms=keep_in_progress_ms,
        )
        await run_script(self.pool, script, keys, args)

    def _finish_commands(self, job_id: str) -> list[tuple[Any, ...]]:
        """`_finish(finish=True, result=None)` as commands for a run's end to run
        (`JOB_FINISH`)."""
        return finish_commands(
            job_id,
            queue=self.queue_name,
            abort_set=abort_jobs_ss if self.allow_abort_jobs else None,
            keys=[
                in_progress_key_prefix + job_id,
                retry_key_prefix + job_id,
                job_key_prefix + job_id,
            ],
        )

    def _finish_call(
        self,
        job_id: str,
        *,
        finish: bool,
        result: bytes | None = None,
        result_ms: int | None = None,
        incr_score: int | None = None,
        keep_in_progress_ms: int | None = None,
    ) -> tuple[Any, list[Any], list[Any]]:
        """The script call `_finish` makes."""
        keys: list[Any] = [
            in_progress_key_prefix + job_id,
            self.queue_name,
            abort_jobs_ss,
            result_key_prefix + job_id,
            retry_key_prefix + job_id,
            job_key_prefix + job_id,
        ]
        args = finish_args(
            job_id,
            finish=finish,
            result=result,
            result_ms=result_ms,
            incr_score=incr_score,
            keep_in_progress_ms=keep_in_progress_ms,
            aborts=self.allow_abort_jobs,
        )
        return self._script(FINISH_LUA), keys, args

    async def _repair(self, job_id: str, exc: Exception) -> None:
        """The bookkeeping of a picked job failed. Once Redis answers: a job that never
        started goes back to the queue (not in progress, tries reset), one that ran is
        removed, and so is one that could not be handled for any other reason (a broken
        job)."""
        weather = isinstance(exc, _REDIS_FAILURES)
        remove = job_id in self._started or not weather
        if not weather:
            self.malformed_entries += 1
        _log.warning(
            "job bookkeeping failed; repairing it once redis answers",
            job_id=job_id,
            remove=remove,
            unavailable=is_unavailable(exc),
            error=repr(exc),
        )

        async def repair() -> None:
            async with translate_errors("job repair"), self.pool.pipeline() as pipe:
                pipe.delete(in_progress_key_prefix + job_id, retry_key_prefix + job_id)
                if remove:
                    pipe.delete(job_key_prefix + job_id)
                    pipe.zrem(self.queue_name, job_id)
                await pipe.execute()

        await until_available(repair, Outage(f"repair of job {job_id}"))
        if not remove:
            self.wake()

    # -- wake-ups -----------------------------------------------------------------------

    def _heard(self, data: object) -> None:
        """A wake-up. The job it names (an enqueue's first; a batch's wake names none) is
        kept for the next pass to pick, if a slot is free (else the poll finds it when one
        frees up). The queue is read too, unless the wake-up named the one job its
        enqueue queued (then the pick, or its refusal, is all there is to know)."""
        job, sole = wake_hint(data)
        if job is None or not sole:
            self._poll_due = True
        if job is not None and self.job_counter < self.max_jobs and job not in self._hints:
            if len(self._hints) < _HINTS:
                self._hints.append(job)
            else:
                self._poll_due = True
        self._wake.set()

    async def _listen(self) -> None:
        pool: Redis = self.pool
        outage = Outage("wake channel", max_delay_s=2.0)
        while True:
            pubsub = pool.pubsub()
            try:
                await pubsub.subscribe(self._wake_channel)
                outage.recovered()
                while True:
                    # A bounded wait (not listen()): the connection's read timeout must
                    # not turn an idle channel into an error.
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_LISTEN_S
                    )
                    if message is not None and message.get("type") == "message":
                        self._heard(message.get("data"))
            except asyncio.CancelledError:
                raise
            except _REDIS_FAILURES as exc:
                # Lost the subscription: polling still runs; resubscribe when Redis is back.
                await asyncio.sleep(outage.failed(exc))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


def _wrong_type(error: redis_errors.ResponseError) -> bool:
    """A script refused because a key holds the wrong kind of value (not arq's)."""
    return str(error).startswith("WRONGTYPE")
