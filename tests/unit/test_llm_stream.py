"""Assembling chunk streams, and resuming a retried stream without repeating anything."""

from __future__ import annotations

import copy
from typing import Any

from orchestrator.llm.stream import StreamResumer
from orchestrator.llm.testing import text_chunks
from orchestrator.ports import ChunkAccumulator


def _tool_piece(index: int, **fields: Any) -> dict[str, Any]:
    function = {k: fields.pop(k) for k in ("name", "arguments") if k in fields}
    call = {"index": index, **fields}
    if function:
        call["function"] = function
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}


def test_tool_call_pieces_accumulate_by_index() -> None:
    acc = ChunkAccumulator()
    acc.add({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})
    acc.add(_tool_piece(0, id="call_a", type="function", name="get_weather", arguments=""))
    acc.add(_tool_piece(1, id="call_b", type="function", name="get_time", arguments='{"tz"'))
    acc.add(_tool_piece(0, arguments='{"city": '))
    acc.add(_tool_piece(0, arguments='"Paris"}'))
    acc.add(_tool_piece(1, arguments=': "UTC"}'))
    acc.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    acc.add({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})

    message = acc.message()
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
        },
    ]
    assert acc.finish_reason() == "tool_calls"
    assert acc.usage == {"prompt_tokens": 1, "completion_tokens": 2}


def test_pieces_without_index_join_the_call_with_their_id_or_the_last_call() -> None:
    acc = ChunkAccumulator()
    for piece in (
        {"id": "c1", "function": {"name": "f", "arguments": "{"}},
        {"function": {"arguments": "}"}},
        {"id": "c2", "function": {"name": "g", "arguments": "[]"}},
    ):
        acc.add({"choices": [{"delta": {"tool_calls": [piece]}}]})
    calls = acc.message()["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("c1", "{}"), ("c2", "[]")]


def test_reasoning_content_and_null_fields_are_tolerated() -> None:
    acc = ChunkAccumulator()
    acc.add({"choices": [{"delta": {"reasoning_content": "think "}}], "usage": None})
    acc.add({"choices": [{"delta": {"reasoning_content": "hard", "content": None}}]})
    acc.add({"choices": [{"delta": {"content": "answer"}, "finish_reason": "stop"}]})
    assert acc.message() == {
        "role": "assistant",
        "content": "answer",
        "reasoning_content": "think hard",
    }
    assert acc.completion()["choices"][0]["finish_reason"] == "stop"


def test_first_attempt_passes_chunks_through_unchanged() -> None:
    resumer = StreamResumer()
    resumer.new_attempt()
    chunks = text_chunks("Hello world")
    assert [resumer.filter(dict(c)) for c in chunks] == chunks


def test_retried_stream_is_trimmed_to_what_was_not_delivered() -> None:
    text = "The quick brown fox jumps"
    resumer = StreamResumer()
    acc = ChunkAccumulator()
    resumer.new_attempt()
    for chunk in text_chunks(text, piece_size=3)[:4]:  # role + 3 pieces, then the drop
        kept = resumer.filter(chunk)
        assert kept is not None
        acc.add(kept)
    resumer.new_attempt()
    for chunk in text_chunks(text, piece_size=5):  # the retry splits the text differently
        kept = resumer.filter(chunk)
        if kept is not None:
            acc.add(kept)
    assert acc.message()["content"] == text
    assert acc.finish_reason() == "stop"


def test_retried_tool_call_stream_does_not_repeat_ids_names_or_arguments() -> None:
    pieces = [
        _tool_piece(0, id="c", type="function", name="f", arguments=""),
        _tool_piece(0, arguments='{"a"'),
        _tool_piece(0, arguments=": 1}"),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    resumer = StreamResumer()
    acc = ChunkAccumulator()
    resumer.new_attempt()
    for chunk in pieces[:2]:
        acc.add(resumer.filter(_copy(chunk)) or {})
    resumer.new_attempt()
    delivered = [resumer.filter(_copy(chunk)) for chunk in pieces]
    assert delivered[:2] == [None, None]  # nothing new in them
    for kept in delivered:
        acc.add(kept or {})
    assert acc.message()["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]


def _copy(chunk: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(chunk)
