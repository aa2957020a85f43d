"""Turning a scripted `Reply` into OpenAI wire objects: one `chat.completion`, or the
`chat.completion.chunk` sequence of a streamed answer.

Placeholders are replaced with plain string substitution (not `str.format`), so scripts
may contain JSON braces freely.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.mock_llm.request import ChatRequest
from orchestrator.mock_llm.script import Reply

# Tool-call arguments are streamed in pieces this long, like a model emitting tokens.
ARGUMENT_PIECE_CHARS = 8
_WORD = re.compile(r"\s*\S+\s*|\s+")

JSON = dict[str, Any]


@dataclass(frozen=True)
class RenderedToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class RenderedReply:
    """A reply with placeholders filled in, ids assigned and usage counted."""

    completion_id: str
    model: str
    created: int
    content: str | None
    tool_calls: tuple[RenderedToolCall, ...]
    finish_reason: str
    usage: dict[str, int]

    def completion(self) -> JSON:
        """The non-streamed `chat.completion` object."""
        message: JSON = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }

    def chunks(self, include_usage: bool) -> list[JSON]:
        """The `chat.completion.chunk` objects of the streamed answer, in order."""
        deltas: list[JSON] = [{"role": "assistant", "content": ""}]
        deltas.extend({"content": piece} for piece in split_words(self.content or ""))
        for index, call in enumerate(self.tool_calls):
            deltas.extend(_tool_call_deltas(index, call))
        chunks = [self._chunk(delta, None) for delta in deltas]
        chunks.append(self._chunk({}, self.finish_reason))
        if include_usage:
            chunks.append(self._envelope([]) | {"usage": self.usage})
        return chunks

    def _chunk(self, delta: JSON, finish_reason: str | None) -> JSON:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return self._envelope([choice])

    def _envelope(self, choices: list[JSON]) -> JSON:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def split_words(text: str) -> list[str]:
    """Word-sized pieces that join back to exactly `text`."""
    return _WORD.findall(text)


def _tool_call_deltas(index: int, call: RenderedToolCall) -> Iterator[JSON]:
    yield {
        "tool_calls": [
            {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
        ]
    }
    args = call.arguments
    for start in range(0, len(args), ARGUMENT_PIECE_CHARS):
        piece = args[start : start + ARGUMENT_PIECE_CHARS]
        yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


def placeholders(request: ChatRequest, groups: tuple[str, ...]) -> dict[str, str]:
    """The values of `{last_user}`, `{last_tool_result}`, `{tool_results}`, `{regex_N}`."""
    last_user = request.last("user")
    last_tool = request.last("tool")
    values = {
        "{last_user}": last_user.text if last_user else "",
        "{last_tool_result}": last_tool.text if last_tool else "",
        "{tool_results}": "; ".join(request.tool_results_since_user()),
    }
    values.update({f"{{regex_{n}}}": group for n, group in enumerate(groups, start=1)})
    return values


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def _fill_json(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return fill(value, values)
    if isinstance(value, dict):
        return {key: _fill_json(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill_json(item, values) for item in value]
    return value


def _arguments_text(arguments: dict[str, Any] | str, values: dict[str, str]) -> str:
    if isinstance(arguments, str):
        return fill(arguments, values)
    return json.dumps(_fill_json(arguments, values), ensure_ascii=False)


def _count_words(text: str) -> int:
    return len(text.split())


def _usage(reply: Reply, request: ChatRequest, rendered_text: str) -> dict[str, int]:
    prompt = sum(_count_words(m.text) for m in request.messages) + len(request.messages)
    completion = _count_words(rendered_text)
    if reply.usage is not None:
        prompt = reply.usage.prompt_tokens if reply.usage.prompt_tokens is not None else prompt
        if reply.usage.completion_tokens is not None:
            completion = reply.usage.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def render(
    reply: Reply, request: ChatRequest, model: str, groups: tuple[str, ...]
) -> RenderedReply:
    """Fill in `reply` for `request`; ids derive from the request's messages only."""
    values = placeholders(request, groups)
    fingerprint = request.fingerprint()
    content = fill(reply.content, values) if reply.content is not None else None
    calls = tuple(
        RenderedToolCall(
            id=f"call_{fingerprint}_{index}",
            name=spec.name,
            arguments=_arguments_text(spec.arguments, values),
        )
        for index, spec in enumerate(reply.tool_calls)
    )
    default_finish = "tool_calls" if calls else "stop"
    produced = " ".join([content or "", *(call.arguments for call in calls)])
    return RenderedReply(
        completion_id=f"chatcmpl-{fingerprint}",
        model=model,
        created=int(time.time()),
        content=content if content is not None or calls else "",
        tool_calls=calls,
        finish_reason=reply.finish_reason or default_finish,
        usage=_usage(reply, request, produced),
    )
