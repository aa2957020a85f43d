"""Server-Sent Events framing for stream entries, with keep-alive comments.

Each entry becomes

    id: <Redis stream id>
    event: <kind: event | response | status>
    data: <the entry as one line of JSON>

so a browser's EventSource resumes after a reconnect by sending the last id back in
`Last-Event-ID`. A comment line (`: keep-alive`) goes out whenever nothing else has for a
while, so proxies do not close an idle stream.

Batched (`batch=True`, what the dashboard asks for), the entries that are ready together
(within `BATCH_WINDOW_S` of the first, up to `BATCH_MAX`) go out as one message

    id: <the last entry's stream id>
    event: batch
    data: [<entry>, <entry>, ...]

so a burst of a thousand entries is a handful of messages for the page to handle, and a
reconnect resumes after the last entry of the last batch: nothing is repeated.
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
    "BATCH_MAX",
    "BATCH_WINDOW_S",
    "KEEPALIVE",
    "RESUME_ID_PATTERN",
    "entry_payload",
    "format_batch",
    "format_event",
    "sse_body",
]

log = structlog.get_logger(__name__)

KEEPALIVE = b": keep-alive\n\n"
# What a read resumes after: "ms-seq", an item id "ms-seq.i" (an output of an entry of
# several, `orchestrator.store.streams`), "ms", or "$" (only entries newer than now).
RESUME_ID_PATTERN = re.compile(r"^(\d{1,20}(-\d{1,20}(\.\d{1,5})?)?|\$)$")
# Browsers wait this long before reconnecting a dropped stream.
RETRY_MS = 1000
# A batch holds what arrives within this long of its first entry, up to BATCH_MAX entries.
BATCH_WINDOW_S = 0.01
BATCH_MAX = 500


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


def format_event(
    data: dict[str, Any] | list[dict[str, Any]], *, event: str, event_id: str | None = None
) -> bytes:
    """One SSE message; `data` is serialised as a single line of JSON."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def format_batch(entries: list[StreamEntry]) -> bytes:
    """One SSE message holding several entries; its id is the last entry's."""
    return format_event(
        [entry_payload(entry) for entry in entries], event="batch", event_id=entries[-1].id
    )


class _Feed:
    """Entries one at a time, each wait bounded: `next(timeout)` is None when none came in
    time, and the read it started carries on for the next call."""

    def __init__(self, entries: AsyncIterator[StreamEntry]) -> None:
        self._iterator = aiter(entries)
        self._pending: asyncio.Future[StreamEntry] | None = None

    async def next(self, timeout: float) -> StreamEntry | None:
        """The next entry, None after `timeout`; raises StopAsyncIteration at the end
        (and whatever the entries raise)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._iterator))
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return None
        finished, self._pending = self._pending, None
        return finished.result()

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            # wait() does not raise the read's own cancellation (or error) here, but a
            # cancellation of this generator's task still propagates.
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _more(feed: _Feed, group: list[StreamEntry]) -> BaseException | None:
    """Add to `group` what arrives within the batch window; returns what ended the feed
    (StopAsyncIteration or a StoreError), if anything did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_WINDOW_S
    while len(group) < BATCH_MAX:
        try:
            entry = await feed.next(max(0.0, deadline - loop.time()))
        except (StopAsyncIteration, StoreError) as exc:
            return exc
        if entry is None:
            return None
        group.append(entry)
    return None


def _failed(exc: StoreError) -> bytes:
    log.warning("api.stream_failed", error=str(exc))
    return format_event({"error": "store_unavailable", "message": str(exc)}, event="error")


async def sse_body(
    entries: AsyncIterator[StreamEntry],
    *,
    keepalive_s: float,
    tail: AsyncIterator[dict[str, Any]] | None = None,
    batch: bool = False,
) -> AsyncIterator[bytes]:
    """Frame `entries` as SSE, with keep-alives while none arrive; `batch` groups the
    entries that arrive together into one message (module docstring).

    `tail` yields extra messages (already as payload dicts with "kind") sent after the
    entries end. A store failure mid-stream ends it with an `error` event.
    """
    yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
    feed = _Feed(entries)
    try:
        while True:
            try:
                entry = await feed.next(keepalive_s)
            except StopAsyncIteration:
                break
            except StoreError as exc:
                yield _failed(exc)
                return
            if entry is None:
                yield KEEPALIVE
                continue
            if not batch:
                yield format_event(entry_payload(entry), event=entry.kind, event_id=entry.id)
                continue
            group = [entry]
            ended = await _more(feed, group)
            yield format_batch(group)
            if isinstance(ended, StoreError):
                yield _failed(ended)
                return
            if ended is not None:
                break
        if tail is not None:
            async for extra in tail:
                yield format_event(extra, event=str(extra.get("kind", "message")))
    finally:
        await feed.close()
