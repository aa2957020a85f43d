"""Event types, filters and the abort signal, at the import path SimpleLLMFunc users know.

`from SimpleLLMFunc.hooks import X` becomes `from orchestrator.hooks import X`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from functools import wraps
from typing import Any, TypeGuard, TypeVar

import structlog

from orchestrator.events import (
    CustomEvent,
    EventOrigin,
    EventYield,
    LLMCallEndEvent,
    LLMCallErrorEvent,
    LLMCallStartEvent,
    LLMChunkArriveEvent,
    ReactEndEvent,
    ReActEvent,
    ReActEventType,
    ReactIterationEndEvent,
    ReactIterationStartEvent,
    ReactOutput,
    ReactStartEvent,
    ResponseYield,
    ToolCallArgumentsDeltaEvent,
    ToolCallEndEvent,
    ToolCallErrorEvent,
    ToolCallResult,
    ToolCallsBatchEndEvent,
    ToolCallsBatchStartEvent,
    ToolCallStartEvent,
)
from orchestrator.runtime.agent import AGENT_ATTRIBUTE, AgentSpec
from orchestrator.runtime.emitter import NoOpEventEmitter, ToolEventEmitter
from orchestrator.runtime.function import FunctionSpec, value_of
from orchestrator.runtime.input_stream import (
    AgentInputRouter,
    InputRouteResult,
    ToolInputRequest,
    UserInputEvent,
)
from orchestrator.signals import ABORT_SIGNAL_PARAM, EVENT_OBSERVER_PARAM, AbortSignal

__all__ = [
    "ABORT_SIGNAL_PARAM",
    "AbortSignal",
    "AgentInputRouter",
    "CustomEvent",
    "EventOrigin",
    "EventYield",
    "InputRouteResult",
    "LLMCallEndEvent",
    "LLMCallErrorEvent",
    "LLMCallStartEvent",
    "LLMChunkArriveEvent",
    "NoOpEventEmitter",
    "ReActEvent",
    "ReActEventType",
    "ReactEndEvent",
    "ReactIterationEndEvent",
    "ReactIterationStartEvent",
    "ReactOutput",
    "ReactStartEvent",
    "ResponsePair",
    "ResponseYield",
    "ToolCallArgumentsDeltaEvent",
    "ToolCallEndEvent",
    "ToolCallErrorEvent",
    "ToolCallResult",
    "ToolCallStartEvent",
    "ToolCallsBatchEndEvent",
    "ToolCallsBatchStartEvent",
    "ToolEventEmitter",
    "ToolInputRequest",
    "UserInputEvent",
    "events_only",
    "filter_events",
    "is_event_yield",
    "is_response_yield",
    "responses_only",
    "with_event_observer",
]

_log = structlog.get_logger(__name__)

Output = ResponseYield | EventYield
EventSelector = type[ReActEvent] | ReActEventType | str
T = TypeVar("T")


def is_response_yield(output: object) -> TypeGuard[ResponseYield]:
    return isinstance(output, ResponseYield)


def is_event_yield(output: object) -> TypeGuard[EventYield]:
    return isinstance(output, EventYield)


class ResponsePair(ResponseYield):
    """A `ResponseYield` that also unpacks as SimpleLLMFunc's `(response, messages)`
    tuple: `resp.response` (the seed documents' form) and `response, messages = resp`
    (SimpleLLMFunc's source) both work."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iter((self.response, self.messages))

    def __getitem__(self, index: int) -> Any:
        return (self.response, self.messages)[index]

    def __len__(self) -> int:
        return 2


async def responses_only(stream: AsyncIterator[Output]) -> AsyncIterator[ResponsePair]:
    """Keep the responses, drop the events. Each is a `ResponseYield` that also unpacks
    as a `(response, messages)` tuple."""
    async for output in stream:
        if isinstance(output, ResponseYield):
            yield ResponsePair.model_construct(
                response=output.response,
                messages=output.messages,
                origin=output.origin,
                stream_id=output.stream_id,
            )


async def events_only(stream: AsyncIterator[Output]) -> AsyncIterator[EventYield]:
    """Keep the events (as `EventYield`, so `.event` and `.origin` are both at hand)."""
    async for output in stream:
        if isinstance(output, EventYield):
            yield output


def _matcher(selectors: Iterable[EventSelector]) -> Callable[[ReActEvent], bool]:
    classes: list[type[ReActEvent]] = []
    kinds: set[str] = set()
    for sel in selectors:
        if isinstance(sel, type):
            classes.append(sel)
        else:
            kinds.add(ReActEventType(sel).value)
    class_tuple = tuple(classes)

    def matches(event: ReActEvent) -> bool:
        return isinstance(event, class_tuple) or event.event_type.value in kinds

    return matches


async def filter_events(
    stream: AsyncIterator[Output],
    event_types: EventSelector | Iterable[EventSelector],
    *more: EventSelector,
) -> AsyncIterator[EventYield]:
    """Keep only events of the given classes or `ReActEventType`s.

    Accepts one selector, several positional ones, or any iterable of them:
    `filter_events(gen, LLMChunkArriveEvent)`, `filter_events(gen, {ReActEventType.REACT_END})`.
    """
    if isinstance(event_types, type | ReActEventType | str):
        selectors: list[EventSelector] = [event_types]
    else:
        selectors = list(event_types)
    matches = _matcher([*selectors, *more])
    async for output in stream:
        if isinstance(output, EventYield) and matches(output.event):
            yield output


Observer = Callable[..., Any]


def _call_observer(observer: Observer, output: EventYield) -> Any:
    try:
        params = inspect.signature(observer).parameters
    except (TypeError, ValueError):
        return observer(output.event)
    positional = [
        p
        for p in params.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional):
        return observer(output.event, output.origin)
    return observer(output.event)


def with_event_observer(
    observer: Observer,
) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]]:
    """Call `observer` for every event an agent produces, without changing what it yields.

    The observer may be sync or async and take `(event)` or `(event, origin)`. An observer
    that raises is logged and does not break the agent. On an `llm_chat` agent without
    `enable_event` (which yields `(chunk, history)` tuples) the observer still sees every
    event: it is handed to the turn itself.
    """

    async def notify(output: EventYield) -> None:
        try:
            result = _call_observer(observer, output)
            if isinstance(result, Awaitable):
                await result
        except Exception:
            _log.exception("event observer failed", event=output.event.event_type)

    def decorate(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        spec = getattr(fn, AGENT_ATTRIBUTE, None)
        if isinstance(spec, FunctionSpec):
            observed: Callable[..., AsyncIterator[Any]] = _observed_function(fn, spec, notify)
            return observed
        tuple_mode = isinstance(spec, AgentSpec) and not spec.enable_event

        @wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            if tuple_mode:
                kwargs[EVENT_OBSERVER_PARAM] = notify
                async for item in fn(*args, **kwargs):
                    yield item
                return
            async for output in fn(*args, **kwargs):
                if isinstance(output, EventYield):
                    await notify(output)
                yield output

        return wrapper

    return decorate


def _observed_function(
    fn: Any, spec: FunctionSpec, notify: Callable[[EventYield], Awaitable[None]]
) -> Any:
    """An `llm_function` whose events (of calls and of `.stream`) reach the observer."""

    async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for output in fn.stream(*args, **kwargs):
            if isinstance(output, EventYield):
                await notify(output)
            yield output

    async def call(*args: Any, **kwargs: Any) -> Any:
        return await value_of(spec, stream(*args, **kwargs))

    observed: Any = wraps(fn)(stream if spec.enable_event else call)
    observed.stream = wraps(fn)(stream)
    return observed
