"""The input stream: AgentInputRouter sends user input to a tool waiting for it, else
to the chat, as SimpleLLMFunc's does; and an interactive tool gets its answer mid-turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator import OpenAICompatible, llm_chat, tool
from orchestrator.hooks import (
    AgentInputRouter,
    CustomEvent,
    ToolEventEmitter,
    UserInputEvent,
    is_event_yield,
    is_response_yield,
)
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)


def test_input_goes_to_the_chat_without_pending_requests() -> None:
    router = AgentInputRouter(submit_tool_input=lambda _r, _t: True)
    assert router.route_input(UserInputEvent("  hello ")).chat_text == "hello"
    assert router.route_input(UserInputEvent("   ")).route == "noop"


def test_a_pending_request_takes_input_first_unless_forced_to_chat() -> None:
    delivered: list[tuple[str, str]] = []
    router = AgentInputRouter(submit_tool_input=lambda r, t: delivered.append((r, t)) or True)
    router.register_tool_request("call-1", "req-1", "Name: ")
    router.register_tool_request("call-2", "req-2", "City: ")
    assert router.route_input(UserInputEvent("next", force_chat=True)).route == "chat"
    result = router.route_input(UserInputEvent("Oslo", request_id="req-2"))
    assert result.route == "tool"
    assert result.request is not None
    assert result.request.tool_call_id == "call-2"
    assert router.route_input(UserInputEvent("Ada")).route == "tool"
    assert delivered == [("req-2", "Oslo"), ("req-1", "Ada")]
    assert not router.has_pending_tool_requests()


def test_expired_requests_are_dropped_and_rejected() -> None:
    router = AgentInputRouter(submit_tool_input=lambda _r, _t: False)
    router.register_tool_request("call-1", "req-1")
    result = router.route_input(UserInputEvent("Ada"))
    assert result.route == "rejected"
    assert "expired" in result.reason
    assert not router.has_pending_tool_requests()
    router.register_tool_request("call-1", "a")
    router.register_tool_request("call-2", "b")
    router.clear_tool_requests("call-1")
    peeked = router.peek_pending_tool_request()
    assert peeked is not None
    assert peeked.request_id == "b"


async def test_an_interactive_tool_gets_its_answer_mid_turn(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(
        {
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {"tool_calls": [{"name": "ask_user", "arguments": {"q": "Name?"}}]},
                },
                {"match": {"last_role": "tool"}, "reply": {"content": "Hi {last_tool_result}!"}},
            ]
        }
    )
    llm = OpenAICompatible(api_keys="k", model_name="scripted", base_url=server.base_url)
    waiting: dict[str, asyncio.Future[str]] = {}

    def deliver(request_id: str, text: str) -> bool:
        future = waiting.pop(request_id, None)
        if future is None or future.done():
            return False
        future.set_result(text)
        return True

    @tool(name="ask_user", description="Ask the user a question")
    async def ask_user(q: str, event_emitter: ToolEventEmitter) -> str:
        request_id = f"req-{len(waiting) + 1}"
        waiting[request_id] = asyncio.get_running_loop().create_future()
        answer = waiting[request_id]
        await event_emitter.emit("input_request", {"request_id": request_id, "prompt": q})
        return await answer

    @llm_chat(llm_interface=llm, toolkit=[ask_user], enable_event=True)
    async def greeter(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You greet people."""

    router = AgentInputRouter(submit_tool_input=deliver)
    final = None
    async for output in greeter("say hi", history=[]):
        if is_event_yield(output) and isinstance(output.event, CustomEvent):
            data = output.event.data
            router.register_tool_request(output.event.tool_call_id or "", data["request_id"])
            assert router.route_input(UserInputEvent("Ada")).route == "tool"
        elif is_response_yield(output):
            final = output.response
    await llm.aclose()
    assert final == "Hi Ada!"
