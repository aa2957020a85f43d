"""Resuming a chat.completion.chunk stream after a retry without repeating anything.

(Assembling chunks into the message they spell is `orchestrator.ports.ChunkAccumulator`,
which the runtime uses too.)
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
