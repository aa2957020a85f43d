"""`TurnState`: everything needed to carry one agent turn on in another process.

A turn is a small state machine (`phase`: "llm" → "tools" → "llm" … → "done"). The
ReAct loop (`orchestrator.runtime.loop.run_turn`) advances it one step at a time and
hands it to a `Checkpointer` after every completed step, so a worker that picks up a
checkpoint resumes exactly where the last one stopped: a completed LLM call is not
repeated, a tool whose result is recorded is not run again, and event sequence numbers
continue without a gap.

Only JSON values live here. The things a turn needs that are not data (the model client,
the tools, the abort signal) come from the `AgentSpec` and the caller.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.events import MessageList
from orchestrator.ports import TranscriptBase

TURN_STATE_VERSION = 1

T = TypeVar("T")
_SCALARS = frozenset({str, int, float, bool, type(None)})


def copy_json(value: T) -> T:
    """A deep copy of JSON-shaped data (transcripts, tool calls, tool definitions),
    several times cheaper than `copy.deepcopy` on it; anything else inside is
    deep-copied. (Scalars are taken as they are, without a call per value: most values
    are strings.) Unlike deepcopy it keeps no memo: an object met twice is copied twice.
    """
    kind = type(value)
    if kind is dict:
        return {  # type: ignore[return-value]
            k: v if type(v) in _SCALARS else copy_json(v)
            for k, v in value.items()  # type: ignore[attr-defined]
        }
    if kind is list:
        return [v if type(v) in _SCALARS else copy_json(v) for v in value]  # type: ignore[attr-defined,return-value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


Phase = Literal["llm", "tools", "done"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ToolOutcome(_Model):
    """The recorded result of one tool call of the current batch."""

    tool_call_id: str
    tool_name: str
    # What the model sees as the tool message's content.
    content: str
    # The JSON view of the result, for `ToolCallEndEvent.result` / the batch summary.
    result: Any = None
    success: bool = True
    error: str | None = None
    error_type: str | None = None
    execution_time: float = 0.0


class TurnError(_Model):
    """Why a turn ended badly (the exception's type name and text)."""

    type: str
    message: str


class OriginContext(_Model):
    """Where this turn sits in the call tree; copied onto every event's `EventOrigin`."""

    parent_agent_call_id: str | None = None
    fork_id: str | None = None
    fork_depth: int = 0
    fork_seq: int | None = None
    selfref_instance_id: str | None = None
    source_memory_key: str | None = None
    memory_key: str | None = None
    # For a fork: the parent's tool call that spawned it (None for a root call).
    tool_name: str | None = None
    tool_call_id: str | None = None


class TurnState(_Model):
    """The resumable state of one agent turn (JSON round trip, versioned)."""

    type: Literal["turn_state"] = "turn_state"
    version: int = TURN_STATE_VERSION

    session_id: str
    agent_call_id: str
    func_name: str
    trace_id: str = ""

    # The whole conversation the model sees, system message included.
    messages: MessageList = Field(default_factory=list)
    user_task_prompt: str = ""
    # SelfReference memory key this turn reads and writes (None: no SelfReference) ...
    memory_key: str | None = None
    # ... and where `messages` stands against it, so the turn's save keeps what other
    # turns of the key saved meanwhile (None: the save replaces the stored messages).
    memory_base: TranscriptBase | None = None

    phase: Phase = "llm"
    # SimpleLLMFunc's numbering: 0 for the first LLM call and the batch it asks for is 1;
    # after k batches the next LLM call (and its batch) is iteration k + 1.
    iteration: int = 0
    tool_batches_done: int = 0

    # The batch being executed: the model's tool calls in its order (OpenAI shape),
    # and the results recorded so far, by tool_call_id (they complete in any order).
    pending_tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    tool_results: dict[str, ToolOutcome] = Field(default_factory=dict)
    batch_started: bool = False
    batch_execution_time: float = 0.0
    # Calls of the batch whose ToolCallStartEvent is out (not announced twice on resume).
    tool_calls_started: list[str] = Field(default_factory=list)
    # Suspended in gather_all: the forks (by id) whose end resumes the turn.
    waiting_for: list[str] = Field(default_factory=list)

    llm_calls: int = 0
    tool_calls: int = 0
    # llm_function: answers sent back because they did not parse into the return type.
    output_retries: int = 0
    token_usage: dict[str, int] | None = None

    started: bool = False
    next_event_seq: int = 0
    execution_time: float = 0.0

    final_response: str = ""
    aborted: bool = False
    abort_reason: str = ""
    error: TurnError | None = None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> TurnState:
        return cls.model_validate_json(data)

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        """Add one call's token usage to the turn's total (integer fields only)."""
        if not usage:
            return
        total = dict(self.token_usage or {})
        for key, value in usage.items():
            if isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
        self.token_usage = total
