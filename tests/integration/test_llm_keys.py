"""Keys that recover, over real HTTP and real time: a key the scripted model answers
401/403 for rests for its cool-down and then serves again; in a client, and on a real
worker process that keeps serving other runs meanwhile and shows the benched key in its
heartbeat (`orchestrator worker --check`, `/metrics`). The key itself is never shown.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.client import Client, Run
from orchestrator.errors import LLMHTTPError
from orchestrator.keys import Keys
from orchestrator.llm import OpenAICompatible
from orchestrator.llm.benched import BenchedKeyReport, read_benched_keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunStatus
from tests.fixtures_api import ApiFactory
from tests.fixtures_llm import MockLLMFactory
from tests.integration.agents_keys import FLAKY_KEY, FLAKY_MODEL, STEADY_KEY
from tests.integration.workerproc import (
    PROJECT_ROOT,
    WorkerPool,
    WorkerProcess,
    drop_arq_keys,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MESSAGES = [{"role": "user", "content": "hello"}]
AGENTS = "tests.integration.agents_keys"
FLAKY = f"{AGENTS}:flaky_chat"
STEADY = f"{AGENTS}:steady_chat"
# Long enough for the checks made while the key rests, on a busy 2-core machine.
WORKER_COOLDOWN_S = 15.0


def _reject_once(key: str, fault: str = "http_401") -> dict[str, Any]:
    """A script whose first request with `key` is refused with `fault`; all else answers."""
    return {
        "model": "scripted",
        "rules": [
            {
                "name": "reject-once",
                "match": {"api_key": key},
                "fault": {"type": fault, "times": 1},
                "reply": {"content": "Served."},
            }
        ],
        "fallback": {"content": "Served."},
    }


def _sent_keys(llm: MockLLMThread) -> list[str | None]:
    return [request["api_key"] for request in llm.requests()]


# -- one client --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [("http_401", 401), ("http_403", 403)])
async def test_a_rejected_lone_key_fails_by_index_then_fast_then_serves_after_its_cooldown(
    mock_llm: MockLLMFactory, fault: str, status: int
) -> None:
    key = "sk-test-lonely-5e6f7a8b9c0d"
    llm = mock_llm(_reject_once(key, fault))
    model = OpenAICompatible([key], "scripted", llm.base_url, key_cooldown_s=2.0, max_retries=0)
    async with model:
        with capture_logs() as logs:
            with pytest.raises(LLMHTTPError) as met:
                await model.chat(MESSAGES)
            with pytest.raises(LLMHTTPError) as fast:
                await model.chat(MESSAGES)
        (benched,) = model.key_pool.benched()
        await asyncio.sleep(benched.retry_in_s + 0.05)
        answer = await model.chat(MESSAGES)

    assert met.value.status_code == status
    assert f"API key #1 of 1 was rejected (HTTP {status}" in str(met.value)
    assert fast.value.status_code == status
    assert "API key #1 of 1 is tried again in" in str(fast.value)
    assert answer["choices"][0]["message"]["content"] == "Served."
    assert _sent_keys(llm) == [key, key]  # the fast failure sent nothing
    assert key not in f"{met.value} {fast.value} {logs!r}"


async def test_a_rejected_key_of_a_pool_is_skipped_while_it_rests_then_serves_again(
    mock_llm: MockLLMFactory,
) -> None:
    alpha, bravo = "sk-test-alpha-1a2b3c4d5e", "sk-test-bravo-6f7a8b9c0d"
    llm = mock_llm(_reject_once(bravo))
    model = OpenAICompatible([alpha, bravo], "scripted", llm.base_url, key_cooldown_s=1.5)
    async with model:
        for _ in range(3):  # alpha; bravo rejected and alpha answers instead; alpha
            await model.chat(MESSAGES)
        assert _sent_keys(llm) == [alpha, bravo, alpha, alpha]
        (benched,) = model.key_pool.benched()
        assert benched.label == "API key #2 of 2"
        await asyncio.sleep(benched.retry_in_s + 0.05)
        await model.chat(MESSAGES)  # bravo, the least recently used, is back
    assert _sent_keys(llm)[4:] == [bravo]
    assert model.key_pool.benched() == []


# -- a worker process ----------------------------------------------------------------------------


@pytest.fixture
def flaky_llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(_reject_once(FLAKY_KEY))


def _spawn_worker(
    redis_url: str, prefix: str, env: dict[str, str], log_path: Path
) -> WorkerProcess:
    """`orchestrator worker --agents tests.integration.agents_keys`, as an operator runs it."""
    command = [
        *(sys.executable, "-m", "orchestrator.cli", "worker"),
        *("--redis", redis_url, "--prefix", prefix, "--agents", AGENTS),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(proc, log_path)


@pytest.fixture
async def key_worker(
    client: Client, redis_url: str, keys: Keys, flaky_llm: MockLLMThread, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    env = worker_env(flaky_llm.base_url, tmp_path / "tools.log")
    env["TEST_KEY_COOLDOWN_S"] = str(WORKER_COOLDOWN_S)
    pool = WorkerPool(client, redis_url, keys.prefix, env, tmp_path)
    worker = _spawn_worker(redis_url, keys.prefix, env, tmp_path / "key-worker.log")
    pool.started.append(worker)
    try:
        await pool.wait_registered([worker], timeout=20)
        yield worker
    finally:
        await pool.stop_all()
        print(pool.logs())  # shown by pytest when the test failed
        await drop_arq_keys(client)


async def _finish(run: Run) -> tuple[str, Any]:
    """The run's whole stream (as JSON text) and its result."""
    async with asyncio.timeout(20):
        outputs = [output.model_dump_json() async for output in run.stream()]
    return "\n".join(outputs), await run.result(timeout=20)


async def _benched_on_workers(client: Client) -> list[tuple[str, BenchedKeyReport]]:
    now = time.time()
    return [
        (str(worker["worker_id"]), key)
        for worker in await client.workers.list()
        for key in read_benched_keys(worker, now)
    ]


async def _wait_for_benched(client: Client, *, wanted: bool, timeout: float) -> Any:
    """Until the workers' heartbeats report some benched key (`wanted`) or none."""
    deadline = time.monotonic() + timeout
    while bool(found := await _benched_on_workers(client)) is not wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"heartbeats did not change in {timeout} s: {found}")
        await asyncio.sleep(0.1)
    return found


async def test_a_worker_benches_a_rejected_key_keeps_serving_and_recovers_after_the_cooldown(
    client: Client,
    key_worker: WorkerProcess,
    flaky_llm: MockLLMThread,
    make_api: ApiFactory,
    redis_url: str,
    keys: Keys,
) -> None:
    # The run that meets the 401 fails, naming the key by its place in the pool.
    met_events, met = await _finish(await client.submit(FLAKY, "hello"))
    assert met.status is RunStatus.ERROR
    assert f"{FLAKY_MODEL}: API key #1 of 1 was rejected (HTTP 401" in met.error

    # While the key rests, runs for that model fail fast, saying when it returns; runs for
    # other models are served by the same worker.
    fast_events, fast = await _finish(await client.submit(FLAKY, "hello again"))
    assert fast.status is RunStatus.ERROR
    assert "API key #1 of 1 is tried again in" in fast.error
    _, steady = await _finish(await client.submit(STEADY, "hello"))
    assert steady.status is RunStatus.COMPLETED
    assert _sent_keys(flaky_llm).count(FLAKY_KEY) == 1  # the fast failure sent nothing

    # The worker's heartbeat shows the benched key: /metrics and `worker --check` read it.
    ((worker_id, key),) = await _wait_for_benched(client, wanted=True, timeout=10)
    assert key_worker.owns(worker_id)
    assert (key.model, key.key_index, key.keys, key.status) == (FLAKY_MODEL, 1, 1, 401)
    assert 0 < key.retry_in_s <= WORKER_COOLDOWN_S
    metrics = (await make_api().get("/metrics")).text
    assert "orchestrator_api_keys_benched 1" in metrics
    assert (
        f'orchestrator_api_key_retry_seconds{{worker="{worker_id}",model="{FLAKY_MODEL}",'
        'key="1",keys="1",status="401"}'
    ) in metrics
    check = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "orchestrator.cli", "worker", "--check"),
            *("--redis", redis_url, "--prefix", keys.prefix),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=PROJECT_ROOT,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"benched: model {FLAKY_MODEL} API key #1 of 1 (HTTP 401), tried again in" in (
        check.stdout
    )
    assert "1 API key(s) benched" in check.stdout

    # After the cool-down the same worker uses the key again, and it serves.
    await _wait_for_benched(client, wanted=False, timeout=WORKER_COOLDOWN_S + 10)
    again_run = await client.submit(FLAKY, "and now?")
    _, again = await _finish(again_run)
    assert again.status is RunStatus.COMPLETED, again.error
    assert key_worker.owns((await again_run.status()).worker_id)
    assert key_worker.alive
    assert _sent_keys(flaky_llm).count(FLAKY_KEY) == 2

    shown = [met_events, fast_events, met.error, fast.error, metrics, check.stdout]
    assert "llm.api_key_benched" in key_worker.log()
    assert all(FLAKY_KEY not in text for text in [*shown, key_worker.log()])
    assert STEADY_KEY not in key_worker.log()
