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
is repaired once Redis answers (picked again if it never started, removed if it ran).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from orchestrator.aio import cancel_and_wait
from orchestrator.store.batches import PICK_CLAIM_LUA
from orchestrator.store.connection import is_unavailable, run_script, translate_errors
from workers.outage import Outage, until_available

# Mark a job in progress unless it already is, or left the queue, or is not due yet: its
# queue score, else -1.
# KEYS in-progress, queue[, claims, meta]; ARGV job id, now (ms), in-progress ttl (ms)[,
# index, claim]: a batch item's job is claimed in the same step (PICK_CLAIM_LUA).
_PICK_LUA = (
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) then return -1 end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
if #KEYS == 4 then
"""
    + PICK_CLAIM_LUA
    + """
end
return score
"""
)

# The keys and args a job's pick adds (a batch item's claim), or None.
PickClaim = Callable[[str], "tuple[list[str], list[str]] | None"]

_log = structlog.get_logger(__name__)

# What a worker's poll loop survives: the path to Redis failing, or Redis refusing for a
# while (loading its data after a restart, out of memory, a replica not yet promoted).
_REDIS_FAILURES: tuple[type[BaseException], ...] = (redis_errors.RedisError, OSError)
# How long the wake listener waits for one message before checking its connection.
_LISTEN_S = 1.0
# How long close() lets job tasks that are still running finish before arq cancels them.
_CLOSE_GRACE_S = 1.0


class WakeableWorker(Worker):
    """arq Worker + wake-ups on a pub/sub channel + surviving Redis outages."""

    def __init__(
        self, *args: Any, wake_channel: str, pick_claim: PickClaim | None = None, **kwargs: Any
    ) -> None:
        """`pick_claim(job_id)`: what picking that job also claims (a batch item)."""
        on_job_start = kwargs.pop("on_job_start", None)

        async def job_started(ctx: dict[str, Any]) -> None:
            self._started.add(ctx["job_id"])
            if on_job_start is not None:
                await on_job_start(ctx)

        super().__init__(*args, on_job_start=job_started, **kwargs)
        self._pick_lua: Any = None
        self._pick_claim = pick_claim
        self._wake_channel = wake_channel
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._started: set[str] = set()  # job ids whose function has been called
        self.poll_outage = Outage("queue poll")
        self.malformed_entries = 0  # queue entries that are not job ids (removed)

    def wake(self) -> None:
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
        self._wake.set()

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
        try:
            while True:
                self._wake.clear()
                try:
                    await self._poll_iteration()
                    if self.burst and await self._burst_done():
                        return
                except _REDIS_FAILURES as exc:
                    await asyncio.sleep(self.poll_outage.failed(exc))
                    continue
                self.poll_outage.recovered()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)
        finally:
            await cancel_and_wait(self._listener)

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
        """arq's start_jobs, except that a slot is given back when picking its job fails
        (arq kept it: every outage cost the worker slots for good)."""
        for raw_id in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            try:
                score = await self._pick(raw_id)
            except BaseException:
                self._give_slot_back()
                raise
            if score is None:
                self._give_slot_back()
                continue
            job_id = raw_id.decode()
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _give_slot_back(self) -> None:
        self.job_counter -= 1
        self.sem.release()

    async def _pick(self, raw_id: bytes) -> int | None:
        """Mark the job in progress; its queue score, or None if it is not ours to run.
        One atomic script (arq's WATCH/EXISTS/ZSCORE/MULTI/PSETEX/EXEC took 4 round
        trips, one job after the other)."""
        try:
            job_id = raw_id.decode()
        except UnicodeDecodeError:
            self.malformed_entries += 1
            _log.warning("queue entry that is not a job id removed", entry=repr(raw_id[:100]))
            await self.pool.zrem(self.queue_name, raw_id)
            return None
        keys = [in_progress_key_prefix + job_id, self.queue_name]
        args = [job_id, str(timestamp_ms()), str(int(self.in_progress_timeout_s * 1000))]
        claim = self._pick_claim(job_id) if self._pick_claim is not None else None
        if claim is not None:
            keys += claim[0]
            args += claim[1]
        try:
            reply = await run_script(self.pool, self._pick_script, keys, args)
        except redis_errors.ResponseError:
            return None  # a queue or key of the wrong type: not a job to run
        if reply is None or reply == -1:
            return None  # running elsewhere, finished, or re-queued for later
        return int(float(reply))

    @property
    def _pick_script(self) -> Any:
        if self._pick_lua is None:
            self._pick_lua = self.pool.register_script(_PICK_LUA)
        return self._pick_lua

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except Exception as exc:  # arq lets Redis failures out (they ended the worker)
            await self._repair(job_id, exc)
        finally:
            self._started.discard(job_id)

    async def _repair(self, job_id: str, exc: Exception) -> None:
        """arq's bookkeeping of a job failed. Once Redis answers: a job that never started
        goes back to the queue (not in progress, tries reset), one that ran is removed, and
        so is one arq could not handle for any other reason (a broken job)."""
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
            self._wake.set()

    # -- wake-ups -----------------------------------------------------------------------

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
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except _REDIS_FAILURES as exc:
                # Lost the subscription: polling still runs; resubscribe when Redis is back.
                await asyncio.sleep(outage.failed(exc))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
