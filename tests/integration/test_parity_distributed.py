"""SimpleLLMFunc programs run on workers as they run in-process: an `llm_function`
submitted by address comes back typed in the run's result (`RunResult.value`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from tests.fixtures_llm import MockLLMFactory
from tests.integration.agents_parity import Sentiment
from tests.integration.workerproc import WorkerPool, drop_arq_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(45)]

AGENTS = "tests.integration.agents_parity"

SCRIPT: dict[str, Any] = {
    "strict": True,
    "rules": [
        {
            "match": {"system_contains": "sentiment", "last_role": "user"},
            "reply": {"content": '```json\n{"label": "positive", "score": 0.75}\n```'},
        },
        {
            "match": {"system_contains": "words", "last_role": "user"},
            "reply": {"tool_calls": [{"name": "word_count", "arguments": {"text": "a b c"}}]},
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "{last_tool_result}"}},
    ],
}


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
async def workers(
    client: Client, redis_url: str, keys: Keys, llm: MockLLMThread, tmp_path: Path
) -> AsyncIterator[WorkerPool]:
    env = worker_env(llm.base_url, tmp_path / "tools.log")
    pool = WorkerPool(client, redis_url, keys.prefix, env, tmp_path, agents=AGENTS)
    await pool.start(1)
    try:
        yield pool
    finally:
        await pool.stop_all()
        await drop_arq_keys(client)


async def test_an_llm_function_returns_its_typed_value_through_submit(
    client: Client, workers: WorkerPool
) -> None:
    run = await client.submit(f"{AGENTS}:classify", args={"text": "what a day"})
    result = await run.result(timeout=30)
    assert result.ok, (result.error, workers.logs())
    assert result.value == Sentiment(label="positive", score=0.75)
    assert result.value_as(dict[str, Any]) == {"label": "positive", "score": 0.75}


async def test_a_tool_round_trip_on_a_worker_passes_a_strict_server(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    run = await client.submit(f"{AGENTS}:count_words", "a b c")
    result = await run.result(timeout=30)
    assert result.ok, (result.error, workers.logs())
    assert result.value == 3
    assert [r["fault"] for r in llm.requests()] == [None, None]
