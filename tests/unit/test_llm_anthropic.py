"""`AnthropicMessages` against the scripted model's `/v1/messages` route (real HTTP):
text and tool calls, streamed or not, usage, retried faults, and the route's errors."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from orchestrator.errors import LLMHTTPError
from orchestrator.llm.anthropic import AnthropicMessages
from orchestrator.ports import ChunkAccumulator
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        },
    }
]
SCRIPT = {
    "rules": [
        {
            "match": {"tools_offered": "lookup", "last_role": "user"},
            "reply": {
                "content": "Looking it up.",
                "tool_calls": [{"name": "lookup", "arguments": {"word": "{last_user}"}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 12},
            },
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "It means {last_tool_result}."}},
    ],
    "fallback": {"content": "plain answer to {last_user}"},
}


def model(base_url: str, **kwargs: object) -> AnthropicMessages:
    return AnthropicMessages("k", "claude-test", base_url, retry_delay=0.01, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_and_usage_in_both_modes(mock_llm: MockLLMFactory, stream: bool) -> None:
    llm = mock_llm(SCRIPT)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "serendipity"},
    ]
    accumulator = ChunkAccumulator()
    async with model(llm.base_url) as claude:
        if stream:
            stream_args = {"tools": TOOLS, "max_tokens": 100, "top_p": 1.0}
            async for chunk in claude.chat_stream(messages, **stream_args):
                accumulator.add(chunk)
        else:
            answer = await claude.chat(messages, tools=TOOLS, max_tokens=100, top_p=1.0)
            accumulator.add_completion(answer)
    message = accumulator.message()
    assert message["content"] == "Looking it up."
    call = message["tool_calls"][0]
    assert call["function"] == {"name": "lookup", "arguments": '{"word": "serendipity"}'}
    assert accumulator.finish_reason() == "tool_calls"
    assert accumulator.usage is not None
    assert (accumulator.usage["prompt_tokens"], accumulator.usage["completion_tokens"]) == (40, 12)
    sent = llm.requests()[0]["body"]
    assert "top_p" not in sent
    assert sent["system"] == "be brief"
    assert sent["max_tokens"] == 100


async def test_tool_results_go_back_as_tool_result_blocks(mock_llm: MockLLMFactory) -> None:
    llm = mock_llm(SCRIPT)
    messages = [
        {"role": "user", "content": "serendipity"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "a happy accident"},
    ]
    async with model(llm.base_url) as claude:
        answer = await claude.chat(messages, tools=TOOLS)
    assert answer["choices"][0]["message"]["content"] == "It means a happy accident."
    turns = llm.requests()[0]["body"]["messages"]
    assert turns[1]["content"] == [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}]
    assert turns[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": "a happy accident",
    }


async def test_a_dropped_stream_is_resumed_without_repeats(mock_llm: MockLLMFactory) -> None:
    script = {
        "rules": [
            {
                "reply": {"content": "one two three four five six"},
                "fault": {"type": "drop_mid_stream", "after_chunks": 4},
            }
        ]
    }
    llm = mock_llm(script)
    accumulator = ChunkAccumulator()
    async with model(llm.base_url, max_retries=2) as claude:
        async for chunk in claude.chat_stream([{"role": "user", "content": "go"}]):
            accumulator.add(chunk)
    assert accumulator.content() == "one two three four five six"
    assert [r["fault"] for r in llm.requests()] == ["drop_mid_stream", None]


async def test_overloaded_is_retried_and_a_bad_request_is_not(mock_llm: MockLLMFactory) -> None:
    llm = mock_llm({"rules": [{"reply": {"content": "ok"}, "fault": {"type": "http_503"}}]})
    async with model(llm.base_url, max_retries=2) as claude:
        with capture_logs() as logs:
            answer = await claude.chat([{"role": "user", "content": "go"}])
    assert answer["choices"][0]["message"]["content"] == "ok"  # 529 then success
    retries = [entry for entry in logs if entry["event"] == "llm.retry"]
    assert [entry["status"] for entry in retries] == [529]
    llm.set_script({"rules": [{"reply": {"content": "x"}, "fault": {"type": "http_400"}}]})
    async with model(llm.base_url, max_retries=2) as claude:
        with pytest.raises(LLMHTTPError) as caught:
            await claude.chat([{"role": "user", "content": "go"}])
    assert caught.value.status_code == 400


def test_the_route_answers_invalid_requests_in_anthropic_shape(mock_llm: MockLLMFactory) -> None:
    llm = mock_llm(SCRIPT)
    response = httpx.post(
        f"{llm.base_url}/messages",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-version": "2023-06-01"},
        trust_env=False,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


@pytest.mark.parametrize("stream", [True, False])
async def test_llm_chat_agents_run_on_claude_natively(
    mock_llm: MockLLMFactory, stream: bool
) -> None:
    """`AnthropicMessages` is an `LLMInterface`: an `llm_chat` agent with tools runs on
    the Messages API as it does on an OpenAI-compatible server."""
    from orchestrator import llm_chat, tool

    @tool(name="lookup", description="Look a word up.")
    async def lookup(word: str) -> str:
        return f"a happy accident ({word})"

    llm = mock_llm(SCRIPT)
    async with model(llm.base_url) as claude:

        @llm_chat(llm_interface=claude, toolkit=[lookup], stream=stream)
        async def agent(message: str, history: list[dict[str, object]] | None = None) -> None:
            """You are a dictionary."""

        outputs = [pair async for pair in agent("serendipity", [])]
    history = outputs[-1][1]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "tool", "assistant"]
    assert history[-1]["content"] == "It means a happy accident (message: serendipity)."
    first = llm.requests()[0]["body"]
    assert first["system"] == "You are a dictionary."
    assert first["tools"][0]["name"] == "lookup"
