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

The decorated function keeps its `AgentSpec` as `fn.__orchestrator_agent__`, which is
all a worker needs to run the same agent from JSON arguments (`AgentSpec.initial_state`
then `run_turn`).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from orchestrator.errors import AgentError
from orchestrator.events import (
    EventYield,
    LLMCallEndEvent,
    LLMCallStartEvent,
    LLMChunkArriveEvent,
    MessageList,
    ResponseYield,
)
from orchestrator.ports import LLMInterface, MemoryStore, ToolSession, TranscriptBase
from orchestrator.runtime import prompt
from orchestrator.runtime.forks import fork_user_message
from orchestrator.runtime.loop import Output, run_turn
from orchestrator.runtime.selfref import (
    ForkPrimitives,
    SelfRefContext,
    SelfReference,
    ToolRuntime,
    apply_system_addendum,
    make_tool_runtime,
)
from orchestrator.runtime.state import OriginContext, TurnState
from orchestrator.runtime.tools import Tool, toolkit_by_name
from orchestrator.signals import ABORT_SIGNAL_PARAM, EVENT_OBSERVER_PARAM, AbortSignal

__all__ = ["EVENT_OBSERVER_PARAM", "TEMPLATE_PARAMS", "AgentSpec", "agent_spec", "llm_chat"]

TEMPLATE_PARAMS = "_template_params"
AGENT_ATTRIBUTE = "__orchestrator_agent__"
ReturnMode = Literal["text", "raw"]

_log = structlog.get_logger(__name__)


@dataclass
class AgentSpec:
    """An `llm_chat` agent: the decorator's arguments plus the function's identity."""

    name: str
    module: str
    qualname: str
    signature: inspect.Signature
    docstring: str
    llm_interface: LLMInterface
    toolkit: list[Tool] = field(default_factory=list)
    max_tool_calls: int | None = None
    stream: bool = True
    return_mode: ReturnMode = "text"
    enable_event: bool = False
    strict_signature: bool = False
    self_reference: SelfReference | None = None
    self_reference_key: str | None = None
    llm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tools = toolkit_by_name(self.toolkit)

    @property
    def memory_key(self) -> str:
        """The SelfReference memory key: `self_reference_key`, else the function's name."""
        return self.self_reference_key or self.name

    def tool_map(self) -> dict[str, Tool]:
        """The toolkit by tool name (a fresh dict each call)."""
        return dict(self._tools)

    def bind_memory(
        self,
        memory_key: str | None,
        memory: MemoryStore | None = None,
        fork: ForkPrimitives | None = None,
    ) -> SelfRefContext | None:
        """The SelfReference context for a turn (None without SelfReference)."""
        if self.self_reference is None or memory_key is None:
            return None
        return self.self_reference.bind(memory_key, store=memory, fork=fork)

    def tool_runtime(
        self, context: SelfRefContext | None, session: ToolSession | None = None
    ) -> ToolRuntime:
        """What tools that declare a `runtime` parameter receive."""
        return make_tool_runtime(context, session)

    def origin(self, state: TurnState) -> OriginContext:
        """The origin fields of a root (non-fork) call of this agent."""
        instance = self.self_reference.instance_id if self.self_reference is not None else None
        return OriginContext(selfref_instance_id=instance, memory_key=state.memory_key)

    async def initial_state(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        session_id: str,
        agent_call_id: str,
        memory: MemoryStore | None = None,
    ) -> TurnState:
        """The state of a new turn for a call with these arguments (JSON values are fine).

        Handles `_template_params` (formats the docstring) and drops `_abort_signal`.
        """
        kwargs = dict(kwargs)
        template_params = kwargs.pop(TEMPLATE_PARAMS, None)
        kwargs.pop(ABORT_SIGNAL_PARAM, None)
        arguments = self._bind(args, kwargs)
        history_name = prompt.history_param_name(self.signature)
        raw_history = arguments.pop(history_name, None) if history_name else None
        history = prompt.valid_history(raw_history, func_name=self.name)
        system = prompt.format_system_prompt(self.docstring, template_params)
        context = self.bind_memory(self.memory_key, memory)
        from_memory = history is None
        revision = 0
        if context is not None:
            # A history list replaces the stored memory; None reuses it.
            history, revision = await context.begin_turn(history)
        override, rest = prompt.split_system(history or [])
        if override is not None and not from_memory:
            system = override
        user_message = prompt.render_user_message(arguments)
        messages = prompt.build_messages(system, rest, user_message)
        base = None
        if context is not None:
            addendum = await context.system_addendum(messages)
            messages = apply_system_addendum(messages, addendum)
            # Everything before the user message stands for what memory held.
            base = TranscriptBase(
                revision=revision,
                count=len(messages) - (1 if user_message else 0),
                writer=agent_call_id,
            )
        return TurnState(
            session_id=session_id,
            agent_call_id=agent_call_id,
            func_name=self.name,
            trace_id=f"{self.name}_{agent_call_id}",
            messages=messages,
            user_task_prompt=user_message,
            memory_key=self.memory_key if context is not None else None,
            memory_base=base,
        )

    async def fork_state(
        self,
        context: MessageList,
        task: str,
        *,
        fork_id: str,
        depth: int,
        memory_key: str | None,
        session_id: str,
        agent_call_id: str,
        memory: MemoryStore | None = None,
    ) -> TurnState:
        """The state of a fork's turn: the parent's `context` plus the fork's task.

        The fork's memory key starts as that context (its experiences are its own), and
        its turn saves its whole transcript there; the parent's key is never written.
        """
        user = fork_user_message(task, fork_id=fork_id, depth=depth)
        messages = [*context, user]
        selfref = self.bind_memory(memory_key, memory)
        base = None
        if selfref is not None:
            revision = await selfref.replace_history(context)
            messages = apply_system_addendum(messages, await selfref.system_addendum(messages))
            base = TranscriptBase(revision=revision, count=len(context), writer=agent_call_id)
        return TurnState(
            session_id=session_id,
            agent_call_id=agent_call_id,
            func_name=self.name,
            trace_id=f"{self.name}_{agent_call_id}",
            messages=messages,
            user_task_prompt=str(user["content"]),
            memory_key=memory_key if selfref is not None else None,
            memory_base=base,
        )

    def _bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise AgentError(f"{self.name}: {exc}") from exc
        bound.apply_defaults()
        return dict(bound.arguments)


def agent_spec(obj: Any) -> AgentSpec:
    """The `AgentSpec` of an `llm_chat` agent (also through `functools.wraps` wrappers)."""
    spec = getattr(obj, AGENT_ATTRIBUTE, None)
    if not isinstance(spec, AgentSpec):
        raise AgentError(f"{obj!r} is not an llm_chat agent")
    return spec


def _check_function(fn: Callable[..., Any], strict_signature: bool) -> inspect.Signature:
    if not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
        name = getattr(fn, "__name__", repr(fn))
        raise AgentError(f"llm_chat only supports functions defined with async def ({name})")
    signature = inspect.signature(fn)
    history_name = prompt.history_param_name(signature)
    if history_name is None:
        if strict_signature:
            raise AgentError(f"{fn.__name__}: strict_signature needs a `history` parameter")
        _log.warning(
            "llm_chat function has no history parameter (history or chat_history); "
            "no history will be passed",
            func_name=fn.__name__,
        )
    if strict_signature and any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()
    ):
        raise AgentError(f"{fn.__name__}: strict_signature does not allow *args or **kwargs")
    return signature


def llm_chat(
    llm_interface: LLMInterface,
    toolkit: Sequence[Tool] | None = None,
    max_tool_calls: int | None = None,
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
            outputs = run_turn(spec, state, abort=abort, origin=spec.origin(state))
            if observer is not None:
                outputs = _observed(outputs, observer)
            adapt = _event_outputs if spec.enable_event else _tuple_outputs
            async for item in adapt(spec, outputs):
                yield item

        setattr(agent, AGENT_ATTRIBUTE, spec)
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
        if not isinstance(output, EventYield):
            yield output
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
