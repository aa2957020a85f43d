"""Working with chat.completion.chunk streams: resuming one after a retry, and assembling
the chunks into the message they spell.
"""

from __future__ import annotations

from typing import Any

_FLAG_FIELDS = ("id", "type")


class StreamResumer:
    """Keeps a retried stream from repeating what the consumer already received.

    It remembers how much text was delivered per choice and field (`content`,
    `reasoning_content`, ...) and per tool-call index (`function.arguments`), and whether
    a role, tool-call id/name, finish reason or usage went out. On the retried stream it
    counts the text as it arrives and trims each delta until the stream has passed the
    delivered prefix; chunks left with nothing new are dropped.

    This is exact against a deterministic server (the scripted model): the reassembled
    content equals the scripted content, once. With a real, sampling model the retried
    answer may differ from the first one, so the continuation is trimmed by length only,
    a best effort that can splice two different answers. That is why the runtime records
    the assembled message of a turn, never the chunks, as the source of truth.
    """

    def __init__(self) -> None:
        self._delivered: dict[tuple[Any, ...], int] = {}
        self._seen: dict[tuple[Any, ...], int] = {}
        self._flags_before: set[tuple[Any, ...]] = set()
        self._flags_now: set[tuple[Any, ...]] = set()
        self.attempt = 0

    def new_attempt(self) -> None:
        """A new response stream starts; what went out before must not go out again."""
        self.attempt += 1
        self._seen = {}
        self._flags_before |= self._flags_now
        self._flags_now = set()

    def filter(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk with already-delivered parts removed (in place); None if nothing is left."""
        trimmed = False
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for position, choice in enumerate(choices):
                if isinstance(choice, dict):
                    trimmed |= self._filter_choice(choice, choice.get("index", position))
        if chunk.get("usage") is not None:
            trimmed |= self._drop_if_repeated(chunk, "usage", ("usage",))
        if trimmed and not _has_news(chunk):
            return None
        return chunk

    def _filter_choice(self, choice: dict[str, Any], index: Any) -> bool:
        trimmed = False
        if choice.get("finish_reason") is not None:
            trimmed |= self._drop_if_repeated(choice, "finish_reason", ("finish", index))
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return trimmed
        for name, value in list(delta.items()):
            if name == "role":
                trimmed |= self._drop_if_repeated(delta, "role", ("role", index))
            elif name == "tool_calls" and isinstance(value, list):
                trimmed |= self._filter_tool_calls(value, index)
            elif isinstance(value, str):
                trimmed |= self._trim(delta, name, (name, index))
        return trimmed

    def _filter_tool_calls(self, tool_calls: list[Any], choice: Any) -> bool:
        trimmed = False
        for position, call in enumerate(tool_calls):
            if not isinstance(call, dict):
                continue
            index = call.get("index", position)
            for name in _FLAG_FIELDS:
                if call.get(name) is not None:
                    trimmed |= self._drop_if_repeated(call, name, (name, choice, index))
            function = call.get("function")
            if isinstance(function, dict):
                if function.get("name"):
                    trimmed |= self._drop_if_repeated(function, "name", ("name", choice, index))
                if isinstance(function.get("arguments"), str):
                    trimmed |= self._trim(function, "arguments", ("args", choice, index))
        return trimmed

    def _drop_if_repeated(self, holder: dict[str, Any], name: str, flag: tuple[Any, ...]) -> bool:
        self._flags_now.add(flag)
        if flag not in self._flags_before:
            return False
        if name in ("finish_reason", "usage"):
            holder[name] = None  # these fields are always present, null when empty
        else:
            del holder[name]
        return True

    def _trim(self, holder: dict[str, Any], name: str, counter: tuple[Any, ...]) -> bool:
        text: str = holder[name]
        seen = self._seen.get(counter, 0)
        delivered = self._delivered.get(counter, 0)
        self._seen[counter] = seen + len(text)
        self._delivered[counter] = max(delivered, seen + len(text))
        skip = max(0, delivered - seen)
        if skip == 0:
            return False
        holder[name] = text[skip:]
        return True


def _has_news(chunk: dict[str, Any]) -> bool:
    if chunk.get("usage") is not None:
        return True
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    return any(_choice_has_news(choice) for choice in choices if isinstance(choice, dict))


def _choice_has_news(choice: dict[str, Any]) -> bool:
    if choice.get("finish_reason") is not None:
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return any(_value_has_news(name, value) for name, value in delta.items())


def _value_has_news(name: str, value: Any) -> bool:
    if name == "tool_calls" and isinstance(value, list):
        return any(_tool_call_has_news(call) for call in value if isinstance(call, dict))
    return value not in (None, "")


def _tool_call_has_news(call: dict[str, Any]) -> bool:
    if call.get("id") or call.get("type"):
        return True
    function = call.get("function")
    return isinstance(function, dict) and any(function.get(k) for k in ("name", "arguments"))


class ChunkAccumulator:
    """Assembles chat.completion.chunk dicts into the message they spell.

    Content and reasoning are concatenated; tool calls are assembled by `index` (a piece
    without an index joins the call with its `id`, or the last call); the finish reason and
    the usage are kept. Feed every chunk to `add`, then read `message()` or `completion()`.
    """

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceState] = {}
        self.usage: dict[str, Any] | None = None
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        self.created = self.created or chunk.get("created")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for position, choice in enumerate(chunk.get("choices") or []):
            if isinstance(choice, dict):
                index = choice.get("index", position)
                self._choices.setdefault(index, _ChoiceState()).add(choice)

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


class _ChoiceState:
    def __init__(self) -> None:
        self.role = "assistant"
        self.text: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        delta = choice.get("delta") or choice.get("message") or {}
        for name, value in delta.items():
            if name == "role" and value:
                self.role = value
            elif name == "tool_calls" and isinstance(value, list):
                for call in value:
                    if isinstance(call, dict):
                        self._add_tool_call(call)
            elif isinstance(value, str):
                self.text.setdefault(name, []).append(value)

    def _add_tool_call(self, piece: dict[str, Any]) -> None:
        index = self._tool_call_index(piece)
        call = self.tool_calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if piece.get("id"):
            call["id"] = piece["id"]
        if piece.get("type"):
            call["type"] = piece["type"]
        function = piece.get("function") or {}
        name = function.get("name") or ""
        # Most servers send the name once; some repeat the whole name in every piece.
        if name and name != call["function"]["name"]:
            call["function"]["name"] += name
        call["function"]["arguments"] += function.get("arguments") or ""

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
        content = "".join(self.text.get("content", [])) or None
        message: dict[str, Any] = {"role": self.role, "content": content}
        for name, pieces in self.text.items():
            if name != "content":
                message[name] = "".join(pieces)
        if self.tool_calls:
            message["tool_calls"] = [call for _, call in sorted(self.tool_calls.items())]
        return message
