"""An aborted batch that commits a compaction, then saves the turn to
memory, must have its fold checkpointed before that save; a crash between the memory save
and the aborted end must not leave the turn's raw messages appended after the summary.

fc42b8e lets the aborted batch's fold (the state holding the compacted transcript and the
new memory base) ride with the aborted end (`_save(later=True)`), but `_finish_aborted`
then saves the turn to memory (`_save_memory`) before that end is written. A crash (or
Redis dropping) after the memory save and before the end resumes from the batch's last
durable checkpoint: the compaction is already committed (nothing pending any more), so the
resumed turn keeps the uncompacted transcript and its old memory base, and its save
appends every message of the turn after the compacted summary in memory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import AbortSignal, OpenAICompatible, SelfReference, llm_chat, tool
from orchestrator.events import EventYield
from orchestrator.runtime import AgentSpec, TurnState, agent_spec, run_turn

pytestmark = pytest.mark.timeout(30)

StartServer = Callable[..., Any]
SUMMARY = {
    "goal": "g",
    "instruction": "i",
    "discoveries": ["d"],
    "completed": [],
    "current_status": "s",
    "likely_next_work": [],
    "relevant_files_directories": [],
}


class CrashableCheckpointer:
    """A DeferringCheckpointer as the contract describes it: `save` is durable when it
    returns; `save_later` is durable only once the turn's owner flushes (here: never,
    the worker dies first). `durable` is what a resumed attempt would load."""

    def __init__(self) -> None:
        self.durable: str | None = None

    async def save(self, state: Any) -> None:
        self.durable = state.model_dump_json()

    def save_later(self, state: Any) -> None:
        pass  # queued with the outputs that follow; lost with the worker


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


def make_spec(llm: OpenAICompatible) -> AgentSpec:
    @tool(name="nap", description="Sleep a while")
    async def nap(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    @llm_chat(llm_interface=llm, toolkit=[nap], self_reference=SelfReference(), stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    return agent_spec(agent)


async def test_a_crash_after_an_aborted_compacting_batch_saved_memory_keeps_memory_compacted(
    mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    server = mock_llm(
        {
            "model": "scripted",
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {
                        "tool_calls": [
                            {"name": "selfref_context_compact", "arguments": SUMMARY},
                            {"name": "nap", "arguments": {"seconds": 30}},
                        ]
                    },
                },
            ],
            "fallback": {"content": "ok"},
        }
    )
    spec = make_spec(llm(server))
    assert spec.self_reference is not None
    store = spec.self_reference.store
    state = await spec.initial_state(("plan",), {}, session_id="s1", agent_call_id="a1")
    key = state.memory_key
    assert key is not None

    # Attempt 1: the compaction's tool answers, the user aborts while `nap` runs; the
    # worker dies once the turn is saved to memory (it has yielded ReactEnd; the end's
    # write, which carries the deferred checkpoints, never happens).
    checkpointer = CrashableCheckpointer()
    abort = AbortSignal()
    async for output in run_turn(spec, state, abort=abort, checkpointer=checkpointer):
        if not isinstance(output, EventYield):
            continue
        event = output.event
        kind = event.event_type.value
        if kind == "tool_call_end" and getattr(event, "tool_name", "") == "selfref_context_compact":
            abort.abort("user_interrupt")
        if kind == "react_end":
            break  # SIGKILL: memory is saved, the end is not written
    committed = (await store.load(key)).messages
    assert [m["role"] for m in committed] == ["system", "assistant"], committed
    assert checkpointer.durable is not None

    # Attempt 2 resumes from the last durable checkpoint; the run tree's abort flag is set.
    resumed = TurnState.model_validate_json(checkpointer.durable)
    again = AbortSignal()
    again.abort("user_interrupt")
    async for _ in run_turn(spec, resumed, abort=again, checkpointer=CrashableCheckpointer()):
        pass

    after = (await store.load(key)).messages
    roles = [m["role"] for m in after]
    assert after == committed, (
        "memory after the resumed aborted end differs from what the first attempt saved: "
        f"{roles}\n{json.dumps(after, indent=1)[:1500]}"
    )
