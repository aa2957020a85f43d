"""The LLM port: a chat-completions model, speaking the OpenAI wire format as JSON dicts,
and the one assembler of what it returns (`ChunkAccumulator`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from orchestrator.events import MessageList

__all__ = ["ChunkAccumulator", "LLMInterface"]


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


class ChunkAccumulator:
    """Assembles what an `LLMInterface` returns into the message it spells: the
    chat.completion.chunk dicts of `chat_stream` (`add`), or one chat.completion (`add_completion`).

    Content and reasoning are concatenated per choice; tool calls are assembled by their
    `index`. A piece without an index joins the call with its `id`; a piece with a new id
    (or the first piece) starts a call; any other piece continues the last call. A
    function name sent in pieces is joined, and a piece repeating the whole name (some
    servers do) adds nothing. The finish reason and the usage are kept. Read `message()`,
    `content()`, `tool_calls()` or `completion()` at any point.

    Both the ReAct loop and `orchestrator.llm` assemble with this one class.
    """

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceState] = {}
        self.usage: dict[str, Any] | None = None
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None

    def add(self, chunk: dict[str, Any]) -> list[tuple[int, str]]:
        """Fold one chunk in. Returns the tool-call argument text it added to choice 0,
        as `(tool call index, text)` pairs (what the loop streams as argument deltas)."""
        self._note(chunk)
        added: list[tuple[int, str]] = []
        for position, choice in enumerate(chunk.get("choices") or []):
            if isinstance(choice, dict):
                index = choice.get("index", position)
                deltas = self._choice(index).add(choice.get("delta") or choice.get("message"))
                self._choice(index).finish(choice.get("finish_reason"))
                if index == 0:
                    added.extend(deltas)
        return added

    def add_completion(self, response: dict[str, Any]) -> None:
        """Take a whole (non-streamed) chat.completion. Its tool calls are numbered by
        position; arguments given as a JSON object rather than text are serialised."""
        self._note(response)
        for position, choice in enumerate(response.get("choices") or []):
            if not isinstance(choice, dict):
                continue
            state = self._choice(choice.get("index", position))
            message = choice.get("message") or {}
            calls = message.get("tool_calls") or []
            state.add({k: v for k, v in message.items() if k != "tool_calls"})
            for number, call in enumerate(calls):
                if isinstance(call, dict):
                    state.add_tool_call({**call, "index": number})
            state.finish(choice.get("finish_reason"))

    def content(self, index: int = 0) -> str:
        """The text of choice `index` so far ("" when there is none)."""
        state = self._choices.get(index)
        return state.content if state else ""

    def tool_calls(self, index: int = 0) -> dict[int, dict[str, Any]]:
        """The tool calls of choice `index` so far, by call index (OpenAI shape; ids
        and names may still be empty)."""
        state = self._choices.get(index)
        return dict(state.tool_calls) if state else {}

    def message(self, index: int = 0) -> dict[str, Any]:
        """The assistant message for choice `index` (OpenAI message shape)."""
        return self._choices.get(index, _ChoiceState()).message()

    def finish_reason(self, index: int = 0) -> str | None:
        state = self._choices.get(index)
        return state.finish_reason if state else None

    def completion(self) -> dict[str, Any]:
        """Everything assembled, shaped like a non-streamed chat.completion."""
        choices = [
            {"index": index, "message": state.message(), "finish_reason": state.finish_reason}
            for index, state in sorted(self._choices.items())
        ]
        return {
            "id": self.id or "",
            "object": "chat.completion",
            "created": self.created or 0,
            "model": self.model or "",
            "choices": choices,
            "usage": self.usage,
        }

    def _note(self, body: dict[str, Any]) -> None:
        self.id = self.id or body.get("id")
        self.model = self.model or body.get("model")
        self.created = self.created or body.get("created")
        usage = body.get("usage")
        if isinstance(usage, dict) and usage:
            self.usage = usage

    def _choice(self, index: int) -> _ChoiceState:
        return self._choices.setdefault(index, _ChoiceState())


class _ChoiceState:
    def __init__(self) -> None:
        self.role = "assistant"
        self.content = ""
        self.other_text: dict[str, list[str]] = {}  # reasoning_content, ...
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def finish(self, reason: Any) -> None:
        self.finish_reason = reason or self.finish_reason

    def add(self, delta: Any) -> list[tuple[int, str]]:
        added: list[tuple[int, str]] = []
        if not isinstance(delta, dict):
            return added
        for name, value in delta.items():
            if name == "role" and value:
                self.role = value
            elif name == "tool_calls" and isinstance(value, list):
                for piece in value:
                    if isinstance(piece, dict):
                        added.extend(self.add_tool_call(piece))
            elif name == "content" and isinstance(value, str):
                self.content += value
            elif isinstance(value, str):
                self.other_text.setdefault(name, []).append(value)
        return added

    def add_tool_call(self, piece: dict[str, Any]) -> list[tuple[int, str]]:
        index = self._tool_call_index(piece)
        call = self.tool_calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if piece.get("id"):
            call["id"] = str(piece["id"])
        if piece.get("type"):
            call["type"] = piece["type"]
        function = piece.get("function") or {}
        name = str(function.get("name") or "")
        # Most servers send the name once; some repeat the whole name in every piece.
        if name and name != call["function"]["name"]:
            call["function"]["name"] += name
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        if not arguments:
            return []
        call["function"]["arguments"] += arguments
        return [(index, arguments)]

    def _tool_call_index(self, piece: dict[str, Any]) -> int:
        index = piece.get("index")
        if isinstance(index, int):
            return index
        for known, call in self.tool_calls.items():
            if piece.get("id") and call["id"] == piece["id"]:
                return known
        if piece.get("id") or not self.tool_calls:
            return len(self.tool_calls)
        return max(self.tool_calls)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content or None}
        for name, pieces in self.other_text.items():
            message[name] = "".join(pieces)
        if self.tool_calls:
            message["tool_calls"] = [call for _, call in sorted(self.tool_calls.items())]
        return message
