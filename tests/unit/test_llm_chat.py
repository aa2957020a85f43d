"""`@llm_chat`: SimpleLLMFunc's decorator contract (return shapes, history, prompts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import orchestrator
from orchestrator import OpenAICompatible, SelfReference, llm_chat, tool
from orchestrator.errors import AgentError
from orchestrator.events import EventYield, ResponseYield
from orchestrator.runtime import agent_spec

StartServer = Callable[..., Any]

SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "match": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {
                "content": "Checking.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}],
            },
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "Rome is {last_tool_result}."}},
        {"match": {"system_contains": "pirate"}, "reply": {"content": "Arr, matey."}},
    ],
    "fallback": {"content": "Hello from the script."},
}


@tool(name="get_weather", description="Get weather information for a city")
async def get_weather(city: str) -> str:
    return "sunny"


@pytest.fixture
async def llm(mock_llm: StartServer) -> AsyncIterator[OpenAICompatible]:
    server = mock_llm(SCRIPT)
    client = OpenAICompatible(
        api_keys="scripted", model_name="scripted", base_url=server.base_url, retry_delay=0.01
    )
    client.server = server  # type: ignore[attr-defined]
    yield client
    await client.aclose()


def requests_of(llm: OpenAICompatible) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = llm.server.requests()  # type: ignore[attr-defined]
    return records


def chat_agent(llm: OpenAICompatible, **options: Any) -> Callable[..., AsyncIterator[Any]]:
    @llm_chat(llm_interface=llm, toolkit=[get_weather], **options)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a helpful assistant."""

    return agent


WEATHER_TURN_ROLES = ["system", "user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_text_mode_yields_text_then_empty_marker_with_whole_history(
    llm: OpenAICompatible, stream: bool
) -> None:
    agent = chat_agent(llm, stream=stream)
    outputs = [pair async for pair in agent("weather in Rome?", [])]
    chunks = [chunk for chunk, _ in outputs]
    assert chunks[-1] == ""
    assert all(isinstance(c, str) and c for c in chunks[:-1]), "only text is yielded"
    assert "".join(chunks) == "Checking.Rome is sunny."
    history = outputs[-1][1]
    assert [m["role"] for m in history] == WEATHER_TURN_ROLES
    assert history[-1]["content"] == "Rome is sunny."


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_raw_mode_yields_provider_objects_and_last_one_has_whole_history(
    llm: OpenAICompatible, stream: bool
) -> None:
    agent = chat_agent(llm, stream=stream, return_mode="raw")
    outputs = [pair async for pair in agent("weather in Rome?", [])]
    expected = "chat.completion.chunk" if stream else "chat.completion"
    assert all(raw["object"] == expected for raw, _ in outputs)
    assert len(outputs) > (4 if stream else 1)
    assert [m["role"] for m in outputs[-1][1]] == WEATHER_TURN_ROLES


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_event_mode_ends_with_response_carrying_text_and_whole_history(
    llm: OpenAICompatible, stream: bool
) -> None:
    agent = chat_agent(llm, stream=stream, enable_event=True)
    outputs = [o async for o in agent("weather in Rome?", [])]
    final = outputs[-1]
    assert isinstance(final, ResponseYield)
    assert final.response == "Rome is sunny."
    assert [m["role"] for m in final.messages] == WEATHER_TURN_ROLES
    raw = [o.response for o in outputs[:-1] if isinstance(o, ResponseYield)]
    assert raw, "SimpleLLMFunc's per-chunk/per-completion ResponseYields"
    assert all(isinstance(r, dict) for r in raw)
    end = [o for o in outputs if isinstance(o, EventYield)][-1].event
    assert end.event_type.value == "react_end"
    assert end.final_messages == final.messages


async def test_user_message_is_name_value_lines_skipping_none_and_empty(
    llm: OpenAICompatible,
) -> None:
    @llm_chat(llm_interface=llm, stream=False)
    async def ask(
        message: str, topic: str | None = None, note: str = "", history: Any = None
    ) -> None:
        """Answer."""

    [_ async for _ in ask("hi", topic="cats")]
    [_ async for _ in ask("hi")]
    first, second = (r["body"]["messages"] for r in requests_of(llm))
    assert first[-1] == {"role": "user", "content": "message: hi\ntopic: cats"}
    assert second[-1] == {"role": "user", "content": "message: hi"}


async def test_docstring_is_formatted_with_template_params(llm: OpenAICompatible) -> None:
    @llm_chat(llm_interface=llm, stream=False)
    async def persona(message: str, history: Any = None) -> None:
        """You are a {role}. Speak {style}."""

    outputs = [
        p async for p in persona("hi", _template_params={"role": "pirate", "style": "loudly"})
    ]
    assert outputs[0][0] == "Arr, matey."
    system = requests_of(llm)[0]["body"]["messages"][0]
    assert system == {"role": "system", "content": "You are a pirate. Speak loudly."}

    [_ async for _ in persona("hi", _template_params={"wrong": 1})]
    system = requests_of(llm)[1]["body"]["messages"][0]
    assert system["content"] == "You are a {role}. Speak {style}.", "raw docstring on failure"


async def test_last_system_message_in_history_overrides_docstring(
    llm: OpenAICompatible,
) -> None:
    agent = chat_agent(llm, stream=False)
    history = [
        {"role": "system", "content": "old system"},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "reply"},
        {"role": "system", "content": "You are a pirate."},
    ]
    outputs = [p async for p in agent("hi", history)]
    sent = requests_of(llm)[0]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are a pirate."
    assert outputs[-1][1][0]["content"] == "You are a pirate."


async def test_history_in_unknown_format_is_ignored(llm: OpenAICompatible) -> None:
    agent = chat_agent(llm, stream=False)
    [_ async for _ in agent("hi", "not a list")]
    sent = requests_of(llm)[0]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]


async def test_chat_history_parameter_name_works(llm: OpenAICompatible) -> None:
    @llm_chat(llm_interface=llm, stream=False)
    async def agent(message: str, chat_history: Any = None) -> None:
        """Sys."""

    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    [_ async for _ in agent("c", chat_history=history)]
    sent = requests_of(llm)[0]["body"]["messages"]
    assert [m["content"] for m in sent] == ["Sys.", "a", "b", "message: c"]


async def test_tools_can_emit_custom_events_with_or_without_await(
    llm: OpenAICompatible,
) -> None:
    @tool(name="get_weather", description="Weather")
    async def emitting_weather(city: str, event_emitter: Any) -> str:
        await event_emitter.emit("step", {"n": 1})
        event_emitter.emit("step", {"n": 2})
        return "sunny"

    @llm_chat(llm_interface=llm, toolkit=[emitting_weather], enable_event=True)
    async def agent(message: str, history: Any = None) -> None:
        """Sys."""

    customs = [
        o
        async for o in agent("weather?")
        if isinstance(o, EventYield) and o.event.event_type.value == "custom_event"
    ]
    assert [c.event.data for c in customs] == [{"n": 1}, {"n": 2}]
    assert all(c.origin.tool_name == "get_weather" for c in customs)
    assert all(c.event.tool_call_id == c.origin.tool_call_id for c in customs)


async def test_self_reference_keeps_memory_between_turns(llm: OpenAICompatible) -> None:
    memory = SelfReference()

    @llm_chat(llm_interface=llm, stream=False, self_reference=memory)
    async def agent(message: str, history: Any = None) -> None:
        """Sys."""

    [_ async for _ in agent("first")]
    outputs = [p async for p in agent("second")]
    contents = [m["content"] for m in outputs[-1][1]]
    assert contents[1:] == [
        "message: first",
        "Hello from the script.",
        "message: second",
        "Hello from the script.",
    ]
    tools_offered = requests_of(llm)[0]["body"].get("tools") or []
    assert any(t["function"]["name"].startswith("selfref") for t in tools_offered)

    # Passing a history replaces the stored memory.
    outputs = [p async for p in agent("third", [])]
    assert [m["content"] for m in outputs[-1][1]][1:] == [
        "message: third",
        "Hello from the script.",
    ]


def test_llm_chat_rejects_sync_functions(llm: OpenAICompatible) -> None:
    with pytest.raises(AgentError, match="async def"):

        @llm_chat(llm_interface=llm)
        def not_async(message: str, history: Any = None) -> None:
            """Sys."""


def test_strict_signature_requires_a_history_parameter(llm: OpenAICompatible) -> None:
    with pytest.raises(AgentError, match="history"):

        @llm_chat(llm_interface=llm, strict_signature=True)
        async def no_history(message: str) -> None:
            """Sys."""


def test_agent_spec_describes_the_decorated_function(llm: OpenAICompatible) -> None:
    agent = chat_agent(llm, stream=False, max_tool_calls=3, temperature=0.2)
    spec = agent_spec(agent)
    assert spec.name == "agent"
    assert spec.max_tool_calls == 3
    assert spec.llm_kwargs == {"temperature": 0.2}
    assert set(spec.tool_map()) == {"get_weather"}
    assert list(spec.signature.parameters) == ["message", "history"]
    with pytest.raises(AgentError):
        agent_spec(lambda: None)


def test_package_all_is_honest() -> None:
    for name in orchestrator.__all__:
        assert hasattr(orchestrator, name), name
    public = {n for n in vars(orchestrator) if not n.startswith("_")}
    expected = {"llm_chat", "tool", "OpenAICompatible", "SelfReference", "AbortSignal"}
    assert expected | {"ABORT_SIGNAL_PARAM"} <= set(orchestrator.__all__)
    assert expected <= public
