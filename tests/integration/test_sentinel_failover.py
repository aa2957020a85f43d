"""Redis Sentinel: the master dies mid-run (SIGKILL) and every run still ends, with every
event exactly once.

A private deployment (`sentinelproc.SentinelCluster`: master, replica, three sentinels on
free local ports) and two real `orchestrator worker` processes given only a
`redis+sentinel://` URL. Turns are streaming when the master is killed; the sentinels
promote the replica; workers and client reach it through the same URL; the turns that
could not publish hand their runs back and resume from their checkpoints.

Prints the failover figures: time from the kill to the promotion, and to the first event
written after it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client, Run, connect
from orchestrator.errors import StoreError
from orchestrator.events import EventYield, ResponseYield
from orchestrator.runs import RunStatus, StreamEntry
from orchestrator.settings import Settings
from tests.fixtures_llm import MockLLMFactory
from tests.integration.redisproc import REDIS_SERVER
from tests.integration.sentinelproc import SentinelCluster
from tests.integration.workerproc import WorkerPool, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ASSISTANT = "tests.integration.agents_for_tests:assistant"
RUNS = 6
ANSWER = " ".join(f"word{i}" for i in range(80))

SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "name": "tool",
            "match": {"last_user_contains": "failover", "last_role": "user"},
            "reply": {
                "content": "First a little work.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 1}}],
            },
        },
        {
            "name": "answer",
            "match": {"last_user_contains": "failover", "last_role": "tool"},
            "reply": {"content": ANSWER},
            "latency": {"first_token_ms": 0, "token_ms": 40},
        },
    ],
    "fallback": {"content": "unexpected"},
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary to run a Sentinel deployment")
    made = SentinelCluster(tmp_path / "sentinel")
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
async def sentinel_client(cluster: SentinelCluster) -> AsyncIterator[Client]:
    made = await connect(settings=Settings(redis_url=cluster.url, key_prefix="failover"))
    try:
        yield made
    finally:
        await made.close()


async def _retrying(what: str, call: Any, timeout: float = 60.0) -> Any:
    """`call()`, retried while Redis is failing over (StoreError), up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except StoreError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: Redis never came back") from None
            await asyncio.sleep(0.1)


async def _wait_ended(run: Run, timeout: float) -> RunStatus:
    deadline = time.monotonic() + timeout
    while True:
        record = await _retrying("run status", run.status)
        if record.status.terminal:
            return record.status
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run.run_id} still {record.status} after {timeout}s")
        await asyncio.sleep(0.2)


def _ms(entry: StreamEntry) -> int:
    return int(entry.id.split("-")[0])


async def test_runs_finish_after_a_sentinel_failover_with_every_event_exactly_once(
    cluster: SentinelCluster,
    sentinel_client: Client,
    mock_llm: MockLLMFactory,
    tmp_path: Path,
) -> None:
    llm = mock_llm(SCRIPT)
    env = worker_env(llm.base_url, tmp_path / "tools.log")
    pool = WorkerPool(sentinel_client, cluster.url, "failover", env, tmp_path)
    try:
        await pool.start(2, concurrency=4)
        runs = [await sentinel_client.submit(ASSISTANT, f"failover {i}") for i in range(RUNS)]

        async def streaming() -> bool:
            entries = await sentinel_client.reader.read(runs[-1].session_id)
            return sum(e.kind == "event" for e in entries) >= 10

        deadline = time.monotonic() + 30
        while not await streaming():
            assert time.monotonic() < deadline, "the last run never started streaming"
            await asyncio.sleep(0.05)

        killed_at = time.time()
        cluster.kill_master()
        promoted_after_s = await asyncio.to_thread(cluster.wait_promoted, 30.0)

        statuses = [await _wait_ended(run, 90) for run in runs]
        assert statuses == [RunStatus.COMPLETED] * RUNS, pool.logs()

        first_after_kill: list[int] = []
        for run in runs:
            entries = await sentinel_client.reader.read(run.session_id, count=10_000)
            events = [e for e in entries if isinstance(e.output, EventYield)]
            seqs = Counter(
                (e.output.origin.agent_call_id, e.output.origin.event_seq)
                for e in events
                if isinstance(e.output, EventYield)
            )
            repeated = {key: n for key, n in seqs.items() if n > 1}
            assert not repeated, f"events written twice: {repeated}"
            for call in {call for call, _ in seqs}:
                numbers = sorted(seq for c, seq in seqs if c == call)
                assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), (
                    f"events lost in {call}: {numbers}"
                )
                assert numbers[0] in (0, 1)
            responses = [e for e in entries if isinstance(e.output, ResponseYield)]
            assert len(responses) == 1
            assert responses[0].output is not None
            assert ANSWER in str(responses[0].output.response)
            first_after_kill += [_ms(e) for e in events if _ms(e) > killed_at * 1000]
        assert first_after_kill, "no event was written after the master was killed"
        resumed_after_s = min(first_after_kill) / 1000 - killed_at
        records = [await sentinel_client.runs.get(run.run_id) for run in runs]
        handed_back = sum(record.attempt > 1 for record in records)
        print(
            f"\nsentinel failover: replica promoted {promoted_after_s:.2f}s after the "
            f"master was killed; first event after the kill {resumed_after_s:.2f}s; "
            f"{handed_back}/{RUNS} runs resumed by a later attempt; all {RUNS} completed"
        )
    finally:
        await pool.stop_all()
