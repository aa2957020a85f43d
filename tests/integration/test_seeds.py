"""The code snippets of seeds 000 (llm_chat guide) and 001 (event stream reference) run
unchanged against `orchestrator`, talking to the scripted model over HTTP.

Only the import changes (`SimpleLLMFunc` -> `orchestrator`) and the provider points at the
scripted server. No Redis needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import OpenAICompatible, llm_chat, tool
from orchestrator.events import chunk_text
from orchestrator.hooks import (
    ABORT_SIGNAL_PARAM,
    AbortSignal,
    EventOrigin,
    LLMCallEndEvent,
    LLMChunkArriveEvent,
    ReactEndEvent,
    ReActEvent,
    ReactIterationStartEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
    events_only,
    filter_events,
    is_event_yield,
    is_response_yield,
    responses_only,
    with_event_observer,
)
from orchestrator.runtime.chat import EVENT_OBSERVER_PARAM

SEED_SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "match": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {
                "content": "Let me check.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
            },
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "Paris: {last_tool_result}"}},
        {"match": {"last_user_contains": "list comprehension"}, "reply": {"content": "A list."}},
        {"match": {"last_user_contains": "async"}, "reply": {"content": "Use asyncio."}},
        {
            "match": {"last_user_contains": "long story"},
            "latency": {"token_ms": 30},
            "reply": {"content": " ".join(["once"] * 50)},
        },
    ],
    "fallback": {"content": "Hello, I am a friendly assistant."},
}


@pytest.fixture
async def llm(mock_llm: Callable[..., Any]) -> AsyncIterator[OpenAICompatible]:
    server = mock_llm(SEED_SCRIPT)
    client = OpenAICompatible(
        api_keys="scripted", model_name="scripted", base_url=server.base_url, retry_delay=0.01
    )
    yield client
    await client.aclose()


@tool(name="get_weather", description="Get weather information for a city")
async def get_weather(city: str) -> dict[str, str]:
    return {
        "city": city,
        "temperature": "25°C",
        "humidity": "60%",
        "condition": "Sunny",
    }


async def test_seed_basic_chat_assistant(
    llm: OpenAICompatible, capsys: pytest.CaptureFixture[str]
) -> None:
    @llm_chat(llm_interface=llm, stream=True)
    async def simple_chat(
        message: str,
        history: list[dict[str, str]] | None = None,
    ) -> AsyncGenerator[tuple[str, list[dict[str, str]]], None]:
        """You are a friendly chat assistant."""
        pass

    history: list[dict[str, Any]] = []
    user_message = "Hello, please introduce yourself."
    print(f"User: {user_message}")
    print("Assistant: ", end="", flush=True)
    async for chunk, updated_history in simple_chat(user_message, history):
        if chunk:
            print(chunk, end="", flush=True)
        history = updated_history
    print()

    assert "Assistant: Hello, I am a friendly assistant.\n" in capsys.readouterr().out
    assert [m["role"] for m in history] == ["system", "user", "assistant"]


async def test_seed_chat_with_tool_calling(llm: OpenAICompatible) -> None:
    @llm_chat(llm_interface=llm, toolkit=[get_weather], stream=True)
    async def weather_chat(
        message: str,
        history: list[dict[str, str]] | None = None,
    ) -> AsyncGenerator[tuple[str, list[dict[str, str]]], None]:
        """You are a weather assistant. Use the weather tool when users ask about weather."""
        pass

    text = ""
    history: list[dict[str, Any]] = []
    async for chunk, updated_history in weather_chat("What is the weather in Paris?", []):
        text += chunk
        history = updated_history
    assert text.startswith("Let me check.Paris: ")
    assert "Sunny" in text
    assert [m["role"] for m in history] == ["system", "user", "assistant", "tool", "assistant"]


async def test_seed_interactive_multi_turn_session(llm: OpenAICompatible) -> None:
    @llm_chat(llm_interface=llm, stream=True)
    async def simple_chat(message: str, history: list[dict[str, str]] | None = None) -> None:
        """You are a friendly chat assistant."""
        pass

    history: list[dict[str, Any]] = []
    replies = []
    for user_message in ["What is a Python list comprehension?", "How do I use async programming?"]:
        reply = ""
        async for chunk, updated_history in simple_chat(user_message, history):
            if chunk:
                reply += chunk
            history = updated_history
        replies.append(reply)
    assert replies == ["A list.", "Use asyncio."]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]


def event_agent(llm: OpenAICompatible) -> Callable[..., AsyncIterator[Any]]:
    @llm_chat(llm_interface=llm, toolkit=[get_weather], enable_event=True)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """My agent."""
        pass

    return agent


async def test_seed_event_stream_type_guards_and_filters(llm: OpenAICompatible) -> None:
    agent = event_agent(llm)
    history: list[dict[str, Any]] = []
    seen_events = []
    async for output in agent("hello", history):
        if is_response_yield(output):
            history = output.messages
        elif is_event_yield(output):
            seen_events.append(output.event)
    assert history[-1]["content"] == "Hello, I am a friendly assistant."
    assert isinstance(seen_events[-1], ReactEndEvent)

    responses = [r async for r in responses_only(agent("hello", []))]
    assert responses[-1].response == "Hello, I am a friendly assistant."
    events = [e async for e in events_only(agent("hello", []))]
    assert events[0].event_type == "react_start"
    texts = [
        e.event.accumulated_content
        async for e in filter_events(agent("hi", []), LLMChunkArriveEvent)
    ]
    assert texts[-1] == "Hello, I am a friendly assistant."


async def test_seed_streaming_text_to_terminal(
    llm: OpenAICompatible, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = event_agent(llm)
    history: list[dict[str, Any]] = []
    async for output in agent("hello", history):
        if is_event_yield(output):
            if isinstance(output.event, LLMChunkArriveEvent):
                print(output.event.accumulated_content, end="", flush=True)
        elif is_response_yield(output):
            print()  # newline
            history = output.messages
    assert "Hello, I am a friendly assistant." in capsys.readouterr().out
    assert history[-1] == {"role": "assistant", "content": "Hello, I am a friendly assistant."}


async def test_seed_progress_tracking(
    llm: OpenAICompatible, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = event_agent(llm)
    history: list[dict[str, Any]] = []
    async for output in agent("do complex task: weather in Paris", history):
        if is_event_yield(output):
            event = output.event
            if isinstance(event, ToolCallStartEvent):
                print(f"  → calling {event.tool_name}...")
            elif isinstance(event, ToolCallEndEvent):
                print(f"  ✓ {event.tool_name} ({event.execution_time}ms)")
            elif isinstance(event, ReactIterationStartEvent):
                print(f"[iteration {event.iteration}]")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  → calling get_weather..."
    assert lines[1].startswith("  ✓ get_weather (")
    assert lines[2] == "[iteration 2]"


async def test_seed_event_observer_decorator(llm: OpenAICompatible) -> None:
    seen: list[tuple[str, str]] = []
    usages: list[Any] = []

    def log_events(event: ReActEvent, origin: EventOrigin) -> None:
        seen.append((event.event_type.value, origin.session_id))
        if isinstance(event, LLMCallEndEvent):
            usages.append(event.usage)

    # Exactly as seed 001 writes it: no enable_event=True (SimpleLLMFunc's observer never
    # fires then; ours hands the observer to the turn, so it sees every event).
    @with_event_observer(log_events)
    @llm_chat(llm_interface=llm, toolkit=[get_weather])
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """My agent."""
        pass

    outputs = [o async for o in agent("weather in Paris?", [])]
    chunk, history = outputs[-1]
    assert chunk == "", "observer does not change what the agent yields"
    assert history[-1]["role"] == "assistant"
    assert [kind for kind, _ in seen][:2] == ["react_start", "llm_call_start"]
    assert seen[-1][0] == "react_end"
    assert len({session for _, session in seen}) == 1
    assert len(usages) == 2
    assert all(u and u["total_tokens"] > 0 for u in usages)


async def test_seed_abort_during_a_turn(llm: OpenAICompatible) -> None:
    @llm_chat(llm_interface=llm, stream=True, enable_event=True)
    async def your_chat_function(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """Tell stories."""
        pass

    abort_signal = AbortSignal()
    outputs: list[Any] = []

    story_started = asyncio.Event()

    async def consume() -> None:
        async for output in your_chat_function(
            "Tell me a long story",
            history=[],
            **{ABORT_SIGNAL_PARAM: abort_signal},
        ):
            outputs.append(output)
            event = output.event if is_event_yield(output) else None
            if isinstance(event, LLMChunkArriveEvent) and chunk_text(event.chunk):
                story_started.set()

    task = asyncio.create_task(consume())
    # The seed sleeps a moment; here we wait for the story's first words, so a slow
    # machine cannot abort before the model has said anything.
    await asyncio.wait_for(story_started.wait(), timeout=10)
    # Trigger from another coroutine
    abort_signal.abort("user_interrupt")
    await asyncio.wait_for(task, timeout=1.0)

    end = next(o.event for o in reversed(outputs) if is_event_yield(o))
    assert isinstance(end, ReactEndEvent)
    assert end.extra == {"aborted": True, "abort_reason": "user_interrupt"}
    final = outputs[-1]
    assert is_response_yield(final)
    assert final.messages[-1]["role"] == "assistant"
    assert final.messages[-1]["content"].startswith("once")


async def test_event_observer_param_sees_events_of_a_tuple_mode_agent(
    llm: OpenAICompatible,
) -> None:
    seen: list[str] = []

    @llm_chat(llm_interface=llm, toolkit=[get_weather])
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """My agent."""
        pass

    outputs = [
        o
        async for o in agent(
            "weather in Paris?", [], **{EVENT_OBSERVER_PARAM: lambda o: seen.append(o.event_type)}
        )
    ]
    assert outputs[-1][0] == ""
    assert seen[0] == "react_start"
    assert seen[-1] == "react_end"
