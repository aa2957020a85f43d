"""A turn's pick starts its run in the same script (`store.runs.PICK_START_LUA`, run by the
worker's pick, `workers.arq_jobs.PICK_LUA`): exactly the start `RunStore.start` makes for
the job (`TurnExecutor`'s check and take-over), or none at all, leaving the job to start
as it always did."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from arq import func
from arq.constants import retry_key_prefix

from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.store import jsonserial
from orchestrator.store.jsonserial import JobDecoder
from orchestrator.store.queue import JobQueue, job_id, run_of_job, turn_job_head
from orchestrator.store.runs import (
    LeaseTable,
    PickedStart,
    RunStore,
    Started,
    pick_start_args,
)
from orchestrator.store.streams import IDLE_TTL_S
from workers.arq_worker import WakeableWorker
from workers.turns import TurnStarts, _current

pytestmark = pytest.mark.timeout(10)

AGENT = "pkg.agents:chat"


def _request(run_id: str = "r1", **kw: Any) -> RunRequest:
    kw.setdefault("session_id", "s1")
    return RunRequest(run_id=run_id, agent=AGENT, message="hi", **kw)


def _record(request: RunRequest, **kw: Any) -> RunRecord:
    return RunRecord(
        run_id=request.run_id,
        session_id=request.session_id,
        agent=request.agent,
        request=request.model_dump(mode="json"),
        fork=request.fork,
        **kw,
    )


def _job(request: RunRequest, function: str = "run_turn") -> bytes:
    body = {"t": None, "f": function, "a": [request.model_dump(mode="json")], "k": {}, "et": 1}
    return jsonserial.dumps(body)


async def _queue(redis: Any, keys: Keys, request: RunRequest, job: bytes | None = None) -> str:
    jid = job_id(request.run_id, request.attempt, request.segment)
    await redis.set(f"arq:job:{jid}", job if job is not None else _job(request))
    await redis.zadd(keys.queue(), {jid: 1})
    return jid


def _worker(redis: Any, keys: Keys, worker_id: str = "w1") -> WakeableWorker:
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
        pick_start=TurnStarts(keys, Settings(), worker_id, LeaseTable(redis, keys)),
    )


async def _pick(redis: Any, keys: Keys, jid: str) -> PickedStart | None:
    worker = _worker(redis, keys)
    (picked,) = await worker._pick_many([jid.encode()])
    assert picked is not None, "the job was not picked"
    assert picked.start is not None, "the pick tried no start"
    return TurnStarts(keys, Settings(), "w1", LeaseTable(redis, keys)).picked(
        jid, picked.start, 0.0
    )


async def _state(redis: Any, keys: Keys, request: RunRequest) -> dict[str, Any]:
    """Everything a start writes, with the times that differ between two starts left out."""
    run_id, session = request.run_id, request.session_id
    record = json.loads(await redis.get(keys.run(run_id)))
    record["started_at"] = record["started_at"] is not None
    return {
        "record": record,
        "queued": await redis.zscore(keys.runs_by_status(RunStatus.QUEUED), run_id),
        "running": await redis.zscore(keys.runs_by_status(RunStatus.RUNNING), run_id),
        "waiting": await redis.zscore(keys.runs_by_status(RunStatus.WAITING), run_id),
        "owner": await redis.hgetall(keys.lease(run_id)),
        "owner_ttl": await redis.ttl(keys.lease(run_id)),
        "deadline": await redis.zscore(keys.leases(), run_id) is not None,
        "fence": await redis.get(keys.run_fence(session, run_id)),
        "fence_ttl": await redis.ttl(keys.run_fence(session, run_id)),
        "checkpoint": await redis.hgetall(keys.checkpoint(session, run_id)),
    }


async def _start_as_the_executor_does(redis: Any, keys: Keys, request: RunRequest) -> Any:
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


async def _given(redis: Any, keys: Keys, request: RunRequest, record: RunRecord) -> None:
    await RunStore(redis, keys).create(record)
    if record.status is not RunStatus.QUEUED:
        await redis.zrem(keys.runs_by_status(RunStatus.QUEUED), record.run_id)
        await redis.zadd(keys.runs_by_status(record.status), {record.run_id: 1})
    if record.attempt > 1:  # a resumed attempt: what the first one left
        session = request.session_id
        await redis.hset(keys.seqs(session), request.run_id, "6")
        await redis.hset(
            keys.checkpoint(session, request.run_id), mapping={"attempt": "1", "state": "{}"}
        )
        await redis.hset(
            keys.lease(request.run_id),
            mapping={"attempt": "1", "fence": "2", "state": "claimed"},
        )
        await redis.expire(keys.lease(request.run_id), 600)


def _fork_request() -> RunRequest:
    fork = ForkInfo(fork_id="fork_3", root_run_id="root", parent_run_id="root", depth=1, fork_seq=3)
    return _request("root.fork_3", fork=fork, history=[{"role": "user", "content": 'é " \\'}])


CASES = {
    "a queued run": (_request(), {}),
    "a fork": (_fork_request(), {}),
    "a resumed attempt": (
        _request(attempt=2),
        {"attempt": 2, "max_attempts": 3, "started_at": 1000.5, "worker_id": "w0"},
    ),
    "a record with text to escape": (
        _request(),
        {"response": 'a "quoted" \\ reply', "usage": {"n": 1}, "tenant": "t1"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_turns_pick_starts_its_run_exactly_as_the_jobs_own_start_would(
    fake_redis: Any, case: str
) -> None:
    """Same record (but for the start time), indexes, lease, write fence and take-over."""
    request, fields = CASES[case]
    theirs, ours = Keys("theirs"), Keys("ours")
    record = _record(request, **fields)
    for keys in (theirs, ours):
        await _given(fake_redis, keys, request, record)
    start = await _start_as_the_executor_does(fake_redis, theirs, request)
    assert start.outcome is Started.STARTED

    jid = await _queue(fake_redis, ours, request)
    picked = await _pick(fake_redis, ours, jid)
    assert picked is not None
    assert picked.matches(
        request.run_id, request.attempt, request.segment, request.session_id, request.root_run_id
    )
    adopted = picked.start(IDLE_TTL_S)

    assert await _state(fake_redis, ours, request) == await _state(fake_redis, theirs, request)
    assert adopted.outcome is Started.STARTED
    assert adopted.abort_reason == start.abort_reason
    assert adopted.record.model_dump(exclude={"started_at"}) == start.record.model_dump(
        exclude={"started_at"}
    )
    assert (adopted.record.started_at is None) == (start.record.started_at is None)
    if "started_at" in fields:
        assert adopted.record.started_at == fields["started_at"]
    assert adopted.taken is not None
    assert start.taken is not None
    assert (adopted.taken.last_seq, adopted.taken.checkpoint, adopted.taken.checkpoint_found) == (
        start.taken.last_seq,
        start.taken.checkpoint,
        start.taken.checkpoint_found,
    )


async def _untouched(redis: Any, keys: Keys, request: RunRequest, before: dict[str, Any]) -> None:
    assert await _state(redis, keys, request) == before


async def test_a_pick_starts_no_run_that_does_not_expect_its_job(
    fake_redis: Any, keys: Keys
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request, attempt=2, max_attempts=2))
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request)) is None
    await _untouched(fake_redis, keys, request, before)


async def test_a_pick_starts_no_run_that_has_ended(fake_redis: Any, keys: Keys) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request, status=RunStatus.ABORTED))
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request)) is None
    await _untouched(fake_redis, keys, request, before)


async def test_a_pick_starts_no_run_aborted_before_it_ever_started(
    fake_redis: Any, keys: Keys
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    await fake_redis.set(keys.run_abort("s1", "r1"), json.dumps({"reason": "stop"}))
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request)) is None
    await _untouched(fake_redis, keys, request, before)
    # ... and the job's own start then finds it aborted, as it always did.
    start = await _start_as_the_executor_does(fake_redis, keys, request)
    assert start.outcome is Started.ABORTED


async def test_a_pick_starts_no_run_whose_lease_a_later_attempt_holds(
    fake_redis: Any, keys: Keys
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    await fake_redis.hset(keys.lease("r1"), mapping={"attempt": "2", "worker": "w2"})
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request)) is None
    await _untouched(fake_redis, keys, request, before)


async def test_a_pick_starts_no_run_whose_writes_a_later_attempt_owns(
    fake_redis: Any, keys: Keys
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    await fake_redis.set(keys.run_fence("s1", "r1"), "2", ex=IDLE_TTL_S)
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request)) is None
    await _untouched(fake_redis, keys, request, before)


@pytest.mark.parametrize(
    "job",
    ["another function", "another session", "another run", "not json"],
)
async def test_a_pick_starts_no_run_for_a_job_that_does_not_name_it(
    fake_redis: Any, keys: Keys, job: str
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    body = {
        "another function": _job(request, function="run_batch_item"),
        "another session": _job(_request(session_id="s2")),
        "another run": _job(_request("r1:1")),
        "not json": b"\x80 not json",
    }[job]
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request, body)) is None
    await _untouched(fake_redis, keys, request, before)


async def test_a_pick_starts_no_run_whose_record_it_does_not_know_the_form_of(
    fake_redis: Any, keys: Keys
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    written = _record(request).model_dump(mode="json")
    await fake_redis.set(keys.run("r1"), json.dumps(written, sort_keys=True))  # another writer
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request)) is None
    await _untouched(fake_redis, keys, request, before)


async def test_a_pick_starts_no_waiting_run_with_forks_to_wait_for(
    fake_redis: Any, keys: Keys
) -> None:
    """A gather's resumed segment: its record still lists the forks (left to the start)."""
    request = _request(segment=1)
    record = _record(request, status=RunStatus.WAITING, started_at=5.0, waiting_for=["r1.fork_1"])
    await _given(fake_redis, keys, request, record)
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, await _queue(fake_redis, keys, request)) is None
    await _untouched(fake_redis, keys, request, before)


async def test_a_pick_of_a_later_try_starts_nothing(fake_redis: Any, keys: Keys) -> None:
    """arq refuses a turn's second try (max_tries 1): its run is not started for it."""
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    jid = await _queue(fake_redis, keys, request)
    await fake_redis.set(retry_key_prefix + jid, 1)
    before = await _state(fake_redis, keys, request)
    assert await _pick(fake_redis, keys, jid) is None
    await _untouched(fake_redis, keys, request, before)


def test_a_run_id_json_would_escape_gets_no_start_in_its_pick(keys: Keys) -> None:
    def args(run_id: str) -> Any:
        return pick_start_args(
            keys,
            run_id,
            attempt=1,
            segment=0,
            worker_id="w1",
            lease_ttl_s=30,
            take_over_ttl_s=60,
            job_head=turn_job_head(run_id),
        )

    assert args("plain-run.fork_2") is not None
    for run_id in ('a"b', "a\\b", "é", "a b", "a{b}"):
        assert args(run_id) is None, run_id


async def test_a_turns_job_begins_as_its_pick_expects(fake_redis: Any, keys: Keys) -> None:
    """The pick recognises a turn's job by how `JobQueue` writes it."""

    class _Arq:
        job_serializer = staticmethod(jsonserial.dumps)
        expires_extra_ms = 86_400_000

        def register_script(self, lua: str) -> Any:
            return fake_redis.register_script(lua)

    queue = JobQueue(_Arq(), keys)  # type: ignore[arg-type]
    request = _request("run-7", session_id="sess-7")
    ((_, _, args),) = queue.enqueue_calls([request])
    job = next(a for a in args if isinstance(a, bytes) and a.startswith(b"{"))
    assert job.startswith((turn_job_head("run-7") + 'sess-7",').encode())


async def test_a_run_its_pick_started_for_a_job_that_never_took_it_is_given_back(
    fake_redis: Any, keys: Keys
) -> None:
    """A job function that ignores `ctx[JOB_START]` (or a job arq fails before calling
    it): the run's lease is handed back at once, for the reaper to queue its next attempt,
    not left to lapse as a lost worker."""
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    jid = await _queue(fake_redis, keys, request)
    worker = _worker(fake_redis, keys)
    await worker.start_jobs([jid.encode()])
    await asyncio.gather(*worker.tasks.values())
    assert (await RunStore(fake_redis, keys).get("r1")).status is RunStatus.RUNNING
    owner = await fake_redis.hgetall(keys.lease("r1"))
    assert owner[b"state"] == b"handed_back"
    assert await fake_redis.zscore(keys.leases(), "r1") == 0
