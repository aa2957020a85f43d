"""`AnthropicMessages`: Claude models over the native Messages API (`POST /v1/messages`,
`x-api-key`, `anthropic-version`), behind the same OpenAI-shaped `LLMInterface`.

It is an `OpenAICompatible` whose one HTTP attempt speaks the Messages API (translated by
`anthropic_wire`), so keys, retries, rate limits and stream resumption are shared. The
base URL ends in `/v1` (`https://api.anthropic.com/v1`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from orchestrator.errors import LLMResponseError
from orchestrator.events import MessageList
from orchestrator.llm.anthropic_wire import (
    ANTHROPIC_VERSION,
    StreamTranslator,
    to_chat_completion,
    to_messages_request,
)
from orchestrator.llm.http import HTTPPool, body_bytes
from orchestrator.llm.openai_compatible import OpenAICompatible, read_to_end
from orchestrator.llm.retry import RetryableFailure
from orchestrator.llm.sse import iter_sse_bytes
from orchestrator.llm.stream import StreamResumer

Chunk = dict[str, Any]
# Anthropic answers 529 when it is overloaded: worth another attempt.
_OVERLOADED = 529
_RETRYABLE_STREAM_ERRORS = frozenset({"overloaded_error", "rate_limit_error", "api_error"})


class AnthropicMessages(OpenAICompatible):
    """A Claude model through the Anthropic Messages API (same arguments as
    `OpenAICompatible`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_options_supported = False  # usage always comes in message_delta

    def __repr__(self) -> str:
        return f"AnthropicMessages(model_name={self.model_name!r}, base_url={self.base_url!r})"

    async def _attempt_chat(
        self, body: dict[str, Any], key: str, client: HTTPPool
    ) -> AsyncIterator[Chunk]:
        request = to_messages_request(body)
        response = await client.post("messages", json=request, headers=_headers(key))
        self._check_overloaded(response)
        self._check_status(response, key, sent_stream_options=False)
        yield to_chat_completion(self._decode_message(response))

    async def _attempt_stream(
        self,
        messages: MessageList,
        tools: list[dict[str, Any]] | None,
        kwargs: dict[str, Any],
        resumer: StreamResumer,
        key: str,
        client: HTTPPool,
    ) -> AsyncIterator[Chunk]:
        request = to_messages_request(self._body(messages, tools, kwargs, stream=True))
        resumer.new_attempt()
        stream = client.stream("POST", "messages", json=request, headers=_headers(key))
        async with stream as response:
            if not response.is_success:
                await response.aread()
                self._check_overloaded(response)
                self._check_status(response, key, sent_stream_options=False)
            async for chunk in self._read_events(response):
                kept = resumer.filter(chunk)
                if kept is not None:
                    yield kept

    async def _read_events(self, response: httpx.Response) -> AsyncIterator[Chunk]:
        translator = StreamTranslator()
        events = iter_sse_bytes(body_bytes(response))
        async for event in events:
            try:
                data = json.loads(event.data)
            except json.JSONDecodeError:
                self._skip_malformed(event.data)
                continue
            if not isinstance(data, dict):
                self._skip_malformed(event.data)
                continue
            if data.get("type") == "error" or event.event == "error":
                self._raise_event_error(data)
            for chunk in translator.feed(event.event or "", data):
                yield chunk
            if translator.finished:
                await read_to_end(events)  # so the connection is reused
                return
        raise RetryableFailure("stream ended before message_stop")

    def _check_overloaded(self, response: httpx.Response) -> None:
        if response.status_code == _OVERLOADED:
            raise RetryableFailure(f"HTTP {_OVERLOADED}: overloaded", status=_OVERLOADED)

    def _decode_message(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise LLMResponseError(
                f"{self.model_name}: the answer is not JSON: {response.text[:200]!r}",
                model=self.model_name,
                status_code=response.status_code,
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise LLMResponseError(
                f"{self.model_name}: not a Messages API answer: {str(data)[:200]}",
                model=self.model_name,
                status_code=response.status_code,
            )
        return data

    def _raise_event_error(self, data: dict[str, Any]) -> None:
        error = data.get("error") or {}
        kind = str(error.get("type", "")) if isinstance(error, dict) else ""
        message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        if kind in _RETRYABLE_STREAM_ERRORS:
            raise RetryableFailure(f"error in stream: {kind}: {message}")
        raise LLMResponseError(
            f"{self.model_name}: the server reported an error mid-stream: {kind}: {message}",
            model=self.model_name,
        )


def _headers(key: str) -> dict[str, str]:
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if key:
        headers["x-api-key"] = key
    return headers
