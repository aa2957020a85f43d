"""Ending a run: one place that moves a run to a terminal status and closes its stream
(keeping the session's owner as long as the stream), and wakes the parent of a fork when
its last awaited fork has ended."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import structlog
from redis.asyncio import Redis

from orchestrator.errors import PayloadError, RunNotFound
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest, RunStatus, StatusEntry, fork_run_id
from orchestrator.settings import Settings
from orchestrator.store.connection import run_scripts, translate_errors
from orchestrator.store.forks import ForkTable
from orchestrator.store.queue import JobQueue
from orchestrator.store.runs import RunStore, fork_was_last
from orchestrator.store.streams import EventPublisher, status_call

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
    cleanup: Callable[[], Awaitable[Any]] | None = None,
    **fields: Any,
) -> RunRecord | None:
    """Record how a run ended, append its terminal status entry to the session stream (so
    readers know it ended) and start the retention clocks. Returns None, writing nothing,
    if the run was no longer in `from_status` (it had already ended).

    `cleanup` (the ending worker's own bookkeeping: its checkpoint, its lease) runs once
    the record is terminal and before the terminal entry is written, so a reader woken
    by that entry finds the attempt done.

    With `attempt`, only that attempt of the run may end it, and ending it again with the
    same status (a retry after Redis failed part-way) completes whatever the first try
    left undone, never twice.

    With `queue`, a fork's parent waiting for it is resumed if this was the last fork it
    waited for (without, the waiting-run sweep of the workers does it a little later)."""
    runs = RunStore(redis, keys)
    updated = await runs.transition(
        run_id,
        from_status=set(from_status),
        to=status,
        check=None if attempt is None else (lambda record: record.attempt == attempt),
        expire_s=settings.run_retention_s,
        finished_at=time.time(),
        **fields,
    )
    expired = updated is not None
    if updated is None:
        if attempt is None:
            return None
        try:
            current = await runs.get(run_id)
        except (RunNotFound, PayloadError):
            return None
        if current.status is not status or current.attempt != attempt:
            return None
        updated = current  # ended by an earlier try of this same call
    await announce_end(redis, keys, settings, updated, queue=queue, expired=expired, before=cleanup)
    return updated


async def announce_end(
    redis: Redis,
    keys: Keys,
    settings: Settings,
    record: RunRecord,
    *,
    queue: JobQueue | None = None,
    expired: bool = False,
    before: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """The rest of ending a run whose record is terminal: its terminal status entry (one,
    however often this is called), the retention clocks, and its waiting parent.
    `expired`: the record's own retention clock was started with its terminal write.
    `before` runs with the retention clocks, before the terminal entry is written."""
    status = StatusEntry(
        run_id=record.run_id,
        status=record.status,
        error=record.error,
        error_type=record.error_type,
        abort_reason=record.abort_reason,
        at=record.finished_at or time.time(),
    )
    runs = RunStore(redis, keys)
    parent = record.fork.parent_run_id if queue is not None and record.fork else None
    # Its terminal status entry (written once however often this runs: the end
    # publisher's batch marker) and then, a fork, its parent's awaited set, as scripts,
    # in one round trip after ...
    scripts = [
        status_call(
            redis,
            keys,
            status,
            session_id=record.session_id,
            root_run_id=record.root_run_id,
            maxlen=settings.stream_maxlen,
            publisher_id=f"end:{record.run_id}",
            ttl_s=settings.stream_retention_s,  # the stream's retention starts here
        )
    ]
    if parent is not None:
        scripts.append(runs.fork_ended_call(parent, record.run_id))
    # ... the run fence's and the record's retention clocks, the session's owner (it
    # outlives its stream: nobody else can take the session over while its entries can
    # still be read), the end announcement that wakes Run.result() (the record is
    # terminal already) and `before`, all at once.
    async with translate_errors("end run"):
        first: list[Awaitable[Any]] = [_end_clocks(redis, keys, settings, record, expired)]
        if before is not None:
            first.append(before())
        await asyncio.gather(*first)
        replies = await run_scripts(redis, scripts)
    if parent is not None and fork_was_last(replies[-1]):  # the last fork it waited for
        assert queue is not None
        with contextlib.suppress(RunNotFound, PayloadError):
            waiting = await runs.get(parent)
            if waiting.status is RunStatus.WAITING:
                await _resume(queue, waiting)


async def _end_clocks(
    redis: Redis, keys: Keys, settings: Settings, record: RunRecord, expired: bool
) -> None:
    stream_ttl = settings.stream_retention_s
    session_ms = max(1, int(stream_ttl * 1000))
    run_ms = max(1, int(settings.run_retention_s * 1000))
    session = record.session_id
    async with redis.pipeline(transaction=False) as pipe:
        # (The stream's own keys get theirs from the status entry's script.)
        pipe.expire(keys.run_fence(session, record.run_id), stream_ttl)
        if not expired:
            pipe.pexpire(keys.run(record.run_id), run_ms)
            pipe.zadd(keys.runs_expiring(), {record.run_id: time.time() * 1000 + run_ms})
        pipe.pexpire(keys.session_owner(session), session_ms)
        pipe.pexpire(keys.session_runs(session), session_ms)
        pipe.publish(keys.run_ends(), record.run_id)
        await pipe.execute()


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
    count = await forks.allocated(session_id)
    ids = [root_run_id, *(fork_run_id(root_run_id, f"fork_{n}") for n in range(1, count + 1))]
    resumed = 0
    for start in range(0, len(ids), _RESUME_CHUNK):
        records = await runs.get_many(ids[start : start + _RESUME_CHUNK])
        waiting = [r for r in records.values() if r.status is RunStatus.WAITING]
        requests = [q for q in map(_next_segment, waiting) if q is not None]
        if requests:  # every job in one round trip
            async with translate_errors("resume waiting runs"):
                await run_scripts(queue.redis, [queue.enqueue_call(q) for q in requests])
            resumed += len(requests)
    return resumed


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
