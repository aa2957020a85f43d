"""Server-sent events, parsed leniently enough for every OpenAI-compatible server we know.

The parser follows the SSE spec where servers agree and tolerates where they do not:
`data:` with or without the space, `: keep-alive` comments, `event:` lines, CRLF or bare
CR line endings, data split over several lines, and an event left pending at EOF because
the server never sent the closing blank line.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its `event:` name (None if unnamed) and its joined `data:`."""

    data: str
    event: str | None = None


class _EventBuilder:
    def __init__(self) -> None:
        self.data: list[str] = []
        self.event: str | None = None

    def feed(self, line: str) -> None:
        if line.startswith(":"):
            return  # comment / keep-alive ping
        field, sep, value = line.partition(":")
        if not sep:
            field, value = line, ""
        elif value.startswith(" "):
            value = value[1:]
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.event = value
        # `id:` and `retry:` mean nothing for a one-shot completion stream.

    def take(self, line: str) -> SSEEvent | None:
        """One line without its ending: the event a blank line completes, else None."""
        if line:
            self.feed(line)
            return None
        return self.dispatch()

    def dispatch(self) -> SSEEvent | None:
        event = SSEEvent("\n".join(self.data), self.event) if self.data else None
        self.data, self.event = [], None
        return event


def split_lines(text: str) -> list[str]:
    """Split raw SSE text on LF, CRLF or CR, the three line endings the spec allows."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


async def iter_sse_events(lines: AsyncIterable[str]) -> AsyncGenerator[SSEEvent, None]:
    """Turn a stream of text lines (as `httpx.Response.aiter_lines()` gives) into events.

    Lines may still carry a trailing CR; events with no `data:` are dropped.
    """
    builder = _EventBuilder()
    async for raw in lines:
        for line in split_lines(_strip_terminator(raw)):
            if line:
                builder.feed(line)
                continue
            event = builder.dispatch()
            if event is not None:
                yield event
    event = builder.dispatch()
    if event is not None:
        yield event


class SSEParser:
    """Server-sent events from a response body's bytes, fed as they arrive (UTF-8, as the
    SSE spec says; undecodable bytes read as U+FFFD).

    The same events as `iter_sse_events` over `httpx.Response.aiter_lines()`, without
    its four layers of generators per network read (raw, decoded, text, lines): one
    streamed chat completion used to spend more CPU there than in reading its JSON.
    """

    def __init__(self) -> None:
        # utf-8-sig: a byte order mark at the stream's start is dropped (the SSE spec).
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("replace")
        self._builder = _EventBuilder()
        # The last line so far, not yet ended, in pieces (joined once it ends: a long
        # line arriving in many small reads is not copied again for each).
        self._pending: list[str] = []

    def feed(self, data: bytes) -> list[SSEEvent]:
        """The events these bytes complete."""
        text = self._decoder.decode(data)
        if not text:
            return []
        if "\n" not in text and "\r" not in text:
            self._pending.append(text)
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
            self._pending.clear()
        # A CR at the end may be the first half of a CRLF: it waits for the next bytes.
        held = "\r" if text.endswith("\r") else ""
        lines = split_lines(text[:-1] if held else text)
        last = lines.pop() + held
        if last:
            self._pending.append(last)
        return self._take(lines)

    def close(self) -> list[SSEEvent]:
        """The events left at the body's end (the last one may lack its blank line)."""
        tail = "".join(self._pending) + self._decoder.decode(b"", final=True)
        self._pending.clear()
        events = self._take(split_lines(tail)) if tail else []
        last = self._builder.dispatch()
        return [*events, last] if last is not None else events

    def _take(self, lines: list[str]) -> list[SSEEvent]:
        events = []
        for line in lines:
            event = self._builder.take(line)
            if event is not None:
                events.append(event)
        return events


async def iter_sse_bytes(body: AsyncIterable[bytes]) -> AsyncGenerator[SSEEvent, None]:
    """The events of a response body given as the bytes it arrives in (see `SSEParser`)."""
    parser = SSEParser()
    async for data in body:
        for event in parser.feed(data):
            yield event
    for event in parser.close():
        yield event


@dataclass(frozen=True, slots=True)
class DecodedData:
    """What one event's data holds: chunk objects, whether `[DONE]` was seen, and whether
    some of it was not JSON (a malformed chunk the caller skips and counts)."""

    objects: list[dict[str, Any]]
    done: bool = False
    malformed: bool = False


def _strip_terminator(line: str) -> str:
    for ending in ("\r\n", "\n", "\r"):
        if line.endswith(ending):
            return line[: -len(ending)]
    return line


def decode_data(data: str) -> DecodedData:
    """Read one event's data as OpenAI stream chunks.

    Multi-line data is first read as one JSON document (the spec's reading); if that fails,
    each line is read on its own, for servers that put one chunk per line with no blank
    line in between.
    """
    if data.strip() == DONE:
        return DecodedData([], done=True)
    whole = _loads_object(data)
    if whole is not None:
        return DecodedData([whole])
    if "\n" not in data:
        return DecodedData([], malformed=True)
    objects: list[dict[str, Any]] = []
    done = malformed = False
    for line in filter(str.strip, data.split("\n")):
        piece = _loads_object(line)
        if line.strip() == DONE:
            done = True
        elif piece is None:
            malformed = True
        else:
            objects.append(piece)
    return DecodedData(objects, done=done, malformed=malformed)


def _loads_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
