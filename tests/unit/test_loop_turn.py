"""The ReAct loop (`run_turn`) against the scripted model over real HTTP.

Each test names the behaviour a user (or the worker) relies on: event order, gap-free
sequence numbers, summed usage, concurrent tool batches, tool and LLM failures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import OpenAICompatible, llm_chat, tool
from orchestrator.errors import LLMError
from orchestrator.events import EventYield, ResponseYield
from orchestrator.runtime import AgentSpec, OriginContext, TurnState, agent_spec, run_turn
from orchestrator.runtime.tools import Tool

StartServer = Callable[..., Any]
MakeLLM = Callable[[Any], OpenAICompatible]

WEATHER_SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "match": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {
                "content": "Let me check.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3},
            },
        },
        {
            "match": {"last_role": "tool"},
            "reply": {
                "content": "Result: {tool_results}",
                "usage": {"prompt_tokens": 20, "completion_tokens": 5},
            },
        },
    ],
    "fallback": {"content": "Hello."},
}


@tool(name="get_weather", description="Get weather information for a city")
async def get_weather(city: str, event_emitter: Any = None) -> dict[str, str]:
    await event_emitter.emit("progress", {"city": city})
    return {"city": city, "condition": "Sunny"}


@pytest.fixture
async def make_llm() -> AsyncIterator[Callable[[Any], OpenAICompatible]]:
    """OpenAICompatible clients for scripted servers, closed at teardown."""
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


def make_spec(llm: OpenAICompatible, tools: list[Tool], **options: Any) -> AgentSpec:
    @llm_chat(llm_interface=llm, toolkit=tools, **options)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    return agent_spec(agent)


async def new_state(spec: AgentSpec, message: str) -> TurnState:
    return await spec.initial_state((message,), {}, session_id="s1", agent_call_id="a1")


async def collect(
    spec: AgentSpec, state: TurnState, **kwargs: Any
) -> tuple[list[EventYield], ResponseYield]:
    events: list[EventYield] = []
    response: ResponseYield | None = None
    async for output in run_turn(spec, state, **kwargs):
        if isinstance(output, EventYield):
            events.append(output)
        else:
            assert response is None, "exactly one ResponseYield"
            response = output
    assert response is not None
    return events, response


def kinds(events: list[EventYield]) -> list[str]:
    return [e.event.event_type.value for e in events]


def tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["role"] == "tool"]


def assert_history_sendable(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is answered by a tool message before the next turn."""
    pending: set[str] = set()
    for message in messages:
        if message["role"] == "assistant":
            assert not pending, f"unanswered tool calls {pending}"
            pending = {c["id"] for c in message.get("tool_calls") or []}
        elif message["role"] == "tool":
            pending.discard(message["tool_call_id"])
        else:
            assert not pending
    assert not pending


async def test_tool_turn_emits_events_in_simplellmfunc_order(
    mock_llm: StartServer,
    make_llm: MakeLLM,
) -> None:
    server = mock_llm(WEATHER_SCRIPT)
    spec = make_spec(make_llm(server), [get_weather], stream=False)
    events, response = await collect(spec, await new_state(spec, "weather in Paris?"))
    assert kinds(events) == [
        "react_start",
        "llm_call_start",
        "llm_call_end",
        "tool_calls_batch_start",
        "tool_call_start",
        "custom_event",
        "tool_call_end",
        "tool_calls_batch_end",
        "react_iteration_start",
        "llm_call_start",
        "llm_call_end",
        "react_iteration_end",
        "react_end",
    ]
    iterations = [e.event.iteration for e in events]
    assert iterations == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert response.response.startswith("Result:")
    assert "Sunny" in response.response


async def test_event_seqs_are_gap_free_and_origins_filled(
    mock_llm: StartServer,
    make_llm: MakeLLM,
) -> None:
    server = mock_llm(WEATHER_SCRIPT)
    spec = make_spec(make_llm(server), [get_weather], stream=True)
    state = await new_state(spec, "weather in Paris?")
    origin = OriginContext(fork_id="fork_1", fork_depth=1, memory_key="k::fork::1")
    events, _ = await collect(spec, state, origin=origin)
    assert [e.origin.event_seq for e in events] == list(range(len(events)))
    assert state.next_event_seq == len(events)
    for e in events:
        assert (e.origin.session_id, e.origin.agent_call_id) == ("s1", "a1")
        assert (e.origin.fork_id, e.origin.fork_depth, e.origin.memory_key) == (
            "fork_1",
            1,
            "k::fork::1",
        )
    tool_events = [
        e for e in events if e.event.event_type.value in ("tool_call_start", "custom_event")
    ]
    assert tool_events
    for e in tool_events:
        assert e.origin.tool_name == "get_weather"
        assert e.origin.tool_call_id


async def test_react_end_sums_token_usage_over_calls(
    mock_llm: StartServer,
    make_llm: MakeLLM,
) -> None:
    server = mock_llm(WEATHER_SCRIPT)
    spec = make_spec(make_llm(server), [get_weather], stream=True)
    events, _ = await collect(spec, await new_state(spec, "weather in Paris?"))
    end = events[-1].event
    assert end.event_type.value == "react_end"
    assert end.total_token_usage is not None
    assert end.total_token_usage["prompt_tokens"] == 30
    assert end.total_token_usage["completion_tokens"] == 8
    assert (end.total_llm_calls, end.total_tool_calls, end.total_iterations) == (2, 1, 2)
    assert events[-1].origin.fork_id is None


TWO_TOOLS_SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "match": {"last_role": "user"},
            "reply": {
                "tool_calls": [
                    {"name": "slow", "arguments": {"label": "first"}},
                    {"name": "fast", "arguments": {"label": "second"}},
                ]
            },
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "done: {tool_results}"}},
    ],
}


def two_tools(calls: list[str], slow_delay: float = 0.2) -> list[Tool]:
    @tool(name="slow", description="Slow tool")
    async def slow(label: str) -> str:
        calls.append("slow")
        await asyncio.sleep(slow_delay)
        return f"slow:{label}"

    @tool(name="fast", description="Fast tool")
    async def fast(label: str) -> str:
        calls.append("fast")
        return f"fast:{label}"

    return [slow, fast]


async def test_batch_runs_concurrently_and_keeps_model_order(
    mock_llm: StartServer,
    make_llm: MakeLLM,
) -> None:
    server = mock_llm(TWO_TOOLS_SCRIPT)
    calls: list[str] = []
    spec = make_spec(make_llm(server), two_tools(calls), stream=False)
    events, response = await collect(spec, await new_state(spec, "go"))
    finished = [e.event.tool_name for e in events if e.event.event_type.value == "tool_call_end"]
    assert finished == ["fast", "slow"], "the fast tool finishes while the slow one runs"
    contents = [m["content"] for m in tool_messages(response.messages)]
    assert contents == ["slow:first", "fast:second"], "results follow the model's order"
    assert response.messages[-1]["content"] == "done: slow:first; fast:second"


async def test_max_tool_calls_ends_with_one_call_without_tools(
    mock_llm: StartServer,
    make_llm: MakeLLM,
) -> None:
    script = {
        "model": "scripted",
        "rules": [
            {
                "match": {"tools_offered": "get_weather"},
                "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
            },
            {"match": {"no_tools_offered": True}, "reply": {"content": "Out of tool budget."}},
        ],
    }
    server = mock_llm(script)
    spec = make_spec(make_llm(server), [get_weather], stream=False, max_tool_calls=2)
    events, response = await collect(spec, await new_state(spec, "weather?"))
    assert kinds(events).count("tool_calls_batch_start") == 2
    requests = server.requests()
    assert len(requests) == 3
    assert "tools" not in requests[-1]["body"] or not requests[-1]["body"]["tools"]
    assert response.response == "Out of tool budget."


def failing_script(tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": "scripted",
        "rules": [
            {"match": {"last_role": "user"}, "reply": {"tool_calls": tool_calls}},
            {"match": {"last_role": "tool"}, "reply": {"content": "saw: {last_tool_result}"}},
        ],
    }


@tool(name="broken", description="Always fails")
async def broken(x: int) -> str:
    raise RuntimeError("disk on fire")


@pytest.mark.parametrize(
    ("tool_call", "error_type", "needle"),
    [
        ({"name": "broken", "arguments": {"x": 1}}, "RuntimeError", "disk on fire"),
        ({"name": "nope", "arguments": {}}, "ToolError", "unknown tool 'nope'"),
        ({"name": "broken", "arguments": '{"x": 1'}, "ToolError", "not valid JSON"),
        ({"name": "broken", "arguments": {"x": "many"}}, "ToolError", "argument 'x'"),
    ],
    ids=["tool-raises", "unknown-tool", "malformed-json", "invalid-arguments"],
)
async def test_tool_failure_is_reported_and_shown_to_the_model(
    mock_llm: StartServer,
    make_llm: MakeLLM,
    tool_call: dict[str, Any],
    error_type: str,
    needle: str,
) -> None:
    server = mock_llm(failing_script([tool_call]))
    spec = make_spec(make_llm(server), [broken], stream=True)
    events, response = await collect(spec, await new_state(spec, "try it"))
    errors = [e.event for e in events if e.event.event_type.value == "tool_call_error"]
    assert len(errors) == 1
    assert errors[0].error_type == error_type
    assert needle in errors[0].error_message
    assert "tool_call_end" not in kinds(events)
    second_request = server.requests()[1]["body"]["messages"]
    assert needle in second_request[-1]["content"], "the model sees the error text"
    assert kinds(events)[-1] == "react_end"
    assert response.response.startswith("saw:")


async def test_llm_failure_emits_error_and_react_end_then_raises(
    mock_llm: StartServer,
    make_llm: MakeLLM,
) -> None:
    script = {
        "model": "scripted",
        "rules": [{"reply": {"content": "never"}, "fault": {"type": "http_400", "times": None}}],
    }
    server = mock_llm(script)
    spec = make_spec(make_llm(server), [], stream=True)
    state = await new_state(spec, "hi")
    events: list[EventYield] = []

    async def drain() -> None:
        async for output in run_turn(spec, state):
            assert isinstance(output, EventYield)
            events.append(output)

    with pytest.raises(LLMError):
        await drain()
    assert kinds(events) == ["react_start", "llm_call_start", "llm_call_error", "react_end"]
    end = events[-1].event
    assert end.extra["error_type"] == events[2].event.error_type
    assert end.extra["error"]
    assert state.phase == "done"
    assert state.error is not None


async def test_turn_state_round_trips_through_json(
    mock_llm: StartServer,
    make_llm: MakeLLM,
) -> None:
    server = mock_llm(WEATHER_SCRIPT)
    spec = make_spec(make_llm(server), [get_weather], stream=True)
    state = await new_state(spec, "weather in Paris?")
    await collect(spec, state)
    decoded = TurnState.from_json(state.to_json())
    assert decoded == state
    assert decoded.version == 1
    assert decoded.phase == "done"
