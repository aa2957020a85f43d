"""Nothing crosses a session or tenant boundary: memory, session joins, streams, aborts.

Real Redis, real `orchestrator worker` subprocesses and the scripted model. The scripted
model logs every request it gets, so "session B never saw session A" is checked on what
was actually sent to the model.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client, Run
from orchestrator.errors import SessionNotOwned
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.queue import job_id
from orchestrator.store.runs import RunStore
from tests.fixtures_api import ApiFactory, bearer, parse_sse
from tests.fixtures_llm import MockLLMFactory
from tests.integration.test_distributed import count_runs, wait_until
from tests.integration.workerproc import WorkerPool, drop_arq_keys, drop_job_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MEMO = "tests.integration.agents_for_tests:memo"
TENANT_MEMO = "tests.integration.agents_for_tests:tenant_memo"
FORKER = "tests.integration.agents_for_tests:forker"
ASSISTANT = "tests.integration.agents_for_tests:assistant"

SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 1},
    "rules": [
        {
            "name": "overlap",
            "match": {"last_user_contains": "overlap", "last_role": "user"},
            "reply": {"content": "Answering {last_user} slowly."},
            # Long enough that two runs submitted together are both in flight at once.
            "latency": {"first_token_ms": 1500, "token_ms": 1},
        },
        {
            "name": "work-a-long-while",
            "match": {"last_user_contains": "work a long while", "last_role": "user"},
            "reply": {
                "content": "Working.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 30}}],
            },
        },
        {
            "name": "work-a-while",
            "match": {"last_user_contains": "work a while", "last_role": "user"},
            "reply": {
                "content": "Working.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 4}}],
            },
        },
        {
            "name": "tree-root",
            "match": {"last_user_contains": "tree-root", "last_role": "user"},
            "reply": {
                "content": "Two slow forks.",
                "tool_calls": [
                    {"name": "selfref_fork_spawn", "arguments": {"message": "leaf one"}},
                    {"name": "selfref_fork_spawn", "arguments": {"message": "leaf two"}},
                    {"name": "selfref_fork_gather_all", "arguments": {}},
                ],
            },
        },
        {
            "name": "tree-leaf",
            "match": {"last_user_contains": "task: leaf", "last_role": "user"},
            "reply": {
                "content": "Leaf working.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 30}}],
            },
        },
        {
            "name": "after-tool",
            "match": {"last_role": "tool"},
            "reply": {"content": "Done: {last_tool_result}"},
        },
    ],
    "fallback": {"content": "Noted."},
}


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


@pytest.fixture(autouse=True)
async def drop_jobs(client: Client) -> AsyncIterator[None]:
    """arq keeps its job keys outside our prefix: drop those of every run made here."""
    yield
    runs = await client.runs.list(include_forks=True, limit=5000)  # fillers included
    await drop_job_keys(
        client.redis,
        [job_id(r.run_id, attempt, seg) for r in runs for attempt in (1, 2, 3) for seg in (0, 1)],
    )


def sent_text(request: dict[str, Any]) -> str:
    """Everything one model request carried, as one string."""
    return json.dumps(request["body"]["messages"], ensure_ascii=False)


def requests_with(llm: MockLLMThread, needle: str) -> list[dict[str, Any]]:
    return [r for r in llm.requests() if needle in sent_text(r)]


async def finish(run: Run, timeout: float = 30) -> Any:
    result = await run.result(timeout=timeout)
    assert result.status is RunStatus.COMPLETED, result
    return result


# -- memory ---------------------------------------------------------------------------------


async def test_a_new_session_starts_with_an_empty_memory_whatever_other_sessions_did(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    await workers.start(1)
    for i in range(20):
        await finish(await client.submit(MEMO, f"session-A message {i}", session_id="iso-A"))
    # Session A does remember its own turns.
    last_a = requests_with(llm, "session-A message 19")[-1]
    assert "session-A message 0" in sent_text(last_a)

    fresh = await client.submit(MEMO, "fresh question", session_id="iso-B")
    result = await finish(fresh)
    (request,) = requests_with(llm, "fresh question")
    sent = len(request["body"]["messages"])
    print(f"FIGURE fresh session: {sent} messages, {result.usage['prompt_tokens']} prompt tokens")
    assert "session-A" not in sent_text(request)
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user"]


async def test_a_history_posted_by_one_tenant_never_reaches_another_tenants_runs(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    await workers.start(1)
    secret = [
        {"role": "user", "content": "tenant-x secret: the vault code is 1234"},
        {"role": "assistant", "content": "Understood."},
    ]
    await finish(await client.submit(MEMO, "remember it", history=secret, tenant="x"))
    for session in ("y-1", "y-2"):
        await finish(
            await client.submit(
                MEMO, f"what do you know? {session}", tenant="y", session_id=session
            )
        )
    assert requests_with(llm, "vault code")  # tenant x's own run saw it
    for session in ("y-1", "y-2"):
        (request,) = requests_with(llm, f"what do you know? {session}")
        assert "vault code" not in sent_text(request)


async def test_two_runs_of_one_session_saving_at_once_both_keep_their_turns(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    await workers.start(1)
    first, second = await asyncio.gather(
        client.submit(MEMO, "overlap one", session_id="iso-C"),
        client.submit(MEMO, "overlap two", session_id="iso-C"),
    )
    await asyncio.gather(finish(first), finish(second))
    third = await client.submit(MEMO, "what was said?", session_id="iso-C")
    await finish(third)
    (request,) = requests_with(llm, "what was said?")
    text = sent_text(request)
    for needle in (
        "overlap one",
        "overlap two",
        "Answering message: overlap one",
        "Answering message: overlap two",
    ):
        assert needle in text, f"{needle!r} was lost: {text}"


# -- session owners -------------------------------------------------------------------------


async def make_newer_runs(client: Client, count: int) -> None:
    """`count` run records of a third tenant, newer than everything before (records only:
    no worker ever runs them)."""
    store = RunStore(client.redis, client.keys)
    now = time.time()

    async def one(i: int) -> None:
        run_id = f"filler-{i}-{uuid.uuid4().hex[:6]}"
        await store.create(
            RunRecord(
                run_id=run_id,
                session_id=run_id,
                agent=ASSISTANT,
                tenant="filler",
                submitted_at=now + 1 + i / 1000,
            )
        )

    for start in range(0, count, 100):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))


KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
A, B = bearer("key-a"), bearer("key-b")


async def test_another_tenant_cannot_join_read_stream_or_abort_a_session_after_1100_newer_runs(
    make_api: ApiFactory, client: Client, workers: WorkerPool
) -> None:
    api = make_api(api_keys=KEYS)
    # Tenant A's run is still queued (no worker yet): it has written nothing to its stream.
    answer = await api.post(
        "/v1/runs", json={"agent": ASSISTANT, "message": "please work a while"}, headers=A
    )
    assert answer.status_code == 202, answer.text
    mine = answer.json()
    run_id, session = mine["run_id"], mine["session_id"]
    await make_newer_runs(client, 1100)

    join = await api.post(
        "/v1/runs",
        json={"agent": ASSISTANT, "message": "sneak in", "session_id": session},
        headers=B,
    )
    assert join.status_code == 409, join.text
    assert (await api.get(f"/v1/runs/{run_id}", headers=B)).status_code == 404
    assert (await api.get(f"/v1/runs/{run_id}/events", headers=B)).status_code == 404
    sse = await api.get(f"/v1/sessions/{session}/events", params={"access_token": "key-b"})
    assert sse.status_code == 404
    assert (await api.post(f"/v1/runs/{run_id}/abort", headers=B)).status_code == 404
    abort_session = await api.post(f"/v1/sessions/{session}/abort", headers=B)
    assert abort_session.status_code == 404

    await workers.start(1)
    answer = await api.get(f"/v1/runs/{run_id}/events", headers=A)
    statuses = [
        m["data"]["status"]["status"] for m in parse_sse(answer.text) if m["event"] == "status"
    ]
    assert statuses[-1] == "completed", statuses
    # The owner still has its session: it may add to it and watch it.
    again = await api.post(
        "/v1/runs", json={"agent": ASSISTANT, "message": "hi", "session_id": session}, headers=A
    )
    assert again.status_code == 202, again.text


async def test_a_tenants_run_into_another_tenants_session_is_refused_by_the_client(
    client: Client,
) -> None:
    run = await client.submit(ASSISTANT, "mine", tenant="tenant-a")
    await make_newer_runs(client, 1100)
    with pytest.raises(SessionNotOwned, match=run.session_id):
        await client.submit(ASSISTANT, "theirs", tenant="tenant-b", session_id=run.session_id)
    with pytest.raises(SessionNotOwned):
        await client.abort_session(run.session_id, "nope", tenant="tenant-b")
    with pytest.raises(SessionNotOwned):
        await client.abort(run.session_id, "nope", run_id=run.run_id, tenant="tenant-b")
    assert (await run.status()).status is RunStatus.QUEUED


# -- abort ------------------------------------------------------------------------------------


async def test_run_abort_stops_its_run_and_forks_and_leaves_the_sessions_other_run_alone(
    client: Client, workers: WorkerPool, tool_log: Path
) -> None:
    await workers.start(1, concurrency=6)
    other = await client.submit(ASSISTANT, "please work a while", session_id="iso-D")
    tree = await client.submit(FORKER, "tree-root", session_id="iso-D")
    await wait_until(lambda: count_runs(tool_log, "slow_tool") >= 3, 30, "both leaves running")
    await tree.abort("stop the tree")

    ended = await tree.result(timeout=20)
    assert ended.status is RunStatus.ABORTED
    assert ended.abort_reason == "stop the tree"
    forks = [r for r in await client.runs.list(include_forks=True) if r.fork is not None]
    assert len(forks) == 2
    assert {r.status for r in forks} == {RunStatus.ABORTED}
    survivor = await other.result(timeout=30)
    assert survivor.status is RunStatus.COMPLETED, survivor
    assert survivor.abort_reason is None


async def test_aborting_a_session_stops_every_run_in_it_and_queued_ones_never_start(
    client: Client, workers: WorkerPool, tool_log: Path, llm: MockLLMThread
) -> None:
    # Three slots: the long run and the two leaves (the root suspended in its gather holds
    # none), so the run submitted after them really queues.
    await workers.start(1, concurrency=3)
    long_run = await client.submit(ASSISTANT, "please work a long while", session_id="iso-E")
    tree = await client.submit(FORKER, "tree-root", session_id="iso-E")
    await wait_until(lambda: count_runs(tool_log, "slow_tool") >= 3, 30, "three tools running")
    queued = await client.submit(ASSISTANT, "queued behind", session_id="iso-E")
    elsewhere = await client.submit(ASSISTANT, "please work a while", session_id="iso-F")
    await client.abort_session("iso-E", "close the session")

    for run in (long_run, tree, queued):
        result = await run.result(timeout=20)
        assert result.status is RunStatus.ABORTED, result
        assert result.abort_reason == "close the session"
    assert (await queued.status()).started_at is None
    assert not requests_with(llm, "queued behind")
    assert (await elsewhere.result(timeout=30)).status is RunStatus.COMPLETED
    # A new turn in the session starts afresh.
    again = await client.submit(ASSISTANT, "hello again", session_id="iso-E")
    assert (await again.result(timeout=20)).status is RunStatus.COMPLETED


async def test_tenant_scoped_memory_is_shared_by_one_tenants_sessions_only(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    await workers.start(1)
    await finish(await client.submit(TENANT_MEMO, "x-fact: blue", tenant="x", session_id="x-1"))
    await finish(await client.submit(TENANT_MEMO, "recall for x", tenant="x", session_id="x-2"))
    await finish(await client.submit(TENANT_MEMO, "recall for y", tenant="y", session_id="y-1"))
    await finish(await client.submit(TENANT_MEMO, "recall for nobody", session_id="n-1"))
    (x_request,) = requests_with(llm, "recall for x")
    assert "x-fact: blue" in sent_text(x_request)
    for other in ("recall for y", "recall for nobody"):
        (request,) = requests_with(llm, other)
        assert "x-fact" not in sent_text(request)


async def test_the_operator_may_use_a_tenants_session_and_its_runs_stay_the_tenants(
    client: Client,
) -> None:
    """A caller without a tenant (the open API, an operator's client) acts for the owner."""
    mine = await client.submit(ASSISTANT, "mine", tenant="tenant-a")
    theirs = await client.submit(ASSISTANT, "operator's", session_id=mine.session_id)
    assert (await theirs.status()).tenant == "tenant-a"
    assert await client.may_access(mine.session_id, None)
    assert await client.may_access(mine.session_id, "tenant-a")
    assert not await client.may_access(mine.session_id, "tenant-b")
    # A session started without a tenant is nobody's: no tenant may join it.
    open_run = await client.submit(ASSISTANT, "no tenant")
    with pytest.raises(SessionNotOwned):
        await client.submit(ASSISTANT, "join", tenant="tenant-a", session_id=open_run.session_id)


async def test_a_tenant_aborts_its_own_session_over_http(
    make_api: ApiFactory, client: Client
) -> None:
    api = make_api(api_keys=KEYS)
    first = (
        await api.post("/v1/runs", json={"agent": ASSISTANT, "message": "one"}, headers=A)
    ).json()
    session = first["session_id"]
    second = await api.post(
        "/v1/runs", json={"agent": ASSISTANT, "message": "two", "session_id": session}, headers=A
    )
    answer = await api.post(
        f"/v1/sessions/{session}/abort", json={"reason": "closing time"}, headers=A
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert sorted(body["runs"]) == sorted([first["run_id"], second.json()["run_id"]])
    for run_id in body["runs"]:
        record = (await api.get(f"/v1/runs/{run_id}", headers=A)).json()
        assert (record["status"], record["abort_reason"]) == ("aborted", "closing time")
    paths = (await api.get("/openapi.json", headers=A)).json()["paths"]
    assert "/v1/sessions/{session_id}/abort" in paths


async def test_every_key_isolation_adds_expires(
    client: Client, workers: WorkerPool, redis: Any, keys: Keys
) -> None:
    """Owners, session run indexes, abort flags and memory records all carry a TTL."""
    await workers.start(1)
    await finish(await client.submit(MEMO, "remember me", session_id="ttl-1", tenant="x"))
    await finish(await client.submit(TENANT_MEMO, "and me", session_id="ttl-2", tenant="x"))
    stopped = await client.submit(ASSISTANT, "please work a long while", session_id="ttl-3")
    await stopped.abort("enough")
    await client.abort_session("ttl-1", "closing")
    await stopped.result(timeout=20)

    names = [n.decode() async for n in redis.scan_iter(match=keys.pattern(), count=500)]
    suffixes = (":owner", ":runs", ":abort")
    ours = [n for n in names if n.endswith(suffixes) or ":abort:" in n or ":selfref:" in n]
    for kind in (":owner", ":runs", ":abort", ":abort:", ":selfref:"):
        assert any(kind in n for n in ours), (kind, ours)
    for name in ours:
        assert await redis.ttl(name) > 0, name


# -- every key has a TTL or a documented bound ---------------------------------------------


async def test_every_key_under_the_prefix_expires_or_is_a_documented_bounded_key(
    client: Client, workers: WorkerPool, redis: Any, keys: Keys, make_api: ApiFactory
) -> None:
    await workers.start(1, concurrency=4)
    await finish(await client.submit(MEMO, "remember me", session_id="ttl-a", tenant="x"))
    tree = await client.submit(FORKER, "tree-root", session_id="ttl-b")
    stopped = await client.submit(ASSISTANT, "please work a long while", session_id="ttl-c")
    closing = await client.submit(ASSISTANT, "please work a long while", session_id="ttl-d")
    api = make_api()
    answer = await api.post("/v1/runs", json={"agent": ASSISTANT, "message": "hello"})
    assert answer.status_code == 202, answer.text
    via_api = client.run(answer.json()["run_id"], answer.json()["session_id"])
    await stopped.abort("enough")
    await client.abort_session("ttl-d", "closing")
    for run in (tree, stopped, closing, via_api):
        result = await run.result(timeout=60)
        assert result.status.terminal, result
    assert (await tree.result()).status is RunStatus.COMPLETED

    bounded = keys.bounded()
    unbounded = []
    async for raw in redis.scan_iter(match=keys.pattern(), count=500):
        name = raw.decode()
        if await redis.ttl(name) < 0 and name not in bounded:
            unbounded.append((name, (await redis.type(name)).decode()))
    assert unbounded == [], unbounded
