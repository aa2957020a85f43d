"""The small interfaces the runtime talks to. Nothing here imports redis, arq or httpx.

    LLMInterface    a chat-completions model (OpenAICompatible over httpx implements it)
    MemoryStore     SelfReference memory per key (in-process dict, or Redis)
    Checkpointer    where a turn's state is saved between steps (nothing, or Redis)

Events are not a port of their own: a turn is an async generator of outputs, and
whoever drives it (llm_chat in-process, a worker) decides where they go.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from orchestrator.events import MessageList


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


class Experience(BaseModel):
    id: str
    text: str


class MemorySnapshot(BaseModel):
    """Everything SelfReference keeps for one memory key."""

    key: str
    messages: MessageList = Field(default_factory=list)
    experiences: list[Experience] = Field(default_factory=list)
    summary: dict[str, Any] | None = None
    pending_compaction: dict[str, Any] | None = None


@runtime_checkable
class MemoryStore(Protocol):
    """SelfReference memory, one record per key. Writes to one key never touch another."""

    async def load(self, key: str) -> MemorySnapshot:
        """The key's record; an empty one if the key was never written."""
        ...

    async def save_messages(self, key: str, messages: MessageList) -> None: ...

    async def add_experience(self, key: str, text: str) -> Experience:
        """Append a durable experience (ids `exp_N`); an identical text is not added twice."""
        ...

    async def remove_experience(self, key: str, experience_id: str) -> bool: ...

    async def set_summary(self, key: str, summary: dict[str, Any] | None) -> None: ...

    async def set_pending_compaction(self, key: str, compaction: dict[str, Any] | None) -> None: ...


@runtime_checkable
class Checkpointer(Protocol):
    """Saves a turn's state at step boundaries so another process can resume it.

    `save` is called after every completed step (an LLM call, a tool result, a tool batch);
    it must not return before the events yielded so far are durable, or a resumed turn
    would lose them.
    """

    async def save(self, state: Any) -> None: ...
