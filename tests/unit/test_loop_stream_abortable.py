"""With an abort signal the loop reads a model's stream in a task of its own: the turn
behaves exactly as without one (the whole answer, a model error fails the turn), and
nothing of the stream outlives the turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import AbortSignal, OpenAICompatible, llm_chat
from orchestrator.errors import LLMError
from orchestrator.events import EventYield, ResponseYield
from orchestrator.runtime import AgentSpec, TurnState, agent_spec, run_turn

pytestmark = pytest.mark.timeout(10)

StartServer = Callable[..., Any]


@pytest.fixture
async def llm_for() -> AsyncIterator[Callable[[Any], OpenAICompatible]]:
    clients: list[OpenAICompatible] = []

    def make(server: Any) -> OpenAICompatible:
        client = OpenAICompatible(
            "scripted", "scripted", server.base_url, retry_delay=0.01, max_retries=1
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def _spec(llm: OpenAICompatible) -> AgentSpec:
    @llm_chat(llm_interface=llm, stream=True)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    return agent_spec(agent)


async def _state(spec: AgentSpec) -> TurnState:
    return await spec.initial_state(("hi",), {}, session_id="s1", agent_call_id="a1")


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_a_turn_with_a_signal_streams_the_whole_answer_and_leaves_no_task(
    mock_llm: StartServer, llm_for: Callable[[Any], OpenAICompatible]
) -> None:
    words = " ".join(f"w{i}" for i in range(20))
    server = mock_llm({"model": "scripted", "rules": [{"reply": {"content": words}}]})
    spec = _spec(llm_for(server))
    before = _other_tasks()
    outputs = [o async for o in run_turn(spec, await _state(spec), abort=AbortSignal())]
    response = outputs[-1]
    assert isinstance(response, ResponseYield)
    assert response.response == words
    chunks = [
        o for o in outputs if isinstance(o, EventYield) and o.event.event_type == "llm_chunk_arrive"
    ]
    assert (
        "".join(
            c.event.chunk["choices"][0]["delta"].get("content") or ""
            for c in chunks
            if c.event.chunk["choices"]
        )
        == words
    )
    assert _other_tasks() <= before


async def test_a_model_error_under_a_signal_fails_the_turn_with_its_error_event(
    mock_llm: StartServer, llm_for: Callable[[Any], OpenAICompatible]
) -> None:
    server = mock_llm(
        {
            "model": "scripted",
            "rules": [{"fault": {"type": "http_400"}, "reply": {"content": "never"}}],
        }
    )
    spec = _spec(llm_for(server))
    seen: list[str] = []

    async def run() -> None:
        async for output in run_turn(spec, await _state(spec), abort=AbortSignal()):
            if isinstance(output, EventYield):
                seen.append(output.event.event_type.value)

    with pytest.raises(LLMError):
        await run()
    assert seen[-2:] == ["llm_call_error", "react_end"]
