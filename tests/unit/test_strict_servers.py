"""Strict OpenAI-compatible servers (llama.cpp's) accept our requests, and a request a
server rejected as invalid is not sent again.

The scripted model's strict mode (`"strict": true`) refuses what llama-server and
llama-cpp-python refuse, with their HTTP 500; everything here runs over real HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import OpenAICompatible, llm_chat, tool
from orchestrator.errors import LLMHTTPError, LLMRetriesExhausted
from orchestrator.llm.messages import wire_messages
from orchestrator.llm.retry import rejected_as_invalid
from orchestrator.mock_llm.strict import strict_problem
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)

STRICT_SCRIPT: dict[str, Any] = {
    "strict": True,
    "rules": [
        {
            "match": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "Oslo: {last_tool_result}."}},
    ],
    "fallback": {"content": "ok"},
}

TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}


@tool(name="get_weather", description="Weather for a city")
async def get_weather(city: str) -> str:
    return f"snow in {city}"


def model_for(base_url: str, **options: Any) -> OpenAICompatible:
    options.setdefault("retry_delay", 0.01)
    return OpenAICompatible(
        api_keys="k", model_name="scripted", base_url=base_url, max_retries=5, **options
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_a_tool_round_trip_passes_a_strict_server(
    mock_llm: MockLLMFactory, stream: bool
) -> None:
    server = mock_llm(STRICT_SCRIPT)
    llm = model_for(server.base_url)

    @llm_chat(llm_interface=llm, toolkit=[get_weather], stream=stream)
    async def weather(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You report the weather."""

    text = ""
    history: list[dict[str, Any]] = []
    async for chunk, updated in weather("weather in Oslo?", history=[]):
        text += chunk
        history = updated
    await llm.aclose()
    assert "Oslo: snow in Oslo." in text
    records = server.requests()
    assert [r["fault"] for r in records] == [None, None]
    assistant = records[1]["body"]["messages"][-2]
    assert assistant["tool_calls"]
    assert assistant["content"] == ""
    # The history handed back is valid for a strict server too.
    assert all(m.get("content") is not None for m in history)


async def test_a_history_with_content_null_is_sent_as_empty_string(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm(STRICT_SCRIPT)
    llm = model_for(server.base_url)
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ]
    answer = await llm.chat(history)
    await llm.aclose()
    assert answer["choices"][0]["message"]["content"] == "Oslo: rain."
    assert history[1]["content"] is None  # the caller's list is not changed


@pytest.mark.parametrize("stream", [True, False])
async def test_a_request_rejected_as_invalid_is_sent_once(
    mock_llm: MockLLMFactory, stream: bool
) -> None:
    server = mock_llm(STRICT_SCRIPT)
    llm = model_for(server.base_url)
    orphan = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "x", "content": "1"},
    ]

    async def send() -> None:
        if stream:
            async for _ in llm.chat_stream(orphan):
                pass
        else:
            await llm.chat(orphan)

    with pytest.raises(LLMHTTPError) as failed:
        await send()
    await llm.aclose()
    assert failed.value.status_code == 500
    assert not isinstance(failed.value, LLMRetriesExhausted)
    assert "answers no earlier assistant tool call" in str(failed.value)
    assert [r["fault"] for r in server.requests()] == ["strict"]


async def test_a_plain_server_error_is_still_retried(mock_llm: MockLLMFactory) -> None:
    script = {"rules": [{"reply": {"content": "back"}, "fault": {"type": "http_500", "times": 2}}]}
    server = mock_llm(script)
    llm = model_for(server.base_url)
    answer = await llm.chat([{"role": "user", "content": "hi"}])
    await llm.aclose()
    assert answer["choices"][0]["message"]["content"] == "back"
    assert len(server.requests()) == 3


@pytest.mark.parametrize(
    ("status", "message", "kinds", "invalid"),
    [
        (400, "bad", set(), True),
        (404, "no such model", set(), True),
        (408, "timeout", set(), False),
        (409, "conflict", set(), False),
        (429, "slow down", set(), False),
        (500, "upstream hiccup", {"server_error"}, False),
        (503, "overloaded", set(), False),
        (500, "whatever", {"invalid_request_error"}, True),
        (500, 'can only concatenate str (not "NoneType") to str', {"internal_server_error"}, True),
        (500, "Invalid request: messages[2] ...", set(), True),
        (500, "Conversation roles must alternate user/assistant", set(), True),
        (500, "Jinja Exception: unknown filter", set(), True),
    ],
)
def test_which_failures_count_as_the_request_being_invalid(
    status: int, message: str, kinds: set[str], invalid: bool
) -> None:
    assert rejected_as_invalid(status, message, kinds) is invalid


def test_wire_messages_copies_only_when_needed() -> None:
    clean = [{"role": "user", "content": "hi"}]
    assert wire_messages(clean) is clean
    fixed = wire_messages([{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}])
    assert fixed[0]["content"] == ""


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "hi"}], None),
        ([{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}], "not null"),
        ([{"role": "wizard", "content": "x"}], "unknown role"),
        ([{"role": "user", "content": None}], "not null"),
        ([{"role": "tool", "tool_call_id": "nope", "content": "1"}], "no earlier"),
        (
            [
                {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            ],
            None,
        ),
        ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], None),
    ],
)
def test_strict_mode_checks_messages_like_llama_cpp(
    messages: list[dict[str, Any]], problem: str | None
) -> None:
    found = strict_problem({"messages": messages})
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


async def test_an_error_in_the_stream_that_says_invalid_is_not_retried() -> None:
    from orchestrator.errors import LLMResponseError
    from orchestrator.llm.testing import ReplayTransport, Reply

    invalid = {"error": {"message": "Invalid request: bad template", "code": 500}}
    transient = {"error": {"message": "upstream hiccup", "code": 500}}
    ok = {"choices": [{"index": 0, "delta": {"content": "fine"}, "finish_reason": "stop"}]}
    transport = ReplayTransport([Reply.sse([invalid]), Reply.sse([transient]), Reply.sse([ok])])
    llm = OpenAICompatible(
        "k", "m", "http://llm.test/v1", transport=transport, retry_delay=0.01, max_retries=3
    )
    with pytest.raises(LLMResponseError, match="bad template"):
        async for _ in llm.chat_stream([{"role": "user", "content": "hi"}]):
            pass
    assert len(transport.requests) == 1
    chunks = [c async for c in llm.chat_stream([{"role": "user", "content": "hi"}])]
    assert len(transport.requests) == 3  # the transient one was retried
    assert any(c.get("choices") for c in chunks)
    await llm.aclose()
