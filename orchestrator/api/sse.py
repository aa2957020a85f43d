"""Server-Sent Events framing for stream entries, with keep-alive comments.

Each entry becomes

    id: <Redis stream id>
    event: <kind: event | response | status>
    data: <the entry as one line of JSON>

so a browser's EventSource resumes after a reconnect by sending the last id back in
`Last-Event-ID`. A comment line (`: keep-alive`) goes out whenever nothing else has for a
while, so proxies do not close an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import structlog

from orchestrator.errors import StoreError
from orchestrator.runs import StreamEntry

__all__ = [
    "KEEPALIVE",
    "RESUME_ID_PATTERN",
    "entry_payload",
    "format_event",
    "sse_body",
]

log = structlog.get_logger(__name__)

KEEPALIVE = b": keep-alive\n\n"
# What XREAD accepts after: "ms-seq", "ms", or "$" (only entries newer than now).
RESUME_ID_PATTERN = re.compile(r"^(\d{1,20}(-\d{1,20})?|\$)$")
# Browsers wait this long before reconnecting a dropped stream.
RETRY_MS = 1000


def entry_payload(entry: StreamEntry) -> dict[str, Any]:
    """The JSON sent for one stream entry: id, run_id, root_run_id (the fork tree's root
    run; run_id itself for a root run), kind, and output or status."""
    body: dict[str, Any] = {
        "id": entry.id,
        "run_id": entry.run_id,
        "root_run_id": entry.root_run_id or entry.run_id,
        "kind": entry.kind,
    }
    if entry.output is not None:
        body["output"] = entry.output.model_dump(mode="json")
    if entry.status is not None:
        body["status"] = entry.status.model_dump(mode="json")
    return body


def format_event(data: dict[str, Any], *, event: str, event_id: str | None = None) -> bytes:
    """One SSE message; `data` is serialised as a single line of JSON."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


async def sse_body(
    entries: AsyncIterator[StreamEntry],
    *,
    keepalive_s: float,
    tail: AsyncIterator[dict[str, Any]] | None = None,
) -> AsyncIterator[bytes]:
    """Frame `entries` as SSE, with keep-alives while none arrive.

    `tail` yields extra messages (already as payload dicts with "kind") sent after the
    entries end. A store failure mid-stream ends it with an `error` event.
    """
    yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
    pending: asyncio.Future[StreamEntry] | None = None
    iterator = aiter(entries)
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            finished, pending = pending, None
            try:
                entry = finished.result()
            except StopAsyncIteration:
                break
            except StoreError as exc:
                log.warning("api.stream_failed", error=str(exc))
                yield format_event(
                    {"error": "store_unavailable", "message": str(exc)}, event="error"
                )
                return
            yield format_event(entry_payload(entry), event=entry.kind, event_id=entry.id)
        if tail is not None:
            async for extra in tail:
                yield format_event(extra, event=str(extra.get("kind", "message")))
    finally:
        if pending is not None:
            pending.cancel()
            # wait() does not raise the read's own cancellation (or error) here, but a
            # cancellation of this generator's task still propagates.
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
