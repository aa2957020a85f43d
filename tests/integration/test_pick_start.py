"""A turn's run is started by its job's pick, in the pick's round trip, on real worker
processes: no start script of its own for a turn or a fork; the cases the pick leaves
alone (a stale job, a malformed payload, an abort before the start, a lease a later
attempt holds) end as they always did; and a worker killed after the pick, before the
turn's first event, has its run resumed by another worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from arq.constants import job_key_prefix, result_key_prefix

from orchestrator.client import Client
from orchestrator.events import ReactStartEvent
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunRecord, RunRequest, RunStatus
from orchestrator.store.connection import Redis
from orchestrator.store.queue import job_id
from orchestrator.store.runs import _START_LUA
from tests.fixtures_llm import MockLLMFactory
from tests.integration.test_distributed import (
    assert_gap_free,
    collect,
    of_type,
    wait_until,
)
from tests.integration.workerproc import WorkerPool, drop_arq_keys, drop_job_keys, worker_env
from workers.arq_jobs import PICK_LUA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ASSISTANT = "tests.integration.agents_for_tests:assistant"
FORKER = "tests.integration.agents_for_tests:forker"
HELD = "tests.integration.agents_held:held"


def _spawn(message: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": message}}


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 1},
    "rules": [
        {
            "name": "fork",
            "match": {"last_user_contains": "task: pickfan part"},
            "reply": {"content": "fork done"},
        },
        {
            "name": "root",
            "match": {"last_user_contains": "pickfan-root", "last_role": "user"},
            "reply": {
                "content": "Splitting.",
                "tool_calls": [
                    *(_spawn(f"pickfan part {i}") for i in range(3)),
                    {"name": "selfref_fork_gather_all", "arguments": {}},
                ],
            },
        },
        {
            "name": "gathered",
            "match": {"last_user_contains": "pickfan-root", "last_role": "tool"},
            "reply": {"content": "all gathered"},
        },
    ],
    "fallback": {"content": "Hello from the scripted model."},
}


class CountingProxy:
    """A TCP proxy to the real Redis that keeps every byte its clients send."""

    def __init__(self, port: int = 6379) -> None:
        self.upstream_port = port
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    def calls_of(self, lua: str) -> int:
        """How many times the clients called this script (EVALSHA of its sha)."""
        return self.sent.count(hashlib.sha1(lua.encode()).hexdigest().encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for pump in (self._pump(reader, up_writer, self.sent), self._pump(up_reader, writer)):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bytearray | None = None
    ) -> None:
        try:
            while data := await src.read(65536):
                if keep is not None:
                    keep += data
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[CountingProxy]:
    made = CountingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    try:
        yield made
    finally:
        await made.stop()


@pytest.fixture
async def pools(
    client: Client, keys: Keys, llm: MockLLMThread, tmp_path: Path
) -> AsyncIterator[Callable[..., WorkerPool]]:
    made: list[WorkerPool] = []

    def pool(url: str, **kw: Any) -> WorkerPool:
        env = worker_env(llm.base_url, tmp_path / "tools.log")
        env["TEST_HOLD_FILE"] = str(tmp_path / "hold")
        made.append(WorkerPool(client, url, keys.prefix, env, tmp_path, **kw))
        return made[-1]

    try:
        yield pool
    finally:
        for each in made:
            await each.stop_all()
            print(each.logs())
        await drop_arq_keys(client)


async def test_a_turns_run_is_started_by_its_pick_without_a_start_of_its_own(
    client: Client, redis_url: str, proxy: CountingProxy, pools: Callable[..., WorkerPool]
) -> None:
    """One round trip from the queue to a running turn: the worker's pick starts the run
    (no start script call follows it), and the turn runs and ends as ever."""
    await pools(await proxy.start()).start(1)
    run = await client.submit(ASSISTANT, "hello")
    result = await asyncio.wait_for(run.result(), 20)
    assert result.status is RunStatus.COMPLETED, result
    record = await run.status()
    assert record.started_at is not None
    assert record.worker_id is not None
    assert proxy.calls_of(PICK_LUA) >= 1
    assert proxy.calls_of(_START_LUA) == 0


async def test_every_fork_of_a_fan_out_is_started_by_its_pick(
    client: Client, proxy: CountingProxy, pools: Callable[..., WorkerPool]
) -> None:
    """The root's turn and its three forks start with their picks; only the root's resumed
    segment (its record still lists the forks it waited for) starts on its own."""
    await pools(await proxy.start()).start(2)
    run = await client.submit(FORKER, "pickfan-root")
    result = await asyncio.wait_for(run.result(), 30)
    assert result.status is RunStatus.COMPLETED, result
    assert result.response == "all gathered"
    assert proxy.calls_of(_START_LUA) <= 1


async def test_a_worker_killed_after_its_pick_before_the_first_event_has_its_run_resumed(
    client: Client, redis_url: str, pools: Callable[..., WorkerPool], tmp_path: Path
) -> None:
    """The pick started the run (its lease taken) and the worker died before the turn
    published anything: the lease lapses, another worker resumes the run as attempt 2,
    and the stream holds that one attempt's events, from event_seq 0."""
    pool = pools(redis_url, agents="tests.integration.agents_held")
    workers = await pool.start(2)
    (tmp_path / "hold").touch()
    run = await client.submit(HELD, "hello")
    held = tmp_path / "hold.held"
    await wait_until(held.exists, 15, "a worker to hold the turn")
    await asyncio.sleep(0.05)
    pid = int(held.read_text())
    (victim,) = [w for w in workers if w.pid == pid]
    record = await run.status()
    assert (record.status, record.attempt) == (RunStatus.RUNNING, 1)
    assert victim.owns(record.worker_id)
    victim.kill()

    result = await asyncio.wait_for(run.result(), 30)
    assert result.status is RunStatus.COMPLETED, result
    record = await run.status()
    assert record.attempt == 2
    assert not victim.owns(record.worker_id)
    outputs = await collect(run)
    assert_gap_free(outputs)
    assert len(of_type(outputs, ReactStartEvent)) == 1


# -- what the pick leaves to the job's own start -----------------------------------------------


async def _job_for(redis: Redis, keys: Keys, request: RunRequest, payload: Any = None) -> str:
    jid = job_id(request.run_id, request.attempt, request.segment)
    body = payload if payload is not None else request.model_dump(mode="json")
    envelope = {"t": None, "f": "run_turn", "a": [body], "k": {}, "et": int(time.time() * 1000)}
    await redis.set(job_key_prefix + jid, json.dumps(envelope, separators=(",", ":")), ex=600)
    await redis.zadd(keys.queue(), {jid: time.time() * 1000 - 1})
    return jid


async def _queued(client: Client, **kw: Any) -> RunRequest:
    run_id = f"pick{uuid.uuid4().hex}"
    request = RunRequest(run_id=run_id, session_id=run_id, agent=ASSISTANT, message="hi", **kw)
    await client.runs.create(
        RunRecord(
            run_id=run_id,
            session_id=run_id,
            agent=ASSISTANT,
            status=RunStatus.QUEUED,
            request=request.model_dump(mode="json"),
            attempt=request.attempt,
            max_attempts=3,
        )
    )
    return request


async def _job_done(redis: Redis, keys: Keys, jid: str) -> None:
    async def done() -> bool:
        return await redis.zscore(keys.queue(), jid) is None

    await wait_until(done, 15, f"job {jid} to be done")
    await asyncio.sleep(0.3)  # anything started by mistake would show itself now


async def test_a_stale_turn_job_changes_nothing(
    client: Client, redis: Redis, keys: Keys, redis_url: str, pools: Callable[..., WorkerPool]
) -> None:
    """A job for attempt 1 of a run that expects attempt 2: skipped, nothing written."""
    request = await _queued(client, attempt=2)
    stale = request.model_copy(update={"attempt": 1})
    before = await redis.get(keys.run(request.run_id))
    await pools(redis_url).start(1)
    jid = await _job_for(redis, keys, stale)
    try:
        await _job_done(redis, keys, jid)
        assert await redis.get(keys.run(request.run_id)) == before
        assert await redis.hgetall(keys.lease(request.run_id)) == {}
        assert await redis.zscore(keys.leases(), request.run_id) is None
    finally:
        await drop_job_keys(redis, [jid])


async def test_a_turn_job_with_a_malformed_payload_ends_its_run_with_no_lease_left(
    client: Client, redis: Redis, keys: Keys, redis_url: str, pools: Callable[..., WorkerPool]
) -> None:
    """The payload carries a field RunRequest refuses: the run ends with the error naming
    it, its job keeps its result, and the run holds no lease."""
    request = await _queued(client)
    await pools(redis_url).start(1)
    jid = await _job_for(redis, keys, request, {**request.model_dump(mode="json"), "evil": True})
    try:
        await _job_done(redis, keys, jid)
        record = await client.runs.get(request.run_id)
        assert record.status is RunStatus.ERROR
        assert record.error_type == "PayloadError"
        assert record.error is not None
        assert "evil" in record.error
        assert await redis.zscore(keys.leases(), request.run_id) is None
        assert await redis.hget(keys.lease(request.run_id), "state") in (None, b"released")
        rejected = json.loads(await redis.get(result_key_prefix + jid))
        assert rejected["r"]["status"] == "rejected"
    finally:
        await drop_job_keys(redis, [jid])


async def test_a_run_aborted_before_it_started_ends_aborted_without_starting(
    client: Client, redis: Redis, keys: Keys, redis_url: str, pools: Callable[..., WorkerPool]
) -> None:
    """Its tree's abort flag was set before any worker took the job (the abort's own end
    of the run not yet written): it ends aborted, never started, no lease taken."""
    request = await _queued(client)
    flag = keys.run_abort(request.session_id, request.run_id)
    await redis.set(flag, json.dumps({"reason": "changed my mind"}), ex=600)
    await pools(redis_url).start(1)
    jid = await _job_for(redis, keys, request)
    try:
        await _job_done(redis, keys, jid)
        record = await client.runs.get(request.run_id)
        assert record.status is RunStatus.ABORTED
        assert record.abort_reason == "changed my mind"
        assert record.started_at is None
        assert record.worker_id is None
        assert await redis.zscore(keys.leases(), request.run_id) is None
    finally:
        await drop_job_keys(redis, [jid])


async def test_a_turn_job_whose_lease_a_later_attempt_holds_changes_nothing(
    client: Client, redis: Redis, keys: Keys, redis_url: str, pools: Callable[..., WorkerPool]
) -> None:
    request = await _queued(client)
    owner = {b"attempt": b"2", b"worker": b"elsewhere", b"state": b"held"}
    await redis.hset(keys.lease(request.run_id), mapping=owner)
    before = await redis.get(keys.run(request.run_id))
    await pools(redis_url).start(1)
    jid = await _job_for(redis, keys, request)
    try:
        await _job_done(redis, keys, jid)
        assert await redis.get(keys.run(request.run_id)) == before
        assert await redis.hgetall(keys.lease(request.run_id)) == owner
        assert await redis.get(keys.run_fence(request.session_id, request.run_id)) is None
    finally:
        await drop_job_keys(redis, [jid])
