"""The official `anthropic` SDK talks to the scripted model's `/v1/messages` route: a
create with a tool call, a stream that assembles text and a tool_use block, and an error
it parses. Skipped where the SDK is not installed (the project does not depend on it:
`pip install anthropic` to run this)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures_llm import MockLLMFactory

anthropic = pytest.importorskip("anthropic")

pytestmark = pytest.mark.timeout(20)

SCRIPT = {
    "rules": [
        {
            "match": {"tools_offered": "lookup", "last_role": "user"},
            "reply": {
                "content": "Looking.",
                "tool_calls": [{"name": "lookup", "arguments": {"word": "{last_user}"}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7},
            },
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "It means {last_tool_result}."}},
    ],
}
TOOLS: list[Any] = [
    {
        "name": "lookup",
        "description": "Look a word up.",
        "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
    }
]


async def test_the_sdk_reads_created_and_streamed_messages(mock_llm: MockLLMFactory) -> None:
    llm = mock_llm(SCRIPT)
    client = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=llm.url, max_retries=0)
    asked = [{"role": "user", "content": "serendipity"}]
    created = await client.messages.create(
        model="claude-test", max_tokens=100, system="be brief", messages=asked, tools=TOOLS
    )
    assert created.stop_reason == "tool_use"
    text, call = created.content
    assert text.text == "Looking."
    assert (call.name, call.input) == ("lookup", {"word": "serendipity"})
    assert (created.usage.input_tokens, created.usage.output_tokens) == (12, 7)
    assert llm.requests()[0]["api_key"] == "sk-ant-test"

    async with client.messages.stream(
        model="claude-test", max_tokens=100, messages=asked, tools=TOOLS
    ) as stream:
        streamed = await stream.get_final_message()
    assert streamed.content[1].input == {"word": "serendipity"}  # from input_json_delta pieces

    answered = [
        *asked,
        {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in created.content],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "luck"}],
        },
    ]
    async with client.messages.stream(
        model="claude-test", max_tokens=100, messages=answered, tools=TOOLS
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == "It means luck."
    await client.close()


async def test_the_sdk_parses_scripted_errors(mock_llm: MockLLMFactory) -> None:
    llm = mock_llm({"rules": [{"reply": {"content": "x"}, "fault": {"type": "http_503"}}]})
    client = anthropic.AsyncAnthropic(api_key="k", base_url=llm.url, max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"
    await client.close()
