"""Ending a run: one place that moves a run to a terminal status and closes its stream
(keeping the session's owner as long as the stream), and wakes the parent of a fork when
its last awaited fork has ended."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import structlog
from redis.asyncio import Redis

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest, RunStatus, StatusEntry, fork_run_id
from orchestrator.settings import Settings
from orchestrator.store.connection import run_scripts, translate_errors
from orchestrator.store.forks import ForkTable
from orchestrator.store.queue import JobQueue
from orchestrator.store.runs import Ended, EndWrites, Rider, RunStore
from orchestrator.store.streams import EventPublisher, LastBatch

_log = structlog.get_logger(__name__)


async def end_run(
    redis: Redis,
    keys: Keys,
    settings: Settings,
    *,
    run_id: str,
    session_id: str,
    status: RunStatus,
    from_status: Collection[RunStatus] = (RunStatus.QUEUED, RunStatus.RUNNING),
    queue: JobQueue | None = None,
    attempt: int | None = None,
    release: bool = False,
    drop_checkpoint: bool = False,
    batch: LastBatch | None = None,
    rider: Rider | None = None,
    **fields: Any,
) -> RunRecord | None:
    """Record how a run ended, append its terminal status entry to the session stream (so
    readers know it ended) and start the retention clocks. Returns None, writing nothing,
    if the run was no longer in `from_status` (it had already ended).

    The ending worker's own bookkeeping (`drop_checkpoint`: its checkpoint's state;
    `release`: the lease of `attempt`) and the terminal status entry are written with
    the terminal record, in one script (one round trip), so a reader woken by the
    terminal entry finds the attempt done. Only the parent's next segment (below) takes
    a second round trip, when this was the last fork it waited for.

    With `attempt`, only that attempt of the run may end it, and ending it again with the
    same status (a retry after Redis failed part-way) completes whatever the first try
    left undone, never twice.

    With `queue`, a fork's parent waiting for it is resumed if this was the last fork it
    waited for (without, the waiting-run sweep of the workers does it a little later).

    `batch`: the run's publisher's last batch (`EventPublisher.take_last`), written in the
    same script before the terminal entry (or on its own if the run had ended already);
    `StaleAttempt`, writing nothing, if a newer attempt owns the run's writes.

    `rider`: commands the end's script runs once the end is written (`Rider`: the job's
    arq finish)."""
    writes = _end_writes(
        settings,
        session_id,
        release_attempt=attempt if release else None,
        drop_checkpoint=drop_checkpoint,
        wake_parent=queue is not None,
        batch=batch,
        rider=rider,
    )
    ended = await RunStore(redis, keys).end(
        run_id,
        status=status,
        from_status=from_status,
        writes=writes,
        attempt=attempt,
        finished_at=time.time(),
        **fields,
    )
    if ended is None:
        if batch is not None:
            await batch.send()  # as the publisher would have sent it before the end
        return None
    await _resume_parent(redis, ended, queue)
    return ended.record


async def announce_end(
    redis: Redis,
    keys: Keys,
    settings: Settings,
    record: RunRecord,
    *,
    queue: JobQueue | None = None,
) -> None:
    """The rest of ending a run whose record is terminal (its end was cut short): its
    terminal status entry (one, however often this is called), the retention clocks,
    the run-ends announcement and its waiting parent."""
    writes = _end_writes(settings, record.session_id, wake_parent=queue is not None)
    ended = await RunStore(redis, keys).finish(record, writes)
    await _resume_parent(redis, ended, queue)


def _end_writes(
    settings: Settings,
    session_id: str,
    *,
    release_attempt: int | None = None,
    drop_checkpoint: bool = False,
    wake_parent: bool = False,
    batch: LastBatch | None = None,
    rider: Rider | None = None,
) -> EndWrites:
    return EndWrites(
        session_id=session_id,
        run_ttl_s=settings.run_retention_s,
        stream_ttl_s=settings.stream_retention_s,
        release_attempt=release_attempt,
        drop_checkpoint=drop_checkpoint,
        wake_parent=wake_parent,
        announce=True,  # the stream's retention starts with the terminal entry
        stream_maxlen=settings.stream_maxlen,
        batch=batch,
        rider=rider,
    )


async def _resume_parent(redis: Redis, ended: Ended, queue: JobQueue | None) -> None:
    """After the end (`RunStore.end`, terminal entry included): if it was the last fork
    its waiting parent awaited, the parent's next segment."""
    waiting = ended.parent
    if queue is None or waiting is None or waiting.status is not RunStatus.WAITING:
        return
    resume = _next_segment(waiting)
    if resume is None:
        return
    async with translate_errors("end run"):
        await run_scripts(redis, [queue.enqueue_call(resume)])
    _log.info("run resumed after its forks", run_id=resume.run_id, segment=resume.segment)


async def announce_status(
    redis: Redis, keys: Keys, settings: Settings, request: RunRequest, status: RunStatus
) -> None:
    """A non-terminal status entry for a run in its session stream (a fork queued, a run
    waiting), carrying the fork's place in its tree."""
    publisher = EventPublisher(
        redis,
        keys,
        session_id=request.session_id,
        run_id=request.run_id,
        root_run_id=request.root_run_id,
        maxlen=settings.stream_maxlen,
    )
    publisher.publish_status(StatusEntry(run_id=request.run_id, status=status, fork=request.fork))
    await publisher.close(expire=False)


async def resume_if_ready(runs: RunStore, queue: JobQueue, run_id: str) -> bool:
    """Resume a run waiting in a gather if every fork it waits for has ended (the
    waiting-run sweep; normally the last fork's `end_run` does it)."""
    record = await runs.ready_to_resume(run_id)
    return record is not None and await _resume(queue, record)


async def resume_waiting_tree(
    runs: RunStore, queue: JobQueue, forks: ForkTable, session_id: str, root_run_id: str
) -> int:
    """Resume at once every run of a tree that waits in a gather (the tree was aborted:
    each resumed segment sees the flag and ends aborted, all levels together, instead of
    each parent waiting for its last fork to end first). Returns how many were resumed."""
    requests = await waiting_segments(runs, forks, session_id, root_run_id)
    if requests:  # every job in one round trip, with one wake-up, ahead of the queue
        async with translate_errors("resume waiting runs"):
            await run_scripts(queue.redis, queue.enqueue_calls(requests, front=True))
    return len(requests)


async def waiting_segments(
    runs: RunStore,
    forks: ForkTable,
    session_id: str,
    root_run_id: str,
    *,
    root: RunRecord | None = None,
) -> list[RunRequest]:
    """The next segments of the tree's runs that wait in a gather now (one read of the
    session's fork counter, one MGET per 500 runs): what `resume_waiting_tree` enqueues,
    for a caller that sends them with other writes (`Client.abort`: with the flag).
    `root`: the root's record, just read; a session without forks needs no MGET then."""
    count = await forks.allocated(session_id)
    if count == 0 and root is not None and root.run_id == root_run_id:
        waiting = [root] if root.status is RunStatus.WAITING else []
        return [q for q in map(_next_segment, waiting) if q is not None]
    ids = [root_run_id, *(fork_run_id(root_run_id, f"fork_{n}") for n in range(1, count + 1))]
    requests: list[RunRequest] = []
    for start in range(0, len(ids), _RESUME_CHUNK):
        records = await runs.get_many(ids[start : start + _RESUME_CHUNK])
        waiting = [r for r in records.values() if r.status is RunStatus.WAITING]
        requests += [q for q in map(_next_segment, waiting) if q is not None]
    return requests


_RESUME_CHUNK = 500


def _next_segment(record: RunRecord) -> RunRequest | None:
    """The request of a waiting run's next segment (None: its stored request is unusable)."""
    if record.request is None:
        return None
    try:
        return RunRequest.from_dict(record.request).model_copy(
            update={"attempt": record.attempt, "segment": record.segment + 1}
        )
    except PayloadError as exc:
        _log.error("cannot resume a waiting run: its stored request is corrupt", error=str(exc))
        return None


async def _resume(queue: JobQueue, record: RunRecord) -> bool:
    """Enqueue the next segment of a waiting run. Safe to call any number of times, from
    anywhere: the segment's job id is fixed, so however many callers race here the run is
    resumed once."""
    request = _next_segment(record)
    if request is None:
        return False
    await queue.enqueue(request)
    _log.info("run resumed after its forks", run_id=record.run_id, segment=request.segment)
    return True
