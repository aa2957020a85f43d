"""Tools the model can call: `@tool`, `Tool`, and the helpers the ReAct loop uses.

    @tool(name="get_weather", description="Get weather for a city")
    async def get_weather(city: str, days: int = 1) -> dict[str, str]:
        '''Args:
            city: The city name.
            days: How many days to forecast.
        '''

`@tool` turns a sync or async function into a `Tool`. The JSON schema comes from the type
hints (through pydantic) and the docstring's Google-style `Args:` section; parameters
with defaults are optional. Two parameter names are reserved and never appear in the
schema: `event_emitter` (the per-call emitter; `await event_emitter.emit(name, data)`
becomes a `CustomEvent`) and `runtime` (a `ToolRuntime`: `runtime.selfref.context`, ...).
They are passed only to functions that declare them.

Calling a Tool object calls the function unchanged, as SimpleLLMFunc's decorated
functions do; the loop goes through `Tool.invoke`, which validates the model's arguments
first and runs sync functions in a worker thread.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import re
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import ErrorDetails, PydanticSerializationError, to_jsonable_python

from orchestrator.errors import AgentError, ToolError
from orchestrator.ports import SelfRefPrimitives, ToolSession
from orchestrator.runtime.emitter import NoOpEventEmitter
from orchestrator.runtime.long_output import spill_long_result

__all__ = [
    "SPECIAL_PARAMETERS",
    "Tool",
    "ToolRuntime",
    "format_tool_result",
    "parse_arguments",
    "tool",
    "toolkit_by_name",
]

# Injected by the runtime, never described to the model.
SPECIAL_PARAMETERS = frozenset({"event_emitter", "runtime"})

# What OpenAI-compatible APIs accept as a function name.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ARGS_HEADER = re.compile(r"^(\s*)(Args|Arguments|Parameters)\s*:\s*$")
_ARG_LINE = re.compile(r"^([A-Za-z_*][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
# Schema keywords whose values are data, not sub-schemas: never rewrite inside them.
_DATA_KEYWORDS = frozenset({"default", "enum", "const", "examples", "example"})


# Building an argument model and its JSON schema costs milliseconds; tools made afresh for
# every turn from the same function (SelfReference's closures) reuse the first one.
_SCHEMAS: dict[Any, tuple[type[BaseModel], dict[str, str], dict[str, Any]]] = {}
_SCHEMA_CACHE_LIMIT = 1024


def _schema_for(
    name: str,
    func: Callable[..., Any],
    signature: inspect.Signature,
    docstring: str,
    accepts_extra: bool,
) -> tuple[type[BaseModel], dict[str, str], dict[str, Any]]:
    code = getattr(func, "__code__", None)
    key: Any = None
    if code is not None:
        try:
            annotations = tuple(getattr(func, "__annotations__", {}).items())
            kwdefaults = getattr(func, "__kwdefaults__", None)
            defaults = (
                getattr(func, "__defaults__", None),
                tuple(kwdefaults.items()) if kwdefaults else None,
            )
            key = (name, code, defaults, docstring, annotations)
            hash(key)
        except (TypeError, AttributeError):
            key = None
    if key is not None and key in _SCHEMAS:
        return _SCHEMAS[key]
    model, field_names = _arguments_model(
        name, func, signature, _docstring_args(docstring), accepts_extra
    )
    built = (model, field_names, _parameters_schema(name, model))
    if key is not None and len(_SCHEMAS) < _SCHEMA_CACHE_LIMIT:
        _SCHEMAS[key] = built
    return built


class _Shape:
    """What a Tool derives from its function alone (signature, docstring, argument model,
    schema): the same for every function object made from one `def` with the same
    defaults, annotations and docstring, so tools made afresh for every turn (the
    SelfReference closures) share one instead of inspecting the function again."""

    __slots__ = (
        "accepts_extra",
        "definitions",
        "field_names",
        "injected",
        "is_async",
        "model",
        "parameters",
        "signature",
        "summary",
    )

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        docstring = inspect.getdoc(func) or ""
        self.summary = _docstring_summary(docstring)
        self.signature = inspect.signature(func)
        self.is_async = _is_async_callable(func)
        self.injected = SPECIAL_PARAMETERS & set(self.signature.parameters)
        self.accepts_extra = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in self.signature.parameters.values()
        )
        self.model, self.field_names, self.parameters = _schema_for(
            name, func, self.signature, docstring, self.accepts_extra
        )
        # (name, description) -> (the parameters it was made from, the definition sent
        # to the model); a handful per shape at most.
        self.definitions: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}


_SHAPES: dict[Any, _Shape] = {}
_DEFINITIONS_PER_SHAPE = 16


def _shape_key(name: str, func: Callable[..., Any]) -> Any:
    """The cache key of a plain function's shape, or None when it cannot be cached: only
    a plain `def` with nothing set on it (no `__wrapped__`, `__signature__`, ...) and a
    docstring is fully described by its code, defaults, annotations and docstring."""
    if type(func) is not types.FunctionType or func.__dict__ or func.__doc__ is None:
        return None
    kwdefaults = func.__kwdefaults__
    key = (
        name,
        func.__code__,
        func.__defaults__,
        tuple(kwdefaults.items()) if kwdefaults else None,
        tuple(func.__annotations__.items()),
        func.__doc__,
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _shape_of(name: str, func: Callable[..., Any]) -> _Shape:
    key = _shape_key(name, func)
    if key is None:
        return _Shape(name, func)
    shape = _SHAPES.get(key)
    if shape is None:
        shape = _Shape(name, func)
        if len(_SHAPES) < _SCHEMA_CACHE_LIMIT:
            _SHAPES[key] = shape
    return shape


class Tool:
    """A function the model can call.

    Build one with `@tool`, with `Tool(name=..., description=..., func=...)`, or by
    subclassing and defining `async def run(self, ...)` (its signature is the schema).
    """

    def __init__(
        self,
        name: str | None = None,
        description: str | None = None,
        func: Callable[..., Any] | None = None,
        *,
        best_practices: Sequence[str] | None = None,
        barrier: bool = False,
        on_abort: Callable[[dict[str, Any]], Awaitable[Any]] | None = None,
        too_long_to_file: bool = False,
    ) -> None:
        if func is None:
            if type(self).run is Tool.run:
                raise ToolError("a Tool needs a function, or a subclass that defines run()")
            func = self.run
            name = name or type(self).__name__
        self.func: Callable[..., Any] = func
        self.name: str = name or str(getattr(func, "__name__", ""))
        if not _TOOL_NAME.fullmatch(self.name):
            raise ToolError(
                f"tool name {self.name!r} is not usable: use 1-64 letters, digits, '_' or '-'"
            )
        shape = _shape_of(self.name, func)
        self._shape = shape
        self.description: str = description or shape.summary
        self.best_practices: list[str] = [p.strip() for p in best_practices or () if p.strip()]
        # A barrier tool runs after the other calls of its batch have finished.
        self.barrier = barrier
        # If the turn is aborted before this call finishes, its result is what this
        # returns for the call's arguments (instead of a "cancelled" error).
        self.on_abort = on_abort
        # A text result over TOO_LONG_TO_FILE_MAX_TOKENS goes to a file (runtime/long_output.py).
        self.too_long_to_file = too_long_to_file
        self._signature = shape.signature
        self._is_async = shape.is_async
        self._injected = shape.injected
        self._accepts_extra = shape.accepts_extra
        self._model, self._field_names, self._parameters = (
            shape.model,
            shape.field_names,
            shape.parameters,
        )
        self.__doc__ = getattr(func, "__doc__", None)
        self.__wrapped__ = func

    # -- what the model sees ---------------------------------------------------------

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments object (a copy)."""
        return copy.deepcopy(self._parameters)

    def definition(self) -> dict[str, Any]:
        """The OpenAI function-tool definition sent with each LLM call."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def shared_definition(self) -> dict[str, Any]:
        """`definition()` without a copy per call: one dict per shape, name and description,
        shared by every tool made from the same function (the loop's read-only view; the
        LLM port and events get it or copies of it, never mutate it)."""
        kind = type(self)
        if kind.definition is not Tool.definition or kind.parameters is not Tool.parameters:
            return self.definition()  # a subclass makes its own: ask it every time
        key = (self.name, self.description)
        found = self._shape.definitions.get(key)
        if found is None or found[0] is not self._parameters:
            definition = {
                "type": "function",
                "function": {
                    "name": self.name,
                    "description": self.description,
                    "parameters": self.parameters,
                },
            }
            if len(self._shape.definitions) >= _DEFINITIONS_PER_SHAPE:
                self._shape.definitions.clear()  # descriptions made per call: keep a few
            found = self._shape.definitions[key] = (self._parameters, definition)
        return found[1]

    def to_openai_tool(self) -> dict[str, Any]:
        """SimpleLLMFunc's name for `definition()`."""
        return self.definition()

    @property
    def tool_spec(self) -> dict[str, Any]:
        """Name, description and best practices, for prompt injection."""
        return {
            "name": self.name,
            "description": self.description,
            "best_practices": list(self.best_practices),
        }

    # -- running -----------------------------------------------------------------------

    async def invoke(
        self,
        arguments: Mapping[str, Any],
        *,
        event_emitter: Any = None,
        runtime: Any = None,
    ) -> Any:
        """Validate the model's arguments and run the function.

        Raises ToolError when the arguments do not fit the schema (the message lists the
        problems, for the model to fix). Exceptions raised by the function itself
        propagate unchanged.
        """
        if not isinstance(arguments, Mapping):
            raise ToolError(f"{self.name}: arguments must be a JSON object")
        values = self._validate(arguments)
        args, kwargs = self._call_arguments(values, event_emitter, runtime)
        if self._is_async:
            result = await self.func(*args, **kwargs)
        else:
            result = await asyncio.to_thread(self.func, *args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        return await self._spill(result)

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly (no validation); subclasses may override this."""
        result = self.func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return await self._spill(result)

    async def _spill(self, result: Any) -> Any:
        if self.too_long_to_file and isinstance(result, str):
            return await asyncio.to_thread(spill_long_result, self.name, result)
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r})"

    def _validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        supplied = {k: v for k, v in arguments.items() if k not in self._injected}
        try:
            parsed = self._model.model_validate(supplied)
        except ValidationError as exc:
            problems = "; ".join(_describe_error(err) for err in exc.errors())
            raise ToolError(f"{self.name}: {problems}") from None
        # Only what the model sent: the function's own defaults apply to the rest.
        values = {
            name: getattr(parsed, field)
            for field, name in self._field_names.items()
            if field in parsed.model_fields_set
        }
        values.update(parsed.model_extra or {})
        return values

    def _call_arguments(
        self, values: dict[str, Any], event_emitter: Any, runtime: Any
    ) -> tuple[list[Any], dict[str, Any]]:
        if "event_emitter" in self._injected:
            values["event_emitter"] = (
                event_emitter if event_emitter is not None else NoOpEventEmitter()
            )
        if "runtime" in self._injected:
            values["runtime"] = runtime if runtime is not None else _detached_runtime()
        args: list[Any] = []
        for param in self._signature.parameters.values():
            if param.kind is inspect.Parameter.POSITIONAL_ONLY and param.name in values:
                args.append(values.pop(param.name))
        return args, values


class ToolRuntime:
    """The `runtime` parameter of a tool: the agent's runtime primitives, and (on a
    worker) the distributed session the call runs in (`session`, else None)."""

    def __init__(
        self, selfref: SelfRefPrimitives | None = None, *, session: ToolSession | None = None
    ) -> None:
        self._selfref = selfref
        self.session = session

    @property
    def has_selfref(self) -> bool:
        return self._selfref is not None

    @property
    def selfref(self) -> SelfRefPrimitives:
        """The SelfReference primitives; AgentError if the agent has no SelfReference."""
        if self._selfref is None:
            raise AgentError(
                "runtime.selfref is not available: this agent has no SelfReference "
                "(pass self_reference=SelfReference() to llm_chat)"
            )
        return self._selfref


def _detached_runtime() -> ToolRuntime:
    """What a tool called outside a turn gets as `runtime`: no SelfReference."""
    return ToolRuntime()


@overload
def tool(name: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    name: str | None = None,
    description: str | None = None,
    *,
    best_practices: Sequence[str] | None = None,
    too_long_to_file: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    name: str | Callable[..., Any] | None = None,
    description: str | None = None,
    *,
    best_practices: Sequence[str] | None = None,
    too_long_to_file: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a sync or async function into a `Tool` (`@tool` or `@tool(name=..., ...)`).

    The name defaults to the function's name, the description to its docstring summary.
    """
    if callable(name):
        return Tool(func=name)

    def decorate(func: Callable[..., Any]) -> Tool:
        return Tool(
            name=name,
            description=description,
            func=func,
            best_practices=best_practices,
            too_long_to_file=too_long_to_file,
        )

    return decorate


# -- helpers the loop uses ----------------------------------------------------------------


def parse_arguments(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments object of one tool call, from the model's JSON text.

    Empty or missing arguments are `{}`. Anything that is not a JSON object raises a
    ToolError whose message the model can act on.
    """
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise ToolError(f"arguments must be a JSON object, got {type(raw).__name__}")
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ToolError(
            f"arguments are not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); "
            'send one JSON object, for example {"name": "value"}'
        ) from None
    if not isinstance(parsed, dict):
        raise ToolError(
            f"arguments must be a JSON object, got {_json_type(parsed)}; "
            "send one JSON object with a key per parameter"
        )
    return parsed


def format_tool_result(result: Any) -> str:
    """The text the model sees for a tool's return value.

    Strings go as they are; models, dicts, lists and other values are JSON-encoded
    (non-ASCII kept); values JSON cannot represent fall back to `str()`.
    """
    if isinstance(result, str):
        return result
    try:
        return json.dumps(to_jsonable_python(result), ensure_ascii=False)
    except (PydanticSerializationError, TypeError, ValueError):
        return str(result)


def toolkit_by_name(tools: Iterable[Tool]) -> dict[str, Tool]:
    """Index a toolkit by tool name; two tools with one name is an error."""
    by_name: dict[str, Tool] = {}
    for item in tools:
        if not isinstance(item, Tool):
            raise ToolError(f"{item!r} is not a tool: decorate the function with @tool")
        if item.name in by_name:
            raise ToolError(f"two tools are named {item.name!r}: tool names must be unique")
        by_name[item.name] = item
    return by_name


# -- docstrings -------------------------------------------------------------------------


def _docstring_summary(docstring: str) -> str:
    """The docstring's first paragraph on one line (stopping at a section header)."""
    lines: list[str] = []
    for line in docstring.strip().splitlines():
        if not line.strip() or _ARGS_HEADER.match(line):
            break
        lines.append(line.strip())
    return " ".join(lines)


def _docstring_args(docstring: str) -> dict[str, str]:
    """Parameter descriptions from a Google-style `Args:` section."""
    lines = docstring.splitlines()
    for index, line in enumerate(lines):
        header = _ARGS_HEADER.match(line)
        if header:
            return _parse_args_block(lines[index + 1 :], len(header.group(1)))
    return {}


def _parse_args_block(lines: list[str], header_indent: int) -> dict[str, str]:
    descriptions: dict[str, str] = {}
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        if entry_indent is None:
            entry_indent = indent
        match = _ARG_LINE.match(line.strip())
        if indent == entry_indent and match:
            current = match.group(1).lstrip("*")
            descriptions[current] = match.group(2).strip()
        elif current is not None:
            descriptions[current] = f"{descriptions[current]} {line.strip()}".strip()
    return descriptions


# -- schema and validation ----------------------------------------------------------------


def _is_async_callable(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    # A callable object whose __call__ is async.
    return inspect.iscoroutinefunction(type(func).__call__)


def _resolve_hints(func: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    try:
        return get_type_hints(func, include_extras=True)
    except (NameError, TypeError, AttributeError, SyntaxError):
        # A hint that cannot be resolved (a name local to a function) is one parameter's
        # problem, not the whole tool's: resolve what we can, the rest accept anything.
        hints: dict[str, Any] = {}
        namespace = getattr(func, "__globals__", {})
        for name, param in signature.parameters.items():
            annotation = param.annotation
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace)
                except (NameError, TypeError, AttributeError, SyntaxError):
                    annotation = Any
            hints[name] = annotation
        return hints


def _arguments_model(
    tool_name: str,
    func: Callable[..., Any],
    signature: inspect.Signature,
    descriptions: dict[str, str],
    accepts_extra: bool,
) -> tuple[type[BaseModel], dict[str, str]]:
    """A pydantic model of the model-facing parameters, and field name -> parameter name.

    Fields get neutral names with the parameter name as alias, so parameters called
    `json`, `schema` or `_private` cannot collide with BaseModel's own attributes.
    """
    hints = _resolve_hints(func, signature)
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    for index, (name, param) in enumerate(signature.parameters.items()):
        if name in SPECIAL_PARAMETERS or name == "self":
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(name, Any)
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        field = f"arg_{index}"
        fields[field] = (
            annotation,
            Field(default, alias=name, description=descriptions.get(name)),
        )
        names[field] = name
    config = ConfigDict(extra="allow" if accepts_extra else "forbid", arbitrary_types_allowed=True)
    try:
        model = create_model(f"{tool_name}_arguments", __config__=config, **fields)
    except Exception as exc:
        raise ToolError(f"{tool_name}: cannot build an argument model: {exc}") from exc
    return model, names


def _parameters_schema(tool_name: str, model: type[BaseModel]) -> dict[str, Any]:
    try:
        raw = model.model_json_schema(by_alias=True)
    except Exception as exc:
        raise ToolError(
            f"{tool_name}: a parameter type has no JSON schema ({exc}); "
            "use JSON-friendly types or pydantic models"
        ) from exc
    definitions = raw.pop("$defs", {})
    cleaner = _SchemaCleaner(definitions)
    schema: dict[str, Any] = cleaner.clean(raw, frozenset())
    if cleaner.kept_refs:
        schema["$defs"] = {k: cleaner.clean(v, frozenset({k})) for k, v in definitions.items()}
    schema.setdefault("properties", {})
    schema["type"] = "object"
    return schema


class _SchemaCleaner:
    """Drops pydantic's titles and inlines `$ref`s (recursive models keep theirs)."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions
        self.kept_refs = False

    def clean(self, node: Any, expanding: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [self.clean(item, expanding) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return self._inline(node, ref.removeprefix("#/$defs/"), expanding)
        cleaned: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                cleaned[key] = {name: self.clean(sub, expanding) for name, sub in value.items()}
            elif key in _DATA_KEYWORDS:
                cleaned[key] = value
            else:
                cleaned[key] = self.clean(value, expanding)
        return cleaned

    def _inline(self, node: dict[str, Any], name: str, expanding: frozenset[str]) -> Any:
        if name in expanding or name not in self.definitions:
            self.kept_refs = True
            return dict(node)
        target = self.clean(self.definitions[name], expanding | {name})
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **self.clean(siblings, expanding)}


def _describe_error(error: ErrorDetails) -> str:
    loc = error.get("loc", ())
    where = ".".join(str(part) for part in loc) or "arguments"
    kind = error.get("type", "")
    if kind == "missing":
        return f"argument {where!r} is required"
    if kind == "extra_forbidden":
        return f"unexpected argument {where!r}"
    got = _short_repr(error.get("input"))
    return f"argument {where!r}: {error.get('msg', 'invalid value')} (got {got})"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__
