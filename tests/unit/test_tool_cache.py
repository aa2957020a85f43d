"""Tools made afresh for every turn from one `def` share what they derive from the
function (signature, docstring, schema, definition), and a tool that changed between
calls is still seen as it is now."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from orchestrator import llm_chat
from orchestrator.events import LLMCallStartEvent, ReactStartEvent
from orchestrator.runtime import OriginContext, agent_spec, run_turn
from orchestrator.runtime.tools import Tool


def _lookup_tool(default: int = 1, doc: str | None = None) -> Tool:
    """A new closure (and Tool) per call, like SelfReference's per-turn tools."""

    async def lookup(key: str, limit: int = default) -> str:
        """Look a key up.

        Args:
            key: The key.
            limit: At most this many.
        """
        return key

    if doc is not None:
        lookup.__doc__ = doc
    return Tool(func=lookup)


def test_tools_made_per_call_from_one_def_share_their_definition() -> None:
    first, second = _lookup_tool(), _lookup_tool()
    assert first.shared_definition() is second.shared_definition()
    assert first.shared_definition() == first.definition()


def test_a_new_default_is_seen_by_a_tool_made_per_call() -> None:
    assert _lookup_tool(1).parameters["properties"]["limit"]["default"] == 1
    changed = _lookup_tool(7)
    assert changed.parameters["properties"]["limit"]["default"] == 7
    assert changed.shared_definition()["function"]["parameters"]["properties"]["limit"] == {
        "default": 7,
        "description": "At most this many.",
        "type": "integer",
    }


def _kw_only_tool(default: int) -> Tool:
    async def page(key: str, *, size: int = default) -> str:
        """Read a page.

        Args:
            key: The key.
            size: Entries per page.
        """
        return key

    page.custom = True  # type: ignore[attr-defined]  # not a plain def: the older cache
    return Tool(func=page)


def test_a_new_keyword_only_default_is_seen_by_a_tool_made_per_call() -> None:
    assert _kw_only_tool(5).parameters["properties"]["size"]["default"] == 5
    assert _kw_only_tool(50).parameters["properties"]["size"]["default"] == 50


def test_a_new_docstring_is_seen_by_a_tool_made_per_call() -> None:
    assert _lookup_tool().description == "Look a key up."
    changed = _lookup_tool(doc="Find a key.\n\nArgs:\n    key: Which key to find.\n")
    assert changed.description == "Find a key."
    assert changed.parameters["properties"]["key"]["description"] == "Which key to find."
    assert changed.shared_definition()["function"]["description"] == "Find a key."


def test_new_annotations_are_seen_by_a_tool_made_per_call() -> None:
    def make(kind: Any) -> Tool:
        async def pick(value: Any) -> str:
            """Pick a value."""
            return str(value)

        pick.__annotations__ = {"value": kind, "return": str}
        return Tool(func=pick)

    assert make(int).parameters["properties"]["value"]["type"] == "integer"
    assert make(str).parameters["properties"]["value"]["type"] == "string"


def test_a_wrapped_function_keeps_the_wrapped_signature() -> None:
    def make(inner: Callable[..., Any]) -> Tool:
        @functools.wraps(inner)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await inner(*args, **kwargs)

        return Tool(func=wrapper)

    async def search(query: str) -> str:
        """Search."""
        return query

    async def count(items: list[str]) -> int:
        """Search."""
        return len(items)

    assert list(make(search).parameters["properties"]) == ["query"]
    assert list(make(count).parameters["properties"]) == ["items"]


def test_renaming_or_redescribing_a_tool_changes_its_definition() -> None:
    tool = _lookup_tool()
    tool.description = "A changed description."
    tool.name = "lookup_v2"
    function = tool.shared_definition()["function"]
    assert (function["name"], function["description"]) == ("lookup_v2", "A changed description.")
    assert _lookup_tool().shared_definition()["function"]["name"] == "lookup"


def test_a_mutated_definition_copy_does_not_reach_the_shared_one() -> None:
    tool = _lookup_tool()
    tool.definition()["function"]["parameters"]["properties"].clear()
    tool.parameters["properties"].clear()
    assert set(tool.shared_definition()["function"]["parameters"]["properties"]) == {
        "key",
        "limit",
    }


class _RecordingLLM:
    """Answers at once without tools; records the tools each call was offered."""

    model_name = "recording"

    def __init__(self) -> None:
        self.offered: list[list[dict[str, Any]] | None] = []

    async def chat(
        self, messages: list[dict[str, Any]], *, tools: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        self.offered.append(tools)
        return {"choices": [{"message": {"role": "assistant", "content": "done"}}]}

    async def chat_stream(
        self, messages: list[dict[str, Any]], *, tools: Any = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError
        yield {}


async def test_a_tool_changed_between_turns_is_offered_as_it_is_now() -> None:
    tool = _lookup_tool()
    llm = _RecordingLLM()

    @llm_chat(llm_interface=llm, toolkit=[tool], stream=False)
    async def agent(message: str) -> None:
        """You are a test agent."""

    spec = agent_spec(agent)

    async def one_turn(n: int) -> list[Any]:
        state = await spec.initial_state(["hi"], {}, session_id="s", agent_call_id=f"c{n}")
        return [o async for o in run_turn(spec, state, origin=OriginContext())]

    await one_turn(1)
    tool.description = "Now it looks keys up twice."
    outputs = await one_turn(2)
    offered = llm.offered[-1]
    assert offered is not None
    assert offered[0]["function"]["description"] == "Now it looks keys up twice."
    events = [o.event for o in outputs if hasattr(o, "event")]
    start = next(e for e in events if isinstance(e, ReactStartEvent))
    call = next(e for e in events if isinstance(e, LLMCallStartEvent))
    assert start.available_tools[0]["function"]["description"] == "Now it looks keys up twice."
    # An event's copy is the user's to change: the next turn still offers the real one.
    call.tools[0]["function"]["description"] = "changed by an observer"
    await one_turn(3)
    assert llm.offered[-1][0]["function"]["description"] == "Now it looks keys up twice."  # type: ignore[index]


def test_a_subclass_that_makes_its_own_definition_is_asked_every_time() -> None:
    class Strict(Tool):
        calls = 0

        def definition(self) -> dict[str, Any]:
            Strict.calls += 1
            made = super().definition()
            made["function"]["strict"] = True
            return made

    async def lookup(key: str) -> str:
        """Look a key up."""
        return key

    strict = Strict(func=lookup)
    assert strict.shared_definition()["function"]["strict"] is True
    assert strict.shared_definition()["function"]["strict"] is True
    assert Strict.calls == 2
    assert "strict" not in Tool(func=lookup).shared_definition()["function"]
