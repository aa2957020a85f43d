"""Liveness is not CPU: a root whose one model reply spawns 1,000 forks, on 2 workers x 100
slots, completes on its first attempt (its worker is busy, not dead, and keeps its lease).

It used to starve its worker's event loop past the lease: the other worker's reaper took
the run, attempts 2 and 3 ran beside the first and the run ended "worker lost 3 times".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.runs import RunStatus
from orchestrator.store.connection import Redis
from orchestrator.store.queue import job_id
from tests.fixtures_llm import MockLLMFactory
from tests.integration.workerproc import WorkerPool, drop_job_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FORKER = "tests.integration.agents_for_tests:forker"
FORKS = 1000


def _script(forks: int) -> dict[str, Any]:
    spawns = [
        {"name": "selfref_fork_spawn", "arguments": {"message": f"part {i}"}} for i in range(forks)
    ]
    return {
        "model": "scripted",
        "latency": {"first_token_ms": 0, "token_ms": 0},
        "rules": [
            {
                "name": "leaf",
                "match": {"last_user_contains": "task: part"},
                "reply": {"content": "part done"},
            },
            {
                "name": "fan-out",
                "match": {"last_user_contains": "bigfan", "last_role": "user"},
                "reply": {
                    "content": "Fanning out.",
                    "tool_calls": [*spawns, {"name": "selfref_fork_gather_all", "arguments": {}}],
                },
            },
            {
                "name": "gathered",
                "match": {"last_user_contains": "bigfan", "last_role": "tool"},
                "reply": {"content": "all gathered"},
            },
        ],
    }


@pytest.fixture
async def workers(
    client: Client,
    redis: Redis,
    redis_url: str,
    mock_llm: MockLLMFactory,
    tmp_path: Path,
) -> AsyncIterator[WorkerPool]:
    llm = mock_llm(_script(FORKS))
    env = worker_env(llm.base_url, tmp_path / "tools.log")
    # The production lease and reaper: the claim that "a busy worker is not a dead one"
    # is about the defaults, not the short test lease.
    env.update(
        {
            "ORCHESTRATOR_MAX_FORKS_PER_AGENT": str(FORKS),
            "ORCHESTRATOR_LEASE_TTL_S": "6",
            "ORCHESTRATOR_REAP_INTERVAL_S": "1",
        }
    )
    pool = WorkerPool(client, redis_url, client.keys.prefix, env, tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()
        runs = await client.runs.list(include_forks=True, limit=FORKS + 10)
        await drop_job_keys(
            redis, [job_id(r.run_id, a, s) for r in runs for a in (1, 2, 3) for s in (0, 1, 2)]
        )


async def test_a_root_spawning_1000_forks_in_one_reply_completes_on_its_first_attempt(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(2, concurrency=100, timeout=30)
    started = time.monotonic()
    run = await client.submit(FORKER, "bigfan please")

    result = await asyncio.wait_for(run.result(), 200)
    took = time.monotonic() - started

    record = await run.status()
    forks = [r for r in await client.runs.list(include_forks=True, limit=FORKS + 10) if r.fork]
    print(f"\n1,000-fork run: {result.status.value} in {took:.1f} s, attempt {record.attempt}")
    assert result.status is RunStatus.COMPLETED, (result, workers.logs()[-5000:])
    assert record.attempt == 1, "the busy worker's run was taken for a dead one"
    assert len(forks) == FORKS
    assert all(f.status is RunStatus.COMPLETED for f in forks)
    assert [f for f in forks if f.attempt != 1] == []
    assert all(w.alive for w in workers.started)
