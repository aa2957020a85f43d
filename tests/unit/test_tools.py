"""@tool and Tool: schemas from hints and docstrings, validation, injection, results."""

from __future__ import annotations

import asyncio
import enum
import threading
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

# pydantic needs typing_extensions' TypedDict before Python 3.12.
from typing_extensions import TypedDict

from orchestrator.errors import AgentError, ToolError
from orchestrator.runtime.selfref import SelfReference, make_tool_runtime
from orchestrator.runtime.tools import (
    Tool,
    ToolRuntime,
    format_tool_result,
    parse_arguments,
    tool,
    toolkit_by_name,
)


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Location(BaseModel):
    lat: float = Field(description="Latitude")
    lng: float


class Window(TypedDict):
    start: int
    end: int


class Node(BaseModel):
    name: str
    children: list[Node] = []


@tool(name="get_weather", description="Get weather information for a city")
async def get_weather(city: str, days: int = 1, unit: Unit = Unit.CELSIUS) -> dict[str, Any]:
    """Look up the weather.

    Args:
        city: The city name.
        days (int): How many days to forecast,
            counting today.
        unit: Temperature unit.
    """
    return {"city": city, "days": days, "unit": unit}


def params(t: Tool) -> dict[str, Any]:
    return t.definition()["function"]["parameters"]


# -- definition ------------------------------------------------------------------------


def test_definition_is_an_openai_function_tool() -> None:
    """definition() has the OpenAI function-tool shape with name and description."""
    definition = get_weather.definition()
    assert definition["type"] == "function"
    assert definition["function"]["name"] == "get_weather"
    assert definition["function"]["description"] == "Get weather information for a city"
    assert params(get_weather)["type"] == "object"
    assert get_weather.to_openai_tool() == definition


def test_schema_comes_from_hints_docstring_args_and_defaults() -> None:
    """Types from hints, descriptions from `Args:` (continuation lines joined), defaults
    make a parameter optional."""
    schema = params(get_weather)
    props = schema["properties"]
    assert props["city"] == {"type": "string", "description": "The city name."}
    assert props["days"]["type"] == "integer"
    assert props["days"]["default"] == 1
    assert props["days"]["description"] == "How many days to forecast, counting today."
    assert props["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert schema["required"] == ["city"]


def test_name_and_description_default_to_function_name_and_docstring_summary() -> None:
    """Bare @tool names the tool after the function and describes it by its summary."""

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers
        and return the sum.

        Args:
            a: First.
            b: Second.
        """
        return a + b

    assert add.name == "add"
    assert add.description == "Add two integers and return the sum."

    @tool()
    async def noop() -> None:
        """Do nothing."""

    assert (noop.name, noop.description) == ("noop", "Do nothing.")


def test_schema_covers_containers_optionals_literals_and_models() -> None:
    """list, dict, tuple, Optional, X | None, Literal, pydantic and TypedDict all map to
    JSON schema; nested models are inlined and pydantic titles dropped."""

    @tool
    async def complex_args(
        tags: list[str],
        weights: dict[str, float],
        pair: tuple[int, str],
        mode: Literal["fast", "slow"],
        where: Location,
        window: Window,
        note: str | None = None,
        anything=None,
    ) -> None:
        """Many shapes."""

    props = params(complex_args)["properties"]
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["weights"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert props["where"]["properties"]["lat"] == {"type": "number", "description": "Latitude"}
    assert props["where"]["required"] == ["lat", "lng"]
    assert props["window"]["properties"]["start"] == {"type": "integer"}
    assert {"type": "null"} in props["note"]["anyOf"]
    assert "type" not in props["anything"]
    text = str(params(complex_args))
    assert "title" not in text
    assert "$ref" not in text


def test_recursive_models_keep_their_definitions() -> None:
    """A self-referencing model cannot be inlined: its $defs stay so the schema resolves."""

    @tool
    async def tree(root: Node) -> None:
        """Walk a tree."""

    schema = params(tree)
    assert "Node" in schema["$defs"]
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}


def test_parameters_named_like_basemodel_attributes_work() -> None:
    """Parameter names such as `json` or `schema` do not collide with pydantic internals."""

    @tool
    async def odd_names(json: str, schema: int, copy: bool = False) -> dict[str, Any]:
        """Odd names."""
        return {"json": json, "schema": schema, "copy": copy}

    assert set(params(odd_names)["properties"]) == {"json", "schema", "copy"}


async def test_parameters_named_like_basemodel_attributes_validate() -> None:
    """...and they validate and reach the function under their own names."""

    @tool
    async def odd_names(json: str, schema: int) -> dict[str, Any]:
        """Odd names."""
        return {"json": json, "schema": schema}

    assert await odd_names.invoke({"json": "x", "schema": "2"}) == {"json": "x", "schema": 2}


def test_special_parameters_never_appear_in_the_schema() -> None:
    """event_emitter and runtime are runtime-injected, not model arguments."""

    @tool
    async def with_specials(query: str, event_emitter: Any = None, runtime: Any = None) -> str:
        """Search.

        Args:
            query: What to search.
            event_emitter: Injected.
            runtime: Injected.
        """
        return query

    schema = params(with_specials)
    assert set(schema["properties"]) == {"query"}
    assert schema["required"] == ["query"]


def test_invalid_tool_names_are_rejected() -> None:
    """Names the OpenAI API would reject fail at definition time."""
    with pytest.raises(ToolError, match="not usable"):
        tool(name="has spaces")(lambda: None)


# -- calling ---------------------------------------------------------------------------


async def test_calling_the_tool_object_calls_the_function() -> None:
    """A decorated function still works as a plain function (pass-through)."""
    assert await get_weather("Paris") == {"city": "Paris", "days": 1, "unit": Unit.CELSIUS}

    @tool
    def double(x: int) -> int:
        """Double."""
        return x * 2

    assert double(4) == 8


async def test_invoke_validates_and_coerces_arguments() -> None:
    """Lax pydantic coercion: "3" becomes 3, enum values become members, defaults apply."""
    result = await get_weather.invoke({"city": "Paris", "days": "3", "unit": "fahrenheit"})
    assert result == {"city": "Paris", "days": 3, "unit": Unit.FAHRENHEIT}
    assert await get_weather.invoke({"city": "Oslo"}) == {
        "city": "Oslo",
        "days": 1,
        "unit": Unit.CELSIUS,
    }


async def test_invoke_builds_pydantic_model_arguments() -> None:
    """A pydantic-typed parameter receives a model instance."""

    @tool
    async def locate(where: Location) -> Location:
        """Locate."""
        return where

    assert await locate.invoke({"where": {"lat": "1.5", "lng": 2}}) == Location(lat=1.5, lng=2)


async def test_missing_argument_is_a_tool_error_naming_it() -> None:
    """A missing required argument gives a message the model can act on."""
    with pytest.raises(ToolError) as caught:
        await get_weather.invoke({})
    assert str(caught.value) == "get_weather: argument 'city' is required"


async def test_all_validation_problems_are_listed() -> None:
    """Wrong types and unexpected arguments are reported together."""
    with pytest.raises(ToolError) as caught:
        await get_weather.invoke({"city": "Paris", "days": "many", "color": "red"})
    message = str(caught.value)
    assert message.startswith("get_weather: ")
    assert "argument 'days'" in message
    assert "'many'" in message
    assert "unexpected argument 'color'" in message


async def test_functions_with_var_kwargs_accept_extra_arguments() -> None:
    """A tool declaring **kwargs receives arguments beyond its named ones."""

    @tool
    async def flexible(name: str, **extra: Any) -> dict[str, Any]:
        """Flexible."""
        return {"name": name, **extra}

    assert await flexible.invoke({"name": "a", "color": "red"}) == {"name": "a", "color": "red"}


async def test_exceptions_from_the_function_propagate_unchanged() -> None:
    """The loop, not invoke, decides how to report a tool's own failure."""

    @tool
    async def broken() -> None:
        """Broken."""
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await broken.invoke({})


async def test_sync_tools_run_off_the_event_loop_thread() -> None:
    """A sync tool runs in a worker thread, so it cannot block the loop."""
    loop_thread = threading.get_ident()

    @tool
    def where_am_i() -> int:
        """Report the thread."""
        return threading.get_ident()

    assert await where_am_i.invoke({}) != loop_thread


async def test_slow_sync_tool_does_not_block_other_tasks() -> None:
    """While a blocking sync tool runs, other coroutines keep making progress."""
    release = threading.Event()

    @tool
    def blocking() -> str:
        """Block until released."""
        assert release.wait(timeout=5)
        return "done"

    async def releaser() -> None:
        await asyncio.sleep(0.01)
        release.set()

    result, _ = await asyncio.wait_for(asyncio.gather(blocking.invoke({}), releaser()), 5)
    assert result == "done"


async def test_async_tools_run_on_the_loop() -> None:
    """An async tool is awaited on the caller's loop."""
    loop_thread = threading.get_ident()

    @tool
    async def where_am_i() -> int:
        """Report the thread."""
        return threading.get_ident()

    assert await where_am_i.invoke({}) == loop_thread


async def test_event_emitter_is_injected_only_when_declared() -> None:
    """A tool declaring event_emitter gets the per-call emitter; others are not passed it."""
    emitted: list[tuple[str, Any]] = []

    class Recorder:
        async def emit(self, name: str, data: Any = None) -> None:
            emitted.append((name, data))

    @tool
    async def progress(step: int, event_emitter: Any = None) -> str:
        """Report progress."""
        await event_emitter.emit("progress", {"step": step})
        return "ok"

    @tool
    async def plain(step: int) -> int:
        """No emitter."""
        return step

    recorder = Recorder()
    assert await progress.invoke({"step": 2}, event_emitter=recorder) == "ok"
    assert emitted == [("progress", {"step": 2})]
    assert await plain.invoke({"step": 3}, event_emitter=recorder) == 3


async def test_event_emitter_defaults_to_a_no_op() -> None:
    """Invoked without an emitter, a tool that emits still runs."""

    @tool
    async def progress(event_emitter: Any) -> str:
        """Report progress."""
        await event_emitter.emit("progress", 1)
        return "ok"

    assert await progress.invoke({}) == "ok"


async def test_model_cannot_smuggle_special_parameters() -> None:
    """An `event_emitter` key in the model's arguments is ignored, not passed through."""
    seen: list[Any] = []

    @tool
    async def progress(event_emitter: Any = None) -> None:
        """Report progress."""
        seen.append(event_emitter)

    sentinel = object()

    class Emitter:
        async def emit(self, name: str, data: Any = None) -> None: ...

    emitter = Emitter()
    await progress.invoke({"event_emitter": sentinel}, event_emitter=emitter)
    assert seen == [emitter]


async def test_runtime_is_injected_only_when_declared() -> None:
    """A tool declaring `runtime` gets the ToolRuntime; sync tools get it too."""
    ctx = SelfReference().bind("agent")
    runtime = make_tool_runtime(ctx)

    @tool
    def whoami(runtime: ToolRuntime) -> str:
        """Return the active memory key."""
        return runtime.selfref.context.active_key

    @tool
    async def plain() -> str:
        """No runtime."""
        return "plain"

    assert await whoami.invoke({}, runtime=runtime) == "agent"
    assert await plain.invoke({}, runtime=runtime) == "plain"


async def test_runtime_without_selfref_raises_a_clear_agent_error() -> None:
    """Without a SelfReference, using runtime.selfref explains what is missing."""

    @tool
    async def needs_memory(runtime: ToolRuntime) -> None:
        """Needs memory."""
        _ = runtime.selfref.context

    with pytest.raises(AgentError, match="no SelfReference"):
        await needs_memory.invoke({})


async def test_subclass_with_run_is_a_tool() -> None:
    """SimpleLLMFunc-style subclasses define async run(); its signature is the schema."""

    class Echo(Tool):
        async def run(self, text: str) -> str:
            """Echo text back."""
            return text

    echo = Echo(name="echo")
    assert params(echo)["required"] == ["text"]
    assert echo.description == "Echo text back."
    assert await echo.invoke({"text": "hi"}) == "hi"


# -- the loop's helpers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, {}),
        ("", {}),
        ("   ", {}),
        ('{"city": "Paris"}', {"city": "Paris"}),
        ({"city": "Paris"}, {"city": "Paris"}),
    ],
)
def test_parse_arguments_accepts_objects_and_empty_input(raw: Any, expected: Any) -> None:
    """Empty or missing arguments are {}; JSON objects and dicts pass through."""
    assert parse_arguments(raw) == expected


def test_parse_arguments_rejects_malformed_json_with_a_usable_message() -> None:
    """Malformed JSON is a ToolError telling the model what went wrong."""
    with pytest.raises(ToolError, match="arguments are not valid JSON"):
        parse_arguments('{"city": "Par')


@pytest.mark.parametrize("raw", ["[1, 2]", '"text"', "3", "null"])
def test_parse_arguments_rejects_non_objects(raw: str) -> None:
    """Valid JSON that is not an object is a ToolError too."""
    with pytest.raises(ToolError, match="must be a JSON object"):
        parse_arguments(raw)


def test_format_tool_result() -> None:
    """Strings as-is; models, dicts and lists as JSON keeping non-ASCII; odd values str()."""

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    assert format_tool_result("plain text") == "plain text"
    assert format_tool_result({"city": "東京", "n": 1}) == '{"city": "東京", "n": 1}'
    assert format_tool_result([1, "a"]) == '[1, "a"]'
    assert format_tool_result(Location(lat=1, lng=2)) == '{"lat": 1.0, "lng": 2.0}'
    assert format_tool_result(Unit.CELSIUS) == '"celsius"'
    assert format_tool_result(None) == "null"
    assert format_tool_result(Opaque()) == "opaque!"


def test_toolkit_by_name_indexes_and_rejects_duplicates() -> None:
    """Tools are found by name; two tools with one name is a ToolError."""

    @tool(name="get_weather")
    async def other(city: str) -> str:
        """Other."""
        return city

    assert toolkit_by_name([get_weather]) == {"get_weather": get_weather}
    with pytest.raises(ToolError, match="get_weather"):
        toolkit_by_name([get_weather, other])


def test_toolkit_by_name_rejects_undecorated_functions() -> None:
    """A plain function in a toolkit is reported, with the fix."""

    async def undecorated() -> None: ...

    with pytest.raises(ToolError, match="@tool"):
        toolkit_by_name([undecorated])
