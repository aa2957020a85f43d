"""A chat-completions request as the scripted model sees it: validated, with the views
the match conditions and placeholders need.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.mock_llm.script import describe_validation_error


class InvalidRequest(Exception):
    """The request body is not a chat-completions request (answered with a 400)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Message(_Loose):
    role: str
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(_Loose):
    include_usage: bool = False


class _Function(_Loose):
    name: str


class _Tool(_Loose):
    function: _Function


class _Body(_Loose):
    messages: list[_Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    tools: list[_Tool] | None = None


@dataclass(frozen=True)
class Message:
    role: str
    text: str


@dataclass(frozen=True)
class ChatRequest:
    """A validated request; `body` is the JSON received, kept for the request log."""

    body: dict[str, Any]
    messages: tuple[Message, ...]
    tool_names: frozenset[str]
    model: str | None
    stream: bool
    include_usage: bool
    api_key: str | None = None  # the bearer key of the Authorization header

    def last(self, role: str) -> Message | None:
        return next((m for m in reversed(self.messages) if m.role == role), None)

    def first(self, role: str) -> Message | None:
        return next((m for m in self.messages if m.role == role), None)

    def tool_results_since_user(self) -> list[str]:
        """Contents of the `tool` messages after the last `user` message, in order."""
        results: list[str] = []
        for message in reversed(self.messages):
            if message.role == "user":
                break
            if message.role == "tool":
                results.append(message.text)
        return results[::-1]

    def fingerprint(self) -> str:
        """A short stable hash of the messages: the same conversation, the same ids."""
        canonical = json.dumps(self.body["messages"], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (None without one)."""
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def parse_chat_request(raw: bytes, *, api_key: str | None = None) -> ChatRequest:
    """Decode and validate a request body, raising `InvalidRequest` with a clear message.
    `api_key` is the request's bearer key, for the `api_key` match condition."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", "invalid_request")
    if "messages" not in data:
        raise InvalidRequest("'messages' is a required property", "missing_messages")
    try:
        body = _Body.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc), "invalid_request") from exc
    return ChatRequest(
        body=data,
        messages=tuple(Message(m.role, _text_of(m.content)) for m in body.messages),
        tool_names=frozenset(tool.function.name for tool in body.tools or ()),
        model=body.model,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        api_key=api_key,
    )
