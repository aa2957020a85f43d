"""Forks in an in-process call: the `ForkBackend` port on asyncio tasks.

A plain `async for` over an agent with a SelfReference can fork, as SimpleLLMFunc code
does, with the semantics the workers give forks (`workers/forks.py`):

- ids `fork_N` numbered per call tree from 1, memory keys `<parent key>::fork::N`; a
  fork starts with its parent's context (minus the pending fork call), its task, and
  its parent's durable experiences; a spawn is idempotent per (parent call, spawn key);
- depth and fan-out bounded (`SelfReference(fork_limits=ForkLimits(...))`; by default
  the worker settings' defaults);
- `gather_all` waits for the forks (here the tool call simply awaits them: no worker
  slot to free) and returns `{fork_id: ForkResult}`;
- the call's abort signal reaches every fork; a fork still running is reported
  "aborted";
- every fork event joins the call's output stream as it happens (origin says which
  fork), and the call's final `ResponseYield` comes last, after every fork has ended.

On a worker the distributed backend (`RedisForkBackend`) is used instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestrator.errors import ToolError
from orchestrator.events import EventYield, MessageList, ResponseYield
from orchestrator.ports import ForkLimits, SpawnRequest
from orchestrator.runtime.agent import AgentSpec
from orchestrator.runtime.forks import fork_result
from orchestrator.runtime.loop import run_turn
from orchestrator.runtime.state import OriginContext, TurnState
from orchestrator.signals import AbortSignal

__all__ = ["ForkLimits", "LocalForkBackend", "LocalForkTree", "run_in_process"]

_log = structlog.get_logger(__name__)

Output = ResponseYield | EventYield
# How long an aborted call waits for its forks to wind down before cancelling them.
_ABORT_GRACE_S = 5.0
# Small, so the agents run barely ahead of the consumer (an abort the consumer sends on
# seeing an output stops them with little already produced).
_QUEUE_SIZE = 4


@dataclass
class _Fork:
    fork_id: str
    number: int
    seq: int
    parent_call_id: str
    parent_fork_id: str | None
    depth: int
    source_memory_key: str
    memory_key: str
    task: asyncio.Task[None] | None = None
    status: str = "running"
    response: str | None = None
    messages: MessageList = field(default_factory=list)
    error_type: str | None = None
    error_message: str | None = None

    def result(self, include_history: bool) -> dict[str, Any]:
        status = self.status if self.status != "running" else "aborted"
        error_type, error_message = self.error_type, self.error_message
        if status == "aborted":
            error_type = error_type or "AbortedError"
            error_message = error_message or "the call was aborted while this fork was running"
        return fork_result(
            self.fork_id,
            status,
            response=self.response,
            error_type=error_type,
            error_message=error_message,
            parent_fork_id=self.parent_fork_id,
            depth=self.depth,
            source_memory_key=self.source_memory_key,
            memory_key=self.memory_key,
            history=self.messages,
            include_history=include_history,
        )


class LocalForkTree:
    """The forks of one in-process call tree (the root call and all its forks)."""

    def __init__(
        self,
        spec: AgentSpec,
        *,
        session_id: str,
        root_call_id: str,
        abort: AbortSignal,
        emit: Callable[[Output], Awaitable[None]],
        limits: ForkLimits | None = None,
    ) -> None:
        self.spec = spec
        self.session_id = session_id
        self.root_call_id = root_call_id
        self.abort = abort
        self.limits = limits or ForkLimits()
        self._emit = emit
        self._count = 0
        self._forks: dict[str, _Fork] = {}
        self._children: dict[str, list[str]] = {}
        self._spawned: dict[tuple[str, str], str] = {}

    def backend(self, depth: int = 0, fork_id: str | None = None) -> LocalForkBackend:
        return LocalForkBackend(self, depth=depth, fork_id=fork_id)

    def running(self) -> list[asyncio.Task[None]]:
        return [f.task for f in self._forks.values() if f.task is not None and not f.task.done()]

    async def wait_all(self) -> None:
        """Until every fork (and every fork they spawned) has ended."""
        while tasks := self.running():
            await self._wait(tasks)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [f.task for f in self._forks.values() if f.task is not None]

    def cancel_all(self) -> None:
        for task in self.running():
            task.cancel()

    async def spawn(self, request: SpawnRequest, depth: int, parent_fork_id: str | None) -> _Fork:
        limit = self.limits.max_depth
        if depth + 1 > limit:
            raise ToolError(
                f"fork depth limit reached: this agent is at depth {depth} and forks may "
                f"nest at most {limit} deep; do this work yourself instead"
            )
        known = self._spawned.get((request.parent_agent_call_id, request.spawn_key))
        if known is not None:
            return self._forks[known]
        siblings = self._children.setdefault(request.parent_agent_call_id, [])
        if len(siblings) >= self.limits.max_forks_per_agent:
            raise ToolError(
                "fork limit reached: an agent may spawn at most "
                f"{self.limits.max_forks_per_agent} forks; gather the ones you have or do "
                "the rest yourself"
            )
        self._count += 1
        fork = _Fork(
            fork_id=f"fork_{self._count}",
            number=self._count,
            seq=len(siblings) + 1,
            parent_call_id=request.parent_agent_call_id,
            parent_fork_id=parent_fork_id,
            depth=depth + 1,
            source_memory_key=request.parent_memory_key,
            memory_key=f"{request.parent_memory_key}::fork::{self._count}",
        )
        siblings.append(fork.fork_id)
        self._forks[fork.fork_id] = fork
        self._spawned[(request.parent_agent_call_id, request.spawn_key)] = fork.fork_id
        await self._inherit_experiences(fork)
        state = await self.spec.fork_state(
            request.context,
            request.message,
            fork_id=fork.fork_id,
            depth=fork.depth,
            memory_key=fork.memory_key,
            session_id=self.session_id,
            agent_call_id=f"{self.root_call_id}.{fork.fork_id}",
        )
        origin = OriginContext(
            parent_agent_call_id=request.parent_agent_call_id,
            fork_id=fork.fork_id,
            fork_depth=fork.depth,
            fork_seq=fork.seq,
            selfref_instance_id=_instance_id(self.spec),
            source_memory_key=fork.source_memory_key,
            memory_key=fork.memory_key,
            tool_name=request.tool_name,
            tool_call_id=request.tool_call_id,
        )
        fork.task = asyncio.create_task(self._run(fork, state, origin), name=fork.fork_id)
        return fork

    async def collect(
        self, parent_call_id: str, fork_ids: Sequence[str] | None, include_history: bool
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        children = self._children.get(parent_call_id, [])
        wanted = list(children) if fork_ids is None else list(dict.fromkeys(fork_ids))
        unknown = [f for f in wanted if f not in children]
        if unknown:
            mine = ", ".join(children) or "none"
            raise ToolError(
                f"gather_all: unknown fork id(s) {', '.join(unknown)}; your forks are: {mine}"
            )
        forks = [self._forks[f] for f in wanted]
        tasks = [f.task for f in forks if f.task is not None and not f.task.done()]
        if tasks:
            await self._wait(tasks)
        return {f.fork_id: f.result(include_history) for f in forks}, []

    async def _wait(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for the tasks; once the call is aborted they get a grace period, then
        they are cancelled (an aborted fork normally ends at once)."""
        if not self.abort.is_aborted:
            # asyncio.wait never cancels what it waits for, so cancelling `ended` (or
            # this call) leaves the forks running.
            ended = asyncio.ensure_future(asyncio.wait(tasks))
            aborted = asyncio.ensure_future(self.abort.wait())
            try:
                await asyncio.wait({ended, aborted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                aborted.cancel()
            if all(t.done() for t in tasks):
                return
        _done, late = await asyncio.wait(tasks, timeout=_ABORT_GRACE_S)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def _inherit_experiences(self, fork: _Fork) -> None:
        selfref = self.spec.self_reference
        if selfref is None:
            return
        parent = await selfref.store.load(fork.source_memory_key)
        for experience in parent.experiences:
            await selfref.store.add_experience(fork.memory_key, experience.text)

    async def _run(self, fork: _Fork, state: TurnState, origin: OriginContext) -> None:
        backend = self.backend(fork.depth, fork.fork_id)
        try:
            async for output in run_turn(
                self.spec, state, abort=self.abort, origin=origin, forks=backend
            ):
                if isinstance(output, EventYield):
                    await self._emit(output)
            fork.response = state.final_response
            fork.status = "aborted" if state.aborted else "completed"
            if state.aborted:
                fork.error_type = "AbortedError"
                fork.error_message = state.abort_reason or "aborted"
        except asyncio.CancelledError:
            fork.status, fork.error_type = "aborted", "AbortedError"
            fork.error_message = "the fork was cancelled"
            raise
        except Exception as exc:
            _log.warning("in-process fork failed", fork_id=fork.fork_id, error=str(exc))
            fork.status, fork.error_type, fork.error_message = "error", type(exc).__name__, str(exc)
            fork.response = state.final_response or None
        finally:
            fork.messages = list(state.messages)


class LocalForkBackend:
    """`orchestrator.ports.ForkBackend` for one agent call of an in-process tree."""

    def __init__(self, tree: LocalForkTree, *, depth: int, fork_id: str | None) -> None:
        self._tree = tree
        self._depth = depth
        self._fork_id = fork_id

    async def spawn(self, request: SpawnRequest) -> dict[str, Any]:
        fork = await self._tree.spawn(request, self._depth, self._fork_id)
        return {
            "fork_id": fork.fork_id,
            "parent_fork_id": fork.parent_fork_id,
            "depth": fork.depth,
            "source_memory_key": fork.source_memory_key,
            "memory_key": fork.memory_key,
            "status": "running",
        }

    async def collect(
        self, parent_agent_call_id: str, fork_ids: Sequence[str] | None, include_history: bool
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        return await self._tree.collect(parent_agent_call_id, fork_ids, include_history)


def run_in_process(
    spec: AgentSpec,
    state: TurnState,
    *,
    abort: AbortSignal | None,
    origin: OriginContext,
    limits: ForkLimits | None = None,
) -> AsyncIterator[Output]:
    """One in-process call of `spec`: `run_turn`, with forks when the agent has a
    SelfReference (their events merged in as they happen; the final response last)."""
    if spec.self_reference is None or state.memory_key is None:
        return run_turn(spec, state, abort=abort, origin=origin)
    limits = limits or spec.self_reference.fork_limits
    return _run_with_forks(spec, state, abort=abort, origin=origin, limits=limits)


async def _run_with_forks(
    spec: AgentSpec,
    state: TurnState,
    *,
    abort: AbortSignal | None,
    origin: OriginContext,
    limits: ForkLimits,
) -> AsyncIterator[Output]:
    signal = abort if abort is not None else AbortSignal()
    queue: asyncio.Queue[Output | Exception | None] = asyncio.Queue(_QUEUE_SIZE)
    tree = LocalForkTree(
        spec,
        session_id=state.session_id,
        root_call_id=state.agent_call_id,
        abort=signal,
        emit=queue.put,
        limits=limits,
    )
    final: list[ResponseYield] = []

    async def pump() -> None:
        failure: Exception | None = None
        try:
            async for output in run_turn(
                spec, state, abort=signal, origin=origin, forks=tree.backend()
            ):
                if isinstance(output, ResponseYield):
                    final.append(output)
                else:
                    await queue.put(output)
            await tree.wait_all()  # forks never gathered still finish (and are heard)
        except Exception as exc:  # handed to the consumer, which raises it
            failure = exc
        await queue.put(failure)

    task = asyncio.create_task(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
        for response in final:
            yield response
    finally:
        # The consumer stopped early (or it all ended): nothing may outlive the call.
        task.cancel()
        tree.cancel_all()
        await asyncio.wait([task, *tree.tasks()])


def _instance_id(spec: AgentSpec) -> str | None:
    return spec.self_reference.instance_id if spec.self_reference is not None else None
