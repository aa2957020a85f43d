"""A fork's own `selfref_context_inspect` during its turn shows the context it started
from and its summary: the fork's record holds them from its start. (A fork whose context
was written only with its turn's save, round 7, was told its memory was empty.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.keys import Keys
from orchestrator.runtime import AgentSpec, TurnState, agent_spec, run_turn
from orchestrator.runtime.selfref import render_compaction_summary
from orchestrator.store.memory import RedisMemoryStore

pytestmark = pytest.mark.timeout(20)

KEY = "agent::fork::1"
SUMMARY = {
    "goal": "g",
    "instruction": "i",
    "discoveries": ["d"],
    "completed": [],
    "current_status": "s",
    "likely_next_work": [],
    "relevant_files_directories": [],
}
CONTEXT = [
    {"role": "system", "content": "You are a test agent."},
    {"role": "user", "content": "split the work"},
    {"role": "assistant", "content": render_compaction_summary(SUMMARY)},
]
SCRIPT = {
    "model": "scripted",
    "rules": [
        {
            "name": "inspect",
            "match": {"last_role": "user"},
            "reply": {
                "content": "",
                "tool_calls": [{"name": "selfref_context_inspect", "arguments": {}}],
            },
        },
        {"name": "answer", "match": {"last_role": "tool"}, "reply": {"content": "part done"}},
    ],
}


@pytest.fixture
async def spec(mock_llm: Any) -> AsyncIterator[AgentSpec]:
    server = mock_llm(SCRIPT)
    llm = OpenAICompatible(
        api_keys="scripted",
        model_name="scripted",
        base_url=server.base_url,
        retry_delay=0.01,
        max_retries=1,
    )

    @llm_chat(llm_interface=llm, self_reference=SelfReference(), stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    yield agent_spec(agent)
    await llm.aclose()


async def test_a_fork_inspecting_its_memory_during_its_turn_sees_its_context(
    fake_redis: Any, keys: Keys, spec: AgentSpec
) -> None:
    store = RedisMemoryStore(fake_redis, keys)
    state = await spec.fork_state(
        CONTEXT,
        "do part one",
        fork_id="fork_1",
        depth=1,
        memory_key=KEY,
        session_id="s1",
        agent_call_id="root.fork_1",
        memory=store,
    )
    resumed = TurnState.model_validate_json(state.model_dump_json())
    async for _ in run_turn(spec, resumed, memory=store):
        pass
    assert resumed.messages[-1]["content"] == "part done"
    tool = next(m for m in resumed.messages if m.get("role") == "tool")
    seen = json.loads(tool["content"])
    assert seen["active_key"] == KEY
    assert seen["messages"] == CONTEXT
    assert seen["summary"] == SUMMARY
