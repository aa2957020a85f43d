"""A test double for `OpenAICompatible`: an httpx transport that replays scripted replies.

    transport = ReplayTransport([Reply.error(429, headers={"Retry-After": "0.2"}),
                                 Reply.sse(text_chunks("Hello there"))])
    model = OpenAICompatible("k", "m", "http://test/v1", transport=transport)

Each request gets the next reply (the last one repeats); `transport.requests` holds every
request body and `transport.keys` the API key each one carried. For end-to-end tests over
real HTTP, use the scripted model server (`orchestrator.mock_llm`) instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Reply:
    """One scripted HTTP answer: a status, headers and a body sent in `pieces`.

    `drop_after=N` sends N pieces and then breaks the connection mid-body (raising
    `drop_error`), the way a server that dies mid-stream does.
    """

    status: int = 200
    pieces: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None
    drop_error: type[httpx.TransportError] = httpx.RemoteProtocolError

    @classmethod
    def json(cls, body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        payload = json.dumps(body).encode()
        return cls(status, [payload], {"content-type": "application/json", **(headers or {})})

    @classmethod
    def error(
        cls, status: int, message: str = "scripted error", *, headers: dict[str, str] | None = None
    ) -> Reply:
        return cls.json(
            {"error": {"message": message, "code": status}}, status=status, headers=headers
        )

    @classmethod
    def raw(cls, text: str, *, status: int = 200, content_type: str = "text/plain") -> Reply:
        return cls(status, [text.encode()], {"content-type": content_type})

    @classmethod
    def sse(
        cls,
        chunks: Sequence[dict[str, Any] | str],
        *,
        done: bool = True,
        drop_after: int | None = None,
        separator: str = "\n\n",
        prefix: str = "data: ",
    ) -> Reply:
        """An SSE stream, one event (piece) per chunk; a str chunk is sent as raw data."""
        events = [c if isinstance(c, str) else json.dumps(c) for c in chunks]
        if done:
            events.append("[DONE]")
        pieces = [f"{prefix}{event}{separator}".encode() for event in events]
        return cls(200, pieces, {"content-type": "text/event-stream"}, drop_after)

    @classmethod
    def sse_text(cls, text: str, *, drop_after_bytes: int | None = None) -> Reply:
        """Raw SSE text sent as is (to test line endings, comments, multi-line data)."""
        body = text.encode()
        if drop_after_bytes is None:
            return cls(200, [body], {"content-type": "text/event-stream"})
        pieces = [body[:drop_after_bytes], body[drop_after_bytes:]]
        return cls(200, pieces, {"content-type": "text/event-stream"}, drop_after=1)


class _Body(httpx.AsyncByteStream):
    def __init__(self, reply: Reply, request: httpx.Request) -> None:
        self._reply = reply
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for sent, piece in enumerate(self._reply.pieces):
            if self._reply.drop_after is not None and sent >= self._reply.drop_after:
                break
            yield piece
        if self._reply.drop_after is not None:
            raise self._reply.drop_error(
                "peer closed connection without sending complete message body",
                request=self._request,
            )


class ReplayTransport(httpx.AsyncBaseTransport):
    """Answers request N with reply N (the last reply answers any further requests)."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        if not replies:
            raise ValueError("ReplayTransport needs at least one reply")
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.keys: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.requests.append(json.loads(body) if body else {})
        self.keys.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        return httpx.Response(
            reply.status, headers=reply.headers, stream=_Body(reply, request), request=request
        )


def text_chunks(
    text: str,
    *,
    model: str = "scripted",
    finish_reason: str = "stop",
    usage: dict[str, int] | None = None,
    piece_size: int = 4,
) -> list[dict[str, Any]]:
    """The chunks an OpenAI server streams for `text`: a role chunk, `piece_size`-character
    content pieces, a finish chunk, and a usage-only chunk (unless `usage` is `{}`)."""
    pieces = [text[i : i + piece_size] for i in range(0, len(text), piece_size)]
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in pieces]
    chunks = [_chunk(model, {"index": 0, "delta": d, "finish_reason": None}) for d in deltas]
    chunks.append(_chunk(model, {"index": 0, "delta": {}, "finish_reason": finish_reason}))
    if usage != {}:
        counted = usage or {"prompt_tokens": 3, "completion_tokens": len(pieces)}
        total = counted.get("prompt_tokens", 0) + counted.get("completion_tokens", 0)
        chunks.append({**_chunk(model), "choices": [], "usage": {**counted, "total_tokens": total}})
    return chunks


def completion(content: str | None, *, model: str = "scripted", **message: Any) -> dict[str, Any]:
    """A non-streamed chat.completion answering `content`."""
    return {
        **_chunk(model),
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def _chunk(model: str, *choices: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-replay",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": list(choices),
    }
