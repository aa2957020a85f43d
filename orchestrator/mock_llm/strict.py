"""Strict mode: the scripted model checks each request's messages the way llama.cpp's
OpenAI-compatible servers (llama-server, llama-cpp-python) do, and refuses what they refuse.

Those servers render the messages through the model's chat template, so a message the
template cannot render fails the request with HTTP 500 (not 400): most visibly an
assistant message that has `tool_calls` and `content: null`. With `"strict": true` in
the script the scripted model answers such requests the same way:

    500 {"error": {"message": "...", "type": "internal_server_error", "code": null}}

so a client that retries every 500 (the bug in issue 10) shows up in tests. The message
names the offending message index and the rule it broke.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["STRICT_STATUS", "strict_error_body", "strict_problem"]

STRICT_STATUS = 500
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_PART_TYPES = frozenset({"text", "image_url", "input_audio"})


def strict_error_body(problem: str) -> dict[str, Any]:
    """The error body llama-cpp-python sends for a request its template rejects."""
    return {
        "error": {
            "message": f"Invalid request: {problem}",
            "type": "internal_server_error",
            "param": None,
            "code": None,
        }
    }


def strict_problem(body: Mapping[str, Any]) -> str | None:
    """What a strict server would refuse in this request (None: nothing)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    pending: set[str] = set()  # tool_call ids still waiting for their tool message
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"messages[{index}] is not an object"
        problem = _message_problem(message, pending)
        if problem is not None:
            return f"messages[{index}] ({message.get('role')}): {problem}"
    return None


def _message_problem(message: Mapping[str, Any], pending: set[str]) -> str | None:
    role = message.get("role")
    if role not in _ROLES:
        return f"unknown role {role!r}"
    content = message.get("content")
    if role == "tool":
        return _tool_problem(message, content, pending)
    if role == "assistant" and message.get("tool_calls"):
        if not isinstance(content, str):
            return "an assistant message with tool_calls must have string content, not null"
        return _tool_calls_problem(message["tool_calls"], pending)
    if "tool_calls" in message and message["tool_calls"] is not None and role != "assistant":
        return "only assistant messages may carry tool_calls"
    return _content_problem(content)


def _content_problem(content: Any) -> str | None:
    if isinstance(content, str):
        return None
    if content is None:
        return "content must be a string or a list of parts, not null"
    if not isinstance(content, list):
        return f"content must be a string or a list of parts, not {type(content).__name__}"
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") not in _PART_TYPES:
            return f"unsupported content part {part!r}"[:200]
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return "a text part needs a string `text`"
    return None


def _tool_calls_problem(tool_calls: Any, pending: set[str]) -> str | None:
    if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, str):
        return "tool_calls must be a list"
    for call in tool_calls:
        if not isinstance(call, Mapping) or not isinstance(call.get("id"), str):
            return "every tool call needs a string id"
        function = call.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            return "every tool call needs function.name"
        if not isinstance(function.get("arguments"), str):
            return "function.arguments must be a JSON string"
        pending.add(call["id"])
    return None


def _tool_problem(message: Mapping[str, Any], content: Any, pending: set[str]) -> str | None:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in pending:
        return f"tool_call_id {call_id!r} answers no earlier assistant tool call"
    pending.discard(call_id)
    if not isinstance(content, str):
        return "tool content must be a string"
    return None
