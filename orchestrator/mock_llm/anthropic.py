"""The scripted model speaking the Anthropic Messages API (`POST /v1/messages`).

The request is read into the same `ChatRequest` the OpenAI route builds (system prompt,
`tool_result` blocks as `tool` messages, `tool_use` blocks as tool calls), so every match
condition, placeholder, fault and latency of a script works on both wire formats. The
answer is a Messages API `message`, or its SSE events (message_start, content_block_*,
message_delta, message_stop). The key comes from `x-api-key` (or, as newer SDKs send
it, `Authorization: Bearer`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.mock_llm.chat import MALFORMED_LINE
from orchestrator.mock_llm.reply import ARGUMENT_PIECE_CHARS, RenderedReply, render, split_words
from orchestrator.mock_llm.request import ChatRequest, InvalidRequest, Message, bearer_key
from orchestrator.mock_llm.script import Fault, Latency, describe_validation_error
from orchestrator.mock_llm.state import Decision, ScriptState
from orchestrator.mock_llm.wire import Request, ResponseWriter

JSON = dict[str, Any]
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_HTTP_FAULTS: dict[str, tuple[int, str]] = {
    "http_429": (429, "rate_limit_error"),
    "http_500": (500, "api_error"),
    "http_503": (529, "overloaded_error"),
    "http_400": (400, "invalid_request_error"),
    "http_401": (401, "authentication_error"),
    "http_403": (403, "permission_error"),
}
_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Turn(_Loose):
    role: str
    content: str | list[dict[str, Any]]


class _Tool(_Loose):
    name: str


class _Body(_Loose):
    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[_Turn] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    tools: list[_Tool] | None = None


def error_body(message: str, type_: str) -> JSON:
    """An Anthropic-style error object."""
    return {"type": "error", "error": {"type": type_, "message": message}}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _messages(body: _Body) -> list[Message]:
    messages: list[Message] = []
    system = _text(body.system) if body.system is not None else ""
    if system:
        messages.append(Message("system", system))
    for turn in body.messages:
        if isinstance(turn.content, str):
            messages.append(Message(turn.role, turn.content))
            continue
        text: list[str] = []
        for block in turn.content:
            if block.get("type") == "tool_result":
                messages.append(Message("tool", _text(block.get("content"))))
            elif block.get("type") == "text":
                text.append(str(block.get("text", "")))
        if text or turn.role == "assistant":
            messages.append(Message(turn.role, "".join(text)))
    return messages


def parse_messages_request(raw: bytes, *, api_key: str | None = None) -> ChatRequest:
    """A Messages API body as the `ChatRequest` the script is matched against."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", "invalid_request")
    try:
        body = _Body.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc), "invalid_request") from exc
    if body.messages[0].role != "user":
        raise InvalidRequest(
            "messages: the first message must use the user role", "invalid_request"
        )
    return ChatRequest(
        body=data,
        messages=tuple(_messages(body)),
        tool_names=frozenset(tool.name for tool in body.tools or ()),
        model=body.model,
        stream=body.stream,
        include_usage=True,
        api_key=api_key,
    )


def _input(arguments: str) -> JSON:
    try:
        decoded = json.loads(arguments)
    except json.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def message(reply: RenderedReply) -> JSON:
    """The non-streamed Messages API answer."""
    content: list[JSON] = []
    if reply.content:
        content.append({"type": "text", "text": reply.content})
    for call in reply.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
        )
    return {
        "id": reply.completion_id.replace("chatcmpl-", "msg_"),
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": _STOP_REASONS.get(reply.finish_reason, reply.finish_reason),
        "stop_sequence": None,
        "usage": _usage(reply),
    }


def _usage(reply: RenderedReply) -> JSON:
    return {
        "input_tokens": reply.usage["prompt_tokens"],
        "output_tokens": reply.usage["completion_tokens"],
    }


def _event(name: str, payload: JSON) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def events(reply: RenderedReply) -> list[bytes]:
    """The SSE events of the streamed answer, in order."""
    start = message(reply) | {"content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": reply.usage["prompt_tokens"], "output_tokens": 1}
    out = [_event("message_start", {"type": "message_start", "message": start})]
    index = 0
    if reply.content:
        out.append(_block_start(index, {"type": "text", "text": ""}))
        for piece in split_words(reply.content):
            out.append(_delta(index, {"type": "text_delta", "text": piece}))
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for call in reply.tool_calls:
        out.append(
            _block_start(index, {"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
        )
        args = call.arguments
        for at in range(0, len(args), ARGUMENT_PIECE_CHARS):
            piece = args[at : at + ARGUMENT_PIECE_CHARS]
            out.append(_delta(index, {"type": "input_json_delta", "partial_json": piece}))
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    stop = _STOP_REASONS.get(reply.finish_reason, reply.finish_reason)
    out.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": reply.usage["completion_tokens"]},
            },
        )
    )
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out


def _block_start(index: int, block: JSON) -> bytes:
    payload = {"type": "content_block_start", "index": index, "content_block": block}
    return _event("content_block_start", payload)


def _delta(index: int, delta: JSON) -> bytes:
    return _event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


async def _stream(
    out: ResponseWriter, sse: list[bytes], latency: Latency, fault: Fault | None
) -> None:
    await out.start_chunked(200, _SSE_HEADERS)
    cut = fault.after_chunks if fault is not None else -1
    for index, event in enumerate(sse):
        await asyncio.sleep((latency.first_token_ms if index == 0 else latency.token_ms) / 1000)
        if index == cut and fault is not None:
            if fault.type == "drop_mid_stream":
                out.close()
                return
            if fault.type == "malformed_chunk":
                await out.send_chunk(MALFORMED_LINE)
        await out.send_chunk(event)
    await out.end_chunked()


async def _send_http_fault(out: ResponseWriter, fault: Fault) -> None:
    if fault.after_ms:
        await asyncio.sleep(fault.after_ms / 1000)
    status, type_ = _HTTP_FAULTS[fault.type]
    headers: dict[str, str] = {}
    if fault.type == "http_429":
        retry_after = fault.retry_after
        headers["Retry-After"] = str(int(retry_after) if retry_after.is_integer() else retry_after)
    await out.send_json(status, error_body(f"scripted fault {fault.type}", type_), headers)


async def answer(out: ResponseWriter, request: ChatRequest, decision: Decision, model: str) -> None:
    """Send the scripted answer (or failure) in the Messages API format."""
    fault = decision.fault
    if fault is not None and fault.type in _HTTP_FAULTS:
        await _send_http_fault(out, fault)
        return
    if fault is not None and fault.type == "stall":
        await asyncio.sleep(fault.delay_s)
        fault = None
    reply = render(decision.reply, request, request.model or model, decision.groups)
    if request.stream:
        await _stream(out, events(reply), decision.latency, fault)
        return
    await asyncio.sleep(decision.latency.first_token_ms / 1000)
    body = json.dumps(message(reply)).encode()
    headers = {"Content-Type": "application/json"}
    if fault is not None and fault.type == "drop_mid_stream":
        await out.send(200, body[: len(body) // 2], headers, declared_length=len(body))
        out.close()
    elif fault is not None and fault.type == "malformed_chunk":
        await out.send(200, body[: len(body) // 2], headers)
    else:
        await out.send(200, body, headers)


async def handle_messages(state: ScriptState, request: Request, out: ResponseWriter) -> None:
    """The `/v1/messages` route."""
    try:
        key = request.headers.get("x-api-key") or bearer_key(request.headers.get("authorization"))
        chat = parse_messages_request(request.body, api_key=key)
    except InvalidRequest as exc:
        await out.send_json(400, error_body(str(exc), "invalid_request_error"))
        return
    await answer(out, chat, state.decide(chat), state.script.model)
