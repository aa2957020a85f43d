"""SelfReference memory semantics the distributed fixes rely on, in-process: the scope
option, concurrent turns of one key, compaction and the memory bounds seen by the model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.errors import AgentError, MemoryLimitError
from orchestrator.ports import MemoryLimits, TranscriptBase
from orchestrator.runtime.memory import InMemoryMemoryStore

StartServer = Callable[..., Any]

SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "match": {"last_user_contains": "slow", "last_role": "user"},
            "reply": {"content": "answered {last_user}"},
            # Long enough that two calls started together are in flight at once.
            "latency": {"first_token_ms": 300, "token_ms": 1},
        }
    ],
    "fallback": {"content": "answered {last_user}"},
}


@pytest.fixture
async def llm(mock_llm: StartServer) -> AsyncIterator[OpenAICompatible]:
    server = mock_llm(SCRIPT)
    client = OpenAICompatible(
        api_keys="scripted", model_name="scripted", base_url=server.base_url, retry_delay=0.01
    )
    yield client
    await client.aclose()


def test_memory_scope_defaults_to_the_session_and_refuses_unknown_names() -> None:
    assert SelfReference().memory_scope == "session"
    assert SelfReference(memory_scope="tenant").memory_scope == "tenant"
    with pytest.raises(AgentError, match="memory_scope must be 'session' or 'tenant'"):
        SelfReference(memory_scope="global")  # type: ignore[arg-type]


@pytest.mark.timeout(20)
async def test_two_concurrent_calls_of_one_agent_both_keep_their_turns(
    llm: OpenAICompatible,
) -> None:
    memory = SelfReference()

    @llm_chat(llm_interface=llm, stream=False, self_reference=memory)
    async def agent(message: str, history: Any = None) -> None:
        """Sys."""

    async def call(message: str) -> None:
        [_ async for _ in agent(message)]

    await asyncio.gather(call("slow one"), call("slow two"))
    stored = [m["content"] for m in (await memory.store.load("agent")).messages]
    for text in ("message: slow one", "message: slow two"):
        assert stored.count(text) == 1
        assert stored.count(f"answered {text}") == 1
    assert len(stored) == 5  # system + two turns


async def test_a_turn_after_a_compaction_saves_onto_the_compacted_transcript() -> None:
    """The compaction replaces memory mid-turn; the rest of the turn is saved after it."""
    ctx = SelfReference().bind("agent")
    await ctx.save_messages(
        [{"role": "system", "content": "Sys."}, {"role": "user", "content": "a"}]
    )
    await ctx.compact(
        goal="g",
        instruction="i",
        discoveries=[],
        completed=[],
        current_status="s",
        likely_next_work=[],
        relevant_files_directories=[],
    )
    committed = await ctx.commit_compaction([{"role": "system", "content": "Sys."}])
    assert committed is not None
    compacted, revision = committed
    base = TranscriptBase(revision=revision, count=len(compacted), writer="call-1")
    await ctx.save_turn([*compacted, {"role": "user", "content": "after"}], base)
    stored = (await ctx.store.load("agent")).messages
    assert [m["role"] for m in stored] == ["system", "assistant", "user"]
    assert stored[-1]["content"] == "after"


async def test_remember_beyond_the_bound_tells_the_model_what_to_do() -> None:
    store = InMemoryMemoryStore(MemoryLimits(max_experiences=1))
    ctx = SelfReference(store).bind("agent")
    await ctx.remember("first lesson")
    with pytest.raises(MemoryLimitError, match="selfref_context_forget"):
        await ctx.remember("second lesson")


async def test_a_compaction_whose_lessons_do_not_fit_still_commits() -> None:
    store = InMemoryMemoryStore(MemoryLimits(max_experiences=1))
    ctx = SelfReference(store).bind("agent")
    await ctx.remember("kept lesson")
    await ctx.compact(
        goal="g",
        instruction="i",
        discoveries=[],
        completed=[],
        current_status="s",
        likely_next_work=[],
        relevant_files_directories=[],
        remember=["no room for this"],
    )
    compacted = await ctx.apply_pending_compaction([{"role": "system", "content": "Sys."}])
    assert compacted is not None
    snapshot = await ctx.inspect()
    assert [e["text"] for e in snapshot["experiences"]] == ["kept lesson"]
    assert snapshot["has_pending_compaction"] is False
