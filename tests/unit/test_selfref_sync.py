"""SelfReference's synchronous API (SimpleLLMFunc's): bind_history, memory[key] CRUD,
system-prompt helpers, snapshot_history, instance, and the same memory the agent reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.errors import AgentError
from orchestrator.ports import MemorySnapshot
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)


def test_memory_handle_requires_a_bound_key() -> None:
    with pytest.raises(KeyError, match="is not bound"):
        _ = SelfReference().memory["agent_main"]


def test_memory_handle_crud() -> None:
    selfref = SelfReference()
    selfref.bind_history("agent_main", [{"role": "user", "content": "hello"}])
    handle = selfref.memory["agent_main"]
    handle.append({"role": "assistant", "content": "hi"})
    handle.insert(1, {"role": "user", "content": "follow up"})
    handle.update(0, {"role": "user", "content": "hello updated"})
    handle.delete(1)
    assert handle.count() == 2
    assert handle.get(0)["content"] == "hello updated"
    assert handle.get(1)["role"] == "assistant"
    assert "agent_main" in selfref.memory
    assert selfref.memory.keys() == ["agent_main"]


def test_system_prompt_helpers_and_clear() -> None:
    selfref = SelfReference()
    selfref.bind_history("agent_main", [{"role": "user", "content": "hello"}])
    handle = selfref.memory["agent_main"]
    handle.set_system_prompt("Rule A")
    handle.append_system_prompt("Rule B")
    assert handle.get_system_prompt() == "Rule A\nRule B"
    assert handle.all()[0] == {"role": "system", "content": "Rule A\nRule B"}
    handle.clear()
    assert handle.all() == [{"role": "system", "content": "Rule A\nRule B"}]


def test_snapshots_are_copies_and_replace_validates_tool_linkage() -> None:
    selfref = SelfReference()
    selfref.bind_history("k", [{"role": "user", "content": "x"}])
    snapshot = selfref.snapshot_history("k")
    snapshot.append({"role": "user", "content": "not stored"})
    assert selfref.memory["k"].count() == 1
    with pytest.raises(ValueError, match="without preceding assistant tool_calls"):
        selfref.memory["k"].replace([{"role": "tool", "tool_call_id": "tc", "content": "{}"}])


def test_resolve_history_key() -> None:
    selfref = SelfReference()
    selfref.bind_history("agent_main", [])
    assert selfref.resolve_history_key() == "agent_main"
    selfref.bind_history("agent_other", [])
    with pytest.raises(ValueError, match="history key is required"):
        selfref.resolve_history_key()


async def test_the_agent_continues_from_a_bound_history_and_is_the_instance(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm({"fallback": {"content": "noted"}})
    llm = OpenAICompatible(api_keys="k", model_name="scripted", base_url=server.base_url)
    selfref = SelfReference()

    @llm_chat(llm_interface=llm, self_reference=selfref, self_reference_key="agent_main")
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You remember."""

    assert selfref.instance.is_bound()
    assert selfref.instance.get() is agent
    selfref.bind_history(
        "agent_main",
        [{"role": "user", "content": "my name is Ada"}, {"role": "assistant", "content": "ok"}],
    )
    async for _ in agent("what is my name?"):  # history None: the stored memory is used
        pass
    await llm.aclose()
    sent = server.requests()[0]["body"]["messages"]
    assert {"role": "user", "content": "my name is Ada"} in sent
    after = selfref.snapshot_history("agent_main")
    assert after[-1] == {"role": "assistant", "content": "noted"}


class SlowStore:
    """A store that waits (as Redis does) before answering."""

    async def load(self, key: str) -> MemorySnapshot:
        await asyncio.sleep(0)
        return MemorySnapshot(key=key)

    async def save_messages(self, key: str, messages: list[dict[str, Any]]) -> int:
        await asyncio.sleep(0)
        return 1


def test_a_store_that_does_io_asks_for_the_async_api() -> None:
    selfref = SelfReference(store=SlowStore())  # type: ignore[arg-type]
    with pytest.raises(AgentError, match="Use the async API"):
        selfref.bind_history("k", [])
    with pytest.raises(AgentError, match="Use the async API"):
        selfref.snapshot_history("k")


async def test_instance_fork_needs_a_bound_agent() -> None:
    with pytest.raises(RuntimeError, match="No agent instance"):
        await SelfReference().instance.fork("sub-task")


async def test_instance_fork_runs_the_agent_on_a_copy_of_its_memory() -> None:
    selfref = SelfReference()
    selfref.bind_history("agent_main", [{"role": "user", "content": "seed"}])
    seen: list[list[dict[str, Any]]] = []

    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> Any:
        seen.append(list(history or []))
        yield f"forked:{message}", [*(history or []), {"role": "assistant", "content": "done"}]

    selfref.bind_agent_instance(agent, default_memory_key="agent_main")
    result = await selfref.instance.fork("sub-task")
    assert result["status"] == "completed"
    assert result["response"] == result["result"] == "forked:sub-task"
    assert result["source_memory_key"] == "agent_main"
    assert result["memory_key"] == "agent_main::fork::1"
    assert result["history_count"] == 2
    assert "history" not in result
    assert seen == [[{"role": "user", "content": "seed"}]]
    assert selfref.snapshot_history("agent_main") == [{"role": "user", "content": "seed"}]
    assert selfref.snapshot_history("agent_main::fork::1")[-1]["content"] == "done"


async def test_nested_instance_forks_start_from_the_current_fork() -> None:
    selfref = SelfReference()
    selfref.bind_history("agent_main", [{"role": "user", "content": "root"}])

    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> Any:
        if message == "spawn-child":
            yield await selfref.instance.fork("leaf"), list(history or [])
            return
        yield "leaf-done", [*(history or []), {"role": "assistant", "content": "leaf"}]

    selfref.bind_agent_instance(agent, default_memory_key="agent_main")
    parent = await selfref.instance.fork("spawn-child")
    child = parent["response"]
    assert child["source_memory_key"] == parent["memory_key"]
    assert child["memory_key"].startswith(f"{parent['memory_key']}::fork::")
    assert child["depth"] == 2
    assert child["parent_fork_id"] == parent["fork_id"]


async def test_spawn_then_gather_and_failures_are_reported() -> None:
    selfref = SelfReference()
    selfref.bind_history("k", [])

    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> Any:
        await asyncio.sleep(0.01)
        if message == "boom":
            raise ValueError("bad task")
        return f"done:{message}", [{"role": "assistant", "content": message}]

    selfref.bind_agent_instance(agent, default_memory_key="k")
    a = await selfref.instance.fork_spawn("a")
    b = await selfref.instance.fork_spawn("boom")
    assert a["status"] == "running"
    assert selfref.instance.has_pending_fork_tasks()
    results = await selfref.instance.fork_gather_all(include_history=True)
    assert results[a["fork_id"]]["response"] == "done:a"
    assert results[a["fork_id"]]["history"] == [{"role": "assistant", "content": "a"}]
    assert results[b["fork_id"]]["status"] == "error"
    assert results[b["fork_id"]]["error_type"] == "ValueError"
    assert not selfref.instance.has_pending_fork_tasks()


async def test_instance_fork_of_an_llm_chat_agent_uses_the_fork_key(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm({"fallback": {"content": "forked answer"}})
    llm = OpenAICompatible(api_keys="k", model_name="scripted", base_url=server.base_url)
    selfref = SelfReference()

    @llm_chat(llm_interface=llm, self_reference=selfref, self_reference_key="main")
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You help."""

    selfref.bind_history("main", [{"role": "user", "content": "context"}])
    result = await selfref.instance.fork("look into it")
    await llm.aclose()
    assert result["response"] == "forked answer"
    assert result["memory_key"] == "main::fork::1"
    fork_memory = selfref.snapshot_history("main::fork::1")
    assert fork_memory[-1] == {"role": "assistant", "content": "forked answer"}
    assert selfref.snapshot_history("main") == [{"role": "user", "content": "context"}]


def test_the_agent_attribute_name_matches_the_runtimes() -> None:
    from orchestrator.runtime import agent, selfref_sync

    assert selfref_sync.AGENT_ATTRIBUTE == agent.AGENT_ATTRIBUTE
    assert selfref_sync._KEY_OVERRIDE == agent.SELF_REFERENCE_KEY_OVERRIDE
