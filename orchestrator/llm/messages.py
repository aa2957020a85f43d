"""The messages as sent on the wire: what every OpenAI-compatible server accepts.

OpenAI allows an assistant message with `tool_calls` and `content: null`; llama.cpp's
servers (llama-server, llama-cpp-python) render messages through a chat template and
answer HTTP 500 to it. An empty string means the same to every server, so that is
what goes out. Histories are only copied where something changes.
"""

from __future__ import annotations

from typing import Any

from orchestrator.events import MessageList

__all__ = ["wire_messages"]


def wire_messages(messages: MessageList) -> MessageList:
    """`messages` with every `content: null` beside `tool_calls` sent as `""`."""
    if not any(_null_beside_tool_calls(m) for m in messages):
        return messages
    return [{**m, "content": ""} if _null_beside_tool_calls(m) else m for m in messages]


def _null_beside_tool_calls(message: dict[str, Any]) -> bool:
    return (
        message.get("role") == "assistant"
        and bool(message.get("tool_calls"))
        and message.get("content") is None
    )
