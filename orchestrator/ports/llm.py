"""The LLM port: a chat-completions model, speaking the OpenAI wire format as JSON dicts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from orchestrator.events import MessageList

__all__ = ["LLMInterface"]


@runtime_checkable
class LLMInterface(Protocol):
    """An OpenAI-compatible chat model.

    Both methods speak the OpenAI wire format as plain JSON dicts: `chat` returns one
    chat.completion object, `chat_stream` yields chat.completion.chunk objects (the last
    one may carry only `usage`). `tools` is a list of OpenAI function-tool definitions.
    """

    model_name: str

    async def chat(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> dict[str, Any]: ...

    def chat_stream(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]: ...
