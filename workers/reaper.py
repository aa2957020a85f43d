"""Crash recovery: resume turns whose worker stopped renewing their lease.

arq reruns a job from a dead worker only when its in-progress key expires (the job
timeout + 10 s, never refreshed). Here every running turn holds a lease it renews every
lease_ttl/3; every worker sweeps the lease table every reap_interval, and exactly one of
them claims each lapsed lease and re-queues the run as its next attempt, which resumes
from the last checkpoint. After max_attempts the run ends with an error instead.

It is also the safety net of fork gathers: a run suspended in a gather is normally
resumed by its last fork as that fork ends; if that fork's worker died in between, the
sweep of waiting runs (every waiting_sweep_s) resumes it instead.

And of a worker dying in the few milliseconds between taking a run's job from the queue
and starting the run: the run is still queued (or waiting, for a resumed segment), its
job is in progress for arq (for the job timeout, 24 h) and there is no lease to lapse.
The same sweep finds such runs; one still so on a sweep at least lease_ttl_s later is
recovered (a live worker starts a run it picked within milliseconds): a queued run is
re-queued as its next attempt, like a run whose lease lapsed; a waiting run's segment
job is discarded and the segment enqueued again.

After a Redis outage every lease looks expired: nobody could renew one while Redis was
away. So a reaper that has just seen an outage claims nothing for one lease_ttl_s, which
gives the attempts that are still alive time to renew (theirs win); leases still lapsed
after that are of dead workers. Whichever side wins a race, the outcome is consistent:
a claim fences the old attempt out of the lease, the stream and the checkpoint. A lease
handed back because its turn could not reach Redis is re-queued at once and is not
counted as a lost worker (up to max_handbacks times).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis

from orchestrator.errors import OrchestratorError, PayloadError, RunNotFound, StoreUnavailable
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.lifecycle import announce_end, end_run, resume_if_ready
from orchestrator.store.queue import JobQueue, job_id
from orchestrator.store.runs import LeaseTable, RunStore, WorkerRegistry
from workers.outage import Outage

_log = structlog.get_logger(__name__)


class Reaper:
    def __init__(self, redis: Redis, keys: Keys, settings: Settings, queue: JobQueue) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._queue = queue
        self._runs = RunStore(redis, keys)
        self._leases = LeaseTable(redis, keys)
        self._workers = WorkerRegistry(redis, keys)
        self._next_sweep = 0.0
        self.outage = Outage("reaper", max_delay_s=settings.reap_interval_s)
        # No claims before this (monotonic): the grace after an outage.
        self._claims_from = 0.0
        # Runs whose job was seen picked but not started:
        # (run, attempt, segment, status) -> first seen at (monotonic).
        self._unstarted: dict[tuple[str, int, int, RunStatus], float] = {}

    async def run_forever(self) -> None:
        while True:
            delay = self._settings.reap_interval_s
            try:
                await self.reap_once()
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + self._settings.waiting_sweep_s
                    await self.sweep_waiting()
                    await self.sweep_unstarted()
                    await self.tidy()
            except StoreUnavailable as exc:
                self._outage_seen()
                delay = self.outage.failed(exc)
            except OrchestratorError as exc:
                _log.warning("reaper pass failed", error=str(exc))
            else:
                self.outage.recovered()
            await asyncio.sleep(delay)

    def _outage_seen(self) -> None:
        """Redis was away: leases could not be renewed, so wait for live attempts to
        renew theirs before taking any (the grace runs from the end of the outage)."""
        self._claims_from = float("inf")

    @property
    def claiming(self) -> bool:
        if self._claims_from == float("inf") and not self.outage.down:
            self._claims_from = time.monotonic() + self._settings.lease_ttl_s
        return time.monotonic() >= self._claims_from

    async def sweep_waiting(self) -> list[str]:
        """Resume waiting runs whose forks have all ended; returns their ids."""
        resumed = []
        for run_id in await self._runs.waiting():
            if await resume_if_ready(self._runs, self._queue, run_id):
                resumed.append(run_id)
        return resumed

    async def sweep_unstarted(self) -> list[str]:
        """Recover runs picked by a worker that never started them (see the module
        docstring); returns their ids."""
        grace_s = self._settings.lease_ttl_s
        before_ms = (time.time() - grace_s) * 1000
        ids = [*await self._runs.queued_before(before_ms), *await self._runs.waiting()]
        jobs: dict[str, RunRecord] = {}
        for record in (await self._runs.get_many(ids)).values():
            if record.status is RunStatus.QUEUED:
                jobs[job_id(record.run_id, record.attempt, record.segment)] = record
            elif record.status is RunStatus.WAITING:  # its next segment's job
                jobs[job_id(record.run_id, record.attempt, record.segment + 1)] = record
        picked = await self._queue.in_progress(list(jobs))
        now = time.monotonic()
        seen = {(jobs[j].run_id, jobs[j].attempt, jobs[j].segment, jobs[j].status) for j in picked}
        self._unstarted = {k: self._unstarted.get(k, now) for k in seen}
        recovered: list[str] = []
        if not self.claiming:
            return recovered  # just after an outage: their workers may yet start them
        for key, since in list(self._unstarted.items()):
            if now - since < grace_s:
                continue
            del self._unstarted[key]
            run_id, attempt, segment, status = key
            _log.warning("run picked by a worker that never started it", run_id=run_id)
            if status is RunStatus.QUEUED:
                done = await self._recover(run_id, attempt)
            elif await self._queue.claim_recovery(job_id(run_id, attempt, segment + 1), grace_s):
                # One reaper only: another's discard could hit the job queued again here.
                await self._queue.discard(run_id, attempt, segment + 1)
                done = await resume_if_ready(self._runs, self._queue, run_id)
            else:
                done = False
            if done:
                recovered.append(run_id)
        return recovered

    async def tidy(self) -> None:
        """Keep the process-wide indexes bounded: drop index entries of expired run
        records and registry entries of long-dead workers (see `Keys.bounded`)."""
        await self._runs.prune_expired()
        await self._workers.prune()

    async def reap_once(self) -> list[str]:
        """One sweep; returns the run ids it resumed or failed."""
        handled: list[str] = []
        claiming = self.claiming
        for run_id in await self._leases.expired():
            try:
                if await self._reap(run_id, claiming):
                    handled.append(run_id)
            except PayloadError as exc:
                # A corrupt record stops its own recovery, never the others': it stays
                # as it is for an operator to read (logged on every sweep).
                _log.warning("reaper.corrupt_record", run_id=run_id, error=str(exc))
        return handled

    async def _reap(self, run_id: str, claiming: bool) -> bool:
        if not claiming and not await self._handed_back(run_id):
            return False  # the grace after an outage: its attempt may yet renew it
        if await self._parked_while_waiting(run_id):
            return False
        attempt = await self._leases.claim_expired(run_id)
        if attempt is None:
            return False  # another worker's reaper won this one
        return await self._recover(run_id, attempt)

    async def _handed_back(self, run_id: str) -> bool:
        owner = await self._leases.owner(run_id)
        return owner is not None and owner.get("state") == "handed_back"

    async def _parked_while_waiting(self, run_id: str) -> bool:
        """A suspended run whose worker stopped between suspending and parking its lease:
        park it now (claiming would fence out the attempt its forks will resume)."""
        try:
            record = await self._runs.get(run_id)
        except RunNotFound:
            return False
        if record.status is not RunStatus.WAITING:
            return False
        return await self._leases.park(run_id, record.attempt)

    async def _recover(self, run_id: str, attempt: int) -> bool:
        try:
            record = await self._runs.get(run_id)
        except RunNotFound:
            return False
        if record.attempt != attempt:
            return False
        if record.status.terminal:
            # It ended, but its worker may not have announced the end (Redis went away
            # part-way): finish that, once.
            await announce_end(self._redis, self._keys, self._settings, record, queue=self._queue)
            return False
        await self._queue.discard(run_id, attempt, record.segment)
        handbacks_before = await self._leases.handbacks(run_id)
        handbacks = min(handbacks_before, self._settings.max_handbacks)
        if attempt - handbacks >= record.max_attempts:
            await self._give_up(record.run_id, record.session_id, attempt - handbacks)
            return True
        if record.request is None:
            _log.error("cannot resume: run has no stored request", run_id=run_id)
            return False
        updated = await self._runs.transition(
            run_id,
            from_status={RunStatus.RUNNING, RunStatus.QUEUED},
            to=RunStatus.QUEUED,
            # Of two reapers recovering the same attempt, one moves it on.
            check=lambda current: current.attempt == attempt,
            attempt=attempt + 1,
        )
        if updated is None:
            return False
        request = RunRequest.model_validate(record.request).model_copy(
            update={"attempt": attempt + 1, "segment": record.segment}
        )
        await self._queue.enqueue(request)
        _log.warning(
            "run resumed by a new attempt (worker lost or run handed back)",
            run_id=run_id,
            next_attempt=attempt + 1,
            handbacks=handbacks_before,
        )
        return True

    async def _give_up(self, run_id: str, session_id: str, attempt: int) -> None:
        error = f"the run's worker was lost {attempt} time(s); giving up after max_attempts"
        ended = await end_run(
            self._redis,
            self._keys,
            self._settings,
            run_id=run_id,
            session_id=session_id,
            status=RunStatus.ERROR,
            error=error,
            error_type="WorkerLost",
            queue=self._queue,
        )
        if ended is not None:
            _log.error("run failed: worker lost too often", run_id=run_id, attempts=attempt)
