"""`Message` and `Conversation`: lm-deluge's prompt objects, convertible to and from the
OpenAI message list that `llm_chat` history uses.

A message is a role and a list of parts: `Text`, `ToolCall` (the model asks for a tool)
and `ToolResult` (what the tool returned). A `tool` message may hold several results;
in the OpenAI list each result is a message of its own.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orchestrator.errors import ConfigError

Role = Literal["system", "user", "assistant", "tool"]
OpenAIMessage = dict[str, Any]


@dataclass
class Text:
    text: str
    type: Literal["text"] = "text"


@dataclass
class ToolCall:
    """A call the model made: `arguments` is the decoded JSON object."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    type: Literal["tool_call"] = "tool_call"


@dataclass
class ToolResult:
    tool_call_id: str
    result: str
    type: Literal["tool_result"] = "tool_result"


Part = Text | ToolCall | ToolResult


@dataclass
class Message:
    """One message of a conversation: a role and its parts."""

    role: Role
    parts: list[Part] = field(default_factory=list)

    # -- constructors (lm-deluge's names) ---------------------------------------------

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", [Text(text)])

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", [Text(text)])

    @classmethod
    def ai(cls, text: str | None = None, tool_calls: Iterable[ToolCall] = ()) -> Message:
        """An assistant message: text, tool calls, or both."""
        parts: list[Part] = [Text(text)] if text else []
        parts.extend(tool_calls)
        return cls("assistant", parts)

    assistant = ai

    @classmethod
    def tool(cls, results: Iterable[ToolResult]) -> Message:
        return cls("tool", list(results))

    # -- views ----------------------------------------------------------------------------

    @property
    def completion(self) -> str | None:
        """The message's text (its text parts joined), or None when it has none."""
        texts = [part.text for part in self.parts if isinstance(part, Text)]
        return "".join(texts) if texts else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [part for part in self.parts if isinstance(part, ToolCall)]

    @property
    def tool_results(self) -> list[ToolResult]:
        return [part for part in self.parts if isinstance(part, ToolResult)]

    def add_text(self, text: str) -> Message:
        self.parts.append(Text(text))
        return self

    # -- OpenAI wire format ---------------------------------------------------------------

    def to_openai(self) -> list[OpenAIMessage]:
        """This message as OpenAI chat messages (a tool message: one per result)."""
        if self.role == "tool":
            return [
                {"role": "tool", "tool_call_id": r.tool_call_id, "content": r.result}
                for r in self.tool_results
            ]
        message: OpenAIMessage = {"role": self.role, "content": self.completion}
        calls = self.tool_calls
        if calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in calls
            ]
        elif message["content"] is None:
            message["content"] = ""
        return [message]

    @classmethod
    def from_openai(cls, message: Mapping[str, Any]) -> Message:
        """One OpenAI chat message (a `tool` message becomes a one-result tool message)."""
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise ConfigError(f"not a chat message role: {role!r}")
        text = _text_of(message.get("content"))
        if role == "tool":
            return cls("tool", [ToolResult(str(message.get("tool_call_id") or ""), text or "")])
        parts: list[Part] = [Text(text)] if text else []
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            parts.append(
                ToolCall(
                    id=str(call.get("id") or ""),
                    name=str(function.get("name") or ""),
                    arguments=_decode_arguments(function.get("arguments")),
                )
            )
        return cls(role, parts)


class _Answer(Protocol):
    """What `with_response` reads of an `APIResponse`."""

    @property
    def content(self) -> Message | None: ...
    @property
    def model_internal(self) -> str | None: ...


class Conversation:
    """A list of messages plus the model that answered last (`model_used`).

    The builder methods append and return the conversation itself, so both
    `conv.user("hi")` and `conv = conv.user("hi")` work.
    """

    def __init__(self, messages: Iterable[Message] = (), *, model_used: str | None = None) -> None:
        self.messages: list[Message] = list(messages)
        self.model_used = model_used

    # lm-deluge's classmethod spellings: Conversation.system("..."), Conversation.user("...")
    # are served by the instance methods on a fresh conversation.

    def system(self, text: str) -> Conversation:
        return self.add(Message.system(text))

    def user(self, text: str) -> Conversation:
        return self.add(Message.user(text))

    def ai(self, text: str) -> Conversation:
        return self.add(Message.ai(text))

    def add(self, message: Message) -> Conversation:
        self.messages.append(message)
        return self

    def with_message(self, message: Message, *, model_used: str | None = None) -> Conversation:
        self.messages.append(message)
        if model_used:
            self.model_used = model_used
        return self

    def with_response(self, response: _Answer) -> Conversation:
        """Add the response's message (when it has one) and record the model that
        produced it, which `prefer_model="last"` then prefers."""
        if response.content is not None:
            self.messages.append(response.content)
        self.model_used = response.model_internal
        return self

    def with_tool_result(self, tool_call_id: str, result: str) -> Conversation:
        """Add a tool result; parallel results join the tool message that ends the
        conversation."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "tool":
            last.parts.append(ToolResult(tool_call_id, result))
        else:
            self.messages.append(Message.tool([ToolResult(tool_call_id, result)]))
        return self

    def with_tool_results(self, results: Iterable[tuple[str, str]]) -> Conversation:
        for tool_call_id, result in results:
            self.with_tool_result(tool_call_id, result)
        return self

    def copy(self) -> Conversation:
        return Conversation(copy.deepcopy(self.messages), model_used=self.model_used)

    def to_openai(self) -> list[OpenAIMessage]:
        """The OpenAI message list (what `llm_chat(history=...)` takes)."""
        return [item for message in self.messages for item in message.to_openai()]

    @classmethod
    def from_openai_chat(cls, messages: Iterable[Mapping[str, Any]]) -> Conversation:
        """lm-deluge's name for `from_openai`."""
        return cls.from_openai(messages)

    @classmethod
    def from_openai(
        cls, messages: Iterable[Mapping[str, Any]], *, model_used: str | None = None
    ) -> Conversation:
        """A conversation from an OpenAI message list; consecutive tool results join one
        tool message."""
        conversation = cls(model_used=model_used)
        for raw in messages:
            message = Message.from_openai(raw)
            last = conversation.messages[-1] if conversation.messages else None
            if message.role == "tool" and last is not None and last.role == "tool":
                last.parts.extend(message.parts)
            else:
                conversation.messages.append(message)
        return conversation

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        return f"Conversation({len(self.messages)} messages, model_used={self.model_used!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Conversation):
            return NotImplemented
        return self.messages == other.messages and self.model_used == other.model_used

    __hash__ = None  # type: ignore[assignment]


Prompt = str | Conversation | Message


def as_conversation(prompt: Prompt) -> Conversation:
    """A prompt given as text, a message or a conversation, as a conversation."""
    if isinstance(prompt, Conversation):
        return prompt
    if isinstance(prompt, Message):
        return Conversation([prompt])
    return Conversation().user(prompt)


def _text_of(content: Any) -> str | None:
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def _decode_arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {"_raw": str(raw)}
    return decoded if isinstance(decoded, dict) else {"_value": decoded}
