"""SimpleLLMFunc programs run on workers as they run in-process: an `llm_function`
submitted by address comes back typed in the run's result (`RunResult.value`), a fork
tree gives the same ids, keys and results, and tool round trips pass a strict server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.client import Client
from orchestrator.events import EventYield, ReactEndEvent, ResponseYield, ToolCallEndEvent
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from tests.fixtures_llm import MockLLMFactory
from tests.integration.agents_parity import Sentiment
from tests.integration.workerproc import WorkerPool, drop_arq_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(45)]

AGENTS = "tests.integration.agents_parity"

GATHER = {"name": "selfref_fork_gather_all", "arguments": {}}


def spawn(task: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": task}}


SCRIPT: dict[str, Any] = {
    "strict": True,
    "rules": [
        # planner: root -> 2 forks (depth 1) -> 1 fork each (depth 2)
        {
            "match": {"last_user_contains": "level2", "last_role": "user"},
            "reply": {"content": "leaf done"},
        },
        {
            "match": {"last_user_contains": "level1", "last_role": "user"},
            "reply": {"tool_calls": [GATHER, spawn("detail level2")]},
        },
        {
            "match": {"last_user_contains": "plan a trip", "last_role": "user"},
            "reply": {"tool_calls": [GATHER, spawn("hotels level1"), spawn("food level1")]},
        },
        {
            "match": {"system_contains": "forks", "last_role": "tool"},
            "reply": {"content": "merged"},
        },
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


def fork_tree(outputs: list[Any]) -> dict[str, Any]:
    """What a fork tree did, in terms that must not depend on where it ran."""
    ends = {
        o.origin.fork_id: o.origin
        for o in outputs
        if isinstance(o, EventYield) and isinstance(o.event, ReactEndEvent)
    }
    gathered = {
        (o.origin.fork_id, fork_id): (r["status"], r["response"], r["depth"], r["memory_key"])
        for o in outputs
        if isinstance(o, EventYield)
        and isinstance(o.event, ToolCallEndEvent)
        and o.event.tool_name == "selfref_fork_gather_all"
        for fork_id, r in o.event.result.items()
    }
    return {
        "agents": {
            fork_id: (origin.fork_depth, origin.memory_key, origin.source_memory_key)
            for fork_id, origin in ends.items()
        },
        "gathered": gathered,
        "answer": [o.response for o in outputs if isinstance(o, ResponseYield)][-1:],
    }


def canonical(tree: dict[str, Any]) -> Any:
    """The tree without the ids of forks of forks: their numbers are counted per session,
    so which depth-1 fork spawns first (a race, in-process as on workers) numbers them.
    Checks that every memory key still follows its fork id."""
    agents, gathered = tree["agents"], tree["gathered"]
    for fork_id, (_, memory_key, source) in agents.items():
        if fork_id is not None:
            assert memory_key == f"{source}::fork::{fork_id.removeprefix('fork_')}"
    children: dict[Any, list[str]] = {}
    for (parent, child), (*_, memory_key) in gathered.items():
        assert memory_key == agents[child][1]
        children.setdefault(parent, []).append(child)

    def node(fork_id: Any) -> Any:
        kids = sorted(
            (gathered[(fork_id, child)][:3], node(child)) for child in children.get(fork_id, [])
        )
        return (agents[fork_id][0], tuple(kids))

    depth1 = {f: agents[f] for f in agents if f is not None and agents[f][0] == 1}
    return node(None), depth1, tree["answer"]


async def test_a_fork_tree_gives_the_same_results_in_process_and_on_workers(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    local_llm = OpenAICompatible("k", "scripted", llm.base_url, retry_delay=0.01)

    @llm_chat(
        llm_interface=local_llm,
        self_reference=SelfReference(),
        self_reference_key="planner",
        enable_event=True,
    )
    async def planner(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You plan by splitting work into forks."""

    in_process = fork_tree([o async for o in planner("plan a trip", history=[])])
    await local_llm.aclose()
    run = await client.submit(f"{AGENTS}:planner", "plan a trip", history=[])
    on_workers = fork_tree([o async for o in run.stream()])
    assert (await run.result(timeout=30)).ok, workers.logs()
    assert set(in_process["agents"]) == {None, "fork_1", "fork_2", "fork_3", "fork_4"}
    assert len(in_process["gathered"]) == 4  # root gathers 2, each depth-1 fork gathers 1
    assert canonical(on_workers) == canonical(in_process)


async def test_a_tool_round_trip_on_a_worker_passes_a_strict_server(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    run = await client.submit(f"{AGENTS}:count_words", "a b c")
    result = await run.result(timeout=30)
    assert result.ok, (result.error, workers.logs())
    assert result.value == 3
    assert [r["fault"] for r in llm.requests()] == [None, None]
