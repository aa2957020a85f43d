"""A fork's context whose front gets a system message inserted by the addendum (the
context has none, the fork inherited experiences) is what its memory keeps, whether the
fork fails or succeeds: its start writes the context itself (`open_turn(context)`). (A
start deferred to the turn's save, round 7, sliced `messages[:base.count]`, which is no
longer the context there.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.errors import LLMError
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
# A parent without a system message (an agent with no docstring, no experiences when
# its turn started): its context has none either.
CONTEXT = [
    {"role": "user", "content": "split the work"},
    {"role": "assistant", "content": render_compaction_summary(SUMMARY)},
]


@pytest.fixture
async def llm() -> AsyncIterator[Callable[[Any], OpenAICompatible]]:
    clients: list[OpenAICompatible] = []

    def make(server: Any) -> OpenAICompatible:
        client = OpenAICompatible(
            api_keys="scripted",
            model_name="scripted",
            base_url=server.base_url,
            retry_delay=0.01,
            max_retries=1,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def make_spec(llm: OpenAICompatible) -> AgentSpec:
    @llm_chat(llm_interface=llm, self_reference=SelfReference(), stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        pass

    return agent_spec(agent)


async def fork_turn(spec: AgentSpec, store: RedisMemoryStore) -> TurnState:
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
    # The addendum (the inherited experience) went into a system message at the front.
    assert state.messages[0]["role"] == "system"
    resumed = TurnState.model_validate_json(state.model_dump_json())
    async for _ in run_turn(spec, resumed, memory=store):
        pass
    return resumed


async def test_a_failed_fork_without_a_system_message_keeps_its_whole_context(
    fake_redis: Any, keys: Keys, mock_llm: Any, llm: Callable[[Any], OpenAICompatible]
) -> None:
    store = RedisMemoryStore(fake_redis, keys)
    await store.add_experiences(KEY, ["inherited lesson"])  # as the parent's spawn does
    script = {
        "model": "scripted",
        "rules": [{"reply": {"content": "never"}, "fault": {"type": "http_400", "times": None}}],
    }
    with pytest.raises(LLMError):
        await fork_turn(make_spec(llm(mock_llm(script))), store)
    record = await store.load(KEY)
    assert record.messages == CONTEXT
    assert record.summary == SUMMARY


async def test_a_fork_without_a_system_message_keeps_its_contexts_summary(
    fake_redis: Any, keys: Keys, mock_llm: Any, llm: Callable[[Any], OpenAICompatible]
) -> None:
    store = RedisMemoryStore(fake_redis, keys)
    await store.add_experiences(KEY, ["inherited lesson"])
    server = mock_llm({"model": "scripted", "rules": [], "fallback": {"content": "part done"}})
    await fork_turn(make_spec(llm(server)), store)
    record = await store.load(KEY)
    assert record.messages[-1]["content"] == "part done"
    assert record.summary == SUMMARY
