"""What SelfReference offers tool code (`runtime.selfref`), and the fork backend below it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from orchestrator.events import MessageList

__all__ = ["ForkBackend", "ForkLimits", "ForkPrimitives", "SelfRefPrimitives", "SpawnRequest"]


@dataclass(frozen=True)
class ForkLimits:
    """How deep a fork tree may grow (the root is depth 0) and how many forks one agent
    call may spawn, for in-process calls (workers take theirs from Settings:
    `max_fork_depth`, `max_forks_per_agent`, whose defaults these are)."""

    max_depth: int = 3
    max_forks_per_agent: int = 64


@dataclass
class SpawnRequest:
    """Everything a backend needs to start one fork."""

    parent_agent_call_id: str
    parent_memory_key: str
    message: str
    # Unique per spawn within the parent call; spawning the same key again is a no-op.
    spawn_key: str
    context: MessageList = field(default_factory=list)
    tool_name: str | None = None
    tool_call_id: str | None = None


@runtime_checkable
class ForkBackend(Protocol):
    """Starts forks and reads their results (a worker implements it on Redis and arq)."""

    async def spawn(self, request: SpawnRequest) -> dict[str, Any]:
        """Start a fork (or find the one `request.spawn_key` already started); returns
        its handle `{fork_id, parent_fork_id, depth, source_memory_key, memory_key,
        status}`. Raises `ToolError` when depth or fan-out limits forbid it."""
        ...

    async def collect(
        self,
        parent_agent_call_id: str,
        fork_ids: Sequence[str] | None,
        include_history: bool,
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """`(results of the forks that ended, ids of those still running)` for the given
        forks of this parent (None: every fork it spawned). `ToolError` for an id that
        is not one of its forks."""
        ...


@runtime_checkable
class ForkPrimitives(Protocol):
    """`runtime.selfref.fork`: spawn child agents and gather their results."""

    async def spawn(self, message: str, **kwargs: Any) -> dict[str, Any]: ...

    async def gather_all(
        self, fork_ids: Any = None, include_history: bool = False
    ) -> dict[str, dict[str, Any]]: ...


# -- what a tool receives -------------------------------------------------------------


@runtime_checkable
class SelfRefPrimitives(Protocol):
    """`runtime.selfref` for tool code: the agent's bound SelfReference context (memory
    primitives: inspect, remember, forget, compact), its forks and its guide."""

    @property
    def context(self) -> Any: ...

    @property
    def fork(self) -> ForkPrimitives: ...

    @property
    def instance_id(self) -> str: ...

    def guide(self) -> str: ...
