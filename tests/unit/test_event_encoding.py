"""How a worker encodes each output for the stream: the bytes of `model_dump_json()`,
every event type included, at the cost of the event's own fields (not of a match
against the whole event union)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.events import (
    EVENT_CLASSES,
    CustomEvent,
    EventOrigin,
    EventYield,
    LLMChunkArriveEvent,
    ReActEvent,
    ResponseYield,
    output_from_json,
    output_to_json,
)

ORIGIN = EventOrigin(
    session_id="s1",
    agent_call_id="root.fork_2",
    event_seq=7,
    parent_agent_call_id="root",
    fork_id="fork_2",
    fork_depth=1,
    fork_seq=2,
    memory_key="k::fork::2",
    tool_name="spawn",
    tool_call_id="call_1",
)

_VALUES: dict[str, Any] = {
    "messages": [{"role": "user", "content": "héllo ✓"}],
    "initial_messages": [{"role": "system", "content": "be brief"}],
    "current_messages": [{"role": "assistant", "content": "ok"}],
    "final_messages": [{"role": "assistant", "content": "done"}],
    "tools": [{"type": "function", "function": {"name": "t", "parameters": {}}}],
    "available_tools": [{"type": "function", "function": {"name": "t"}}],
    "tool_calls": [{"id": "c", "function": {"name": "t", "arguments": "{}"}}],
    "chunk": {"choices": [{"delta": {"content": "x"}}], "n": 1.5},
    "response": {"id": "r", "usage": {"prompt_tokens": 3}},
    "usage": {"prompt_tokens": 3},
    "total_token_usage": {"total_tokens": 9},
    "llm_kwargs": {"temperature": 0.2},
    "arguments": {"a": [1, None, True]},
    "tool_call": {"id": "c"},
    "tool_results": [{"tool_name": "t", "tool_call_id": "c", "result": {"r": 1}}],
    "result": {"rows": [1, 2]},
    "data": {"d": "é"},
    "error": "boom",
}


def _event(cls: type[ReActEvent]) -> ReActEvent:
    given = {k: v for k, v in _VALUES.items() if k in cls.model_fields}
    return cls(iteration=2, trace_id="t", func_name="f", extra={"aborted": True}, **given)


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_every_event_encodes_to_the_bytes_of_its_model_dump(cls: type[ReActEvent]) -> None:
    output = EventYield(event=_event(cls), origin=ORIGIN, stream_id="1-0")
    encoded = output_to_json(output)
    assert encoded == output.model_dump_json().encode()
    decoded = output_from_json(encoded)
    assert isinstance(decoded, EventYield)
    assert (decoded.event, decoded.origin) == (output.event, output.origin)
    assert "stream_id" not in json.loads(encoded)


def test_a_response_encodes_to_the_bytes_of_its_model_dump() -> None:
    output = ResponseYield(response={"a": 1}, messages=[{"role": "user"}], origin=ORIGIN)
    assert output_to_json(output) == output.model_dump_json().encode()


class _UnionSerializerUsed(Exception):
    pass


class _Refusing:
    def to_json(self, value: Any, **kwargs: Any) -> bytes:
        raise _UnionSerializerUsed


def test_an_event_is_encoded_without_matching_the_event_union(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker encodes every event it publishes: from the event's own class and the
    origin, not through EventYield's serializer (which first matches the event against
    the 15 members of the union: twice the CPU)."""
    output = EventYield(event=LLMChunkArriveEvent(chunk={"a": 1}), origin=ORIGIN)
    expected = output.model_dump_json().encode()
    monkeypatch.setattr(EventYield, "__pydantic_serializer__", _Refusing())
    assert output_to_json(output) == expected


class _MyEvent(CustomEvent):
    mine: str = "not in the union's CustomEvent"


def test_an_event_subclass_is_encoded_as_the_union_encodes_it() -> None:
    """A subclass of one of the event classes is encoded as its declared class, as
    before (its own fields are not on the wire)."""
    output = EventYield(event=_MyEvent(event_name="e"), origin=ORIGIN)
    assert output_to_json(output) == output.model_dump_json().encode()
    assert b"mine" not in output_to_json(output)
