"""What a turn's outputs hold and how they encode: every output is the same on the wire
whether the turn copies its lists into it (in-process callers keep and change outputs)
or shares them (a worker encodes each output before asking for the next)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator import llm_chat, tool
from orchestrator.events import (
    EVENT_CLASSES,
    EventOrigin,
    EventYield,
    ReActEvent,
    ResponseYield,
    output_from_json,
    output_to_json,
)
from orchestrator.runtime import OriginContext, agent_spec, run_turn
from orchestrator.runtime.state import copy_json

# Values that differ from run to run (clocks); everything else must be byte-equal.
_CLOCK_FIELDS = frozenset({"timestamp", "execution_time", "iteration_time", "total_execution_time"})


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class _ToolThenAnswer:
    """Streams a call of `lookup` (its arguments in two pieces), then an answer."""

    model_name = "scripted"

    async def chat(self, messages: Any, *, tools: Any = None, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def chat_stream(
        self, messages: list[dict[str, Any]], *, tools: Any = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        if messages[-1]["role"] == "tool":
            yield _chunk({"role": "assistant", "content": "It is "})
            yield _chunk({"content": "found."}, "stop")
            return
        yield _chunk({"role": "assistant", "content": "Looking."})
        call = {"index": 0, "id": "call_1", "type": "function"}
        yield _chunk({"tool_calls": [{**call, "function": {"name": "lookup", "arguments": ""}}]})
        yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"key": "a'}}]})
        yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'b"}'}}]}, "tool_calls")


@tool
async def lookup(key: str, event_emitter: Any = None) -> dict[str, str]:
    """Look a key up.

    Args:
        key: The key.
    """
    await event_emitter.emit("progress", {"key": key})
    return {"key": key, "value": "found"}


async def _turn_outputs(copy_outputs: bool) -> list[dict[str, Any]]:
    @llm_chat(llm_interface=_ToolThenAnswer(), toolkit=[lookup], stream=True)
    async def agent(message: str) -> None:
        """You are a test agent."""

    spec = agent_spec(agent)
    state = await spec.initial_state(["find ab"], {}, session_id="s", agent_call_id="c1")
    wire = []
    async for output in run_turn(spec, state, origin=OriginContext(), copy_outputs=copy_outputs):
        wire.append(json.loads(output_to_json(output)))  # encoded at once, as a worker does
    return [_without_clocks(item) for item in wire]


def _without_clocks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_clocks(v) for k, v in value.items() if k not in _CLOCK_FIELDS}
    if isinstance(value, list):
        return [_without_clocks(v) for v in value]
    return value


async def test_shared_outputs_encode_like_copied_ones() -> None:
    copied = await _turn_outputs(copy_outputs=True)
    shared = await _turn_outputs(copy_outputs=False)
    kinds = {item["event"]["event_type"] for item in copied if item["type"] == "event"}
    assert {"react_start", "llm_chunk_arrive", "tool_call_arguments_delta"} <= kinds
    assert {"tool_calls_batch_start", "tool_call_start", "tool_call_end"} <= kinds
    assert {"custom_event", "tool_calls_batch_end", "llm_call_end", "react_end"} <= kinds
    assert shared == copied


async def test_copied_outputs_are_the_callers_to_change() -> None:
    @llm_chat(llm_interface=_ToolThenAnswer(), toolkit=[lookup], stream=True)
    async def agent(message: str) -> None:
        """You are a test agent."""

    spec = agent_spec(agent)
    state = await spec.initial_state(["find ab"], {}, session_id="s", agent_call_id="c1")
    outputs = [o async for o in run_turn(spec, state, origin=OriginContext())]
    events = [o.event for o in outputs if isinstance(o, EventYield)]
    start = events[0]
    start.initial_messages[0]["content"] = "changed"  # type: ignore[attr-defined]
    start.available_tools[0]["function"]["name"] = "changed"  # type: ignore[attr-defined]
    final = outputs[-1]
    assert isinstance(final, ResponseYield)
    assert final.messages[0]["content"] == "You are a test agent."
    assert state.messages[0]["content"] == "You are a test agent."
    assert lookup.definition()["function"]["name"] == "lookup"


def _filled(kind: type[ReActEvent]) -> ReActEvent:
    """An event of this kind with every field given a non-default value."""
    values: dict[str, Any] = {
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "trace_id": "t",
        "func_name": "f",
        "iteration": 2,
        "extra": {"k": "v", "n": [1, 2.5, None]},
    }
    samples: dict[Any, Any] = {
        str: 'text é \u2028 "q"',
        int: 3,
        float: 0.125,
        bool: False,
    }
    for name, field in kind.model_fields.items():
        if name in values or name == "event_type":
            continue
        annotation = field.annotation
        sample = samples.get(str if annotation == str | None else annotation)
        if sample is None:
            sample = (
                [{"role": "user", "content": "hi"}]
                if "list" in str(annotation)
                else {"a": {"b": [1, "c"]}}
            )
        values[name] = sample
    if kind.__name__ == "ToolCallsBatchEndEvent":
        values["tool_results"] = [{"tool_name": "x", "tool_call_id": "1", "result": {"r": 1}}]
    return kind(**values)


@pytest.mark.parametrize("kind", EVENT_CLASSES, ids=lambda k: k.__name__)
def test_output_to_json_is_model_dump_json_for_every_event_type(kind: type[ReActEvent]) -> None:
    origin = EventOrigin(session_id="s", agent_call_id="a", event_seq=7, fork_id="f", fork_depth=1)
    output = EventYield(event=_filled(kind), origin=origin)
    wire = output_to_json(output)
    assert wire == output.model_dump_json().encode()
    assert output_to_json(output_from_json(wire)) == wire


def test_output_to_json_is_model_dump_json_for_a_response() -> None:
    origin = EventOrigin(session_id="s", agent_call_id="a", event_seq=7)
    output = ResponseYield(response="é", messages=[{"role": "user", "content": "x"}], origin=origin)
    assert output_to_json(output) == output.model_dump_json().encode()


class _Blob:
    def __init__(self, items: list[int]) -> None:
        self.items = items


def test_copy_json_is_a_deep_copy_of_json_and_of_anything_inside_it() -> None:
    blob = _Blob([1])
    value: dict[str, Any] = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "n": 1,
        "x": 0.5,
        "ok": True,
        "none": None,
        "pair": (1, [2]),
        "blob": blob,
    }
    copied = copy_json(value)
    assert copied == {**value, "blob": copied["blob"]}
    copied["messages"][0]["content"][0]["text"] = "changed"
    copied["pair"][1].append(3)
    copied["blob"].items.append(2)
    assert value["messages"][0]["content"][0]["text"] == "hi"
    assert value["pair"] == (1, [2])
    assert blob.items == [1]
