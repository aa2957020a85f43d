"""lm-deluge's client (`orchestrator.deluge`) against the scripted model over real HTTP,
in both wire formats: Claude names speak the Anthropic Messages API, GPT names OpenAI's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.deluge import (
    Conversation,
    LLMClient,
    Message,
    ModelRegistry,
    SlidingWindow,
    Tool,
    ToolCall,
    ToolResult,
    default_registry,
    register_model,
    total_cost,
)
from orchestrator.errors import ConfigError
from tests.deluge_models import restore_registry, use_scripted
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)

WEATHER = {
    "rules": [
        {
            "name": "call",
            "match": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {
                "content": "Let me check.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
            },
        },
        {
            "name": "answer",
            "match": {"last_role": "tool"},
            "reply": {"content": "So: {tool_results}"},
        },
    ],
    "fallback": {"content": "echo {last_user}"},
}


@pytest.fixture(autouse=True)
def _registry() -> Iterator[None]:
    yield from restore_registry()


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny in {city}"


async def get_time(zone: str = "UTC") -> str:
    """Tell the time.

    Args:
        zone: the time zone name
    """
    return f"noon in {zone}"


@pytest.mark.parametrize("name", ["claude-4-sonnet", "gpt-4.1"])
@pytest.mark.parametrize("stream", [False, True])
async def test_agent_loop_runs_tools_in_both_wire_formats(
    mock_llm: MockLLMFactory, name: str, stream: bool
) -> None:
    llm = mock_llm(WEATHER)
    use_scripted({name: llm})
    client = LLMClient(name, stream=stream)
    conv = Conversation().system("You are a helpful assistant.").user("weather in Paris?")
    conv, response = await client.run_agent_loop(conv, tools=[Tool.from_function(get_weather)])
    assert response.completion == "So: sunny in Paris"
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2].tool_calls[0].arguments == {"city": "Paris"}
    assert conv.messages[3].tool_results[0].result == "sunny in Paris"
    assert conv.model_used == name
    second = llm.requests()[1]["body"]
    if name.startswith("claude"):  # the Messages API shape, not OpenAI's
        assert second["system"] == "You are a helpful assistant."
        assert second["messages"][-1]["content"][0]["type"] == "tool_result"
        assert second["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"
        assert second["model"] == "claude-sonnet-4-20250514"
    else:
        assert second["messages"][-1]["role"] == "tool"


async def test_anthropic_key_goes_in_x_api_key(mock_llm: MockLLMFactory) -> None:
    llm = mock_llm(WEATHER)
    register_model("my-claude", provider="anthropic", api_base=llm.base_url, api_key_env="MY_KEY")
    client = LLMClient("my-claude", environ={"MY_KEY": "sk-ant-test"})
    response = await client.start("hello")
    assert response.completion == "echo hello"
    assert llm.requests()[0]["api_key"] == "sk-ant-test"


def test_a_missing_key_is_named() -> None:
    register_model("keyed", api_base="http://127.0.0.1:9/v1", api_key_env="NOPE_KEY")
    client = LLMClient("keyed", environ={})
    with pytest.raises(ConfigError, match="NOPE_KEY"):
        client.process_prompts_sync(["hi"], show_progress=False)


@pytest.mark.parametrize("name", ["claude-4-sonnet", "gpt-4o-mini"])
async def test_cost_is_registry_price_times_reported_usage(
    mock_llm: MockLLMFactory, name: str
) -> None:
    script = {
        "fallback": {"content": "ok", "usage": {"prompt_tokens": 1200, "completion_tokens": 300}}
    }
    use_scripted({name: mock_llm(script)})
    spec = default_registry.get(name)
    client = LLMClient(name)
    responses = await client.process_prompts_async(["a", "b", "c"], show_progress=False)
    for response in responses:
        assert (response.input_tokens, response.output_tokens) == (1200, 300)
        assert response.cost == pytest.approx(
            (1200 * spec.input_cost + 300 * spec.output_cost) / 1e6
        )
    assert total_cost(responses) == pytest.approx(3 * responses[0].cost)


async def test_results_come_back_in_input_order(mock_llm: MockLLMFactory) -> None:
    script = {
        "rules": [
            {
                "match": {"last_user_contains": "slow"},
                "reply": {"content": "slow"},
                "latency": {"first_token_ms": 150},
            }
        ],
        "fallback": {"content": "{last_user}"},
    }
    use_scripted({"gpt-4o-mini": mock_llm(script)})
    prompts = ["slow 0", "1", "slow 2", "3", "4"]
    got = await LLMClient("gpt-4o-mini").process_prompts_async(
        prompts, show_progress=False, return_completions_only=True
    )
    assert got == ["slow", "1", "slow", "3", "4"]


async def test_failure_falls_back_to_the_other_model(mock_llm: MockLLMFactory) -> None:
    broken = mock_llm(
        {"rules": [{"reply": {"content": "x"}, "fault": {"type": "http_500", "times": None}}]}
    )
    working = mock_llm({"fallback": {"content": "from gpt"}})
    use_scripted({"claude-4-sonnet": broken, "gpt-4.1": working})
    client = LLMClient(["claude-4-sonnet", "gpt-4.1"], max_attempts=3)
    response = await client.start("hi", prefer_model="claude-4-sonnet")
    assert (response.model_internal, response.completion) == ("gpt-4.1", "from gpt")
    assert response.attempts == 2
    assert len(broken.requests()) == 1


async def test_every_attempt_failing_is_an_error_response(mock_llm: MockLLMFactory) -> None:
    broken = mock_llm(
        {"rules": [{"reply": {"content": "x"}, "fault": {"type": "http_500", "times": None}}]}
    )
    use_scripted({"gpt-4.1": broken})
    client = LLMClient("gpt-4.1", max_attempts=3, retry_delay=0.01)
    response = await client.start("hi")
    assert response.is_error
    assert response.completion is None
    assert response.status_code == 500
    assert "500" in (response.error_message or "")
    assert len(broken.requests()) == 3


async def test_sliding_window_never_lets_more_than_the_limit_through() -> None:
    limiter = SlidingWindow(max_requests=3, max_tokens=1_000, period_s=0.3)
    stamps: list[float] = []

    async def one() -> None:
        await limiter.acquire(10)
        stamps.append(time.monotonic())

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(7))), 5)
    for i in range(len(stamps) - 3):
        assert stamps[i + 3] - stamps[i] >= 0.3 - 1e-3


async def test_sliding_window_limits_tokens_too() -> None:
    limiter = SlidingWindow(max_requests=100, max_tokens=100, period_s=0.3)
    started = time.monotonic()
    for _ in range(3):
        await asyncio.wait_for(limiter.acquire(60), 5)
    # 60 + 60 > 100: the second waits a window, the third another
    assert time.monotonic() - started >= 0.6 - 1e-3


def test_conversation_round_trips_through_the_openai_list() -> None:
    conv = Conversation().system("sys").user("hi")
    conv.add(Message.ai("calling", [ToolCall("c1", "f", {"x": 1}), ToolCall("c2", "g", {})]))
    conv.add(Message.tool([ToolResult("c1", "one"), ToolResult("c2", "two")]))
    conv.add(Message.ai("done"))
    wire = conv.to_openai()
    assert [m["role"] for m in wire] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert wire[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert Conversation.from_openai(wire) == conv


def test_tool_from_function_reads_hints_and_docstring() -> None:
    tool = Tool.from_function(get_time)
    definition: dict[str, Any] = tool.definition()["function"]
    assert definition["name"] == "get_time"
    assert definition["description"] == "Tell the time."
    assert definition["parameters"]["properties"]["zone"]["description"] == "the time zone name"
    assert "zone" not in definition["parameters"].get("required", [])


def test_unknown_model_names_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        LLMClient("no-such-model", registry=ModelRegistry())


def test_with_response_records_the_model_even_without_a_message() -> None:
    from orchestrator.deluge import APIResponse

    conv = Conversation().user("hi")
    conv.with_response(APIResponse(model_internal="gpt-4.1", is_error=True))
    assert (len(conv), conv.model_used) == (1, "gpt-4.1")
    conv.with_tool_result("a", "1").with_tool_results([("b", "2")])
    assert [r.tool_call_id for r in conv.messages[-1].tool_results] == ["a", "b"]


async def test_many_agent_loops_in_input_order(mock_llm: MockLLMFactory) -> None:
    use_scripted({"gpt-4.1": mock_llm(WEATHER)})
    client = LLMClient("gpt-4.1")
    prompts = ["weather in Paris?", "hello", "weather again?"]
    results = await client.process_agent_loops_async(
        prompts, tools=[get_weather], max_concurrent_agents=2, show_progress=False
    )
    assert [r.completion for _, r in results] == [
        "So: sunny in Paris",
        "echo hello",
        "So: sunny in Paris",
    ]
    assert [len(conv) for conv, _ in results] == [4, 2, 4]


async def test_a_bad_request_is_not_repeated_but_tried_on_the_other_model(
    mock_llm: MockLLMFactory,
) -> None:
    bad = {"rules": [{"reply": {"content": "x"}, "fault": {"type": "http_400", "times": None}}]}
    claude, gpt = mock_llm(bad), mock_llm(bad)
    use_scripted({"claude-4-sonnet": claude, "gpt-4.1": gpt})
    client = LLMClient(["claude-4-sonnet", "gpt-4.1"], max_attempts=5)
    response = await client.start("hi")
    assert response.is_error
    assert response.status_code == 400
    assert (len(claude.requests()), len(gpt.requests())) == (1, 1)


async def test_conversations_and_llm_chat_histories_are_interchangeable(
    mock_llm: MockLLMFactory,
) -> None:
    """An llm_chat turn's history reads as a Conversation that LLMClient continues, and a
    Conversation's OpenAI list is a history llm_chat continues."""
    from orchestrator import OpenAICompatible, llm_chat

    llm = mock_llm(WEATHER)
    use_scripted({"gpt-4.1": llm})
    model = OpenAICompatible("", "gpt-4.1", llm.base_url, retry_delay=0.01)

    @llm_chat(llm_interface=model, toolkit=[Tool.from_function(get_weather)], stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a helpful assistant."""

    outputs = [pair async for pair in agent("weather in Paris?", [])]
    conv = Conversation.from_openai(outputs[-1][1])
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    conv.user("thanks")
    response = await LLMClient("gpt-4.1").start(conv)
    assert response.completion == "echo thanks"
    sent = llm.requests()[-1]["body"]["messages"]
    assert sent[:5] == outputs[-1][1]  # the history went out as llm_chat wrote it

    conv = conv.with_response(response)
    again = [pair async for pair in agent("more", conv.to_openai())]
    assert [m["role"] for m in again[-1][1]][-3:] == ["assistant", "user", "assistant"]
    assert llm.requests()[-1]["body"]["messages"][6] == {
        "role": "assistant",
        "content": "echo thanks",
    }
    await model.aclose()


async def test_a_429_retry_after_is_waited_for(mock_llm: MockLLMFactory) -> None:
    script = {
        "rules": [
            {"reply": {"content": "ok"}, "fault": {"type": "http_429", "retry_after": 0.4}},
        ]
    }
    llm = mock_llm(script)
    use_scripted({"gpt-4.1": llm})
    client = LLMClient("gpt-4.1", retry_delay=0.001)
    started = time.monotonic()
    response = await client.start("hi")
    assert response.completion == "ok"
    assert response.attempts == 2
    assert time.monotonic() - started >= 0.4  # not the 1 ms backoff


async def test_a_failing_tool_is_reported_to_the_model(mock_llm: MockLLMFactory) -> None:
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        raise ValueError(f"no station in {city}")

    use_scripted({"gpt-4.1": mock_llm(WEATHER)})
    conv, response = await LLMClient("gpt-4.1").run_agent_loop(
        "weather in Paris?", tools=[get_weather]
    )
    assert response.completion == "So: Error: ValueError: no station in Paris"
    assert conv.messages[2].tool_results[0].result.startswith("Error: ValueError")
