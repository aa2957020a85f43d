"""Anthropic Messages API <-> OpenAI chat format, as plain JSON dicts.

The rest of the project speaks OpenAI's format (`orchestrator.ports.LLMInterface`);
`AnthropicMessages` translates each request here and each answer back:

- request: system messages -> `system`; assistant `tool_calls` -> `tool_use` blocks;
  `tool` messages -> `tool_result` blocks in a user turn; consecutive same-role turns are
  merged (the API wants them alternating); tools -> `{name, description, input_schema}`.
- answer: `text` blocks -> content, `tool_use` -> `tool_calls`, `stop_reason` ->
  `finish_reason`, `input_tokens`/`output_tokens` -> `prompt_tokens`/`completion_tokens`.
- stream: `StreamTranslator` turns message_start / content_block_start /
  content_block_delta / message_delta / message_stop events into chat.completion.chunk
  dicts that `ChunkAccumulator` assembles like any other.
"""

from __future__ import annotations

import json
from typing import Any

JSON = dict[str, Any]
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
# OpenAI request fields with an Anthropic equivalent (others are dropped).
_PASSED = ("temperature", "top_p", "top_k", "metadata")


def to_messages_request(body: JSON) -> JSON:
    """An OpenAI chat-completions body as a Messages API body."""
    system, turns = _convert_messages(body.get("messages") or [])
    request: JSON = {
        "model": body.get("model"),
        "max_tokens": body.get("max_tokens")
        or body.get("max_completion_tokens")
        or DEFAULT_MAX_TOKENS,
        "messages": turns,
    }
    if system:
        request["system"] = system
    for name in _PASSED:
        if body.get(name) is not None:
            request[name] = body[name]
    if request.get("top_p") == 1.0:
        # top_p 1 changes nothing, and newer Claude models refuse temperature with top_p
        del request["top_p"]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = [_convert_tool(t) for t in body.get("tools") or []]
    if tools:
        request["tools"] = tools
    if body.get("stream"):
        request["stream"] = True
    return request


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content)


def _convert_messages(messages: list[JSON]) -> tuple[str, list[JSON]]:
    system: list[str] = []
    turns: list[JSON] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            system.append(_text(message.get("content")))
            continue
        if role == "tool":
            block: JSON = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or ""),
                "content": _text(message.get("content")),
            }
            _append(turns, "user", [block])
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message))
        else:
            _append(turns, "user", [{"type": "text", "text": _text(message.get("content"))}])
    return "\n\n".join(s for s in system if s), turns


def _assistant_blocks(message: JSON) -> list[JSON]:
    blocks: list[JSON] = []
    text = _text(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "input": _arguments(function.get("arguments")),
            }
        )
    return blocks or [{"type": "text", "text": ""}]


def _arguments(raw: Any) -> JSON:
    if isinstance(raw, dict):
        return raw
    try:
        decoded = json.loads(raw or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _append(turns: list[JSON], role: str, blocks: list[JSON]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _convert_tool(tool: JSON) -> JSON:
    function = tool.get("function") or tool
    return {
        "name": function.get("name"),
        "description": function.get("description") or "",
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }


def to_chat_completion(message: JSON) -> JSON:
    """A Messages API answer as a chat.completion."""
    text: list[str] = []
    calls: list[JSON] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
    reply: JSON = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": 0,
        "model": message.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": to_openai_usage(message.get("usage")),
    }


def finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return _STOP_REASONS.get(str(stop_reason), str(stop_reason))


def to_openai_usage(usage: Any) -> JSON | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class StreamTranslator:
    """Messages API stream events -> chat.completion.chunk dicts (`feed`)."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.input_tokens = 0
        self.output_tokens = 0
        self.finished = False
        self._tool_index: dict[int, int] = {}  # content block index -> tool call index

    def feed(self, event: str, data: JSON) -> list[JSON]:
        kind = data.get("type", event)
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = str(message.get("id", ""))
            self.model = str(message.get("model", ""))
            self._count(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "message_delta":
            self._count(data.get("usage"))
            reason = finish_reason((data.get("delta") or {}).get("stop_reason"))
            return [self._chunk({}, reason)] if reason else []
        if kind == "message_stop":
            self.finished = True
            usage = to_openai_usage(
                {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
            )
            return [self._envelope([]) | {"usage": usage}]
        return []  # ping, content_block_stop, unknown events

    def _count(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.input_tokens = int(usage.get("input_tokens") or self.input_tokens)
            self.output_tokens = int(usage.get("output_tokens") or self.output_tokens)

    def _block_start(self, data: JSON) -> list[JSON]:
        block = data.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        index = len(self._tool_index)
        self._tool_index[int(data.get("index", 0))] = index
        call = {
            "index": index,
            "id": str(block.get("id", "")),
            "type": "function",
            "function": {"name": str(block.get("name", "")), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, data: JSON) -> list[JSON]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            return [self._chunk({"content": str(delta.get("text", ""))})]
        if delta.get("type") == "input_json_delta":
            index = self._tool_index.get(int(data.get("index", 0)), 0)
            piece = {"index": index, "function": {"arguments": str(delta.get("partial_json", ""))}}
            return [self._chunk({"tool_calls": [piece]})]
        return []  # thinking and signature deltas are not part of the OpenAI shape

    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        return self._envelope([{"index": 0, "delta": delta, "finish_reason": finish}])

    def _envelope(self, choices: list[JSON]) -> JSON:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": choices,
        }
