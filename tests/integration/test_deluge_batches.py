"""lm-deluge's client on the cluster: `Client.submit_batch` spreads a batch over real
worker processes, under one requests-per-period limit that all of them share through
Redis, measured where it matters: at the (scripted) model, which logs when each request
arrived. The limit's period is shrunk from a minute to `PERIOD_S` to keep the test to
seconds: N requests per PERIOD_S is the same constraint as N per minute, on another
time scale (the limiter takes the period as a parameter, `limit_period_s`)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.client import Client
from orchestrator.deluge import Conversation, default_registry, register_model
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.store.batches import item_job_id
from tests.deluge_models import restore_registry, use_scripted
from tests.fixtures_api import ApiFactory
from tests.fixtures_llm import MockLLMFactory
from tests.integration.workerproc import PROJECT_ROOT, WorkerPool, drop_job_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

AGENTS = "tests.integration.agents_deluge"
PERIOD_S = 1.5
LIMIT = 5  # requests per PERIOD_S, for all workers together
ITEMS = 25
# The limiter admits requests LIMIT apart PERIOD_S + MARGIN_S apart (Redis TIME), so that
# they *arrive* at least PERIOD_S apart however the HTTP hop after admission varies
# (measured: a cold connection on a busy machine adds up to ~0.12 s).
MARGIN_S = 0.3


@pytest.fixture(autouse=True)
def _registry() -> AsyncIterator[None]:
    yield from restore_registry()  # type: ignore[misc]


@pytest.fixture
async def workers(
    client: Client, redis_url: str, keys: Keys, tmp_path: Path, mock_llm: MockLLMFactory
) -> AsyncIterator[WorkerPool]:
    env = worker_env("http://unused.invalid/v1", tmp_path / "tools.log")
    pool = WorkerPool(client, redis_url, keys.prefix, env, tmp_path, agents=AGENTS)
    try:
        await pool.start(4, timeout=30, concurrency=4)
        yield pool
    finally:
        await pool.stop_all()
        print(pool.logs())


async def _cleanup(client: Client, batch_id: str, total: int) -> None:
    runs = range(1, 4)
    jobs = [item_job_id(batch_id, i, run) for i in range(total) for run in runs]
    await drop_job_keys(client.redis, jobs)


def _arrivals(llm: MockLLMThread) -> list[float]:
    return sorted(float(r["at"]) for r in llm.requests())


async def test_four_workers_share_one_rate_limit(
    client: Client, workers: WorkerPool, mock_llm: MockLLMFactory
) -> None:
    llm = mock_llm({"latency": {"first_token_ms": 20}, "fallback": {"content": "re: {last_user}"}})
    use_scripted({"gpt-4o-mini": llm})
    started = time.monotonic()
    batch = await client.submit_batch(
        [f"prompt {i}" for i in range(ITEMS)],
        model="gpt-4o-mini",
        max_requests_per_minute=LIMIT,
        limit_period_s=PERIOD_S,
        limit_margin_s=MARGIN_S,
        limiter_name=f"test-{client.keys.prefix}",
    )
    try:
        progress = await batch.wait(timeout=60)
        elapsed = time.monotonic() - started
        results = await batch.results()
    finally:
        await _cleanup(client, batch.batch_id, ITEMS)
    assert (progress.done, progress.failed, progress.pending) == (ITEMS, 0, 0)
    assert [r.completion if r else None for r in results] == [
        f"re: prompt {i}" for i in range(ITEMS)
    ]
    arrivals = _arrivals(llm)
    assert len(arrivals) == ITEMS
    # no PERIOD_S window holds more than LIMIT requests: request i and i+LIMIT are a
    # whole period apart
    gaps = [arrivals[i + LIMIT] - arrivals[i] for i in range(ITEMS - LIMIT)]
    assert min(gaps) >= PERIOD_S, gaps
    # and the workers kept the limit busy: the batch took what the limit implies
    implied = (math.ceil(ITEMS / LIMIT) - 1) * (PERIOD_S + MARGIN_S)
    assert arrivals[-1] - arrivals[0] >= implied - MARGIN_S
    assert arrivals[-1] - arrivals[0] <= implied + PERIOD_S
    assert elapsed <= implied + 4 * PERIOD_S
    print(
        f"min gap {min(gaps):.3f}s for {PERIOD_S}s; span {arrivals[-1] - arrivals[0]:.2f}s "
        f"(implied {implied:.2f}s); wall {elapsed:.2f}s"
    )


async def test_failed_items_are_retried_then_reported_in_order(
    client: Client, workers: WorkerPool, mock_llm: MockLLMFactory
) -> None:
    script = {
        "rules": [
            {"name": "bad", "match": {"last_user_contains": "bad"}, "reply": {"content": "x"},
             "fault": {"type": "http_400", "times": None}},
            {"name": "flaky", "match": {"last_user_contains": "flaky"},
             "reply": {"content": "ok {last_user}"}, "fault": {"type": "http_500", "times": 2}},
        ],
        "fallback": {"content": "ok {last_user}"},
    }  # fmt: skip
    llm = mock_llm(script)
    use_scripted({"gpt-4o-mini": llm})
    prompts: list[str | Conversation] = ["fine 0", "bad 1", "flaky 2", "fine 3", "bad 4"]
    prompts.append(Conversation().system("be kind").user("fine 5"))
    batch = await client.submit_batch(
        prompts, model="gpt-4o-mini", max_attempts=2, item_attempts=2, retry_delay=0.01
    )
    try:
        progress = await batch.wait(timeout=30)
        results = await batch.results()
    finally:
        await _cleanup(client, batch.batch_id, len(prompts))
    assert (progress.done, progress.failed) == (4, 2)
    assert [r.completion if r else None for r in results] == [
        "ok fine 0",
        None,
        "ok flaky 2",
        "ok fine 3",
        None,
        "ok fine 5",
    ]
    for index in (1, 4):
        failed = results[index]
        assert failed is not None
        assert failed.is_error
        assert failed.status_code == 400
    # a 400 is not sent again (the 500s were: flaky 2 answered on its third request)
    assert sum(r["rule"] == "bad" for r in llm.requests()) == 2
    assert sum(r["rule"] == "flaky" for r in llm.requests()) == 3
    system_seen = [r["body"]["messages"][0] for r in llm.requests() if r["rule"] is None]
    assert {"role": "system", "content": "be kind"} in system_seen


async def test_batch_cost_is_registry_price_times_reported_usage(
    client: Client,
    workers: WorkerPool,
    mock_llm: MockLLMFactory,
    make_api: ApiFactory,
    redis_url: str,
) -> None:
    """...and the same progress is readable from anywhere: the CLI and the HTTP API."""
    script = {
        "rules": [
            {"match": {"last_user_contains": "long"},
             "reply": {"content": "long",
                       "usage": {"prompt_tokens": 2000, "completion_tokens": 700}}},
        ],
        "fallback": {"content": "short", "usage": {"prompt_tokens": 100, "completion_tokens": 20}},
    }  # fmt: skip
    use_scripted({"claude-4-sonnet": mock_llm(script)})  # the Anthropic wire format
    prompts = ["long a", "short b", "long c", "short d", "short e"]
    batch = await client.submit_batch(prompts, model="claude-4-sonnet")
    try:
        progress = await batch.wait(timeout=30)
        results = await batch.results()
    finally:
        await _cleanup(client, batch.batch_id, len(prompts))
    spec = default_registry.get("claude-4-sonnet")
    expected_in, expected_out = 2 * 2000 + 3 * 100, 2 * 700 + 3 * 20
    assert (progress.input_tokens, progress.output_tokens) == (expected_in, expected_out)
    expected = (expected_in * spec.input_cost + expected_out * spec.output_cost) / 1e6
    assert progress.cost == pytest.approx(expected)
    assert sum(r.cost for r in results if r) == pytest.approx(expected)

    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator.cli", "batch", batch.batch_id, "--json",
         "--redis", redis_url, "--prefix", client.keys.prefix],
        capture_output=True, text=True, timeout=30, cwd=PROJECT_ROOT, check=True,
    )  # fmt: skip
    shown = json.loads(cli.stdout)
    assert (shown["done"], shown["pending"], shown["finished"]) == (5, 0, True)
    assert shown["cost"] == pytest.approx(expected)

    api = make_api()
    answer = await api.get(f"/v1/batches/{batch.batch_id}")
    assert answer.status_code == 200
    assert answer.json()["input_tokens"] == expected_in
    assert answer.json()["cost"] == pytest.approx(expected)
    assert (await api.get("/v1/batches/no-such-batch")).status_code == 404
    listed = (await api.get("/v1/batches")).json()["batches"]
    assert listed[0]["batch_id"] == batch.batch_id  # newest first

    # every key the batch made expires (only the bounded process-wide ones do not)
    async for name in client.redis.scan_iter(match=client.keys.pattern()):
        key = name.decode()
        if key not in client.keys.bounded():
            assert await client.redis.ttl(key) > 0, key


async def test_agent_loops_run_on_the_workers(
    client: Client, workers: WorkerPool, mock_llm: MockLLMFactory
) -> None:
    script = {
        "rules": [
            {"match": {"regex": r"weather in (\w+)", "last_role": "user"},
             "reply": {"tool_calls": [{"name": "get_weather",
                                       "arguments": {"city": "{regex_1}"}}]}},
            {"match": {"last_user_contains": "double", "last_role": "user"},
             "reply": {"tool_calls": [{"name": "double", "arguments": {"number": 21}}]}},
            {"match": {"last_role": "tool"}, "reply": {"content": "Result: {last_tool_result}"}},
        ],
        "fallback": {"content": "no tools needed"},
    }  # fmt: skip
    use_scripted({"claude-4-sonnet": mock_llm(script)})
    prompts = ["weather in Paris", "double it", "hello", "weather in Oslo"]
    batch = await client.submit_batch(
        prompts,
        model="claude-4-sonnet",
        tools=[f"{AGENTS}:get_weather", f"{AGENTS}:double"],
        max_rounds=3,
    )
    try:
        await batch.wait(timeout=30)
        results = await batch.results()
        conversations = await client.batch_conversations(batch.batch_id)
    finally:
        await _cleanup(client, batch.batch_id, len(prompts))
    assert [r.completion if r else None for r in results] == [
        "Result: The weather in Paris is sunny and 72F",
        "Result: 42",
        "no tools needed",
        "Result: The weather in Oslo is sunny and 72F",
    ]
    first = conversations[0]
    assert first is not None
    assert [m.role for m in first.messages] == ["user", "assistant", "tool", "assistant"]


async def test_a_batch_cannot_make_workers_import_or_call_other_things(
    client: Client, workers: WorkerPool, mock_llm: MockLLMFactory
) -> None:
    llm = mock_llm({"fallback": {"content": "hi"}})
    use_scripted({"gpt-4o-mini": llm})
    refusals = {
        "os:system": "is not one of this worker's --agents modules",
        f"{AGENTS}:not_a_tool": "is not a Tool",
    }
    for address, refusal in refusals.items():
        batch = await client.submit_batch(["a", "b"], model="gpt-4o-mini", tools=[address])
        try:
            progress = await batch.wait(timeout=30)
            results = await batch.results()
        finally:
            await _cleanup(client, batch.batch_id, 2)
        assert progress.failed == 2
        for result in results:
            assert result is not None
            assert result.is_error
            assert refusal in (result.error_message or "")
    assert llm.requests() == []


async def test_an_item_whose_worker_dies_is_run_again_elsewhere(
    client: Client, workers: WorkerPool, mock_llm: MockLLMFactory
) -> None:
    script = {
        "rules": [
            {"match": {"last_user_contains": "slow"}, "reply": {"content": "ok {last_user}"},
             "latency": {"first_token_ms": 3000}},
        ],
        "fallback": {"content": "ok {last_user}"},
    }  # fmt: skip
    llm = mock_llm(script)
    use_scripted({"gpt-4o-mini": llm})
    prompts = ["fast 0", "slow 1", "fast 2"]
    batch = await client.submit_batch(prompts, model="gpt-4o-mini")
    try:
        claim = await _claim_of(client, batch.batch_id, 1)
        async with asyncio.timeout(15):  # killed while the model is answering it
            while True:
                if _slow_requests(llm):
                    break
                await asyncio.sleep(0.05)
        workers.owner_of(str(claim["worker"])).kill()
        progress = await batch.wait(timeout=40)
        results = await batch.results()
    finally:
        await _cleanup(client, batch.batch_id, len(prompts))
    assert (progress.done, progress.failed) == (3, 0)
    assert [r.completion if r else None for r in results] == [f"ok {p}" for p in prompts]
    assert len(_slow_requests(llm)) == 2  # the lost run, and the one that answered
    assert await client.batches.claims(batch.batch_id) == {}


async def _claim_of(client: Client, batch_id: str, index: int) -> dict[str, object]:
    async with asyncio.timeout(15):
        while True:
            claims = await client.batches.claims(batch_id)
            if index in claims:
                claim: dict[str, object] = json.loads(claims[index])
                return claim
            await asyncio.sleep(0.05)


def _slow_requests(llm: MockLLMThread) -> list[dict[str, object]]:
    return [r for r in llm.requests() if "slow" in r["body"]["messages"][-1]["content"]]


async def test_a_key_missing_on_the_workers_fails_items_with_its_name(
    client: Client, workers: WorkerPool, mock_llm: MockLLMFactory
) -> None:
    llm = mock_llm({"fallback": {"content": "hi"}})
    register_model("keyed", api_base=llm.base_url, api_key_env="DELUGE_TEST_UNSET_KEY")
    batch = await client.submit_batch(["a", "b"], model="keyed")
    try:
        progress = await batch.wait(timeout=30)
        results = await batch.results()
    finally:
        await _cleanup(client, batch.batch_id, 2)
    assert progress.failed == 2
    for result in results:
        assert result is not None
        assert "set DELUGE_TEST_UNSET_KEY" in (result.error_message or "")
    assert llm.requests() == []
