"""One agent's history as its lane shows it (`?view=compact` of `/v1/runs/{id}/lane`).

A lane replays an agent's events to draw its text, tool calls and results. Much of what
the stream holds for that is repetition: every model call carries the whole conversation
so far, each streamed chunk is superseded by the call's end (which has the text), each
piece of a tool call's arguments by the call's start (which has them all). The root of a
300-fork tree has about 2,700 entries and 4.7 MB of them; the compact view keeps what a
lane draws, in order:

- the chunks of a model call that began and ended in the range, and the argument pieces
  of a tool call that started in it, are left out (the end and the start say it all);
- the iteration and tool-batch bookkeeping events are left out (a lane does not draw them);
- message lists, tool schemas, raw model responses and request options are dropped from
  the events that remain.

Entries still in flight (a call streaming now) are kept whole, so a lane opened mid-call
goes on streaming from the live feed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.api.sse import entry_payload
from orchestrator.events import EventYield, ReActEventType
from orchestrator.runs import StreamEntry

__all__ = ["compact_payloads", "full_payloads"]

_UNDRAWN = frozenset(
    {
        ReActEventType.REACT_ITERATION_START,
        ReActEventType.REACT_ITERATION_END,
        ReActEventType.TOOL_CALLS_BATCH_START,
        ReActEventType.TOOL_CALLS_BATCH_END,
    }
)
_HEAVY_EVENT_FIELDS = (
    "messages",
    "initial_messages",
    "current_messages",
    "final_messages",
    "available_tools",
    "tools",
    "llm_kwargs",
    "response",
    "tool_call",
    "tool_calls",
    "accumulated_content",
)
_TOOL_SETTLED = frozenset(
    {
        ReActEventType.TOOL_CALL_START,
        ReActEventType.TOOL_CALL_END,
        ReActEventType.TOOL_CALL_ERROR,
    }
)


def full_payloads(entries: Iterable[StreamEntry]) -> list[dict[str, Any]]:
    return [entry_payload(entry) for entry in entries]


def _event_of(entry: StreamEntry) -> Any:
    output = entry.output
    return output.event if isinstance(output, EventYield) else None


def _superseded(entries: Sequence[StreamEntry]) -> set[int]:
    """Positions of chunks and argument pieces that a later entry in range says in full.

    A model call's chunks go only if its start and its end are both in range (a range
    cut mid-call keeps them all, so its text is never half there)."""
    dropped: set[int] = set()
    settled_tools: set[str] = set()
    # Walking backwards: chunks of the ended model call we are inside, if any.
    chunks: list[int] | None = None
    for index in range(len(entries) - 1, -1, -1):
        event = _event_of(entries[index])
        if event is None:
            continue
        kind = event.event_type
        if kind is ReActEventType.LLM_CALL_END:
            chunks = []
        elif kind is ReActEventType.LLM_CALL_START:
            dropped.update(chunks or ())
            chunks = None
        elif kind is ReActEventType.LLM_CALL_ERROR:
            chunks = None
        elif kind is ReActEventType.LLM_CHUNK_ARRIVE and chunks is not None:
            chunks.append(index)
        elif kind in _TOOL_SETTLED:
            settled_tools.add(event.tool_call_id)
        elif kind is ReActEventType.TOOL_CALL_ARGUMENTS_DELTA and (
            event.tool_call_id in settled_tools
        ):
            dropped.add(index)
    return dropped


def _slim(payload: dict[str, Any]) -> dict[str, Any]:
    output = payload.get("output")
    if not isinstance(output, dict):
        return payload
    if output.get("type") == "response":
        output.pop("messages", None)
        return payload
    event = output.get("event")
    if isinstance(event, dict):
        for name in _HEAVY_EVENT_FIELDS:
            event.pop(name, None)
    return payload


def compact_payloads(entries: Sequence[StreamEntry]) -> list[dict[str, Any]]:
    """The entries a lane draws, slimmed (see the module docstring)."""
    dropped = _superseded(entries)
    payloads = []
    for index, entry in enumerate(entries):
        event = _event_of(entry)
        if index in dropped or (event is not None and event.event_type in _UNDRAWN):
            continue
        payloads.append(_slim(entry_payload(entry)))
    return payloads
