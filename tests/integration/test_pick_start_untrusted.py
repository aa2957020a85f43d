"""The pick's start of a turn starts exactly what `RunStore.start` (as the executor calls
it) would start, and nothing else, whatever the record holds (Redis contents are
untrusted): a field written twice, numbers JSON does not have, a record the executor
cannot take; and a corrupt record never stops the reaper's sweep of the other runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq import func

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.store import jsonserial
from orchestrator.store.jsonserial import JobDecoder
from orchestrator.store.queue import job_id, run_of_job
from orchestrator.store.runs import LeaseTable, RunStore, Started
from orchestrator.store.streams import IDLE_TTL_S
from workers.arq_worker import WakeableWorker
from workers.turns import TurnStarts, _current

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def real_redis() -> AsyncIterator[Any]:
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def uniq() -> str:
    return "rvps" + uuid.uuid4().hex[:10]


AGENT = "pkg.agents:chat"


async def _cleanup(redis: Any, prefix: str, jids: list[str]) -> None:
    async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        await redis.delete(key)
    for jid in jids:
        for p in ("arq:job:", "arq:in-progress:", "arq:retry:", "arq:result:"):
            await redis.delete(p + jid)


def _worker(redis: Any, keys: Keys) -> WakeableWorker:
    async def work(ctx: dict[str, Any], payload: Any) -> None:
        pass

    return WakeableWorker(
        functions=[func(work, name="run_turn")],
        queue_name=keys.queue(),
        redis_pool=redis,
        wake_channel=keys.wake(),
        handle_signals=False,
        job_serializer=jsonserial.dumps,
        job_deserializer=JobDecoder(),
        pick_read=lambda jid: keys.run(run_of_job(jid) or jid),
        pick_start=TurnStarts(keys, Settings(), "w1", LeaseTable(redis, keys)),
    )


async def _setup(redis: Any, keys: Keys, request: RunRequest, raw: str) -> str:
    await redis.set(keys.run(request.run_id), raw)
    await redis.zadd(keys.runs_by_status(RunStatus.QUEUED), {request.run_id: 1})
    jid = job_id(request.run_id, request.attempt, request.segment)
    body = {"t": None, "f": "run_turn", "a": [request.model_dump(mode="json")], "k": {}, "et": 1}
    await redis.set(f"arq:job:{jid}", jsonserial.dumps(body))
    await redis.zadd(keys.queue(), {jid: 1})
    return jid


async def _python_start(redis: Any, keys: Keys, request: RunRequest) -> Any:
    return await RunStore(redis, keys).start(
        request.run_id,
        session_id=request.session_id,
        root_run_id=request.root_run_id,
        attempt=request.attempt,
        worker_id="w1",
        lease_ttl_s=Settings().lease_ttl_s,
        check=lambda current: _current(current, request),
        take_over_ttl_s=IDLE_TTL_S,
        segment=request.segment,
        waiting_for=[],
    )


def _queued_record(request: RunRequest) -> str:
    return RunRecord(
        run_id=request.run_id,
        session_id=request.session_id,
        agent=request.agent,
        request=request.model_dump(mode="json"),
    ).model_dump_json()


# A record whose head (the fields the Lua matches) says "queued, attempt 1", but which
# decodes (JSON: the last of duplicate keys wins, as pydantic reads it) to something else.
DUPLICATES = {
    "ended (a later status)": ('"tenant":null', '"tenant":null,"status":"completed"'),
    "a later attempt": ('"tenant":null', '"tenant":null,"attempt":2'),
    "a later segment": ('"tenant":null', '"tenant":null,"segment":4'),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
async def test_a_record_whose_later_duplicate_field_makes_it_not_current_is_not_started_by_the_pick(
    real_redis: Any, uniq: str, case: str
) -> None:
    old, new = DUPLICATES[case]
    request = RunRequest(run_id=f"{uniq}r", session_id=f"{uniq}s", agent=AGENT, message="hi")
    raw = _queued_record(request).replace(old, new)
    decoded = RunRecord.model_validate_json(raw)
    assert not _current(decoded, request)  # what Python reads: not this job's to start
    theirs, ours = Keys(f"{uniq}t"), Keys(f"{uniq}o")
    jids: list[str] = []
    try:
        await real_redis.set(theirs.run(request.run_id), raw)
        start = await _python_start(real_redis, theirs, request)
        assert start.outcome is Started.NOT_CURRENT  # the job's own start starts nothing

        jid = await _setup(real_redis, ours, request, raw)
        jids.append(jid)
        (picked,) = await _worker(real_redis, ours)._pick_many([jid.encode()])
        assert picked is not None
        # The pick must start nothing either: record unchanged, no lease taken.
        assert await real_redis.get(ours.run(request.run_id)) == raw.encode()
        assert await real_redis.hgetall(ours.lease(request.run_id)) == {}
    finally:
        await _cleanup(real_redis, f"{uniq}t", [])
        await _cleanup(real_redis, f"{uniq}o", jids)


async def _pick_start(redis: Any, keys: Keys, jid: str) -> Any:
    (picked,) = await _worker(redis, keys)._pick_many([jid.encode()])
    assert picked is not None
    return TurnStarts(keys, Settings(), "w1", LeaseTable(redis, keys)).picked(
        jid, picked.start, 0.0
    )


async def test_what_the_executor_adopts_from_a_pick_is_a_running_record_of_this_attempt(
    real_redis: Any, uniq: str
) -> None:
    """The dup-status record of the first test, one step further: `PickedStart.matches`
    holds (it compares ids only) and `PickedStart.start` hands `_begin` a STARTED start
    whose record decodes as COMPLETED; the executor then runs the turn of an ended run."""
    request = RunRequest(run_id=f"{uniq}r", session_id=f"{uniq}s", agent=AGENT, message="hi")
    raw = _queued_record(request).replace('"tenant":null', '"tenant":null,"status":"completed"')
    keys = Keys(f"{uniq}o")
    jids: list[str] = []
    try:
        jid = await _setup(real_redis, keys, request, raw)
        jids.append(jid)
        picked = await _pick_start(real_redis, keys, jid)
        if picked is None:
            return  # nothing started: fine
        assert picked.matches(
            request.run_id, request.attempt, request.segment, request.session_id,
            request.root_run_id,
        )  # fmt: skip
        start = picked.start(IDLE_TTL_S)
        assert start.outcome is Started.STARTED
        assert start.record.status is RunStatus.RUNNING, start.record.status
    finally:
        await _cleanup(real_redis, f"{uniq}o", jids)


async def test_a_started_at_json_cannot_parse_is_not_repaired_and_started_by_the_pick(
    real_redis: Any, uniq: str
) -> None:
    """`"started_at":0x0` is not JSON: the job's own start raises PayloadError and writes
    nothing. The pick's Lua reads it with `tonumber` (0), stamps `now` over it and starts
    the run, writing a record that now decodes: the executor adopts and runs it."""
    request = RunRequest(run_id=f"{uniq}r", session_id=f"{uniq}s", agent=AGENT, message="hi")
    raw = _queued_record(request).replace('"started_at":null', '"started_at":0x0')
    theirs, ours = Keys(f"{uniq}t"), Keys(f"{uniq}o")
    jids: list[str] = []
    try:
        await real_redis.set(theirs.run(request.run_id), raw)
        with pytest.raises(PayloadError):
            await _python_start(real_redis, theirs, request)

        jid = await _setup(real_redis, ours, request, raw)
        jids.append(jid)
        picked = await _pick_start(real_redis, ours, jid)
        assert picked is None, f"the pick started it: {picked.reply[1]!r}"
        assert await real_redis.get(ours.run(request.run_id)) == raw.encode()
    finally:
        await _cleanup(real_redis, f"{uniq}t", [])
        await _cleanup(real_redis, f"{uniq}o", jids)


async def test_a_corrupt_record_the_pick_started_does_not_stall_the_reapers_lease_sweep(
    real_redis: Any, uniq: str
) -> None:
    """Consequence of the corrupt-record start: the executor's `_adopt` fails to decode
    what the pick wrote, hands the run back (its lease deadline -> 0, first in the
    deadlines zset) and the job's own start then raises. From then on every
    `Reaper.reap_once` raises PayloadError on that run (`_parked_while_waiting` reads the
    record) before reaching any other expired lease: crash recovery stops for everyone.
    Before the change a corrupt record never got a lease (the start decodes first)."""
    from arq.connections import ArqRedis

    from orchestrator.store.queue import JobQueue
    from workers.reaper import Reaper
    from workers.turns import TurnExecutor

    keys = Keys(f"{uniq}o")
    jids: list[str] = []
    try:
        bad = RunRequest(run_id=f"{uniq}bad", session_id=f"{uniq}s", agent=AGENT, message="x")
        raw = _queued_record(bad).replace('"usage":null', '"usage":5')
        jid = await _setup(real_redis, keys, bad, raw)
        jids.append(jid)
        picked = await _pick_start(real_redis, keys, jid)
        assert picked is not None  # (the bug of the test above)
        executor = object.__new__(TurnExecutor)
        executor.starts = TurnStarts(keys, Settings(), "w1", LeaseTable(real_redis, keys))
        picked.used = True
        assert await executor._adopt(bad, picked) is None  # handed back

        # Another run, whose worker died: an expired lease the reaper must recover.
        good = RunRequest(run_id=f"{uniq}good", session_id=f"{uniq}s", agent=AGENT, message="y")
        record = RunRecord(
            run_id=good.run_id, session_id=good.session_id, agent=good.agent,
            status=RunStatus.RUNNING, max_attempts=3, started_at=1.0, worker_id="dead",
            request=good.model_dump(mode="json"),
        )  # fmt: skip
        await real_redis.set(keys.run(good.run_id), record.model_dump_json())
        await real_redis.zadd(keys.runs_by_status(RunStatus.RUNNING), {good.run_id: 1})
        await real_redis.hset(keys.lease(good.run_id), mapping={"attempt": "1", "worker": "dead"})
        await real_redis.zadd(keys.leases(), {good.run_id: 1})
        jids.append(job_id(good.run_id, 2))

        arq = ArqRedis(host="127.0.0.1", port=6379)
        try:
            reaper = Reaper(arq, keys, Settings(), JobQueue(arq, keys))
            handled = await reaper.reap_once()
        finally:
            await arq.aclose()
        assert good.run_id in handled
    finally:
        await _cleanup(real_redis, f"{uniq}o", jids)
