"""Answering one chat-completions request: faults, latency, and the SSE stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from orchestrator.mock_llm.reply import RenderedReply, render
from orchestrator.mock_llm.request import ChatRequest
from orchestrator.mock_llm.script import Fault, Latency
from orchestrator.mock_llm.state import Decision
from orchestrator.mock_llm.wire import ResponseWriter

MALFORMED_LINE = b'data: {"this is not": json\n\n'
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_HTTP_FAULTS: dict[str, tuple[int, str, str]] = {
    "http_429": (429, "rate_limit_exceeded", "requests"),
    "http_500": (500, "internal_error", "server_error"),
    "http_503": (503, "overloaded", "server_error"),
    "http_400": (400, "invalid_request", "invalid_request_error"),
    "http_401": (401, "invalid_api_key", "authentication_error"),
    "http_403": (403, "permission_denied", "permission_error"),
}


def error_body(message: str, type_: str, code: str) -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": type_, "code": code}}


async def _send_http_fault(out: ResponseWriter, fault: Fault) -> None:
    if fault.after_ms:
        await asyncio.sleep(fault.after_ms / 1000)
    status, code, type_ = _HTTP_FAULTS[fault.type]
    headers: dict[str, str] = {}
    if fault.type == "http_429":
        retry_after = fault.retry_after
        headers["Retry-After"] = str(int(retry_after) if retry_after.is_integer() else retry_after)
    message = f"scripted fault {fault.type}"
    await out.send_json(status, error_body(message, type_, code), headers)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _send_completion(out: ResponseWriter, reply: RenderedReply, fault: Fault | None) -> None:
    body = json.dumps(reply.completion()).encode()
    headers = {"Content-Type": "application/json"}
    if fault is not None and fault.type == "drop_mid_stream":
        await out.send(200, body[: len(body) // 2], headers, declared_length=len(body))
        out.close()
    elif fault is not None and fault.type == "malformed_chunk":
        await out.send(200, body[: len(body) // 2], headers)
    else:
        await out.send(200, body, headers)


async def _fault_at_cut(out: ResponseWriter, fault: Fault | None) -> bool:
    """Apply a stream fault where it is due; True when the stream ends here."""
    if fault is not None and fault.type == "drop_mid_stream":
        out.close()
        return True
    if fault is not None and fault.type == "malformed_chunk":
        await out.send_chunk(MALFORMED_LINE)
    return False


async def _stream(
    out: ResponseWriter, events: list[bytes], latency: Latency, fault: Fault | None
) -> None:
    await out.start_chunked(200, _SSE_HEADERS)
    cut = fault.after_chunks if fault is not None else -1
    for index, event in enumerate(events):
        await asyncio.sleep((latency.first_token_ms if index == 0 else latency.token_ms) / 1000)
        if index == cut and await _fault_at_cut(out, fault):
            return
        await out.send_chunk(event)
    if cut >= len(events) and await _fault_at_cut(out, fault):
        return
    await out.end_chunked(b"data: [DONE]\n\n")


async def answer(out: ResponseWriter, request: ChatRequest, decision: Decision, model: str) -> None:
    """Send the scripted answer (or the scripted failure) for one request."""
    fault = decision.fault
    if fault is not None and fault.type in _HTTP_FAULTS:
        await _send_http_fault(out, fault)
        return
    if fault is not None and fault.type == "stall":
        await asyncio.sleep(fault.delay_s)
        fault = None
    reply = render(decision.reply, request, request.model or model, decision.groups)
    if request.stream:
        events = [_sse(chunk) for chunk in reply.chunks(request.include_usage)]
        await _stream(out, events, decision.latency, fault)
    else:
        await asyncio.sleep(decision.latency.first_token_ms / 1000)
        await _send_completion(out, reply, fault)
