"""Forks seen from the runtime: `runtime.selfref.fork`, the fork tools, the backend port.

An agent with a SelfReference can split work into child agents ("forks"). Each fork gets
a snapshot of its parent's context plus its task, runs as its own turn (on a worker:
its own job, on any machine) and may fork again. The parent later gathers the results.

    handle = await runtime.selfref.fork.spawn("Summarise chapter 3")
    results = await runtime.selfref.fork.gather_all()   # {fork_id: ForkResult}

The model reaches the same through two tools, `selfref_fork_spawn(message)` and
`selfref_fork_gather_all(fork_ids=None, include_history=False)`.

What happens underneath is behind the `ForkBackend` port (`orchestrator.ports`; the
Redis/arq one lives in `workers.forks`). Two properties shape this module:

- A gather never blocks a worker slot. When forks are still running, `gather_all`
  raises `SuspendTurn`; the loop finishes the rest of the tool batch, checkpoints and
  stops, and the turn is resumed (as a new job) when the last of those forks ends. The
  gather then runs again and finds every result.
- So tool code may run more than once, and `spawn` is idempotent: a spawn is named by
  (agent call, tool call, n-th spawn inside that call), and spawning the same name again
  returns the existing fork instead of starting a new one.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.errors import ToolError
from orchestrator.events import Message, MessageList
from orchestrator.ports import ForkBackend, SpawnRequest
from orchestrator.runtime.state import copy_json
from orchestrator.runtime.tools import Tool

__all__ = [
    "FORK_GUIDE",
    "SuspendTurn",
    "TurnForks",
    "current_tool_call",
    "fork_result",
    "fork_tools",
    "fork_user_message",
]

# (tool_name, tool_call_id) of the tool call running in this task; set by the loop.
current_tool_call: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "orchestrator_current_tool_call", default=None
)

FORK_GUIDE = (
    "Use selfref_fork_spawn for independent sub-tasks that can run in parallel: each fork "
    "is a copy of you with your context so far, working on the task you give it.",
    "Give every fork a self-contained task; forks cannot see each other's work.",
    "Call selfref_fork_gather_all once you have spawned every fork you need: it waits for "
    "them (you use no resources meanwhile) and returns every result, errors included.",
    "Forks are bounded: too deep a tree or too many forks per agent is refused with an "
    "error; then do the remaining work yourself.",
)


class SuspendTurn(Exception):
    """Raised by `gather_all` while forks are still running: suspend the turn until they
    end. The loop catches it; tool code must let it through."""

    def __init__(self, waiting_for: Sequence[str]) -> None:
        super().__init__(f"waiting for {len(waiting_for)} fork(s)")
        self.waiting_for = list(waiting_for)


class TurnForks:
    """`runtime.selfref.fork` for one turn: the backend plus the turn's live context."""

    def __init__(
        self,
        backend: ForkBackend,
        *,
        agent_call_id: str,
        memory_key: str,
        messages: Callable[[], MessageList],
    ) -> None:
        self._backend = backend
        self._agent_call_id = agent_call_id
        self._memory_key = memory_key
        self._messages = messages
        self._spawns_per_call: dict[str, int] = {}

    async def spawn(self, message: str, **kwargs: Any) -> dict[str, Any]:
        """Start a forked child agent working on `message`; returns its handle."""
        if not isinstance(message, str) or not message.strip():
            raise ToolError("fork.spawn: message must be a non-empty string")
        if kwargs:
            unknown = ", ".join(sorted(kwargs))
            raise ToolError(f"fork.spawn: unexpected argument(s): {unknown}")
        call = current_tool_call.get()
        call_name, call_id = call if call is not None else (None, None)
        scope = call_id or "-"
        nth = self._spawns_per_call.get(scope, 0)
        self._spawns_per_call[scope] = nth + 1
        return await self._backend.spawn(
            SpawnRequest(
                parent_agent_call_id=self._agent_call_id,
                parent_memory_key=self._memory_key,
                message=message.strip(),
                spawn_key=f"{scope}#{nth}",
                context=inherited_context(self._messages()),
                tool_name=call_name,
                tool_call_id=call_id,
            )
        )

    async def gather_all(
        self, fork_ids: Any = None, include_history: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Every result of the given forks (None: all of this agent's forks), waiting for
        those still running. Raises `SuspendTurn` to wait; see the module docstring."""
        results, running = await self._backend.collect(
            self._agent_call_id, _fork_id_list(fork_ids), bool(include_history)
        )
        if running:
            raise SuspendTurn(running)
        return results

    async def gather_now(
        self, fork_ids: Any = None, include_history: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Like `gather_all` without waiting: the turn is being aborted, and so are the
        forks still running, which are reported with status "aborted"."""
        results, running = await self._backend.collect(
            self._agent_call_id, _fork_id_list(fork_ids), bool(include_history)
        )
        for fork_id in running:
            results[fork_id] = fork_result(
                fork_id,
                "aborted",
                error_type="AbortedError",
                error_message="the session was aborted while this fork was running",
            )
        return results


def fork_result(
    fork_id: str,
    status: str,
    *,
    response: str | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    parent_fork_id: str | None = None,
    depth: int | None = None,
    source_memory_key: str | None = None,
    memory_key: str | None = None,
    history: MessageList | None = None,
    include_history: bool = False,
) -> dict[str, Any]:
    """SimpleLLMFunc's ForkResult (status "completed", "error" or "aborted"); `result` is
    an alias of `response`, and the error fields are set only when it did not complete."""
    failed = status != "completed"
    return {
        "fork_id": fork_id,
        "parent_fork_id": parent_fork_id,
        "depth": depth,
        "source_memory_key": source_memory_key,
        "memory_key": memory_key,
        "status": status,
        "response": response,
        "result": response,
        "error_type": error_type if failed else None,
        "error_message": error_message if failed else None,
        "history_count": len(history or []),
        "history_included": include_history,
        "history": history if include_history else None,
    }


def inherited_context(messages: Sequence[Message]) -> MessageList:
    """What a fork inherits: the parent's messages minus the assistant message holding
    the pending tool calls (the fork's own spawn among them) and anything after it."""
    # Find the cut first and copy only what is kept: the message cut off may hold
    # hundreds of tool calls, and copying it for each spawn made a batch of N spawns O(N²).
    end = len(messages)
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "assistant" and message.get("tool_calls"):
            end = index
            break
        if message.get("role") in ("user", "system"):
            break
    return copy_json(list(messages[:end]))


def fork_user_message(message: str, *, fork_id: str, depth: int) -> Message:
    """The user message that starts a fork."""
    return {
        "role": "user",
        "content": (
            f"You are a forked sub-agent ({fork_id}, depth {depth}) working for the agent "
            "whose context you see above. Complete only the task below and answer with "
            "the result; your final answer is returned to the parent agent.\n\n"
            f"Task: {message}"
        ),
    }


def _fork_id_list(fork_ids: Any) -> list[str] | None:
    if fork_ids is None:
        return None
    if isinstance(fork_ids, str):
        return [fork_ids]
    if isinstance(fork_ids, list | tuple) and all(isinstance(f, str) for f in fork_ids):
        return list(fork_ids)
    raise ToolError("gather_all: fork_ids must be a list of fork ids (or omitted)")


def fork_tools(forks: TurnForks) -> list[Tool]:
    """`selfref_fork_spawn` and `selfref_fork_gather_all` for the model."""

    async def selfref_fork_spawn(message: str) -> dict[str, Any]:
        """Spawn a forked child agent: a copy of you, with your context so far, that works
        on one sub-task in parallel with you and your other forks.

        Returns the fork's handle (fork_id, depth, memory_key, status). Collect the
        results later with selfref_fork_gather_all.

        Args:
            message: The sub-task for the fork, self-contained and specific.
        """
        return await forks.spawn(message)

    async def selfref_fork_gather_all(
        fork_ids: list[str] | None = None, include_history: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Wait for your forks and return every result, errors included, by fork id.

        Args:
            fork_ids: Which forks to gather; omit it for every fork you spawned.
            include_history: Also return each fork's full message history.
        """
        return await forks.gather_all(fork_ids, include_history)

    async def on_abort(arguments: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return await forks.gather_now(
            arguments.get("fork_ids"), bool(arguments.get("include_history", False))
        )

    # The gather runs after the other calls of its batch, so it sees forks spawned there.
    gather = Tool(func=selfref_fork_gather_all, barrier=True, on_abort=on_abort)
    return [Tool(func=selfref_fork_spawn), gather]
