"""The bridge between the code's `runtime.*` calls and the turn's runtime primitives,
and how a turn tells tools which session they run in (`runtime.session`)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat, tool
from orchestrator.events import ResponseYield
from orchestrator.ports import ToolSession
from orchestrator.pyrepl.bridge import LiveBridge, ReplayBridge
from orchestrator.runtime import agent_spec, run_turn
from orchestrator.runtime.journal import InMemorySessionJournal
from orchestrator.runtime.selfref import make_tool_runtime
from orchestrator.runtime.tools import ToolRuntime
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)


def call(op: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"type": "call", "id": "cell", "call": 1, "op": op, "args": list(args), "kwargs": kwargs}


def with_memory() -> tuple[SelfReference, ToolRuntime]:
    selfref = SelfReference()
    return selfref, make_tool_runtime(selfref.bind("agent"))


async def test_a_primitive_call_writes_memory_and_is_recorded() -> None:
    selfref, runtime = with_memory()
    bridge = LiveBridge(runtime)
    reply = await bridge(call("selfref.context.remember", "prefer metric units"))
    assert reply == {"ok": True, "value": {"id": "exp_1", "text": "prefer metric units"}}
    stored = await selfref.store.load("agent")
    assert [e.text for e in stored.experiences] == ["prefer metric units"]
    assert bridge.calls == [{"op": "selfref.context.remember", "reply": reply}]


async def test_unknown_primitives_and_bad_arguments_are_errors_the_code_sees() -> None:
    _, runtime = with_memory()
    bridge = LiveBridge(runtime)
    unknown = await bridge(call("os.system", "rm -rf /"))
    assert unknown["ok"] is False
    assert unknown["error"]["type"] == "AttributeError"
    assert "selfref.context.remember" in unknown["error"]["message"]
    wrong = await bridge(call("selfref.context.remember", "a", "b", "c"))
    assert wrong["error"]["type"] == "TypeError"
    malformed = await bridge({"op": 3, "args": "x", "kwargs": []})
    assert malformed["error"]["type"] == "TypeError"


async def test_an_agent_without_selfreference_offers_only_the_listing() -> None:
    bridge = LiveBridge(ToolRuntime())
    listing = await bridge(call("runtime.list_primitives"))
    assert listing == {"ok": True, "value": ["runtime.list_primitives"]}
    refused = await bridge(call("selfref.context.inspect"))
    assert refused["error"]["type"] == "AgentError"
    assert "no SelfReference" in refused["error"]["message"]


async def test_listing_filters_by_prefix_and_substring() -> None:
    _, runtime = with_memory()
    bridge = LiveBridge(runtime)
    forks = await bridge(call("runtime.list_primitives", contains="fork."))
    assert forks["value"] == ["selfref.fork.gather_all", "selfref.fork.spawn"]
    context = await bridge(call("runtime.list_primitives", prefix="selfref.context."))
    assert len(context["value"]) == 4


async def test_forks_without_a_backend_are_refused_with_the_reason() -> None:
    """A runtime bound by hand has no fork backend (an agent call or a worker has one)."""
    _, runtime = with_memory()
    reply = await LiveBridge(runtime)(call("selfref.fork.spawn", "a sub-task"))
    assert reply["ok"] is False
    assert "need a fork backend" in reply["error"]["message"]


async def test_a_replay_plays_the_recorded_replies_back_without_performing_them() -> None:
    selfref, runtime = with_memory()
    live = LiveBridge(runtime)
    await live(call("selfref.context.remember", "once"))
    replay = ReplayBridge(live.calls)
    again = await replay(call("selfref.context.remember", "once"))
    assert again == live.calls[0]["reply"]
    assert replay.diverged is None
    assert len((await selfref.store.load("agent")).experiences) == 1
    extra = await replay(call("selfref.context.remember", "twice"))
    assert extra["ok"] is False
    assert replay.diverged is not None


async def test_a_worker_turn_tells_tools_their_session(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(
        {
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {"tool_calls": [{"name": "where", "arguments": {}}]},
                },
                {"match": {"last_role": "tool"}, "reply": {"content": "{last_tool_result}"}},
            ]
        }
    )
    seen: list[Any] = []

    @tool
    async def where(runtime: Any) -> str:
        """Report the session."""
        seen.append(runtime.session)
        return "ok"

    llm = OpenAICompatible("k", "scripted", server.base_url)

    @llm_chat(llm_interface=llm, toolkit=[where])
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """Test."""

    spec = agent_spec(agent)
    session = ToolSession("s9", "run-1", None, InMemorySessionJournal())
    state = await spec.initial_state(("hi",), {}, session_id="s9", agent_call_id="run-1")
    outputs = [o async for o in run_turn(spec, state, session=session)]
    assert isinstance(outputs[-1], ResponseYield)
    async for _ in agent("hi again"):  # in-process: no session
        pass
    await llm.aclose()
    assert seen == [session, None]
