"""OpenAICompatible against a replayed HTTP server: streaming, retries, errors, key pool."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from orchestrator.errors import LLMHTTPError, LLMResponseError, LLMRetriesExhausted
from orchestrator.llm import APIKeyPool, ChunkAccumulator, OpenAICompatible
from orchestrator.llm.testing import ReplayTransport, Reply, completion, text_chunks
from orchestrator.ports import LLMInterface

pytestmark = pytest.mark.timeout(10)

MESSAGES = [{"role": "user", "content": "hi"}]


def _model(*replies: Reply, keys: Any = "sk-test-key-0001", **options: Any) -> OpenAICompatible:
    options.setdefault("retry_delay", 0.01)
    options.setdefault("max_retries", 3)
    return OpenAICompatible(
        keys, "m", "http://llm.test/v1", transport=ReplayTransport(replies), **options
    )


def _transport(model: OpenAICompatible) -> ReplayTransport:
    transport = model._transport
    assert isinstance(transport, ReplayTransport)
    return transport


async def _stream(model: OpenAICompatible, **kwargs: Any) -> list[dict[str, Any]]:
    return [chunk async for chunk in model.chat_stream(MESSAGES, **kwargs)]


def _content(chunks: list[dict[str, Any]]) -> str:
    acc = ChunkAccumulator()
    for chunk in chunks:
        acc.add(chunk)
    return acc.message()["content"] or ""


def test_it_implements_the_llm_interface() -> None:
    assert isinstance(_model(Reply.json(completion("x"))), LLMInterface)


async def test_chat_returns_the_completion_and_sends_model_tools_and_defaults() -> None:
    model = _model(Reply.json(completion("hello")), temperature=0.3)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    result = await model.chat(MESSAGES, tools=tools, max_tokens=5)
    assert result["choices"][0]["message"]["content"] == "hello"
    (sent,) = _transport(model).requests
    assert sent == {
        "model": "m",
        "messages": MESSAGES,
        "tools": tools,
        "temperature": 0.3,
        "max_tokens": 5,
    }
    assert _transport(model).keys == ["sk-test-key-0001"]


async def test_stream_requests_usage_and_yields_the_usage_chunk_last() -> None:
    model = _model(Reply.sse(text_chunks("Hello streaming world")))
    chunks = await _stream(model)
    assert _content(chunks) == "Hello streaming world"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0
    sent = _transport(model).requests[0]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_stream_tolerates_pings_crlf_nulls_and_missing_done() -> None:
    body = (
        ": ping\r\n\r\n"
        'data:{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}],"usage":null}'
        "\r\n\r\n"
        "event: message\r\n"
        'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hm","content":"A"}}]}\r\n\r\n'
        'data: {"choices":[]}\r\n\r\n'
        'data: {"choices":[{"index":0,"delta":{"content":"B"},"finish_reason":"stop"}]}\r\n\r\n'
    )
    chunks = await _stream(_model(Reply.sse_text(body)))
    assert _content(chunks) == "AB"
    assert len(chunks) == 4


async def test_tool_call_deltas_pass_through_and_assemble() -> None:
    pieces = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"x":'}},
        {"index": 0, "function": {"arguments": " 1}"}},
    ]
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [p]}}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    acc = ChunkAccumulator()
    for chunk in await _stream(_model(Reply.sse(chunks))):
        acc.add(chunk)
    assert acc.message()["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}


async def test_malformed_chunk_is_skipped_logged_and_counted() -> None:
    chunks: list[Any] = text_chunks("one two")
    chunks.insert(2, "{this is not json")
    model = _model(Reply.sse(chunks))
    with capture_logs() as logs:
        received = await _stream(model)
    assert _content(received) == "one two"
    assert model.malformed_chunks == 1
    assert [entry["event"] for entry in logs] == ["llm.malformed_chunk_skipped"]
    assert logs[0]["log_level"] == "warning"


async def test_429_is_retried_after_the_servers_retry_after() -> None:
    model = _model(
        Reply.error(429, "slow down", headers={"Retry-After": "0.2"}),
        Reply.json(completion("ok")),
        retry_delay=5.0,  # Retry-After must win over the backoff
    )
    started = time.monotonic()
    result = await model.chat(MESSAGES)
    assert time.monotonic() - started >= 0.2
    assert result["choices"][0]["message"]["content"] == "ok"
    assert len(_transport(model).requests) == 2


async def test_retry_after_is_capped_by_max_retry_delay() -> None:
    model = _model(
        Reply.error(503, headers={"Retry-After": "3600"}),
        Reply.json(completion("ok")),
        max_retry_delay=0.05,
    )
    started = time.monotonic()
    await model.chat(MESSAGES)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retried(status: int) -> None:
    model = _model(Reply.error(status), Reply.json(completion("recovered")))
    result = await model.chat(MESSAGES)
    assert result["choices"][0]["message"]["content"] == "recovered"


async def test_dropped_stream_is_retried_without_duplicating_content() -> None:
    text = "The scripted model says exactly this sentence once."
    model = _model(
        Reply.sse(text_chunks(text), drop_after=4),
        Reply.sse(text_chunks(text, piece_size=7)),
    )
    with capture_logs() as logs:
        chunks = await _stream(model)
    assert _content(chunks) == text
    assert sum(1 for c in chunks if c.get("usage")) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert [entry["event"] for entry in logs] == ["llm.retry"]
    assert len(_transport(model).requests) == 2


@pytest.mark.parametrize("error", [httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_stream_broken_by_any_transport_error_is_resumed(
    error: type[httpx.TransportError],
) -> None:
    text = "resumed after a transport error"
    broken = Reply.sse(text_chunks(text), drop_after=3)
    broken.drop_error = error
    model = _model(broken, Reply.sse(text_chunks(text)))
    assert _content(await _stream(model)) == text


async def test_stream_that_ends_cleanly_but_early_is_retried() -> None:
    text = "complete answer"
    truncated = text_chunks(text)[:3]  # no finish_reason, no usage, no [DONE]
    model = _model(Reply.sse(truncated, done=False), Reply.sse(text_chunks(text)))
    assert _content(await _stream(model)) == text


async def test_connection_errors_are_retried() -> None:
    model = _model(Reply.sse(text_chunks("x"), drop_after=0), Reply.json(completion("y")))
    assert (await model.chat(MESSAGES))["choices"][0]["message"]["content"] == "y"


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_client_errors_are_not_retried_and_carry_the_servers_message(status: int) -> None:
    model = _model(Reply.error(status, "max_tokens is too large"), Reply.json(completion("no")))
    with pytest.raises(LLMHTTPError) as caught:
        await model.chat(MESSAGES)
    assert caught.value.status_code == status
    assert "max_tokens is too large" in str(caught.value)
    assert caught.value.attempts == 1
    assert len(_transport(model).requests) == 1


async def test_exhausted_retries_report_attempts_last_status_and_cause() -> None:
    model = _model(Reply.error(500, "overloaded"), max_retries=2)
    with pytest.raises(LLMRetriesExhausted) as caught:
        await model.chat(MESSAGES)
    assert caught.value.attempts == 3
    assert caught.value.status_code == 500
    assert caught.value.model == "m"
    assert "overloaded" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert len(_transport(model).requests) == 3


async def test_exhausted_stream_retries_raise_after_partial_output() -> None:
    model = _model(Reply.sse(text_chunks("a b c d e f"), drop_after=2), max_retries=1)
    received: list[dict[str, Any]] = []

    async def consume() -> None:
        async for chunk in model.chat_stream(MESSAGES):
            received.append(chunk)

    with pytest.raises(LLMRetriesExhausted) as caught:
        await consume()
    assert caught.value.attempts == 2
    assert _content(received) == "a b "  # delivered once, not twice


async def test_non_json_completion_is_a_response_error() -> None:
    model = _model(Reply.raw("<html>gateway</html>"))
    with pytest.raises(LLMResponseError, match="not JSON"):
        await model.chat(MESSAGES)


async def test_json_without_choices_is_a_response_error() -> None:
    with pytest.raises(LLMResponseError, match="quota"):
        await _model(Reply.json({"error": {"message": "quota"}})).chat(MESSAGES)


async def test_error_event_mid_stream_is_reported() -> None:
    chunks: list[Any] = [*text_chunks("hi")[:2], {"error": {"message": "context too long"}}]
    with pytest.raises(LLMResponseError, match="context too long"):
        await _stream(_model(Reply.sse(chunks)))


async def test_rejected_key_is_benched_and_the_next_key_serves() -> None:
    keys = ["sk-bad-key-00001", "sk-good-key-0002"]
    model = _model(Reply.error(401, "invalid api key"), Reply.json(completion("ok")), keys=keys)
    with capture_logs() as logs:
        await model.chat(MESSAGES)
        await model.chat(MESSAGES)
    assert _transport(model).keys == [keys[0], keys[1], keys[1]]
    assert model.key_pool.live_keys == [keys[1]]
    benched = [entry for entry in logs if entry["event"] == "llm.api_key_benched"]
    assert len(benched) == 1
    assert benched[0]["key"] == "...0001"  # never the whole key


async def test_all_keys_rejected_is_an_http_error() -> None:
    model = _model(Reply.error(403, "forbidden"), keys=["sk-a-000000001", "sk-b-000000002"])
    with pytest.raises(LLMHTTPError, match="forbidden") as caught:
        await model.chat(MESSAGES)
    assert caught.value.status_code == 403
    assert len(_transport(model).requests) == 2
    with pytest.raises(LLMHTTPError, match="rejected"):
        await model.chat(MESSAGES)
    assert len(_transport(model).requests) == 2


async def test_least_loaded_key_serves_the_next_request() -> None:
    pool = APIKeyPool(["k1", "k2", "k3"])
    busy = pool.acquire()
    model = _model(Reply.json(completion("ok")), keys=pool)
    await model.chat(MESSAGES)
    await model.chat(MESSAGES)
    assert busy not in _transport(model).keys
    assert sorted(_transport(model).keys) == ["k2", "k3"]


async def test_server_rejecting_stream_options_is_retried_without_them_once() -> None:
    model = _model(
        Reply.error(400, "Unrecognized request argument supplied: stream_options"),
        Reply.sse(text_chunks("fine", usage={})),
    )
    assert _content(await _stream(model)) == "fine"
    assert _content(await _stream(model)) == "fine"
    sent = _transport(model).requests
    assert ["stream_options" in body for body in sent] == [True, False, False]
    assert model.stream_options_supported is False


async def test_server_that_ignores_stream_true_still_streams() -> None:
    chunks = await _stream(_model(Reply.json(completion("whole"))))
    assert _content(chunks) == "whole"
    assert chunks[-1]["usage"]["total_tokens"] == 5


async def test_rate_limit_spaces_requests() -> None:
    model = _model(Reply.json(completion("ok")), rate_limit_capacity=1, rate_limit_refill_rate=20)
    started = time.monotonic()
    for _ in range(3):
        await model.chat(MESSAGES)
    assert time.monotonic() - started >= 0.09  # two waits of 1/20 s
