"""OpenAICompatible over real HTTP against the scripted model, one test per fault it injects:
each is either recovered from (with the content delivered exactly once) or reported with a
clear error."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from orchestrator.errors import LLMHTTPError, LLMResponseError, LLMRetriesExhausted
from orchestrator.llm import ChunkAccumulator, OpenAICompatible
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)

SENTENCE = "The scripted model streams this sentence word by word, exactly once."
TOOL_ARGS = {"city": "Paris", "units": "celsius", "days": [1, 2, 3]}
MESSAGES = [{"role": "user", "content": "tell me something"}]


def _script(
    fault: dict[str, Any] | None = None, reply: dict[str, Any] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": "answer", "reply": reply or {"content": SENTENCE}}
    if fault is not None:
        rule["fault"] = fault
    return {"model": "scripted", "rules": [rule]}


def _model(base_url: str, **options: Any) -> OpenAICompatible:
    options.setdefault("max_retries", 3)
    options.setdefault("retry_delay", 0.01)
    return OpenAICompatible("sk-scripted", "scripted", base_url, **options)


async def _assemble(model: OpenAICompatible, **kwargs: Any) -> tuple[ChunkAccumulator, int]:
    acc = ChunkAccumulator()
    count = 0
    async for chunk in model.chat_stream(MESSAGES, **kwargs):
        acc.add(chunk)
        count += 1
    return acc, count


async def test_plain_stream_and_chat(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script())
    async with _model(server.base_url) as model:
        acc, _ = await _assemble(model)
        completion = await model.chat(MESSAGES)
    assert acc.message()["content"] == SENTENCE
    assert acc.usage is not None
    assert completion["choices"][0]["message"]["content"] == SENTENCE
    stream_request = server.requests()[0]["body"]
    assert stream_request["stream_options"] == {"include_usage": True}


async def test_streamed_tool_call_arguments_reassemble(mock_llm: MockLLMFactory) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    reply: dict[str, Any] = {
        "content": "Checking.",
        "tool_calls": [{"name": "get_weather", "arguments": TOOL_ARGS}],
    }
    server = mock_llm(_script(reply=reply))
    async with _model(server.base_url) as model:
        acc, _ = await _assemble(model, tools=tools)
    (call,) = acc.message()["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == TOOL_ARGS


async def test_http_429_is_retried_after_retry_after(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script({"type": "http_429", "retry_after": 0.2}))
    async with _model(server.base_url, retry_delay=5.0) as model:
        started = time.monotonic()
        acc, _ = await _assemble(model)
        assert time.monotonic() - started >= 0.2
    assert acc.message()["content"] == SENTENCE
    assert server.requests()[0]["fault"] is not None
    assert len(server.requests()) == 2


@pytest.mark.parametrize("fault", ["http_500", "http_503"])
async def test_server_errors_are_retried(mock_llm: MockLLMFactory, fault: str) -> None:
    server = mock_llm(_script({"type": fault, "times": 2}))
    async with _model(server.base_url) as model:
        completion = await model.chat(MESSAGES)
    assert completion["choices"][0]["message"]["content"] == SENTENCE
    assert len(server.requests()) == 3


async def test_persistent_server_errors_exhaust_retries(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script({"type": "http_500", "times": None}))
    async with _model(server.base_url, max_retries=2) as model:
        with pytest.raises(LLMRetriesExhausted, match="HTTP 500") as caught:
            await _assemble(model)
    assert caught.value.attempts == 3
    assert caught.value.status_code == 500


async def test_http_400_is_reported_not_retried(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script({"type": "http_400"}))
    async with _model(server.base_url) as model:
        with pytest.raises(LLMHTTPError, match="scripted fault http_400") as caught:
            await model.chat(MESSAGES)
    assert caught.value.status_code == 400
    assert len(server.requests()) == 1


async def test_http_401_benches_the_key_and_reports_when_none_left(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm(_script({"type": "http_401", "times": None}))
    async with _model(server.base_url) as model:
        with pytest.raises(LLMHTTPError, match="401") as caught:
            await model.chat(MESSAGES)
    assert caught.value.status_code == 401
    assert model.key_pool.live_keys == []


async def test_http_401_on_one_key_is_served_by_the_next(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script({"type": "http_401"}))
    model = OpenAICompatible(["sk-revoked-0001", "sk-good-00002"], "scripted", server.base_url)
    async with model:
        acc, _ = await _assemble(model)
    assert acc.message()["content"] == SENTENCE
    assert model.key_pool.live_keys == ["sk-good-00002"]


@pytest.mark.parametrize("after_chunks", [0, 1, 3, 6])
async def test_dropped_stream_is_resumed_without_duplicates(
    mock_llm: MockLLMFactory, after_chunks: int
) -> None:
    server = mock_llm(_script({"type": "drop_mid_stream", "after_chunks": after_chunks}))
    async with _model(server.base_url) as model:
        acc, _ = await _assemble(model)
    assert acc.message()["content"] == SENTENCE
    assert acc.finish_reason() == "stop"
    assert len(server.requests()) == 2


async def test_dropped_tool_call_stream_is_resumed_without_duplicates(
    mock_llm: MockLLMFactory,
) -> None:
    reply: dict[str, Any] = {"tool_calls": [{"name": "get_weather", "arguments": TOOL_ARGS}]}
    server = mock_llm(_script({"type": "drop_mid_stream", "after_chunks": 4}, reply))
    async with _model(server.base_url) as model:
        acc, _ = await _assemble(model)
    (call,) = acc.message()["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == TOOL_ARGS
    assert call["function"]["name"] == "get_weather"


async def test_dropped_non_streamed_answer_is_retried(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script({"type": "drop_mid_stream"}))
    async with _model(server.base_url) as model:
        completion = await model.chat(MESSAGES)
    assert completion["choices"][0]["message"]["content"] == SENTENCE


async def test_malformed_chunk_is_skipped(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script({"type": "malformed_chunk", "after_chunks": 2}))
    async with _model(server.base_url) as model:
        acc, _ = await _assemble(model)
    assert acc.message()["content"] == SENTENCE
    assert model.malformed_chunks == 1
    assert len(server.requests()) == 1


async def test_malformed_non_streamed_answer_is_a_response_error(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm(_script({"type": "malformed_chunk"}))
    async with _model(server.base_url) as model:
        with pytest.raises(LLMResponseError, match="not JSON"):
            await model.chat(MESSAGES)


async def test_stall_past_the_timeout_is_retried(mock_llm: MockLLMFactory) -> None:
    server = mock_llm(_script({"type": "stall", "delay_s": 2}))
    async with _model(server.base_url, timeout=0.3) as model:
        acc, _ = await _assemble(model)
    assert acc.message()["content"] == SENTENCE
    assert len(server.requests()) == 2


async def test_stall_every_time_exhausts_retries_with_the_timeout_as_cause(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm(_script({"type": "stall", "delay_s": 2, "times": None}))
    async with _model(server.base_url, timeout=0.2, max_retries=1) as model:
        with pytest.raises(LLMRetriesExhausted, match="Timeout") as caught:
            await model.chat(MESSAGES)
    assert caught.value.attempts == 2
    assert len(server.requests()) >= 1
