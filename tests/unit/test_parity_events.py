"""SimpleLLMFunc code that reads events, builds them or imports their helpers keeps working.

Payloads read like provider objects (`event.usage.prompt_tokens`) yet travel as the same
JSON; events accept the loose inputs SimpleLLMFunc's accept; the names its users import
exist where they import them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.events import (
    EventOrigin,
    EventYield,
    LLMCallEndEvent,
    LLMCallErrorEvent,
    LLMChunkArriveEvent,
    Payload,
    ReactEndEvent,
    ReactStartEvent,
    ToolCallErrorEvent,
    ToolCallResult,
    output_from_json,
    output_to_json,
)

CHUNK: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
}


def origin() -> EventOrigin:
    return EventOrigin(session_id="s", agent_call_id="a", event_seq=0)


def test_usage_chunk_and_response_read_as_attributes_and_as_dicts() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    end = LLMCallEndEvent(
        usage=usage, response={"choices": [{"message": {"content": "hi", "role": "assistant"}}]}
    )
    assert end.usage is not None
    assert end.usage.total_tokens == 30
    assert end.usage["prompt_tokens"] == 10
    assert end.usage == usage
    assert end.response.choices[0].message.content == "hi"
    chunk = LLMChunkArriveEvent(chunk=CHUNK)
    assert chunk.chunk.id == "chatcmpl-1"
    assert chunk.chunk.choices[0].delta.content == "Hel"
    assert chunk.chunk.choices[0].finish_reason is None
    assert getattr(end.usage, "cached_tokens", 0) == 0  # a missing field: AttributeError


def test_typed_payloads_serialize_to_the_same_json_and_decode_typed() -> None:
    end = ReactEndEvent(total_token_usage={"prompt_tokens": 1, "completion_tokens": 2})
    wire = output_to_json(EventYield(event=end, origin=origin()))
    body = json.loads(wire)["event"]
    assert body["total_token_usage"] == {"prompt_tokens": 1, "completion_tokens": 2}
    back = output_from_json(wire)
    assert isinstance(back.event, ReactEndEvent)
    assert back.event.total_token_usage is not None
    assert back.event.total_token_usage.completion_tokens == 2
    assert output_to_json(back) == wire
    chunk_wire = output_to_json(EventYield(event=LLMChunkArriveEvent(chunk=CHUNK), origin=origin()))
    assert json.loads(chunk_wire)["event"]["chunk"] == CHUNK


class CompletionUsage(BaseModel):
    """Stands in for openai's CompletionUsage: a pydantic model with attributes."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def test_provider_objects_are_accepted_as_payloads() -> None:
    end = LLMCallEndEvent(
        usage=CompletionUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    )
    assert isinstance(end.usage, Payload)
    assert end.usage.total_tokens == 3


def test_none_lists_and_exception_errors_are_accepted() -> None:
    assert LLMChunkArriveEvent(chunk=None).chunk == {}
    assert LLMCallEndEvent(usage=None).usage is None
    start = ReactStartEvent(available_tools=None, initial_messages=None)
    assert start.available_tools == []
    assert start.initial_messages == []
    failed = ToolCallErrorEvent(tool_name="t", error=ValueError("bad city"))
    assert failed.error == "bad city"
    assert failed.error_type == "ValueError"
    assert failed.error_message == "bad city"
    llm_failed = LLMCallErrorEvent(error=TimeoutError(), error_type="Custom")
    assert llm_failed.error == "TimeoutError"
    assert llm_failed.error_type == "Custom"  # given values win
    result = ToolCallResult(tool_name="t", tool_call_id="c", error=RuntimeError("x"))
    assert result.error == "x"
    wire = output_to_json(EventYield(event=failed, origin=origin()))
    assert json.loads(wire)["event"]["error"] == "bad city"


def test_simplellmfunc_hook_names_import_from_hooks() -> None:
    from orchestrator import hooks
    from orchestrator.runtime import emitter

    assert hooks.ToolEventEmitter is emitter.ToolEventEmitter
    assert hooks.NoOpEventEmitter is emitter.NoOpEventEmitter
    assert {"ToolEventEmitter", "NoOpEventEmitter"} <= set(hooks.__all__)


async def test_a_standalone_emitter_keeps_events_and_noop_drops_them() -> None:
    from orchestrator.hooks import CustomEvent, NoOpEventEmitter, ToolEventEmitter

    emitter = ToolEventEmitter(tool_name="search", tool_call_id="call_1")
    await emitter.emit("progress", {"percent": 50})
    await emitter.emit_batch([("a", 1), ("b", 2)])
    assert emitter.has_events()
    kept = await emitter.get_events()
    names = [e.event.event_name for e in kept if isinstance(e.event, CustomEvent)]
    assert names == ["progress", "a", "b"]
    assert kept[0].event.tool_call_id == "call_1"
    assert not emitter.has_events()
    noop = NoOpEventEmitter()
    await noop.emit("x", 1)
    await noop.emit_batch([("y", 2)])
    assert await noop.get_events() == []
    assert not noop.has_events()


@pytest.mark.parametrize(
    "name", ["Tool", "APIKeyPool", "connect", "llm_chat", "tool", "DEFAULT_MAX_TOOL_CALLS"]
)
def test_top_level_names_simplellmfunc_users_import(name: str) -> None:
    import orchestrator

    assert name in orchestrator.__all__
    getattr(orchestrator, name)


async def test_responses_only_items_are_responses_and_tuples() -> None:
    from orchestrator.events import ResponseYield
    from orchestrator.hooks import responses_only

    async def outputs() -> Any:
        yield EventYield(event=ReactStartEvent(), origin=origin())
        yield ResponseYield(response="done", messages=[{"role": "assistant", "content": "done"}])

    (item,) = [r async for r in responses_only(outputs())]
    assert item.response == "done"
    response, messages = item
    assert response == "done"
    assert messages == [{"role": "assistant", "content": "done"}]
    assert isinstance(item, ResponseYield)


def test_strict_signature_follows_simplellmfunc_rules() -> None:
    from orchestrator import OpenAICompatible, llm_chat
    from orchestrator.errors import AgentError, SignatureError

    llm = OpenAICompatible(api_keys="k", model_name="m", base_url="http://127.0.0.1:9/v1")
    strict = llm_chat(llm_interface=llm, strict_signature=True)

    @strict
    async def good(history: list[Any], message: str, _template_params: Any = None) -> None:
        """Sys."""

    async def message_first(message: str, history: list[Any]) -> None:
        """Sys."""

    async def untyped(history: list[Any], message) -> None:  # type: ignore[no-untyped-def]
        """Sys."""

    async def extra(history: list[Any], message: str, city: str) -> None:
        """Sys."""

    for bad, reason in [
        (message_first, "first parameter"),
        (untyped, "annotated as `str`"),
        (extra, "unexpected parameter 'city'"),
    ]:
        with pytest.raises(SignatureError, match=reason) as caught:
            strict(bad)
        assert isinstance(caught.value, TypeError)  # what SimpleLLMFunc raises
        assert isinstance(caught.value, AgentError)


async def test_a_strict_agent_takes_the_message_positionally_with_history_by_name() -> None:
    from orchestrator import OpenAICompatible, llm_chat
    from orchestrator.runtime import agent_spec

    llm = OpenAICompatible(api_keys="k", model_name="m", base_url="http://127.0.0.1:9/v1")

    @llm_chat(llm_interface=llm, strict_signature=True)
    async def agent(history: list[Any], message: str) -> None:
        """Sys."""

    # How a worker calls an agent: the message positionally, the history by name.
    state = await agent_spec(agent).initial_state(
        ("hello",), {"history": []}, session_id="s", agent_call_id="a"
    )
    assert state.messages[-1] == {"role": "user", "content": "message: hello"}


def read_and_remove(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    path.unlink()
    return text


async def test_too_long_to_file_spills_a_long_text_result(tmp_path: Any) -> None:
    from orchestrator import TOO_LONG_TO_FILE_MAX_TOKENS, Tool
    from orchestrator.runtime.long_output import estimate_tokens, spill_long_result

    assert TOO_LONG_TO_FILE_MAX_TOKENS == 20_000
    long_text = "word " * 30_000

    async def dump() -> str:
        return long_text

    spilled = await Tool(name="dump", func=dump, too_long_to_file=True).invoke({})
    head, _, note = spilled.partition("\n\n<system-reminder>")
    assert long_text.startswith(head)
    assert estimate_tokens(head) <= TOO_LONG_TO_FILE_MAX_TOKENS
    assert "Tool output was too long" in note
    assert read_and_remove(Path(note.split("saved to ", 1)[1].split(". ", 1)[0])) == long_text
    # Without the option, or for a short text, the result is unchanged.
    assert await Tool(name="dump2", func=dump).invoke({}) == long_text
    assert spill_long_result("t", "short", directory=tmp_path) == "short"
    assert list(tmp_path.iterdir()) == []


def test_context_window_defaults_like_simplellmfunc() -> None:
    from orchestrator import DEFAULT_CONTEXT_WINDOW, OpenAICompatible

    llm = OpenAICompatible(api_keys="k", model_name="m", base_url="http://127.0.0.1:9/v1")
    assert llm.context_window == DEFAULT_CONTEXT_WINDOW == 200_000
    sized = OpenAICompatible(
        api_keys="k", model_name="m", base_url="http://127.0.0.1:9/v1", context_window=8192
    )
    assert sized.context_window == 8192


def test_react_end_reads_response_as_the_seed_documents_name_it() -> None:
    end = ReactEndEvent(final_response="all done")
    assert end.response == "all done"
    assert "response" not in json.loads(end.model_dump_json())  # the wire is unchanged
