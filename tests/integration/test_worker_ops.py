"""What operators rely on from a worker process: JSON log lines that say which run, session
and worker they are about; the host name it reports; its latency observations reaching
/metrics; and the preStop drain (no new jobs, running turns finish or are handed back).

Real `orchestrator worker` subprocesses, configured through ORCHESTRATOR_* only."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunStatus
from tests.fixtures_llm import MockLLMFactory
from tests.integration.workerproc import (
    PROJECT_ROOT,
    WorkerPool,
    drop_arq_keys,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ASSISTANT = "tests.integration.agents_for_tests:assistant"

SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "name": "slow-call",
            "match": {"regex": r"work for (\d+)", "last_role": "user"},
            "reply": {
                "content": "Working on it.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": "{regex_1}"}}],
            },
        },
        {
            "name": "slow-answer",
            "match": {"last_user_contains": "work for", "last_role": "tool"},
            "reply": {"content": "Done: {last_tool_result}"},
        },
    ],
    "fallback": {"content": "Hello from the scripted model."},
}


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
def env(llm: MockLLMThread, tmp_path: Path) -> dict[str, str]:
    made = worker_env(llm.base_url, tmp_path / "tools.log")
    made["ORCHESTRATOR_WORKER_STATE_DIR"] = str(tmp_path / "state")
    made["ORCHESTRATOR_WORKER_HOST"] = "pod-a"
    return made


@pytest.fixture
async def pool(
    client: Client, redis_url: str, keys: Keys, env: dict[str, str], tmp_path: Path
) -> AsyncIterator[WorkerPool]:
    made = WorkerPool(client, redis_url, keys.prefix, env, tmp_path)
    try:
        yield made
    finally:
        await made.stop_all()
        await drop_arq_keys(client)


async def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.cli",
        *args,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def test_worker_log_lines_are_json_with_run_session_and_worker_ids(
    client: Client, pool: WorkerPool
) -> None:
    (worker,) = await pool.start(1)
    run = await client.submit(ASSISTANT, "hello")
    assert (await run.result(timeout=30)).status is RunStatus.COMPLETED

    async def logged() -> bool:
        return run.run_id in worker.log()

    await _until(logged, 10, f"no log line names run {run.run_id}:\n{worker.log()}")
    # stderr is a file here, not a terminal: every line is one JSON object.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    started = next(line for line in lines if line["event"] == "worker started")
    worker_id = started["worker_id"]
    assert worker_id.startswith("pod-a:")  # ORCHESTRATOR_WORKER_HOST
    job = [line for line in lines if line.get("run_id") == run.run_id]
    assert job
    for line in job:
        assert line["session_id"] == run.session_id
        assert line["worker_id"] == worker_id
        assert {"level", "timestamp"} <= set(line)
    assert any(line["event"] == "job done" and line["status"] == "completed" for line in job)
    (beat,) = await client.workers.list()
    assert (beat["host"], beat["worker_id"]) == ("pod-a", worker_id)


async def test_workers_latency_observations_reach_the_shared_histograms(
    client: Client, pool: WorkerPool
) -> None:
    await pool.start(1)
    runs = [await client.submit(ASSISTANT, f"hello {i}") for i in range(3)]
    for run in runs:
        assert (await run.result(timeout=30)).status is RunStatus.COMPLETED

    async def flushed() -> bool:  # with the next heartbeat (0.5 s here)
        histograms = await client.latencies.read()
        return all(histograms[m].count >= 3 for m in ("dispatch", "turn", "model_call"))

    await _until(flushed, 10, f"latencies never flushed: {await client.latencies.read()}")
    turn = (await client.latencies.read())["turn"]
    assert turn.sum > 0


async def test_drain_takes_no_new_jobs_and_returns_once_running_turns_end(
    client: Client, pool: WorkerPool, env: dict[str, str]
) -> None:
    env["ORCHESTRATOR_SHUTDOWN_GRACE_S"] = "20"
    (worker,) = await pool.start(1)
    assert (await _cli(env, "worker", "--alive"))[0] == 0
    slow = await client.submit(ASSISTANT, "work for 2 seconds")

    async def running() -> bool:
        return (await slow.status()).status is RunStatus.RUNNING

    await _until(running, 15, "the slow run never started")

    async def busy() -> bool:  # the heartbeat's busy slots (/metrics' per-worker gauge)
        return [w.get("running") for w in await client.workers.list()] == [1]

    await _until(
        busy, 5, f"the heartbeat never showed the busy slot: {await client.workers.list()}"
    )
    drain = asyncio.create_task(_cli(env, "worker", "--drain"))

    async def draining() -> bool:
        return any(w.get("draining") for w in await client.workers.list())

    await _until(draining, 10, "the worker never said it was draining")
    later = await client.submit(ASSISTANT, "hello after the drain")
    code, said = await drain
    assert code == 0, said
    assert "drained" in said
    assert "handed back" not in said
    assert (await slow.status()).status is RunStatus.COMPLETED
    await asyncio.sleep(1.0)  # several poll intervals: the drained worker takes nothing
    assert (await later.status()).status is RunStatus.QUEUED
    assert worker.alive
    # The SIGTERM that follows a preStop finds nothing to wait for.
    worker.terminate()
    assert await worker.wait_exit(10) == 0
    await pool.start(1)
    assert (await later.result(timeout=30)).status is RunStatus.COMPLETED


async def test_a_drain_past_the_grace_hands_turns_back_to_resume_elsewhere(
    client: Client, pool: WorkerPool, env: dict[str, str], tmp_path: Path
) -> None:
    # The test workers' grace is 1 s; this turn's tool takes 4 s.
    (first,) = await pool.start(1)
    slow = await client.submit(ASSISTANT, "work for 4 seconds")

    async def tool_started() -> bool:
        log = tmp_path / "tools.log"
        return log.exists() and "slow_tool" in log.read_text()

    await _until(tool_started, 15, "the slow tool never started")
    started = time.monotonic()
    code, said = await _cli(env, "worker", "--drain")
    assert code == 0, said
    assert "1 handed back" in said
    assert time.monotonic() - started < 4  # not waiting for the turn
    assert first.alive
    env.pop("ORCHESTRATOR_WORKER_STATE_DIR")  # the second worker: another host's
    env["ORCHESTRATOR_WORKER_HOST"] = "pod-b"
    await pool.start(1)
    result = await slow.result(timeout=40)
    assert result.status is RunStatus.COMPLETED
    record = await slow.status()
    assert record.worker_id is not None
    assert record.worker_id.startswith("pod-b:")
    assert (tmp_path / "state" / "drain").read_text().startswith("drained")
