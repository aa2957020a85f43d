"""`@llm_chat`: SimpleLLMFunc's chat decorator, on top of the resumable ReAct loop.

    @llm_chat(llm_interface=llm, toolkit=[get_weather], stream=True)
    async def weather_chat(message: str, history: list | None = None):
        '''You are a weather assistant.'''

The body never runs: the docstring is the system prompt and the arguments are the user
message. A call returns an async generator of

- `enable_event=False`: `(chunk, history)` tuples. Text mode yields each text delta (or
  each call's whole text when not streaming), then `("", history)` as the end marker with
  the complete turn. Raw mode yields the provider's chunks/completions; the last tuple
  carries the complete history.
- `enable_event=True`: `EventYield`s, plus, as SimpleLLMFunc does, a `ResponseYield`
  per raw chunk (or completion) carrying the messages sent to that call; the last output
  is a `ResponseYield` with the final text and the whole turn.

The decorated function keeps its `AgentSpec` (`orchestrator.runtime.agent`) as
`fn.__orchestrator_agent__`, which is all a worker needs to run the same agent from JSON
arguments (`AgentSpec.initial_state` then `run_turn`).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog

from orchestrator.errors import AgentError, SignatureError
from orchestrator.events import (
    EventYield,
    LLMCallEndEvent,
    LLMCallStartEvent,
    LLMChunkArriveEvent,
    MessageList,
    ResponseYield,
)
from orchestrator.ports import LLMInterface
from orchestrator.runtime import prompt
from orchestrator.runtime.agent import AGENT_ATTRIBUTE, TEMPLATE_PARAMS, AgentSpec, ReturnMode
from orchestrator.runtime.local_forks import run_in_process
from orchestrator.runtime.loop import Output
from orchestrator.runtime.selfref import SelfReference
from orchestrator.runtime.tools import Tool
from orchestrator.signals import ABORT_SIGNAL_PARAM, EVENT_OBSERVER_PARAM, AbortSignal

__all__ = ["DEFAULT_MAX_TOOL_CALLS", "EVENT_OBSERVER_PARAM", "async_llm_chat", "llm_chat"]

# SimpleLLMFunc's default: no cap on tool batches per turn.
DEFAULT_MAX_TOOL_CALLS: int | None = None


_log = structlog.get_logger(__name__)


def _check_function(fn: Callable[..., Any], strict_signature: bool) -> inspect.Signature:
    if not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
        name = getattr(fn, "__name__", repr(fn))
        raise AgentError(f"llm_chat only supports functions defined with async def ({name})")
    signature = inspect.signature(fn)
    if strict_signature:
        check_strict_signature(signature)
    elif prompt.history_param_name(signature) is None:
        _log.warning(
            "llm_chat function has no history parameter (history or chat_history); "
            "no history will be passed",
            func_name=fn.__name__,
        )
    return signature


def check_strict_signature(signature: inspect.Signature) -> None:
    """SimpleLLMFunc's canonical signature: `agent(history, message: str,
    _template_params=None)` (history may be named chat_history); SignatureError if not."""
    parameters = list(signature.parameters.values())
    where = "llm_chat(strict_signature=True)"
    if len(parameters) < 2:
        raise SignatureError(
            f"{where} requires the signature `agent(history, message: str, ...)` "
            "with at least two parameters"
        )
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise SignatureError(f"{where} does not allow *args/**kwargs")
    history, message, *extra = parameters
    if history.name not in prompt.HISTORY_PARAM_NAMES:
        raise SignatureError(
            f"{where} requires the first parameter to be `history` or `chat_history`"
        )
    if message.annotation not in (str, "str"):
        raise SignatureError(f"{where} requires the second parameter to be annotated as `str`")
    if message.name != "message":
        raise SignatureError(f"{where} requires the second parameter to be named `message`")
    for parameter in extra:
        if parameter.name != TEMPLATE_PARAMS:
            raise SignatureError(
                f"{where} only allows an optional `{TEMPLATE_PARAMS}` parameter besides "
                f"(history, message: str); unexpected parameter {parameter.name!r}"
            )


def llm_chat(
    llm_interface: LLMInterface,
    toolkit: Sequence[Tool] | None = None,
    max_tool_calls: int | None = DEFAULT_MAX_TOOL_CALLS,
    stream: bool = True,
    return_mode: ReturnMode = "text",
    enable_event: bool = False,
    strict_signature: bool = False,
    self_reference: SelfReference | None = None,
    self_reference_key: str | None = None,
    **llm_kwargs: Any,
) -> Callable[[Callable[..., Any]], Callable[..., AsyncIterator[Any]]]:
    """Turn an `async def` whose docstring is a system prompt into a chat agent."""
    if return_mode not in ("text", "raw"):
        raise AgentError(f"return_mode must be 'text' or 'raw', not {return_mode!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        signature = _check_function(fn, strict_signature)
        spec = AgentSpec(
            name=fn.__name__,
            module=fn.__module__,
            qualname=fn.__qualname__,
            signature=signature,
            docstring=fn.__doc__ or "",
            llm_interface=llm_interface,
            toolkit=list(toolkit or []),
            max_tool_calls=max_tool_calls,
            stream=stream,
            return_mode=return_mode,
            enable_event=enable_event,
            strict_signature=strict_signature,
            self_reference=self_reference,
            self_reference_key=self_reference_key,
            llm_kwargs=dict(llm_kwargs),
        )

        @functools.wraps(fn)
        async def agent(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            abort = kwargs.pop(ABORT_SIGNAL_PARAM, None)
            if abort is not None and not isinstance(abort, AbortSignal):
                raise AgentError(f"{ABORT_SIGNAL_PARAM} must be an AbortSignal")
            observer = kwargs.pop(EVENT_OBSERVER_PARAM, None)
            state = await spec.initial_state(
                args, kwargs, session_id=uuid.uuid4().hex, agent_call_id=uuid.uuid4().hex
            )
            outputs = run_in_process(spec, state, abort=abort, origin=spec.origin(state))
            if observer is not None:
                outputs = _observed(outputs, observer)
            adapt = _event_outputs if spec.enable_event else _tuple_outputs
            async for item in adapt(spec, outputs):
                yield item

        setattr(agent, AGENT_ATTRIBUTE, spec)
        if self_reference is not None:
            self_reference.bind_agent_instance(agent)
        return agent

    return decorate


async def _observed(
    outputs: AsyncIterator[Output], observer: Callable[[EventYield], Any]
) -> AsyncIterator[Output]:
    async for output in outputs:
        if isinstance(output, EventYield):
            result = observer(output)
            if inspect.isawaitable(result):
                await result
        yield output


async def _event_outputs(spec: AgentSpec, outputs: AsyncIterator[Output]) -> AsyncIterator[Output]:
    """Events as they come, with SimpleLLMFunc's per-chunk ResponseYields added."""
    sent: MessageList = []
    async for output in outputs:
        if not isinstance(output, EventYield) or output.origin.fork_id is not None:
            yield output  # responses, and forks' events (no per-chunk responses for them)
            continue
        event = output.event
        if isinstance(event, LLMCallStartEvent):
            sent = event.messages
        elif isinstance(event, LLMCallEndEvent) and not spec.stream and event.response:
            yield ResponseYield(response=event.response, messages=list(sent))
        yield output
        if isinstance(event, LLMChunkArriveEvent):
            yield ResponseYield(response=event.chunk, messages=list(sent))


async def _tuple_outputs(
    spec: AgentSpec, outputs: AsyncIterator[Output]
) -> AsyncIterator[tuple[Any, MessageList]]:
    """SimpleLLMFunc's `(chunk, history)` tuples."""
    if spec.return_mode == "raw":
        async for pair in _raw_tuples(spec, outputs):
            yield pair
        return
    sent: MessageList = []
    async for output in outputs:
        if isinstance(output, ResponseYield):
            yield "", output.messages
            continue
        if output.origin.fork_id is not None:
            continue  # a fork's text is its own (its result reaches the model by gather)
        event = output.event
        if isinstance(event, LLMCallStartEvent):
            sent = event.messages
        text = _text_of(event, spec.stream)
        if text:
            yield text, list(sent)


def _text_of(event: Any, stream: bool) -> str:
    if stream and isinstance(event, LLMChunkArriveEvent):
        return "".join(
            (choice.get("delta") or {}).get("content") or ""
            for choice in event.chunk.get("choices") or []
        )
    if not stream and isinstance(event, LLMCallEndEvent):
        return event.content
    return ""


async def _raw_tuples(
    spec: AgentSpec, outputs: AsyncIterator[Output]
) -> AsyncIterator[tuple[Any, MessageList]]:
    """Raw chunks/completions; the last one is held back to carry the final history."""
    sent: MessageList = []
    held: tuple[Any, MessageList] | None = None
    async for output in outputs:
        if isinstance(output, ResponseYield):
            if held is not None:
                yield held[0], output.messages
            return
        if output.origin.fork_id is not None:
            continue
        event = output.event
        raw = _raw_of(event, spec.stream)
        if isinstance(event, LLMCallStartEvent):
            sent = event.messages
        if raw is not None:
            if held is not None:
                yield held
            held = (raw, list(sent))


def _raw_of(event: Any, stream: bool) -> Any:
    if stream and isinstance(event, LLMChunkArriveEvent):
        return event.chunk
    if not stream and isinstance(event, LLMCallEndEvent) and event.response:
        return event.response
    return None


# SimpleLLMFunc's alias (its decorators are async-native under both names).
async_llm_chat = llm_chat
