"""Every Redis key has an owner and a TTL: once all work has ended, every key under the
prefix expires, except the few process-wide structures listed in `ALLOWED` (each bounded
by something other than time, and said why).

Real Redis, real `orchestrator worker` subprocesses and the scripted model: a turn, a
gathered fan-out, a depth-2 tree aborted mid-turn, a run whose worker is killed until the
reaper gives up, a run submitted and a session aborted through the API, and a resumed
attempt aborted while it waits in the queue.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.constants import job_key_prefix, result_key_prefix
from redis import Redis as SyncRedis

from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunStatus
from orchestrator.store.checkpoints import CheckpointStore
from orchestrator.store.connection import Redis
from orchestrator.store.queue import job_id
from tests.fixtures_api import ApiFactory
from tests.fixtures_llm import MockLLMFactory
from tests.fixtures_redis import delete_test_keys
from tests.integration.test_distributed import count_runs, owner, wait_until
from tests.integration.workerproc import WorkerPool, drop_arq_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ASSISTANT = "tests.integration.agents_for_tests:assistant"
FORKER = "tests.integration.agents_for_tests:forker"


def _spawns(*messages: str) -> list[dict[str, Any]]:
    calls = [{"name": "selfref_fork_spawn", "arguments": {"message": m}} for m in messages]
    return [*calls, {"name": "selfref_fork_gather_all", "arguments": {}}]


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 1},
    "rules": [
        {
            "match": {"last_user_contains": "task: mid", "last_role": "user"},
            "reply": {"content": "Two leaves.", "tool_calls": _spawns("leaf one", "leaf two")},
        },
        {
            "match": {"last_user_contains": "task: leaf", "last_role": "user"},
            "reply": {
                "content": "Leaf working.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 30}}],
            },
        },
        {
            "match": {"last_user_contains": "deep-root", "last_role": "user"},
            "reply": {"content": "One middle fork.", "tool_calls": _spawns("mid")},
        },
        {
            "match": {"last_user_contains": "fan-root", "last_role": "user"},
            "reply": {"content": "Two quick forks.", "tool_calls": _spawns("quick 1", "quick 2")},
        },
        {
            "match": {"last_user_contains": "work a long while", "last_role": "user"},
            "reply": {
                "content": "Working.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 30}}],
            },
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "Done: {last_tool_result}"}},
    ],
    "fallback": {"content": "Noted."},
}


def allowed(keys: Keys) -> dict[str, str]:
    """The keys that may be left without a TTL once every run has ended, and why each is
    bounded all the same (`Keys.bounded`, kept so by every worker's `Reaper.tidy`)."""
    indexes = "one entry per run whose record still exists; tidy prunes expired records'"
    why = {
        keys.runs_index(): indexes,
        keys.runs_expiring(): indexes + " (scored by expiry)",
        keys.leases(): "one entry per run holding a lease: emptied as each run ends",
        keys.workers(): "one entry per worker alive or dead less than an hour (tidy prunes)",
        keys.queue(): "arq's queue: a job per run waiting to start, removed as it starts",
    }
    for status in RunStatus:
        why[keys.runs_by_status(status.value)] = indexes + f" (status {status.value})"
    return why


async def unbounded_keys(redis: Redis, keys: Keys) -> list[tuple[str, str]]:
    """(name, type) of every key under the prefix with no TTL and not in `allowed`."""
    allow = allowed(keys)
    found = []
    async for raw in redis.scan_iter(match=keys.pattern(), count=500):
        name = raw.decode()
        if name not in allow and await redis.ttl(name) == -1:
            found.append((name, (await redis.type(name)).decode()))
    return sorted(found)


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
def tool_log(tmp_path: Path) -> Path:
    path = tmp_path / "tools.log"
    path.touch()
    return path


@pytest.fixture
async def workers(
    client: Client, redis_url: str, keys: Keys, llm: MockLLMThread, tool_log: Path, tmp_path: Path
) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(client, redis_url, keys.prefix, worker_env(llm.base_url, tool_log), tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()
        print(pool.logs())  # shown by pytest when the test failed
        await drop_arq_keys(client)


def test_the_allow_list_is_the_documented_bounded_keys() -> None:
    """A new key written without a TTL must be added to `Keys.bounded` and here, with why."""
    keys = Keys("p")
    assert set(allowed(keys)) == keys.bounded()


async def test_once_every_run_has_ended_every_key_expires_but_the_bounded_ones(
    client: Client, workers: WorkerPool, redis: Redis, keys: Keys, tool_log: Path,
    make_api: ApiFactory,
) -> None:  # fmt: skip
    await workers.start(2)
    # A run whose worker is killed mid-turn, with no attempt left: the reaper gives up.
    lost = await client.submit(ASSISTANT, "please work a long while", max_attempts=1)
    await wait_until(lambda: count_runs(tool_log, "slow_tool") == 1, 15, "the slow tool")
    (await owner(lost, workers)).kill()
    assert (await lost.result(timeout=20)).status is RunStatus.ERROR
    await workers.start(1)

    turn = await client.submit(ASSISTANT, "hello")
    fan = await client.submit(FORKER, "fan-root")
    deep = await client.submit(FORKER, "deep-root")
    api = make_api()
    answer = await api.post("/v1/runs", json={"agent": ASSISTANT, "message": "work a long while"})
    assert answer.status_code == 202, answer.text
    via_api = client.run(answer.json()["run_id"], answer.json()["session_id"])

    # The killed run's slow tool, then the API run's and the two leaves' (depth 2).
    await wait_until(lambda: count_runs(tool_log, "slow_tool") == 4, 30, "the tools at work")
    await deep.abort("enough")
    closed = await api.post(f"/v1/sessions/{via_api.session_id}/abort", json={"reason": "bye"})
    assert closed.status_code == 202, closed.text
    for run, status in ((turn, RunStatus.COMPLETED), (fan, RunStatus.COMPLETED),
                        (deep, RunStatus.ABORTED), (via_api, RunStatus.ABORTED)):  # fmt: skip
        assert (await run.result(timeout=60)).status is status, run.run_id

    async def all_ended() -> bool:
        runs = await client.runs.list(include_forks=True, limit=100)
        return all(r.status.terminal for r in runs)

    await wait_until(all_ended, 30, "every fork ended")
    assert await unbounded_keys(redis, keys) == []


async def test_a_resumed_attempt_aborted_in_the_queue_leaves_its_checkpoint_to_expire(
    client: Client, redis: Redis, keys: Keys
) -> None:
    """A queued run (no worker here) holds a checkpoint, as an attempt that saved one and
    was lost leaves it, and is aborted in the queue by the client: the checkpoint, kept
    without a TTL while the run was live, expires with the run's other keys."""
    run = await client.submit(ASSISTANT, "hello", max_attempts=3)
    checkpoints = CheckpointStore(redis, keys)
    await checkpoints.save(run.session_id, run.run_id, attempt=1, state=b'{"step": 1}')
    assert await redis.ttl(keys.checkpoint(run.session_id, run.run_id)) == -1

    await run.abort("changed my mind")
    assert (await run.result(timeout=10)).status is RunStatus.ABORTED
    assert await unbounded_keys(redis, keys) == []
    assert await redis.ttl(keys.checkpoint(run.session_id, run.run_id)) > 0


def test_a_tests_cleanup_deletes_its_prefix_and_its_jobs_arq_keys_and_nothing_else(
    redis_url: str,
) -> None:
    """`delete_test_keys` (the `keys` fixture's teardown) leaves the shared Redis as the
    test found it: its prefix's keys, and arq's keys (outside the prefix) of the jobs it
    left queued and of every attempt and segment of its runs, but no other prefix's."""
    ours, theirs = Keys(f"test-{uuid.uuid4().hex[:12]}"), Keys(f"test-{uuid.uuid4().hex[:12]}")
    record = {"run_id": f"{ours.prefix}-r", "attempt": 2, "max_attempts": 1, "segment": 1}
    ran = [job_id(record["run_id"], attempt, seg) for attempt in (1, 2) for seg in (0, 1, 2)]
    queued = f"{ours.prefix}-queued"
    arq_keys = [job_key_prefix + jid for jid in [*ran, queued]] + [result_key_prefix + ran[0]]
    with SyncRedis.from_url(redis_url) as client:
        try:
            client.set(ours.run(str(record["run_id"])), json.dumps(record))
            client.set(ours.run("corrupt"), b"\xff not json")
            client.zadd(ours.queue(), {queued: 1})
            client.set(theirs.run("r"), b"{}")
            for name in arq_keys:
                client.set(name, b"1", ex=60)

            assert delete_test_keys(client, ours) == 3 + len(arq_keys)
            assert list(client.scan_iter(match=ours.pattern())) == []
            assert client.exists(*arq_keys) == 0
            assert client.exists(theirs.run("r")) == 1
        finally:
            client.unlink(theirs.run("r"), *arq_keys)
