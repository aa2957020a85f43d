"""`_close_batch` says a tool's `on_abort` result "is written at once
so the hook never runs twice"; a hook that fails gets the plain "cancelled" result, which
fc42b8e no longer checkpoints (`save=hooked is not None`). A worker that dies before the
aborted end's write resumes from the batch's checkpoint and runs the failed hook again
(on the code before, the cancelled result was checkpointed at once and the hook ran
once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import AbortSignal, OpenAICompatible, llm_chat
from orchestrator.events import EventYield
from orchestrator.runtime import TurnState, agent_spec, run_turn
from orchestrator.runtime.tools import Tool

pytestmark = pytest.mark.timeout(30)

StartServer = Callable[..., Any]


class CrashableCheckpointer:
    """`save` is durable when it returns; `save_later` only once the owner flushes
    (never here: the worker dies first)."""

    def __init__(self) -> None:
        self.durable: str | None = None

    async def save(self, state: Any) -> None:
        self.durable = state.model_dump_json()

    def save_later(self, state: Any) -> None:
        pass


@pytest.fixture
async def llm() -> AsyncIterator[Callable[[Any], OpenAICompatible]]:
    clients: list[OpenAICompatible] = []

    def make(server: Any) -> OpenAICompatible:
        client = OpenAICompatible(
            api_keys="scripted", model_name="scripted", base_url=server.base_url, retry_delay=0.01
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_a_failed_on_abort_hook_runs_once_across_a_crash_before_the_end(
    mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    hook_calls = 0

    async def release(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "released"

    async def on_abort(arguments: dict[str, Any]) -> str:
        nonlocal hook_calls
        hook_calls += 1  # e.g. a cleanup that sends a cancellation, then fails
        raise RuntimeError("cleanup failed")

    guarded = Tool(name="guarded", description="Run guarded", func=release, on_abort=on_abort)
    server = mock_llm(
        {
            "model": "scripted",
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {"tool_calls": [{"name": "guarded", "arguments": {"seconds": 30}}]},
                },
            ],
            "fallback": {"content": "ok"},
        }
    )

    @llm_chat(llm_interface=llm(server), toolkit=[guarded], stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    spec = agent_spec(agent)
    state = await spec.initial_state(("go",), {}, session_id="s1", agent_call_id="a1")
    checkpointer = CrashableCheckpointer()
    abort = AbortSignal()
    async for output in run_turn(spec, state, abort=abort, checkpointer=checkpointer):
        if not isinstance(output, EventYield):
            continue
        kind = output.event.event_type.value
        if kind == "tool_call_start":
            abort.abort("user_interrupt")
        if kind == "react_end":
            break  # SIGKILL before the end's write
    assert hook_calls == 1
    assert checkpointer.durable is not None

    resumed = TurnState.model_validate_json(checkpointer.durable)
    again = AbortSignal()
    again.abort("user_interrupt")
    async for _ in run_turn(spec, resumed, abort=again, checkpointer=CrashableCheckpointer()):
        pass
    assert hook_calls == 1, f"the failed on_abort hook ran {hook_calls} times"
