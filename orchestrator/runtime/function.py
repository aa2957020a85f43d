"""`@llm_function`: SimpleLLMFunc's typed-function decorator, on the same ReAct loop.

    @llm_function(llm_interface=llm)
    async def classify(text: str) -> Sentiment:       # a pydantic model, int, list[str] ...
        '''Classify the sentiment of the text.'''

    result = await classify("great!")                  # a Sentiment
    async for output in classify.stream("great!"):     # the llm_chat event stream; the
        ...                                            # last ResponseYield holds the value

The body never runs. The system prompt is the docstring (formatted with
`_template_params`), the parameters' types and the return type; the user message lists
the arguments. The answer is parsed into the return annotation (`runtime/output.py`);
an answer that does not parse is sent back with the reason, at most
`max_output_retries` times, then `OutputParseError`. Tools, `max_tool_calls`,
`self_reference` and `_abort_signal` work as in `llm_chat`. The function is an agent
like any other: `client.submit("mod:fn", args={...})` runs it on a worker, and
`RunResult.value` is the typed result.
"""

from __future__ import annotations

import functools
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from pydantic_core import to_jsonable_python

from orchestrator.errors import AbortedError, AgentError
from orchestrator.events import Message, ReactEndEvent, ResponseYield
from orchestrator.ports import LLMInterface
from orchestrator.runtime import prompt
from orchestrator.runtime.agent import AGENT_ATTRIBUTE, AgentSpec
from orchestrator.runtime.chat import DEFAULT_MAX_TOOL_CALLS
from orchestrator.runtime.local_forks import run_in_process
from orchestrator.runtime.loop import Output
from orchestrator.runtime.output import OutputParser
from orchestrator.runtime.selfref import SelfReference
from orchestrator.runtime.state import TurnError, TurnState
from orchestrator.runtime.tools import Tool
from orchestrator.signals import ABORT_SIGNAL_PARAM, AbortSignal

__all__ = [
    "DEFAULT_OUTPUT_RETRIES",
    "DEFAULT_SYSTEM_PROMPT_TEMPLATE",
    "DEFAULT_USER_PROMPT_TEMPLATE",
    "FunctionSpec",
    "async_llm_function",
    "llm_function",
    "value_of",
]

DEFAULT_OUTPUT_RETRIES = 2

# The placeholders are SimpleLLMFunc's, so its custom templates keep working.
DEFAULT_SYSTEM_PROMPT_TEMPLATE = """Your task is to provide results that meet the requirements \
based on the **function description** and the user's request.

- Function Description:
    {function_description}

- You will receive the following parameters:
{parameters_description}

- The type of content you need to return:
    {return_type_description}

Use the available tools to help complete the task if needed."""

DEFAULT_USER_PROMPT_TEMPLATE = """The parameters provided are:
{parameters}

Return the result directly as the final output."""


@dataclass
class FunctionSpec(AgentSpec):
    """An `llm_function`: an agent whose answer is parsed into `return_type`."""

    return_type: Any = str
    parameter_types: dict[str, Any] = field(default_factory=dict)
    system_prompt_template: str | None = None
    user_prompt_template: str | None = None
    max_output_retries: int = DEFAULT_OUTPUT_RETRIES

    def __post_init__(self) -> None:
        super().__post_init__()
        self.output = OutputParser(self.return_type)

    def system_prompt(self, template_params: dict[str, Any] | None) -> str:
        description = prompt.format_system_prompt(self.docstring, template_params)
        parameters = "\n".join(
            f"  - {name}: {_type_name(self.parameter_types.get(name))}"
            for name in self.signature.parameters
            if name not in prompt.HISTORY_PARAM_NAMES
        )
        fields = {
            "function_description": description,
            "parameters_description": parameters or "  (none)",
            "return_type_description": self.output.describe(),
        }
        template = self.system_prompt_template or DEFAULT_SYSTEM_PROMPT_TEMPLATE
        try:
            text = template.format(**fields)
        except (KeyError, IndexError, ValueError):
            text = DEFAULT_SYSTEM_PROMPT_TEMPLATE.format(**fields)
        return f"{text.strip()}\n\n{self.output.instructions()}"

    def user_message(self, arguments: dict[str, Any]) -> str:
        lines = "\n".join(f"  - {name}: {_value_text(value)}" for name, value in arguments.items())
        template = self.user_prompt_template or DEFAULT_USER_PROMPT_TEMPLATE
        try:
            return template.format(parameters=lines).strip()
        except (KeyError, IndexError, ValueError):
            return DEFAULT_USER_PROMPT_TEMPLATE.format(parameters=lines).strip()

    def review_answer(self, state: TurnState) -> Message | None:
        try:
            self.output.parse(state.final_response)
        except ValueError as exc:
            if state.output_retries >= self.max_output_retries:
                state.error = TurnError(
                    type="OutputParseError",
                    message=(
                        f"{self.name}: the answer is not a {_type_name(self.return_type)} "
                        f"({exc}) after {state.output_retries} retries; last answer: "
                        f"{state.final_response[:300]!r}"
                    ),
                )
                return None
            state.output_retries += 1
            return {
                "role": "user",
                "content": (
                    f"Your answer could not be read as the required return type ({exc}). "
                    f"{self.output.instructions()}"
                ),
            }
        return None

    def final_response(self, state: TurnState) -> Any:
        if state.aborted:
            return None  # an aborted turn has no value; the partial text is in the messages
        return self.output.parse(state.final_response)


def llm_function(
    llm_interface: LLMInterface,
    toolkit: Sequence[Tool] | None = None,
    max_tool_calls: int | None = DEFAULT_MAX_TOOL_CALLS,
    system_prompt_template: str | None = None,
    user_prompt_template: str | None = None,
    enable_event: bool = False,
    stream: bool = False,
    self_reference: SelfReference | None = None,
    self_reference_key: str | None = None,
    max_output_retries: int = DEFAULT_OUTPUT_RETRIES,
    **llm_kwargs: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """Turn a typed function whose docstring says what to do into a model-backed one.

    `await fn(...)` returns the parsed value; `fn.stream(...)` yields the event stream
    (`ReactOutput`) ending with a `ResponseYield` whose `response` is the value. With
    `enable_event=True` calling `fn(...)` itself yields that stream (SimpleLLMFunc's
    form). `stream=True` streams the model's tokens (`LLMChunkArriveEvent`s).
    """
    if max_output_retries < 0:
        raise AgentError("max_output_retries must not be negative")

    def decorate(fn: Callable[..., Any]) -> Any:
        signature = inspect.signature(fn)
        hints = _type_hints(fn)
        spec = FunctionSpec(
            name=fn.__name__,
            module=fn.__module__,
            qualname=fn.__qualname__,
            signature=signature,
            docstring=fn.__doc__ or "",
            llm_interface=llm_interface,
            toolkit=list(toolkit or []),
            max_tool_calls=max_tool_calls,
            stream=stream,
            enable_event=enable_event,
            self_reference=self_reference,
            self_reference_key=self_reference_key,
            llm_kwargs=dict(llm_kwargs),
            return_type=hints.pop("return", signature.return_annotation),
            parameter_types=hints,
            system_prompt_template=system_prompt_template,
            user_prompt_template=user_prompt_template,
            max_output_retries=max_output_retries,
        )

        async def events(*args: Any, **kwargs: Any) -> AsyncIterator[Output]:
            async for output in _run(spec, args, kwargs):
                yield output

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await value_of(spec, _run(spec, args, kwargs))

        stream_fn: Any = functools.wraps(fn)(events)
        wrapper: Any = stream_fn if enable_event else functools.wraps(fn)(call)
        wrapper.stream = stream_fn
        setattr(wrapper, AGENT_ATTRIBUTE, spec)
        if self_reference is not None:
            self_reference.bind_agent_instance(wrapper)
        return wrapper

    return decorate


# SimpleLLMFunc's alias.
async_llm_function = llm_function


async def _run(
    spec: FunctionSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncIterator[Output]:
    abort = kwargs.pop(ABORT_SIGNAL_PARAM, None)
    if abort is not None and not isinstance(abort, AbortSignal):
        raise AgentError(f"{ABORT_SIGNAL_PARAM} must be an AbortSignal")
    state = await spec.initial_state(
        args, kwargs, session_id=uuid.uuid4().hex, agent_call_id=uuid.uuid4().hex
    )
    async for output in run_in_process(spec, state, abort=abort, origin=spec.origin(state)):
        yield output


async def value_of(spec: FunctionSpec, outputs: AsyncIterator[Output]) -> Any:
    """The typed value at the end of a call's outputs (AbortedError if it was aborted)."""
    final: ResponseYield | None = None
    end: ReactEndEvent | None = None
    async for output in outputs:
        if isinstance(output, ResponseYield):
            final = output
        elif isinstance(output.event, ReactEndEvent) and output.origin.fork_id is None:
            end = output.event
    if end is not None and end.extra.get("aborted"):
        raise AbortedError(str(end.extra.get("abort_reason") or ""))
    if final is None:
        raise AgentError(f"{spec.name}: the turn ended without a response")
    return final.response


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        return {
            name: value
            for name, value in getattr(fn, "__annotations__", {}).items()
            if not isinstance(value, str)
        }


def _type_name(hint: Any) -> str:
    if hint is None or hint is inspect.Signature.empty:
        return "any"
    name = getattr(hint, "__name__", None)
    return name if isinstance(name, str) and not getattr(hint, "__args__", None) else str(hint)


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(to_jsonable_python(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
