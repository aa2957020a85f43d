"""Forks in a plain in-process call: `async for` over an agent with a SelfReference
forks as SimpleLLMFunc code expects (asyncio tasks behind the ForkBackend port), with the
workers' semantics: ids, memory keys, gathered results, every fork's events in the
stream, abort reaching every fork, depth and fan-out limits. Scripted model, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import AbortSignal, OpenAICompatible, SelfReference, llm_chat
from orchestrator.events import (
    EventYield,
    LLMCallStartEvent,
    ReactEndEvent,
    ResponseYield,
    ToolCallEndEvent,
    ToolCallErrorEvent,
)
from orchestrator.ports import ForkLimits
from orchestrator.signals import ABORT_SIGNAL_PARAM
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)

GATHER = {"name": "selfref_fork_gather_all", "arguments": {}}


def spawn(task: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": task}}


def tree_script(leaf_latency_ms: int = 0) -> dict[str, Any]:
    """root -> 2 forks (depth 1) -> 1 fork each (depth 2)."""
    return {
        "rules": [
            {
                "match": {"last_user_contains": "level2", "last_role": "user"},
                "latency": {"first_token_ms": leaf_latency_ms},
                "reply": {"content": "leaf done"},
            },
            {
                "match": {"last_user_contains": "level1", "last_role": "user"},
                "reply": {"tool_calls": [GATHER, spawn("detail level2")]},
            },
            {
                "match": {"last_user_contains": "plan", "last_role": "user"},
                "reply": {"tool_calls": [GATHER, spawn("hotels level1"), spawn("food level1")]},
            },
            {"match": {"last_role": "tool"}, "reply": {"content": "merged"}},
        ]
    }


def agent_on(
    base_url: str, selfref: SelfReference
) -> tuple[OpenAICompatible, Callable[..., AsyncIterator[Any]]]:
    llm = OpenAICompatible(api_keys="k", model_name="scripted", base_url=base_url, retry_delay=0.01)

    @llm_chat(
        llm_interface=llm,
        self_reference=selfref,
        self_reference_key="planner",
        enable_event=True,
    )
    async def planner(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You plan by splitting work into forks."""

    return llm, planner


async def test_a_fork_tree_of_depth_two_runs_in_process(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(tree_script())
    selfref = SelfReference()
    llm, planner = agent_on(server.base_url, selfref)
    outputs = [o async for o in planner("plan a trip", history=[])]
    await llm.aclose()

    assert isinstance(outputs[-1], ResponseYield)
    assert outputs[-1].response == "merged"
    events = [o for o in outputs if isinstance(o, EventYield)]
    ends = {o.origin.fork_id: o for o in events if isinstance(o.event, ReactEndEvent)}
    assert set(ends) == {None, "fork_1", "fork_2", "fork_3", "fork_4"}
    depth = {fork_id: end.origin.fork_depth for fork_id, end in ends.items()}
    assert depth == {None: 0, "fork_1": 1, "fork_2": 1, "fork_3": 2, "fork_4": 2}
    keys = {end.origin.memory_key for end in ends.values()}
    assert "planner::fork::1" in keys
    assert "planner::fork::2" in keys
    # the depth-2 forks live under their parents' keys
    assert {end.origin.source_memory_key for f, end in ends.items() if depth[f] == 2} == {
        "planner::fork::1",
        "planner::fork::2",
    }
    root_calls = {o.origin.agent_call_id for o in events if o.origin.fork_id is None}
    assert len(root_calls) == 1
    (root_id,) = root_calls
    assert ends["fork_3"].origin.agent_call_id == f"{root_id}.fork_3"
    # The root's gather saw both of its forks, completed, with their answers.
    gathers = [
        o.event
        for o in events
        if isinstance(o.event, ToolCallEndEvent)
        and o.event.tool_name == "selfref_fork_gather_all"
        and o.origin.fork_id is None
    ]
    (gather,) = gathers
    assert sorted(gather.result) == ["fork_1", "fork_2"]
    assert {r["status"] for r in gather.result.values()} == {"completed"}
    assert {r["response"] for r in gather.result.values()} == {"merged"}
    # Each fork's transcript is in its own memory key, nested under its parent's.
    leaf_key = ends["fork_3"].origin.memory_key
    assert leaf_key == f"{ends['fork_3'].origin.source_memory_key}::fork::3"
    assert leaf_key is not None
    snapshot = await selfref.store.load(leaf_key)
    assert any("level2" in str(m.get("content")) for m in snapshot.messages)


async def test_abort_reaches_every_fork_of_the_tree(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(tree_script(leaf_latency_ms=10_000))
    llm, planner = agent_on(server.base_url, SelfReference())
    signal = AbortSignal()
    seen: list[EventYield] = []
    leaves_started = 0

    async def consume() -> None:
        nonlocal leaves_started
        async for output in planner("plan a trip", history=[], **{ABORT_SIGNAL_PARAM: signal}):
            if not isinstance(output, EventYield):
                continue
            seen.append(output)
            if isinstance(output.event, LLMCallStartEvent) and output.origin.fork_depth == 2:
                leaves_started += 1
                if leaves_started == 2:
                    signal.abort("user_interrupt")

    await asyncio.wait_for(consume(), timeout=8)
    await llm.aclose()
    ends = {o.origin.fork_id: o.event for o in seen if isinstance(o.event, ReactEndEvent)}
    assert set(ends) == {None, "fork_1", "fork_2", "fork_3", "fork_4"}
    for end in ends.values():
        assert end.extra.get("aborted") is True
        assert end.extra.get("abort_reason") == "user_interrupt"


async def test_depth_and_fan_out_limits_refuse_with_a_tool_error(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm(tree_script())
    selfref = SelfReference(fork_limits=ForkLimits(max_depth=1, max_forks_per_agent=1))
    llm, planner = agent_on(server.base_url, selfref)
    outputs = [o async for o in planner("plan a trip", history=[])]
    await llm.aclose()
    errors = [
        (o.origin.fork_id, o.event.error)
        for o in outputs
        if isinstance(o, EventYield) and isinstance(o.event, ToolCallErrorEvent)
    ]
    assert any(fork is None and "fork limit reached" in error for fork, error in errors)
    assert any(fork == "fork_1" and "fork depth limit reached" in error for fork, error in errors)
    forks = {o.origin.fork_id for o in outputs if isinstance(o, EventYield)}
    assert forks == {None, "fork_1"}
    assert isinstance(outputs[-1], ResponseYield)


async def test_tuple_mode_text_is_the_roots_only(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(tree_script())
    llm = OpenAICompatible(api_keys="k", model_name="scripted", base_url=server.base_url)

    @llm_chat(llm_interface=llm, self_reference=SelfReference(), self_reference_key="p")
    async def planner(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You plan by splitting work into forks."""

    pairs = [pair async for pair in planner("plan a trip", history=[])]
    await llm.aclose()
    text = "".join(chunk for chunk, _ in pairs)
    assert text == "merged"  # the root's answer; the forks' "leaf done"/"merged" stay theirs
    final_history = pairs[-1][1]
    assert final_history[-1] == {"role": "assistant", "content": "merged"}
    assert final_history[1]["content"] == "message: plan a trip"
