"""`AgentSpec`: an `llm_chat` agent as the runtime and the workers see it.

`@llm_chat` keeps the spec on the function it returns, under `AGENT_ATTRIBUTE`
(`fn.__orchestrator_agent__`); `agent_spec(fn)` reads it back. The spec holds the
decorator's arguments and the function's identity, and builds the state of a new turn
(or of a fork's turn) from JSON-able arguments, which is all a worker needs to run the
same agent (`initial_state`, then `run_turn`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.errors import AgentError
from orchestrator.events import Message, MessageList
from orchestrator.ports import (
    ForkPrimitives,
    LLMInterface,
    MemoryStore,
    ToolSession,
    TranscriptBase,
)
from orchestrator.runtime import multimodal, prompt
from orchestrator.runtime.forks import fork_user_message
from orchestrator.runtime.selfref import (
    SelfRefContext,
    SelfReference,
    apply_system_addendum,
    make_tool_runtime,
)
from orchestrator.runtime.state import OriginContext, TurnState
from orchestrator.runtime.tools import Tool, ToolRuntime, toolkit_by_name
from orchestrator.signals import ABORT_SIGNAL_PARAM

__all__ = [
    "AGENT_ATTRIBUTE",
    "SELF_REFERENCE_KEY_OVERRIDE",
    "TEMPLATE_PARAMS",
    "AgentSpec",
    "ReturnMode",
    "agent_spec",
]

# Where `@llm_chat` keeps the AgentSpec on the function it returns.
AGENT_ATTRIBUTE = "__orchestrator_agent__"
TEMPLATE_PARAMS = "_template_params"
# In `_template_params`: run this call on another SelfReference memory key.
SELF_REFERENCE_KEY_OVERRIDE = "__self_reference_key_override"
ReturnMode = Literal["text", "raw"]


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
        """What tools that declare a `runtime` parameter receive (`session`: the
        distributed session a worker runs the turn in; None in-process)."""
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
        args = self._message_first(args, kwargs)
        memory_key, template_params = self._memory_key_for(kwargs.pop(TEMPLATE_PARAMS, None))
        kwargs.pop(ABORT_SIGNAL_PARAM, None)
        arguments = self._bind(args, kwargs)
        history_name = prompt.history_param_name(self.signature)
        raw_history = arguments.pop(history_name, None) if history_name else None
        history = prompt.valid_history(raw_history, func_name=self.name)
        system = self.system_prompt(template_params)
        context = self.bind_memory(memory_key, memory)
        from_memory = history is None
        snapshot = None
        if context is not None:
            # A history list replaces the stored memory; None reuses it.
            history, snapshot = await context.open_turn(history)
        override, rest = prompt.split_system(history or [])
        if override is not None and not from_memory:
            system = override
        plain, images = multimodal.split_images(arguments)
        user_message = self.user_message(plain)
        content = multimodal.user_content(user_message, images)
        messages = prompt.build_messages(system, rest, content)
        base = None
        if context is not None and snapshot is not None:
            messages = apply_system_addendum(messages, context.addendum(snapshot, messages))
            # Everything before the user message stands for what memory held.
            base = TranscriptBase(
                revision=snapshot.revision,
                count=len(messages) - (1 if content else 0),
                writer=agent_call_id,
            )
        return TurnState(
            session_id=session_id,
            agent_call_id=agent_call_id,
            func_name=self.name,
            trace_id=f"{self.name}_{agent_call_id}",
            messages=messages,
            user_task_prompt=user_message,
            memory_key=memory_key if context is not None else None,
            memory_base=base,
        )

    def _memory_key_for(
        self, template_params: dict[str, Any] | None
    ) -> tuple[str, dict[str, Any] | None]:
        """The memory key of a call: the agent's, unless the call's `_template_params`
        name another (SimpleLLMFunc's `SELF_REFERENCE_KEY_OVERRIDE_TEMPLATE_PARAM`, which
        `selfref.instance.fork` uses to run the agent on a fork's key)."""
        if not template_params or SELF_REFERENCE_KEY_OVERRIDE not in template_params:
            return self.memory_key, template_params
        rest = dict(template_params)
        key = str(rest.pop(SELF_REFERENCE_KEY_OVERRIDE))
        return key, rest

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
            # One write that answers with the record (the experiences the fork inherited).
            _, snapshot = await selfref.open_turn(context)
            messages = apply_system_addendum(messages, selfref.addendum(snapshot, messages))
            base = TranscriptBase(
                revision=snapshot.revision, count=len(context), writer=agent_call_id
            )
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

    # -- what a kind of agent decides (llm_function overrides these) ----------------------

    def system_prompt(self, template_params: dict[str, Any] | None) -> str:
        """The system prompt of a new turn: the docstring, formatted."""
        return prompt.format_system_prompt(self.docstring, template_params)

    def user_message(self, arguments: dict[str, Any]) -> str:
        """The user message of a new turn, from the call's arguments (history removed)."""
        return prompt.render_user_message(arguments)

    def review_answer(self, state: TurnState) -> Message | None:
        """Called when the model answers without tool calls: None accepts the answer
        (the turn ends); a message is appended and the model is asked again. A reviewer
        that gives up sets `state.error`."""
        return None

    def final_response(self, state: TurnState) -> Any:
        """What the turn's `ResponseYield.response` carries: the answer's text."""
        return state.final_response

    def _message_first(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Sequence[Any]:
        """A strict-signature agent is `agent(history, message)`; a call (or a worker's
        job) giving the message positionally and the history by name means the message."""
        history_name = prompt.history_param_name(self.signature)
        if (
            self.strict_signature
            and len(args) == 1
            and history_name in kwargs
            and "message" not in kwargs
        ):
            kwargs["message"] = args[0]
            return ()
        return args

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
