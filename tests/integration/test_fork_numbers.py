"""Fork numbers are never handed out again within a session while anything that names
them may still exist (real workers, the real Redis).

The session's fork counter is given `run_retention_s` at each allocation; a fork's record
keeps it after the fork's end, which comes later. The workers here keep records for 2 s
(a short `run_retention_s`: the time really passes, no key is deleted by hand), so one
turn's fork has ended and its record expired a few seconds later: the counter must still
be there, or the next turn's spawn in the session is `fork_1` again, sharing the first
fork's lane in the session stream, its memory key and its run id's earlier life.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunStatus, fork_run_id
from orchestrator.store.connection import Redis
from orchestrator.store.forks import ForkTable
from tests.fixtures_llm import MockLLMFactory
from tests.integration.test_distributed import wait_until
from tests.integration.test_forks import GATHER, _pool, collect_tree, gather_results, spawn
from tests.integration.workerproc import drop_arq_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FORKER = "tests.integration.agents_for_tests:forker"

SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 1},
    "rules": [
        {
            "name": "number-fork",
            "match": {"last_user_contains": "task: number part"},
            "reply": {"content": "fork done"},
        },
        {
            "name": "number-root",
            "match": {"last_user_contains": "number-root", "last_role": "user"},
            "reply": {"content": "Forking.", "tool_calls": [spawn("number part"), GATHER]},
        },
        {
            "name": "number-answer",
            "match": {"last_role": "tool"},
            "reply": {"content": "root saw: {tool_results}"},
        },
    ],
    "fallback": {"content": "Hello from the scripted model."},
}


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


async def _turn(client: Client, message: str, session_id: str | None = None) -> tuple[str, Any]:
    run = await client.submit(FORKER, message, session_id=session_id)
    await collect_tree(run)
    result = await run.result(timeout=10)
    assert result.status is RunStatus.COMPLETED, result.error
    return run.run_id, gather_results(result.messages or [])


async def test_a_new_turn_after_the_forks_records_expired_gets_new_fork_numbers(
    client: Client,
    redis: Redis,
    redis_url: str,
    keys: Keys,
    llm: MockLLMThread,
    tmp_path: Path,
) -> None:
    tool_log = tmp_path / "tools.log"
    tool_log.touch()
    pool = _pool(client, redis_url, keys, llm, tool_log, tmp_path, run_retention_s="2")
    try:
        await pool.start(1, concurrency=2)
        first_root, first = await _turn(client, "number-root one")
        assert list(first) == ["fork_1"]
        session = first_root  # a new session is named by its first run's id
        # The fork's record expires 2 s after its end (the counter, as allocations set it,
        # 2 s after the spawn: before).
        record = keys.run(fork_run_id(first_root, "fork_1"))

        async def expired() -> bool:
            return not await redis.exists(record)

        await wait_until(expired, 20, "the first fork's record to expire")
        assert await redis.exists(keys.events(session)), "the session's stream expired"

        _, second = await _turn(client, "number-root two", session_id=session)
    finally:
        await pool.stop_all()
        print(pool.logs())
        await drop_arq_keys(client)

    (fork_id,) = second
    assert fork_id != "fork_1", (
        "the next turn's fork was handed fork_1 again: it shares the first turn's fork's "
        "lane in the session stream and its memory key"
    )
    assert second[fork_id]["memory_key"] != first["fork_1"]["memory_key"]
    assert await redis.pttl(keys.forks(session)) > 0, "the fork counter has no TTL"


async def test_an_allocation_never_shortens_the_counter_an_end_pushed_back(
    redis: Redis, keys: Keys
) -> None:
    """A run's end pushed the counter past its record's expiry; a later allocation with
    a shorter TTL leaves it (else the counter could expire before that record)."""
    await redis.hset(keys.forks("s"), "#n", "3")
    await redis.expire(keys.forks("s"), 1_000)
    table = ForkTable(redis, keys, ttl_s=600)
    (got,) = await table.allocate_many("s", "r", ["a"], limit=10)
    assert got is not None
    assert got.fork_id == "fork_4"
    assert await redis.ttl(keys.forks("s")) > 660
    # A new counter gets the allocation's TTL and the largest refresh window (60 s).
    await table.allocate_many("s2", "r", ["a"], limit=10)
    assert 600 < await redis.ttl(keys.forks("s2")) <= 660
