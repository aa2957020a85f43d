"""What a turn's pick costs Redis: the commands its script runs (MONITOR on the real
server, only this test's script counted), for the start of a run that never started
(a fan-out's forks, every submitted run) and for a resumed attempt's."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis as PlainRedis

from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunRequest
from orchestrator.settings import Settings
from orchestrator.store import jsonserial
from orchestrator.store.connection import Redis
from orchestrator.store.jsonserial import JobDecoder
from orchestrator.store.queue import job_id, run_of_job
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.streams import IDLE_TTL_S
from tests.integration.workerproc import drop_job_keys
from workers.arq_worker import WakeableWorker
from workers.turns import TurnStarts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

AGENT = "pkg.agents:chat"


def _fork(root: str) -> RunRequest:
    fork = ForkInfo(fork_id="fork_1", root_run_id=root, parent_run_id=root, depth=1, fork_seq=1)
    return RunRequest(
        run_id=f"{root}.fork_1", session_id=f"s-{root}", agent=AGENT, message="hi", fork=fork
    )


async def _queued(redis: Redis, keys: Keys, request: RunRequest, **fields: Any) -> str:
    record = RunRecord(
        run_id=request.run_id,
        session_id=request.session_id,
        agent=request.agent,
        request=request.model_dump(mode="json"),
        fork=request.fork,
        **fields,
    )
    await RunStore(redis, keys).create(record)
    jid = job_id(request.run_id, request.attempt, request.segment)
    body = {"t": None, "f": "run_turn", "a": [request.model_dump(mode="json")], "k": {}, "et": 1}
    await redis.set(f"arq:job:{jid}", jsonserial.dumps(body), ex=600)
    await redis.zadd(keys.queue(), {jid: 1})
    return jid


def _worker(redis: Redis, keys: Keys) -> WakeableWorker:
    async def work(ctx: dict[str, Any], payload: Any) -> None:
        pass

    from arq import func

    return WakeableWorker(
        functions=[func(work, name="run_turn")],
        queue_name=keys.queue(),
        redis_pool=redis,  # type: ignore[arg-type]
        wake_channel=keys.wake(),
        handle_signals=False,
        job_serializer=jsonserial.dumps,
        job_deserializer=JobDecoder(),
        pick_read=lambda jid: keys.run(run_of_job(jid) or jid),
        pick_start=TurnStarts(keys, Settings(), "w1", LeaseTable(redis, keys)),
    )


async def _pick_commands(redis_url: str, redis: Redis, keys: Keys, jid: str) -> list[str]:
    """Pick `jid` (its run started in the pick) and return the commands its script ran."""
    sentinel = f"end-of-pick-{uuid.uuid4().hex}"
    watcher = PlainRedis.from_url(redis_url)
    seen: list[dict[str, Any]] = []
    try:
        async with watcher.monitor() as monitor:
            (picked,) = await _worker(redis, keys)._pick_many([jid.encode()])
            await redis.echo(sentinel)
            while True:
                command = await asyncio.wait_for(monitor.next_command(), 10)
                seen.append(command)
                if sentinel in command["command"] and command["client_type"] != "lua":
                    break
    finally:
        await watcher.aclose()
    assert picked is not None
    assert picked.start is not None
    assert picked.start[0] == 1, f"the pick did not start the run: {picked.start}"
    # The last call of the script (a first EVALSHA may have found it not loaded yet).
    at = max(
        i
        for i, c in enumerate(seen)
        if c["command"].upper().startswith("EVAL") and jid in c["command"]
    )
    inner: list[str] = []
    for command in seen[at + 1 :]:
        if command["client_type"] != "lua":
            break
        inner.append(command["command"].split(" ", 1)[0].upper())
    return inner


async def test_the_pick_that_first_starts_a_run_runs_at_most_thirteen_commands(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    """Attempt 1 of a run that never started (a fan-out's fork): no attempt before it can
    have written the run's checkpoint or write fence, so its start reads neither (only
    its last event_seq: an earlier life of its id may have left events), and its job and
    record are read together."""
    request = _fork(uuid.uuid4().hex)
    jid = await _queued(redis, keys, request)
    try:
        inner = await _pick_commands(redis_url, redis, keys, jid)
    finally:
        await drop_job_keys(redis, [jid])
    assert len(inner) <= 13, inner
    assert inner.count("HGET") == 1  # the run's last event_seq (what a life before left)
    assert inner.count("HMGET") == 1  # the lease owner, not the checkpoint
    session, run_id = request.session_id, request.run_id
    assert await redis.get(keys.run_fence(session, run_id)) == b"1"
    assert 0 < await redis.ttl(keys.run_fence(session, run_id)) <= IDLE_TTL_S


async def test_the_pick_of_a_resumed_attempt_still_takes_over_what_the_last_one_left(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    """Attempt 2 (its run re-queued by a reaper): the take-over reads the fence, the
    checkpoint and the last event_seq the first attempt left, as it always did."""
    request = _fork(uuid.uuid4().hex).model_copy(update={"attempt": 2})
    session, run_id = request.session_id, request.run_id
    jid = await _queued(redis, keys, request, attempt=2, max_attempts=3, started_at=5.0)
    await redis.set(keys.run_fence(session, run_id), "1", ex=600)
    await redis.hset(keys.checkpoint(session, run_id), mapping={"attempt": "1", "state": "{}"})
    await redis.hset(keys.seqs(session), run_id, "6")
    try:
        inner = await _pick_commands(redis_url, redis, keys, jid)
    finally:
        await drop_job_keys(redis, [jid])
    assert inner.count("HMGET") == 2  # the lease owner and the checkpoint
    assert "HGET" in inner
    assert await redis.get(keys.run_fence(session, run_id)) == b"2"


async def test_the_picks_of_several_jobs_are_one_script_call_each_job_as_its_own(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    """A worker with several slots free picks their jobs in one script call (it made one
    call per job): each job's pick as it would be alone (its run started; a job whose
    key holds something that is not a job: broken, as arq's pick says)."""
    requests = [_fork(uuid.uuid4().hex) for _ in range(3)]
    jids = [await _queued(redis, keys, request) for request in requests]
    broken = f"{keys.prefix}-broken"
    await redis.hset(f"arq:job:{broken}", "not", "a job")
    await redis.zadd(keys.queue(), {broken: 1})
    worker = _worker(redis, keys)
    await worker._pick_many([b"none-yet", b"none-either"])  # Redis has the script now
    watcher = PlainRedis.from_url(redis_url)
    sentinel = f"end-of-picks-{uuid.uuid4().hex}"
    calls = 0
    try:
        async with watcher.monitor() as monitor:
            picks = await worker._pick_many(
                [jids[0].encode(), broken.encode(), *(jid.encode() for jid in jids[1:])]
            )
            await redis.echo(sentinel)
            while True:
                command = await asyncio.wait_for(monitor.next_command(), 10)
                if sentinel in command["command"] and command["client_type"] != "lua":
                    break
                text = command["command"]
                if command["client_type"] != "lua" and any(jid in text for jid in jids):
                    calls += 1
    finally:
        await watcher.aclose()
        await drop_job_keys(redis, [*jids, broken])
    assert calls == 1
    assert picks[1] is not None
    assert picks[1].broken
    for request, picked in zip(requests, [picks[0], *picks[2:]], strict=True):
        assert picked is not None
        assert picked.start is not None
        assert picked.start[0] == 1, picked.start
        record = await RunStore(redis, keys).get(request.run_id)
        assert record.status.value == "running"
        assert await redis.zscore(keys.leases(), request.run_id) is not None
