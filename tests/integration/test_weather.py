"""Redis failing is weather, not death: a Redis of the test's own that it stops and starts,
a "Redis" that accepts connections and never answers, and broken jobs in the queue.

Never the shared Redis on 6379 for the outages: `redisproc.RedisServer` runs a private
redis-server (AOF on) on a free port, so stopping it hurts nobody else.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix

from orchestrator.api import create_app
from orchestrator.client import Client, connect
from orchestrator.errors import StoreUnavailable
from orchestrator.events import EventYield
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunStatus
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis
from orchestrator.store.streams import StreamReader
from tests.fixtures_llm import MockLLMFactory
from tests.integration.redisproc import REDIS_SERVER, BlackHole, RedisServer
from tests.integration.workerproc import PROJECT_ROOT, WorkerPool, drop_job_keys, worker_env

pytestmark = [pytest.mark.integration]

ASSISTANT = "tests.integration.agents_for_tests:assistant"
FORKER = "tests.integration.agents_for_tests:forker"
OUTAGE_S = 10.0


def _spawn(message: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": message}}


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 5},
    "rules": [
        {
            "name": "slow-call",
            "match": {"last_user_contains": "slowtool", "last_role": "user"},
            "reply": {
                "content": "Working on it.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 3}}],
            },
        },
        {
            "name": "slow-answer",
            "match": {"last_user_contains": "slowtool", "last_role": "tool"},
            "reply": {"content": "Slow work done: {last_tool_result}"},
        },
        {
            "name": "leaf",
            "match": {"last_user_contains": "task: leaf", "last_role": "user"},
            "reply": {
                "content": "Leaf working.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 2}}],
            },
        },
        {
            "name": "tree-root",
            "match": {"last_user_contains": "tree-root", "last_role": "user"},
            "reply": {
                "content": "Splitting.",
                "tool_calls": [
                    *(_spawn(f"leaf {i}") for i in range(3)),
                    {"name": "selfref_fork_gather_all", "arguments": {}},
                ],
            },
        },
        {
            "name": "tree-gathered",
            "match": {"last_user_contains": "tree-root", "last_role": "tool"},
            "reply": {"content": "gathered: {last_tool_result}"},
        },
    ],
    "fallback": {"content": "done: {last_tool_result}"},
}


# -- a Redis that goes away -------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary to run a private Redis")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_client(private_redis: RedisServer) -> AsyncIterator[Client]:
    settings = Settings(redis_url=private_redis.url, key_prefix="chaos")
    made = await connect(settings=settings)
    try:
        yield made
    finally:
        await made.close()


def _calls_and_seqs(entries: list[Any]) -> dict[str, list[int]]:
    by_call: dict[str, list[int]] = {}
    for entry in entries:
        output = entry.output
        if isinstance(output, EventYield):
            by_call.setdefault(output.origin.agent_call_id, []).append(output.origin.event_seq)
    return by_call


def _first_entry_after(entries: list[Any], ms: float) -> float | None:
    stamps = [int(e.id.split("-")[0]) for e in entries]
    later = [s for s in stamps if s >= ms]
    return min(later) if later else None


@pytest.mark.timeout(150)
async def test_workers_outlive_a_redis_restart_and_every_run_completes_gap_free(
    private_redis: RedisServer,
    private_client: Client,
    mock_llm: MockLLMFactory,
    tmp_path: Path,
) -> None:
    llm: MockLLMThread = mock_llm(SCRIPT)
    env = worker_env(llm.base_url, tmp_path / "tools.log")
    pool = WorkerPool(private_client, private_redis.url, "chaos", env, tmp_path)
    client = private_client
    try:
        workers = await pool.start(2, concurrency=8)
        runs = [await client.submit(ASSISTANT, f"slowtool {i}") for i in range(3)]
        runs.append(await client.submit(FORKER, "tree-root please"))
        await asyncio.sleep(1.5)  # every run is mid-turn: tools running, forks spawned

        private_redis.stop()
        await asyncio.sleep(OUTAGE_S)
        assert all(w.alive for w in workers), pool.logs()
        private_redis.start()
        restarted_ms = time.time() * 1000

        results = [await asyncio.wait_for(run.result(), 60) for run in runs]

        assert all(w.alive for w in workers), pool.logs()
        for result in results:
            assert result.status is RunStatus.COMPLETED, (result, pool.logs())
        forks = [r for r in await client.runs.list(include_forks=True) if r.fork is not None]
        assert len(forks) == 3
        assert all(f.status is RunStatus.COMPLETED for f in forks)

        reader = StreamReader(client.redis, client.keys)
        firsts = []
        for run in runs:
            entries = await reader.read(run.session_id, count=100_000)
            for call, seqs in _calls_and_seqs(entries).items():
                assert seqs == list(range(len(seqs))), f"event_seq of {call}: {seqs}"
            firsts.append(_first_entry_after(entries, restarted_ms))
        first = min(f for f in firsts if f is not None)
        attempts = [(await run.status()).attempt for run in runs]
        print(
            f"\nredis down {OUTAGE_S:.0f} s; first event {(first - restarted_ms) / 1000:.2f} s "
            f"after the restart; attempts of the runs: {attempts}"
        )
    finally:
        await pool.stop_all()
        print(pool.logs())


@pytest.mark.timeout(60)
async def test_a_worker_started_while_redis_is_down_waits_and_then_serves(
    private_redis: RedisServer,
    private_client: Client,
    mock_llm: MockLLMFactory,
    tmp_path: Path,
) -> None:
    llm = mock_llm(SCRIPT)
    env = worker_env(llm.base_url, tmp_path / "tools.log")
    pool = WorkerPool(private_client, private_redis.url, "chaos", env, tmp_path)
    try:
        private_redis.stop()
        worker = pool.spawn(concurrency=2)
        await asyncio.sleep(3)
        assert worker.alive, worker.log()
        private_redis.start()
        await pool.wait_registered([worker], timeout=20)
        run = await private_client.submit(ASSISTANT, "hello")
        assert (await asyncio.wait_for(run.result(), 20)).status is RunStatus.COMPLETED
        assert worker.log().count("redis unavailable; retrying") == 1, worker.log()
    finally:
        await pool.stop_all()


# -- a Redis that never answers -----------------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    with BlackHole() as hole:
        yield hole


@pytest.mark.timeout(30)
async def test_the_api_answers_503_within_2_s_when_redis_never_answers(
    black_hole: BlackHole,
) -> None:
    app = create_app(Settings(redis_url=black_hole.url, key_prefix="hole"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        for method, path, body in (
            ("GET", "/readyz", None),
            ("POST", "/v1/runs", {"agent": "tests.x:y", "message": "hi"}),
            ("POST", "/v1/runs", {"agent": "tests.x:y", "message": "hi", "session_id": "s1"}),
        ):
            started = time.monotonic()
            response = await http.request(method, path, json=body)
            took = time.monotonic() - started
            print(f"\n{method} {path}: {response.status_code} in {took:.2f} s")
            assert response.status_code == 503, response.text
            assert took < 2.0
            assert response.json()["error"] == "store_unavailable"


@pytest.mark.timeout(30)
async def test_the_client_raises_store_unavailable_within_its_timeout(
    black_hole: BlackHole,
) -> None:
    settings = Settings(redis_url=black_hole.url, key_prefix="hole", redis_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="Redis unreachable"):
        await connect(settings=settings)
    took = time.monotonic() - started
    print(f"\nclient connect: StoreUnavailable in {took:.2f} s")
    assert took < 1.0 + 2.0


@pytest.mark.timeout(30)
def test_the_cli_exits_with_a_clear_error_when_redis_never_answers(black_hole: BlackHole) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update({"ORCHESTRATOR_REDIS_TIMEOUT_S": "1", "PYTHONPATH": str(PROJECT_ROOT)})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "runs", "--redis", black_hole.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 1, done
    assert "Redis unreachable" in done.stderr
    assert took < 15


# -- broken jobs ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_jobs_with_a_broken_envelope_are_removed_and_counted(
    client: Client,
    redis: Redis,
    redis_url: str,
    keys: Keys,
    mock_llm: MockLLMFactory,
    tmp_path: Path,
) -> None:
    llm = mock_llm(SCRIPT)
    env = worker_env(llm.base_url, tmp_path / "tools.log")
    pool = WorkerPool(client, redis_url, keys.prefix, env, tmp_path)
    suffix = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    good = {"t": 1, "f": "run_turn", "a": [{}], "k": {}, "et": now_ms}
    broken = {
        f"notjson-{suffix}": b"\x80\x04 not json",
        f"array-{suffix}": b"[1, 2, 3]",
        f"nofunc-{suffix}": json.dumps({**good, "f": None}).encode(),
        f"badtry-{suffix}": json.dumps({**good, "t": "x"}).encode(),
        f"badtime-{suffix}": json.dumps({**good, "et": "yesterday"}).encode(),
        f"noargs-{suffix}": json.dumps({k: v for k, v in good.items() if k != "a"}).encode(),
    }
    try:
        (worker,) = await pool.start(1)
        for jid, body in broken.items():
            await redis.set(job_key_prefix + jid, body, ex=600)
            await redis.zadd(keys.queue(), {jid: now_ms})
        await redis.publish(keys.wake(), "x")

        async def cleaned() -> bool:
            names = [p + j for j in broken for p in (job_key_prefix, in_progress_key_prefix)]
            return await client.queue.depth() == 0 and await redis.exists(*names) == 0

        deadline = time.monotonic() + 20
        while not await cleaned():
            assert time.monotonic() < deadline, pool.logs()
            await asyncio.sleep(0.1)

        async def counted() -> int:
            (beat,) = [w for w in await client.workers.list() if w["pid"] == worker.pid]
            return int(beat["malformed_jobs"])

        while await counted() < len(broken):
            assert time.monotonic() < deadline, pool.logs()
            await asyncio.sleep(0.1)
        assert await counted() == len(broken)
        assert worker.alive
        ok = await client.submit(ASSISTANT, "hello")
        assert (await asyncio.wait_for(ok.result(), 15)).status is RunStatus.COMPLETED
    finally:
        await pool.stop_all()
        await drop_job_keys(redis, list(broken))
