"""The ReAct event vocabulary: the 14 loop events, `CustomEvent`, `EventOrigin`, and the
two things an agent yields (`ResponseYield`, `EventYield`).

Every value here is a pydantic model with a lossless JSON round trip: the same bytes
travel from a worker to a Redis stream to a reader and decode to an equal object.
Field names follow SimpleLLMFunc (`SimpleLLMFunc/hooks/events.py`) so user code that
reads `event.tool_name` or `event.accumulated_content` keeps working. Where theirs holds
a Python object that cannot cross a process (`error: Exception`), ours holds its text.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    model_validator,
)
from pydantic_core import core_schema

WIRE_VERSION = 1

Message = dict[str, Any]
MessageList = list[Message]


class ReActEventType(enum.StrEnum):
    REACT_START = "react_start"
    REACT_ITERATION_START = "react_iteration_start"
    LLM_CALL_START = "llm_call_start"
    LLM_CHUNK_ARRIVE = "llm_chunk_arrive"
    LLM_CALL_END = "llm_call_end"
    LLM_CALL_ERROR = "llm_call_error"
    TOOL_CALLS_BATCH_START = "tool_calls_batch_start"
    TOOL_CALL_START = "tool_call_start"
    TOOL_CALL_ARGUMENTS_DELTA = "tool_call_arguments_delta"
    TOOL_CALL_END = "tool_call_end"
    TOOL_CALL_ERROR = "tool_call_error"
    TOOL_CALLS_BATCH_END = "tool_calls_batch_end"
    REACT_ITERATION_END = "react_iteration_end"
    REACT_END = "react_end"
    CUSTOM_EVENT = "custom_event"


def _now() -> datetime:
    return datetime.now(UTC)


def _attr_view(value: Any) -> Any:
    """Dicts (also inside lists) seen through `Payload`, so attributes reach their keys."""
    if isinstance(value, dict) and not isinstance(value, Payload):
        return Payload(value)
    if isinstance(value, list):
        return [_attr_view(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    """A provider object (an openai/pydantic model, a dataclass-like) as plain JSON data."""
    if isinstance(value, dict):
        return value  # the common case, first: this runs for every streamed chunk
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json", exclude_unset=True)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return to_dict()
    return value


class Payload(dict[str, Any]):
    """A JSON object that also reads like the provider's object: `usage.prompt_tokens`,
    `chunk.choices[0].delta.content`, as well as `usage["prompt_tokens"]`.

    It is a dict (it serializes, compares and copies as one); attribute reads go to its
    keys, nested objects and lists of objects included. A missing key is an
    AttributeError, so `getattr(usage, "cached_tokens", 0)` works.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return _attr_view(self[name])
        except KeyError:
            raise AttributeError(f"payload has no field {name!r}") from None

    @classmethod
    def of(cls, value: Any) -> Payload:
        """Validate a dict, an existing Payload or a provider model into a Payload."""
        value = _plain(value)
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a JSON object, not {type(value).__name__}")
        return value if isinstance(value, Payload) else cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # One plain validator (this runs for every streamed chunk); serialized as a dict.
        # One Python call per value (this runs for every streamed chunk); serialized by
        # the dict schema, as plain dicts are.
        return core_schema.no_info_wrap_validator_function(
            cls._validate, core_schema.dict_schema(core_schema.str_schema())
        )

    @classmethod
    def _validate(cls, value: Any, handler: core_schema.ValidatorFunctionWrapHandler) -> Payload:
        if type(value) is cls:
            return value
        if type(value) is dict:
            return cls(value)
        if value is None:
            return cls()  # SimpleLLMFunc's "no chunk/response yet"
        return cls(handler(_plain(value)))


def _error_text(value: Any) -> Any:
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    return "" if value is None else value


def _exception_as_text(value: Any) -> Any:
    return _error_text(value) if isinstance(value, BaseException) else value


def _none_as_list(value: Any) -> Any:
    return [] if value is None else value


def _none_as_dict(value: Any) -> Any:
    return {} if value is None else value


# SimpleLLMFunc passes None for "no tools" / "no messages" and exceptions as `error`.
# Field-level validators (they run only for values actually given, so the hot path of
# building chunk events pays nothing for them).
Messages = Annotated[MessageList, BeforeValidator(_none_as_list)]
Items = Annotated[list[dict[str, Any]], BeforeValidator(_none_as_list)]
JSONObject = Annotated[dict[str, Any], BeforeValidator(_none_as_dict)]
ErrorText = Annotated[str, BeforeValidator(_error_text)]


def _fill_error_details(data: Any) -> Any:
    """An exception given as `error`: its type and text fill `error_type` and
    `error_message` when those are left out."""
    if isinstance(data, dict) and isinstance(data.get("error"), BaseException):
        exc = data["error"]
        return {
            **data,
            "error_type": data.get("error_type") or type(exc).__name__,
            "error_message": data.get("error_message") or str(exc),
        }
    return data


class _Model(BaseModel):
    # Redis contents are untrusted input: unknown fields are ignored, not trusted.
    model_config = ConfigDict(extra="ignore", frozen=False, arbitrary_types_allowed=False)


class ReActEvent(_Model):
    """Fields every event carries.

    Events accept what SimpleLLMFunc's accept: `None` for a list or dict field (it reads
    back as empty), an exception object as `error` (stored as its text, with
    `error_type` / `error_message` filled in when left out), and provider objects (an
    openai `CompletionUsage`, a chunk) for the JSON payloads, which then read both ways:
    `event.usage.prompt_tokens` and `event.usage["prompt_tokens"]`.
    """

    event_type: ReActEventType
    timestamp: datetime = Field(default_factory=_now)
    trace_id: str = ""
    func_name: str = ""
    iteration: int = 0
    extra: JSONObject = Field(default_factory=dict)


class ReactStartEvent(ReActEvent):
    event_type: Literal[ReActEventType.REACT_START] = ReActEventType.REACT_START
    user_task_prompt: str = ""
    initial_messages: Messages = Field(default_factory=list)
    available_tools: Items = Field(default_factory=list)


class ReactIterationStartEvent(ReActEvent):
    event_type: Literal[ReActEventType.REACT_ITERATION_START] = ReActEventType.REACT_ITERATION_START
    current_messages: Messages = Field(default_factory=list)


class LLMCallStartEvent(ReActEvent):
    event_type: Literal[ReActEventType.LLM_CALL_START] = ReActEventType.LLM_CALL_START
    messages: Messages = Field(default_factory=list)
    tools: Items = Field(default_factory=list)
    llm_kwargs: JSONObject = Field(default_factory=dict)
    stream: bool = False


class LLMChunkArriveEvent(ReActEvent):
    event_type: Literal[ReActEventType.LLM_CHUNK_ARRIVE] = ReActEventType.LLM_CHUNK_ARRIVE
    chunk: Payload = Field(default_factory=Payload)
    accumulated_content: str = ""
    chunk_index: int = 0


class LLMCallEndEvent(ReActEvent):
    event_type: Literal[ReActEventType.LLM_CALL_END] = ReActEventType.LLM_CALL_END
    response: Payload = Field(default_factory=Payload)
    messages: Messages = Field(default_factory=list)
    tool_calls: Items = Field(default_factory=list)
    execution_time: float = 0.0
    usage: Payload | None = None
    content: str = ""


class LLMCallErrorEvent(ReActEvent):
    event_type: Literal[ReActEventType.LLM_CALL_ERROR] = ReActEventType.LLM_CALL_ERROR
    error: ErrorText = ""
    error_message: str = ""
    error_type: str = ""
    messages: Messages = Field(default_factory=list)
    llm_kwargs: JSONObject = Field(default_factory=dict)

    _error_details = model_validator(mode="before")(_fill_error_details)


class ToolCallsBatchStartEvent(ReActEvent):
    event_type: Literal[ReActEventType.TOOL_CALLS_BATCH_START] = (
        ReActEventType.TOOL_CALLS_BATCH_START
    )
    tool_calls: Items = Field(default_factory=list)
    batch_size: int = 0


class ToolCallStartEvent(ReActEvent):
    event_type: Literal[ReActEventType.TOOL_CALL_START] = ReActEventType.TOOL_CALL_START
    tool_name: str = ""
    tool_call_id: str = ""
    arguments: JSONObject = Field(default_factory=dict)
    tool_call: JSONObject = Field(default_factory=dict)


class ToolCallArgumentsDeltaEvent(ReActEvent):
    event_type: Literal[ReActEventType.TOOL_CALL_ARGUMENTS_DELTA] = (
        ReActEventType.TOOL_CALL_ARGUMENTS_DELTA
    )
    tool_name: str = ""
    tool_call_id: str = ""
    argname: str = ""
    argcontent_delta: str = ""
    # The raw JSON text delta as the model streamed it (argname/argcontent_delta are a
    # best-effort per-argument view of the same bytes).
    delta: str = ""


class ToolCallEndEvent(ReActEvent):
    event_type: Literal[ReActEventType.TOOL_CALL_END] = ReActEventType.TOOL_CALL_END
    tool_name: str = ""
    tool_call_id: str = ""
    arguments: JSONObject = Field(default_factory=dict)
    result: Any = None
    execution_time: float = 0.0
    success: bool = True


class ToolCallErrorEvent(ReActEvent):
    event_type: Literal[ReActEventType.TOOL_CALL_ERROR] = ReActEventType.TOOL_CALL_ERROR
    tool_name: str = ""
    tool_call_id: str = ""
    arguments: JSONObject = Field(default_factory=dict)
    error: ErrorText = ""
    error_message: str = ""
    error_type: str = ""
    execution_time: float = 0.0

    _error_details = model_validator(mode="before")(_fill_error_details)


class ToolCallResult(_Model):
    tool_name: str
    tool_call_id: str
    result: Any = None
    execution_time: float = 0.0
    success: bool = True
    error: Annotated[str | None, BeforeValidator(_exception_as_text)] = None


class ToolCallsBatchEndEvent(ReActEvent):
    event_type: Literal[ReActEventType.TOOL_CALLS_BATCH_END] = ReActEventType.TOOL_CALLS_BATCH_END
    tool_results: Annotated[list[ToolCallResult], BeforeValidator(_none_as_list)] = Field(
        default_factory=list
    )
    batch_size: int = 0
    total_execution_time: float = 0.0
    success_count: int = 0
    error_count: int = 0


class ReactIterationEndEvent(ReActEvent):
    event_type: Literal[ReActEventType.REACT_ITERATION_END] = ReActEventType.REACT_ITERATION_END
    messages: Messages = Field(default_factory=list)
    iteration_time: float = 0.0
    tool_calls_count: int = 0


class ReactEndEvent(ReActEvent):
    event_type: Literal[ReActEventType.REACT_END] = ReActEventType.REACT_END
    final_response: str = ""
    final_messages: Messages = Field(default_factory=list)
    total_iterations: int = 0
    total_execution_time: float = 0.0
    total_tool_calls: int = 0
    total_llm_calls: int = 0
    total_token_usage: Payload | None = None

    @property
    def response(self) -> str:
        """The final answer's text (the seed documents' name for `final_response`)."""
        return self.final_response


class CustomEvent(ReActEvent):
    event_type: Literal[ReActEventType.CUSTOM_EVENT] = ReActEventType.CUSTOM_EVENT
    event_name: str = ""
    data: Any = None
    tool_name: str | None = None
    tool_call_id: str | None = None


AnyEvent = Annotated[
    ReactStartEvent
    | ReactIterationStartEvent
    | LLMCallStartEvent
    | LLMChunkArriveEvent
    | LLMCallEndEvent
    | LLMCallErrorEvent
    | ToolCallsBatchStartEvent
    | ToolCallStartEvent
    | ToolCallArgumentsDeltaEvent
    | ToolCallEndEvent
    | ToolCallErrorEvent
    | ToolCallsBatchEndEvent
    | ReactIterationEndEvent
    | ReactEndEvent
    | CustomEvent,
    Field(discriminator="event_type"),
]

EVENT_CLASSES: tuple[type[ReActEvent], ...] = (
    ReactStartEvent,
    ReactIterationStartEvent,
    LLMCallStartEvent,
    LLMChunkArriveEvent,
    LLMCallEndEvent,
    LLMCallErrorEvent,
    ToolCallsBatchStartEvent,
    ToolCallStartEvent,
    ToolCallArgumentsDeltaEvent,
    ToolCallEndEvent,
    ToolCallErrorEvent,
    ToolCallsBatchEndEvent,
    ReactIterationEndEvent,
    ReactEndEvent,
    CustomEvent,
)


class EventOrigin(_Model):
    """Where an event came from in the call tree: route lanes and collectors by it."""

    session_id: str
    agent_call_id: str
    event_seq: int
    parent_agent_call_id: str | None = None
    fork_id: str | None = None
    fork_depth: int = 0
    fork_seq: int | None = None
    selfref_instance_id: str | None = None
    source_memory_key: str | None = None
    memory_key: str | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


class ResponseYield(_Model):
    """The agent's answer: the response (text, or the provider's raw JSON) and the history."""

    response: Any = None
    messages: Messages = Field(default_factory=list)
    type: Literal["response"] = "response"
    # Present when the response came from a run (distributed path): which call produced it.
    origin: EventOrigin | None = None
    # The Redis stream entry id this output was read from (readers resume after it).
    # Not part of the wire payload: the stream assigns it.
    stream_id: str | None = Field(default=None, exclude=True)


class EventYield(_Model):
    """One lifecycle event and its origin.

    Attribute reads that EventYield does not define fall through to the event, so code
    written against `events_only` yielding bare events (`evt.event_type`) also works.
    """

    event: AnyEvent
    origin: EventOrigin
    type: Literal["event"] = "event"
    # The Redis stream entry id this output was read from (readers resume after it).
    stream_id: str | None = Field(default=None, exclude=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattr__(name)  # type: ignore[misc]
        return getattr(self.event, name)


ReactOutput = Annotated[ResponseYield | EventYield, Field(discriminator="type")]

_OUTPUT_ADAPTER: TypeAdapter[ResponseYield | EventYield] = TypeAdapter(ReactOutput)
_EVENT_ADAPTER: TypeAdapter[ReActEvent] = TypeAdapter(AnyEvent)


def chunk_text(chunk: Mapping[str, Any]) -> str:
    """The text delta of one chat.completion.chunk ("" for usage-only or tool chunks)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) else ""


# Each event class's own serializer, and the origin's: an EventYield is encoded from
# them (see `output_to_json`).
_EVENT_SERIALIZERS = {cls: cls.__pydantic_serializer__ for cls in EVENT_CLASSES}
_ORIGIN_SERIALIZER = EventOrigin.__pydantic_serializer__


def output_to_json(output: ResponseYield | EventYield) -> bytes:
    """Encode one agent output for the wire (the bytes of `output.model_dump_json()`,
    without making a str of them first).

    An EventYield of one of our event classes is put together from its event's and its
    origin's JSON, in its fields' order: the same bytes, for half the CPU of the
    model's own serializer, which first matches the event against the 15 members of the
    event union (this runs for every event a worker publishes). Anything else (an event
    subclass, which the union serializes as its declared class) takes the model's path.
    """
    if type(output) is EventYield and output.type == "event":
        event, origin = output.event, output.origin
        serializer = _EVENT_SERIALIZERS.get(type(event))
        if serializer is not None and type(origin) is EventOrigin:
            return b"".join(
                (
                    b'{"event":',
                    serializer.to_json(event),
                    b',"origin":',
                    _ORIGIN_SERIALIZER.to_json(origin),
                    b',"type":"event"}',
                )
            )
    return output.__pydantic_serializer__.to_json(output)


def output_from_json(data: bytes | str | Mapping[str, Any]) -> ResponseYield | EventYield:
    """Decode (and validate) one agent output from the wire.

    Raises pydantic.ValidationError on anything that is not a valid output.
    """
    if isinstance(data, Mapping):
        return _OUTPUT_ADAPTER.validate_python(data)
    return _OUTPUT_ADAPTER.validate_json(data)


def event_from_dict(data: Mapping[str, Any]) -> ReActEvent:
    return _EVENT_ADAPTER.validate_python(data)
