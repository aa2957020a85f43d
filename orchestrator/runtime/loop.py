"""The ReAct loop as a resumable state machine: `run_turn(spec, state, ...)`.

One turn alternates LLM calls and tool batches until the model answers without tools
(or `max_tool_calls` batches have run, then one last call without tools ends it). The
loop starts from whatever phase `state` is in, so the same code runs a fresh turn and a
turn resumed from a checkpoint on another worker. After every completed step (an LLM
call that asked for tools, a single tool result, a folded batch, the end) it hands the
state to the `Checkpointer`; the model call that ends the turn is checkpointed once,
with the turn's end.

It yields `EventYield`s (every one with a gap-free `origin.event_seq`) and ends with
exactly one `ResponseYield` carrying the final text and the whole turn's messages. The
loop talks only to small interfaces (LLMInterface, Checkpointer, MemoryStore,
AbortSignal), never to Redis or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import structlog

from orchestrator.errors import LLMError, OutputParseError, StoreUnavailable, ToolError
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
    ReactIterationEndEvent,
    ReactIterationStartEvent,
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
from orchestrator.ports import (
    Checkpointer,
    ChunkAccumulator,
    DeferringCheckpointer,
    EndingCheckpointer,
    ForkBackend,
    MemoryStore,
    ToolSession,
    TranscriptBase,
)
from orchestrator.runtime.agent import AgentSpec
from orchestrator.runtime.emitter import ToolEventEmitter
from orchestrator.runtime.forks import SuspendTurn, TurnForks, current_tool_call
from orchestrator.runtime.protocols import conforms
from orchestrator.runtime.selfref import SelfRefContext
from orchestrator.runtime.state import OriginContext, ToolOutcome, TurnError, TurnState
from orchestrator.runtime.state import copy_json as _copy
from orchestrator.runtime.tools import Tool, format_tool_result, parse_arguments
from orchestrator.signals import AbortSignal

__all__ = ["Output", "run_turn"]

Output = ResponseYield | EventYield
T = TypeVar("T")

_log = structlog.get_logger(__name__)
_END = object()
_ABORTED = object()


def run_turn(
    spec: AgentSpec,
    state: TurnState,
    *,
    abort: AbortSignal | None = None,
    checkpointer: Checkpointer | None = None,
    memory: MemoryStore | None = None,
    origin: OriginContext | None = None,
    forks: ForkBackend | None = None,
    session: ToolSession | None = None,
    copy_outputs: bool = True,
) -> AsyncIterator[Output]:
    """Run (or resume) one agent turn, yielding its events and then its response.

    `state` is advanced in place. `memory` overrides the spec's SelfReference store.
    A failing LLM call yields `LLMCallErrorEvent` and `ReactEndEvent`, then raises the
    `LLMError`. An abort ends the turn early with a history that is valid to send again.

    With `forks` (and a SelfReference) the turn can fork. A gather that must wait for
    running forks suspends the turn: the loop checkpoints and returns without a
    `ResponseYield`, leaving `state.waiting_for` set; run it again on the same state once
    those forks have ended.

    `session` (on a worker) tells tools which distributed session they run in
    (`runtime.session`: its ids and a session journal, e.g. for PyRepl).

    Every output holds its own copies of the transcript, tool calls and definitions, so
    the consumer may keep and change them. `copy_outputs=False` is for a consumer that
    encodes each output before it asks for the next and changes none (a worker): the
    outputs then share the turn's lists, which stay as they were until that next ask.
    """
    turn = _Turn(
        spec, state, abort, checkpointer, memory, origin or OriginContext(), forks, session
    )
    if not copy_outputs:
        turn._out = _share
    # The turn's own generator, not one around it that every output would pass through.
    return turn.run()


class _Turn:
    def __init__(
        self,
        spec: AgentSpec,
        state: TurnState,
        abort: AbortSignal | None,
        checkpointer: Checkpointer | None,
        memory: MemoryStore | None,
        origin: OriginContext,
        forks: ForkBackend | None = None,
        session: ToolSession | None = None,
    ) -> None:
        self.spec = spec
        self.state = state
        self.abort = abort
        self.checkpointer = checkpointer
        # Where a crash before the write repeats no tool, the state may ride with the
        # next outputs instead of costing a write of its own (see DeferringCheckpointer).
        self._defer = (
            cast(DeferringCheckpointer, checkpointer)
            if checkpointer is not None and conforms(checkpointer, DeferringCheckpointer)
            else None
        )
        self._ending = (
            cast(EndingCheckpointer, checkpointer)
            if self._defer is not None and conforms(checkpointer, EndingCheckpointer)
            else None
        )
        self.origin = origin
        self._origin_fields = origin.model_dump()  # once per turn, not once per event
        fork = None
        if forks is not None and state.memory_key is not None:
            fork = TurnForks(
                forks,
                agent_call_id=state.agent_call_id,
                memory_key=state.memory_key,
                messages=lambda: self.state.messages,
            )
        self.selfref: SelfRefContext | None = spec.bind_memory(state.memory_key, memory, fork)
        self.tools: dict[str, Tool] = spec.tool_map()
        if self.selfref is not None:
            self.tools.update({t.name: t for t in self.selfref.tools()})
        # The turn's own copy of the (shared, cached) definitions: the model port may
        # do as it likes with what it is given.
        self.definitions = _copy([t.shared_definition() for t in self.tools.values()])
        self.runtime = spec.tool_runtime(self.selfref, session)
        self._clock = time.monotonic()
        self._time_base = state.execution_time
        self._iteration_clock = time.monotonic()
        # How outputs get the transcript, tool calls and definitions (see run_turn).
        self._out: Callable[[Any], Any] = _copy

    # -- plumbing ----------------------------------------------------------------------

    def _event(
        self, event: ReActEvent, *, tool_name: str | None = None, tool_call_id: str | None = None
    ) -> EventYield:
        """Stamp an event with the turn's ids and the next sequence number."""
        st = self.state
        event.trace_id = st.trace_id
        event.func_name = st.func_name
        seq = st.next_event_seq
        st.next_event_seq += 1
        fields = dict(self._origin_fields)
        # A fork's events carry the tool call that spawned it (its own tool calls are
        # named in the events themselves); a root's tool events carry their own call.
        if fields["tool_call_id"] is None:
            fields["tool_name"], fields["tool_call_id"] = tool_name, tool_call_id
        origin = EventOrigin(
            session_id=st.session_id, agent_call_id=st.agent_call_id, event_seq=seq, **fields
        )
        return EventYield(event=event, origin=origin)

    async def _save(self, *, later: bool = False) -> None:
        """Checkpoint the state. `later`: queue it with the outputs that follow instead of
        waiting for it (only where a crash before it is written repeats no tool)."""
        self.state.execution_time = self._time_base + (time.monotonic() - self._clock)
        if later and self._defer is not None:
            self._defer.save_later(self.state)
        elif self.checkpointer is not None:
            await self.checkpointer.save(self.state)

    def _aborted(self) -> bool:
        return self.state.aborted or (self.abort is not None and self.abort.is_aborted)

    async def _race(self, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """Await `awaitable` unless the abort signal fires first: (finished, result)."""
        if self.abort is None:
            return True, await awaitable
        task = asyncio.ensure_future(awaitable)
        if not self.abort.is_aborted:
            waiter = asyncio.ensure_future(self.abort.wait())
            try:
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                waiter.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False, None

    # -- the state machine ---------------------------------------------------------------

    async def run(self) -> AsyncIterator[Output]:
        st = self.state
        if not st.started:
            st.started = True
            yield self._event(
                ReactStartEvent(
                    iteration=0,
                    user_task_prompt=st.user_task_prompt,
                    initial_messages=self._out(st.messages),
                    available_tools=self._out(self.definitions),
                )
            )
            # The next step is a model call, which a crash redoes anyway: this state
            # rides with that call's first events.
            await self._save(later=True)
        while st.phase != "done":
            if self._aborted():
                async for output in self._finish_aborted():
                    yield output
                break
            step = self._llm_step() if st.phase == "llm" else self._tool_step()
            async for output in step:
                yield output
            if st.waiting_for:
                return  # suspended in a gather; resumed by running the turn again
        if st.error is not None:
            raise _resumed_error(st.error)
        response = self.spec.final_response(st)
        yield ResponseYield(response=response, messages=self._out(st.messages))

    def _tools_exhausted(self) -> bool:
        limit = self.spec.max_tool_calls
        return limit is not None and self.state.tool_batches_done >= max(limit, 1)

    async def _llm_step(self) -> AsyncIterator[Output]:
        st = self.state
        final_call = self._tools_exhausted()
        st.iteration = 0 if st.tool_batches_done == 0 else st.tool_batches_done + 1
        wrapped = st.tool_batches_done > 0 and not final_call
        if wrapped:
            self._iteration_clock = time.monotonic()
            yield self._event(
                ReactIterationStartEvent(
                    iteration=st.iteration, current_messages=self._out(st.messages)
                )
            )
        tools = None if final_call or not self.definitions else self.definitions
        sent = _copy(st.messages)  # the model's own copy (and both call events')
        call = LLMCallResult()
        yield self._event(
            LLMCallStartEvent(
                iteration=st.iteration,
                messages=sent,
                tools=self._out(tools or []),
                llm_kwargs=dict(self.spec.llm_kwargs),
                stream=self.spec.stream,
            )
        )
        st.llm_calls += 1
        started = time.monotonic()
        try:
            if self.spec.stream:
                async for output in self._stream(call, sent, tools):
                    yield output
            else:
                await self._complete(call, sent, tools)
        except Exception as exc:
            async for output in self._fail(exc, sent):
                yield output
            raise
        if final_call:
            call.keep_tool_calls = False
        tool_calls = self._commit_llm_result(call)
        yield self._event(
            LLMCallEndEvent(
                iteration=st.iteration,
                response=call.response,
                messages=sent,
                tool_calls=self._out(tool_calls),
                execution_time=time.monotonic() - started,
                usage=call.usage,
                content=call.content,
                extra={"aborted": True} if call.aborted else {},
            )
        )
        if st.phase == "done" and not st.aborted:
            # The turn ends here: its one checkpoint is the one after ReactEnd (a crash
            # before it redoes this model call, which runs no tool).
            async for output in self._finish(wrapped):
                yield output
        else:
            # An aborted call's state rides with the aborted end that follows at once (a
            # crash before it ends the turn aborted from the call's own checkpoint: no
            # tool runs either way), unless that end first saves the turn to memory: a
            # resumed attempt must then find the transcript memory got.
            await self._save(later=st.aborted and self.selfref is None)
            if wrapped and st.phase == "llm":  # the answer was sent back (llm_function)
                yield self._iteration_end(0)

    async def _stream(
        self, call: LLMCallResult, sent: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> AsyncIterator[Output]:
        llm = self.spec.llm_interface
        chunks = _Chunks(llm.chat_stream(sent, tools=tools, **self.spec.llm_kwargs), self.abort)
        try:
            while True:
                chunk = await chunks.next()
                if chunk is _ABORTED:
                    call.aborted = True
                    break
                if chunk is _END or not isinstance(chunk, dict):
                    break
                deltas = call.add_chunk(chunk)
                yield self._event(
                    LLMChunkArriveEvent(
                        iteration=self.state.iteration,
                        chunk=chunk,
                        accumulated_content=call.content,
                        chunk_index=call.chunk_count - 1,
                    )
                )
                for index, text in deltas:
                    yield self._argument_delta_event(call, index, text)
        finally:
            await chunks.aclose()

    def _argument_delta_event(self, call: LLMCallResult, index: int, text: str) -> EventYield:
        name, call_id = call.tool_call(index)
        argname, argdelta = call.argument_delta(index)
        return self._event(
            ToolCallArgumentsDeltaEvent(
                iteration=self.state.iteration,
                tool_name=name,
                tool_call_id=call_id,
                argname=argname,
                argcontent_delta=argdelta,
                delta=text,
            ),
            tool_name=name or None,
            tool_call_id=call_id or None,
        )

    async def _complete(
        self, call: LLMCallResult, sent: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> None:
        llm = self.spec.llm_interface
        done, response = await self._race(llm.chat(sent, tools=tools, **self.spec.llm_kwargs))
        if not done or response is None:
            call.aborted = True
            return
        call.add_completion(response)

    def _commit_llm_result(self, call: LLMCallResult) -> list[dict[str, Any]]:
        """Append the assistant message, decide the next phase; returns the tool calls."""
        st = self.state
        st.add_usage(call.usage)
        st.final_response = call.content
        tool_calls = [] if call.aborted else call.tool_calls(st.agent_call_id, st.llm_calls)
        message = call.assistant_message(tool_calls)
        if message is not None:
            st.messages.append(message)
        if call.aborted:
            st.aborted = True
            st.abort_reason = st.abort_reason or self._abort_reason()
            return tool_calls
        if tool_calls:
            st.phase = "tools"
            st.pending_tool_calls = _copy(tool_calls)
            st.tool_results = {}
            st.tool_calls_started = []
            st.batch_started = False
            st.batch_execution_time = 0.0
        else:
            retry = self.spec.review_answer(st)  # llm_function: did it parse?
            if retry is None:
                st.phase = "done"
            else:
                st.messages.append(retry)
        return tool_calls

    def _abort_reason(self) -> str:
        return self.abort.reason if self.abort is not None else ""

    async def _fail(self, exc: Exception, sent: list[dict[str, Any]]) -> AsyncIterator[Output]:
        st = self.state
        _log.warning("llm call failed", func_name=st.func_name, error=str(exc))
        st.error = TurnError(type=type(exc).__name__, message=str(exc))
        st.phase = "done"
        yield self._event(
            LLMCallErrorEvent(
                iteration=st.iteration,
                error=str(exc),
                error_message=str(exc),
                error_type=type(exc).__name__,
                messages=sent,
                llm_kwargs=dict(self.spec.llm_kwargs),
            )
        )
        yield self._react_end({"error": str(exc), "error_type": type(exc).__name__})
        await self._save()

    # -- tools -------------------------------------------------------------------------

    async def _tool_step(self) -> AsyncIterator[Output]:
        st = self.state
        st.iteration = st.tool_batches_done + 1
        st.waiting_for = []
        if not st.batch_started:
            st.batch_started = True
            st.tool_calls += len(st.pending_tool_calls)
            yield self._event(
                ToolCallsBatchStartEvent(
                    iteration=st.iteration,
                    tool_calls=self._out(st.pending_tool_calls),
                    batch_size=len(st.pending_tool_calls),
                )
            )
            # Checkpoint now so a resumed attempt does not announce the batch twice.
            await self._save()
        todo = [c for c in st.pending_tool_calls if _call_id(c) not in st.tool_results]
        if todo:
            async for output in self._run_batch(todo):
                yield output
        if self._aborted():
            return
        if st.waiting_for:
            await self._save()
            return
        async for output in self._fold_batch(wrap_iteration=st.iteration >= 2):
            yield output

    async def _run_batch(self, todo: list[dict[str, Any]]) -> AsyncIterator[Output]:
        """Run the batch's unanswered calls concurrently (barrier tools after the rest).

        A call that suspends (a gather waiting for forks) gets no result: it runs again
        when the turn is resumed. The others finish first, so none is lost.
        """
        st = self.state
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        for call in todo:
            if _call_id(call) not in st.tool_calls_started:
                yield self._announce(call)
        first, later = self._split_barriers(todo)
        suspended: dict[str, list[str]] = {}
        started = time.monotonic()
        tasks = [asyncio.create_task(self._execute(call, queue)) for call in first]

        def settled(calls: list[dict[str, Any]]) -> bool:
            return all(_call_id(c) in st.tool_results or _call_id(c) in suspended for c in calls)

        try:
            while not settled(todo):
                if later and settled(first):
                    tasks += [asyncio.create_task(self._execute(c, queue)) for c in later]
                    first, later = first + later, []
                done, item = await self._race(queue.get())
                if not done or item is None:
                    break
                async for output in self._take_ready([item, *_drain(queue)], suspended):
                    yield output
            async for output in self._end_batch(tasks, queue, suspended):
                yield output
        finally:
            for task in tasks:
                task.cancel()
            self.state.batch_execution_time += time.monotonic() - started

    async def _take_ready(
        self, items: list[_Item], suspended: dict[str, list[str]]
    ) -> AsyncIterator[Output]:
        """Handle every item that is in, then checkpoint once: a checkpoint per result
        made a batch of N calls write N checkpoints of O(N) size."""
        recorded = False
        for item in items:
            if isinstance(item, _Unavailable):
                raise item.error
            if isinstance(item, _Suspended):
                suspended[item.tool_call_id] = item.waiting_for
                continue
            recorded = recorded or isinstance(item, ToolOutcome)
            async for output in self._handle_item(item, save=False):
                yield output
        if recorded:
            await self._save()

    async def _end_batch(
        self,
        tasks: list[asyncio.Task[None]],
        queue: asyncio.Queue[_Item],
        suspended: dict[str, list[str]],
    ) -> AsyncIterator[Output]:
        if self._aborted():
            async for output in self._cancel_tasks(tasks, queue):
                yield output
        elif suspended:
            yield self._suspend(suspended)

    def _suspend(self, suspended: dict[str, list[str]]) -> EventYield:
        """Mark the turn as waiting for forks; the event tells readers which ones."""
        st = self.state
        st.waiting_for = sorted({f for forks in suspended.values() for f in forks})
        return self._event(
            CustomEvent(
                iteration=st.iteration,
                event_name="fork_gather_waiting",
                data={"waiting_for": st.waiting_for, "tool_call_ids": sorted(suspended)},
            )
        )

    def _announce(self, call: dict[str, Any]) -> EventYield:
        """The call's ToolCallStartEvent (once per call, however often the batch resumes)."""
        self.state.tool_calls_started.append(_call_id(call))
        return self._tool_event(call, ToolCallStartEvent, tool_call=self._out(call))

    def _split_barriers(
        self, calls: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(calls to run now, barrier calls to run once those have finished)."""
        barrier: list[dict[str, Any]] = []
        rest: list[dict[str, Any]] = []
        for call in calls:
            tool = self.tools.get(_call_name(call))
            (barrier if tool is not None and tool.barrier else rest).append(call)
        return (rest, barrier) if rest else (barrier, [])

    async def _cancel_tasks(
        self, tasks: list[asyncio.Task[None]], queue: asyncio.Queue[_Item]
    ) -> AsyncIterator[Output]:
        """Stop in-flight tools, keeping whatever finished (or emitted) before they stopped."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, _Suspended | _Unavailable):
                continue
            async for output in self._handle_item(item):
                yield output

    async def _handle_item(
        self, item: CustomEvent | ToolOutcome, *, save: bool = True
    ) -> AsyncIterator[Output]:
        if isinstance(item, CustomEvent):
            yield self._event(item, tool_name=item.tool_name, tool_call_id=item.tool_call_id)
            return
        async for output in self._record(item, save=save):
            yield output

    async def _record(self, outcome: ToolOutcome, *, save: bool = True) -> AsyncIterator[Output]:
        """Keep one tool result, report it, and (unless the caller checkpoints after a few
        of them) checkpoint so it never runs again."""
        st = self.state
        st.tool_results[outcome.tool_call_id] = outcome
        call = next(c for c in st.pending_tool_calls if _call_id(c) == outcome.tool_call_id)
        if outcome.success:
            yield self._tool_event(
                call,
                ToolCallEndEvent,
                result=outcome.result,
                execution_time=outcome.execution_time,
                success=True,
            )
        else:
            yield self._tool_event(
                call,
                ToolCallErrorEvent,
                error=outcome.error or "",
                error_message=outcome.error or "",
                error_type=outcome.error_type or "",
                execution_time=outcome.execution_time,
            )
        if save:
            await self._save()

    def _tool_event(
        self,
        call: dict[str, Any],
        kind: type[ToolCallStartEvent | ToolCallEndEvent | ToolCallErrorEvent],
        **fields: Any,
    ) -> EventYield:
        name, call_id = _call_name(call), _call_id(call)
        event = kind(
            iteration=self.state.iteration,
            tool_name=name,
            tool_call_id=call_id,
            arguments=_arguments_or_empty(call),
            **fields,
        )
        return self._event(event, tool_name=name, tool_call_id=call_id)

    async def _execute(self, call: dict[str, Any], queue: asyncio.Queue[_Item]) -> None:
        """Run one tool call; its result (or error) goes on the queue, never raises."""
        name, call_id = _call_name(call), _call_id(call)
        current_tool_call.set((name, call_id))  # this task's own context
        emitter = ToolEventEmitter(
            queue.put_nowait,
            tool_name=name,
            tool_call_id=call_id,
            trace_id=self.state.trace_id,
            func_name=self.state.func_name,
            iteration=self.state.iteration,
        )
        started = time.monotonic()
        try:
            tool = self.tools.get(name)
            if tool is None:
                known = ", ".join(sorted(self.tools)) or "none"
                raise ToolError(f"unknown tool {name!r} (available tools: {known})")
            arguments = parse_arguments(call.get("function", {}).get("arguments"))
            result = await tool.invoke(arguments, event_emitter=emitter, runtime=self.runtime)
            content = format_tool_result(result)
            outcome = ToolOutcome(
                tool_call_id=call_id, tool_name=name, content=content, result=_as_json(content)
            )
        except SuspendTurn as suspend:
            queue.put_nowait(_Suspended(call_id, suspend.waiting_for))
            return
        except StoreUnavailable as exc:
            # The orchestrator's store is away (a spawn, a gather, memory): that is not the
            # tool's result for the model; the turn stops and is resumed after the outage.
            queue.put_nowait(_Unavailable(exc))
            return
        except Exception as exc:
            _log.info("tool call failed", tool=name, error=str(exc), error_type=type(exc).__name__)
            outcome = _error_outcome(call_id, name, exc)
        outcome.execution_time = time.monotonic() - started
        queue.put_nowait(outcome)

    async def _fold_batch(
        self, *, wrap_iteration: bool, later: bool = False
    ) -> AsyncIterator[Output]:
        """Append the batch's tool messages in the model's order and move to the next call.
        `later`: its checkpoint rides with the outputs that follow (`_save(later=True)`)."""
        st = self.state
        outcomes = [st.tool_results[_call_id(c)] for c in st.pending_tool_calls]
        for outcome in outcomes:
            st.messages.append(
                {"role": "tool", "tool_call_id": outcome.tool_call_id, "content": outcome.content}
            )
        batch_size, batch_time = len(outcomes), st.batch_execution_time
        st.tool_batches_done += 1
        st.phase = "llm"
        st.pending_tool_calls, st.tool_results, st.batch_started = [], {}, False
        st.tool_calls_started = []
        await self._apply_compaction()
        successes = sum(1 for o in outcomes if o.success)
        yield self._event(
            ToolCallsBatchEndEvent(
                iteration=st.iteration,
                tool_results=[_result_summary(o) for o in outcomes],
                batch_size=batch_size,
                total_execution_time=batch_time,
                success_count=successes,
                error_count=batch_size - successes,
            )
        )
        if wrap_iteration:
            yield self._iteration_end(batch_size)
        await self._save(later=later)

    def _iteration_end(self, tool_calls_count: int) -> EventYield:
        return self._event(
            ReactIterationEndEvent(
                iteration=self.state.iteration,
                messages=self._out(self.state.messages),
                iteration_time=time.monotonic() - self._iteration_clock,
                tool_calls_count=tool_calls_count,
            )
        )

    # -- endings -----------------------------------------------------------------------

    async def _apply_compaction(self) -> None:
        if self.selfref is None:
            return
        committed = await self.selfref.commit_compaction(self.state.messages)
        if committed is not None:
            compacted, revision = committed
            st = self.state
            st.messages = list(compacted)
            # The compacted transcript is what memory holds now: the turn goes on from it.
            st.memory_base = TranscriptBase(
                revision=revision, count=len(compacted), writer=st.agent_call_id
            )

    async def _save_memory(self) -> None:
        if self.selfref is not None:
            await self.selfref.save_turn(self.state.messages, self.state.memory_base)

    async def _end_memory(self) -> None:
        """Commit a pending compaction, then save the turn: one store call when none is
        pending (the save checks, and writes nothing if one is)."""
        st = self.state
        if self.selfref is None:
            return
        if await self.selfref.save_turn_unless_compacting(st.messages, st.memory_base):
            return
        await self._apply_compaction()
        await self._save_memory()

    async def _finish(self, wrapped: bool) -> AsyncIterator[Output]:
        if self._ending is not None and self.selfref is not None:
            # Only the memory save comes before ReactEnd: what is published until then
            # rides with the end instead of in a write of its own during the save.
            self._ending.ending()
        if wrapped:
            yield self._iteration_end(0)
        await self._end_memory()
        yield self._react_end({})
        await self._save(later=True)  # written with the turn's response, which follows

    async def _finish_aborted(self) -> AsyncIterator[Output]:
        st = self.state
        st.aborted = True
        st.abort_reason = st.abort_reason or self._abort_reason()
        if st.phase == "tools":
            async for output in self._close_batch():
                yield output
        await self._save_memory()
        st.phase = "done"
        yield self._react_end({"aborted": True, "abort_reason": st.abort_reason})
        await self._save(later=True)  # written with the turn's response, which follows

    async def _close_batch(self) -> AsyncIterator[Output]:
        """Give every unanswered tool call a 'cancelled' result so the history stays valid.

        Their checkpoints are not waited for while nothing awaits before the aborted end
        that follows: they ride with it (a crash before it gives the same results again,
        from the batch's checkpoint, and no event of them was written alone). Before
        anything that awaits (a tool's `on_abort` hook; a SelfReference agent's fold,
        which reads its memory, and its memory save) the results so far are written, so
        a crash there publishes no cancelled call twice; a hook's call (its result, or
        the 'cancelled' one that replaces a hook that raised) is written at once, so the
        hook never runs twice; and a SelfReference agent's fold is written before its
        memory save, so a resumed attempt finds the transcript memory got."""
        st = self.state
        reason = st.abort_reason or "aborted"
        unsaved = False
        for call in st.pending_tool_calls:
            if _call_id(call) in st.tool_results:
                continue
            tool = self._abort_hook(call)
            hook = tool is not None
            if hook and unsaved:
                await self._save()
                unsaved = False
            hooked = None if tool is None else await self._aborted_outcome(tool, call)
            outcome = hooked or ToolOutcome(
                tool_call_id=_call_id(call),
                tool_name=_call_name(call),
                content=json.dumps(
                    {"error": f"Tool call cancelled: the turn was aborted ({reason})."}
                ),
                success=False,
                error=f"Tool call cancelled: {reason}",
                error_type="CancelledError",
            )
            async for output in self._record(outcome, save=hook):
                yield output
            unsaved = unsaved or not hook
        later = self.selfref is None
        if unsaved and not later:
            await self._save()
        async for output in self._fold_batch(wrap_iteration=False, later=later):
            yield output

    def _abort_hook(self, call: dict[str, Any]) -> Tool | None:
        """The call's tool, if it has an `on_abort` hook."""
        tool = self.tools.get(_call_name(call))
        return tool if tool is not None and tool.on_abort is not None else None

    async def _aborted_outcome(self, tool: Tool, call: dict[str, Any]) -> ToolOutcome | None:
        """The result `tool`'s `on_abort` hook gives for a call cut short by an abort
        (None: it has none, or it raised)."""
        if tool.on_abort is None:
            return None
        try:
            result = await tool.on_abort(_arguments_or_empty(call))
        except Exception as exc:
            _log.info("on_abort failed", tool=tool.name, error=str(exc))
            return None
        content = format_tool_result(result)
        return ToolOutcome(
            tool_call_id=_call_id(call),
            tool_name=tool.name,
            content=content,
            result=_as_json(content),
        )

    def _react_end(self, extra: dict[str, Any]) -> EventYield:
        st = self.state
        st.execution_time = self._time_base + (time.monotonic() - self._clock)
        return self._event(
            ReactEndEvent(
                iteration=st.iteration,
                final_response=st.final_response,
                final_messages=self._out(st.messages),
                total_iterations=st.iteration,
                total_execution_time=st.execution_time,
                total_tool_calls=st.tool_calls,
                total_llm_calls=st.llm_calls,
                total_token_usage=dict(st.token_usage) if st.token_usage else None,
                extra=extra,
            )
        )


def _share(value: T) -> T:
    """The value itself: outputs of a turn whose consumer encodes each one before asking
    for the next (see `run_turn(copy_outputs=False)`)."""
    return value


def _drain(queue: asyncio.Queue[_Item]) -> list[_Item]:
    """Everything already in the queue, without waiting."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class _Suspended:
    """A tool call that suspended the turn (a gather waiting for forks)."""

    __slots__ = ("tool_call_id", "waiting_for")

    def __init__(self, tool_call_id: str, waiting_for: list[str]) -> None:
        self.tool_call_id = tool_call_id
        self.waiting_for = waiting_for


class _Unavailable:
    """A tool call that met an unreachable store: the turn stops (and is resumed later)."""

    __slots__ = ("error",)

    def __init__(self, error: StoreUnavailable) -> None:
        self.error = error


_Item = CustomEvent | ToolOutcome | _Suspended | _Unavailable


class LLMCallResult:
    """What one LLM call produced, assembled by the LLM port's `ChunkAccumulator`, plus
    what the loop tracks about the call: chunks seen, the last raw response, abort."""

    def __init__(self) -> None:
        self.assembled = ChunkAccumulator()
        self.response: dict[str, Any] = {}
        self.chunk_count = 0
        self.aborted = False
        self.keep_tool_calls = True
        # Per tool call: what each argument's text was when its last delta event went out.
        self._emitted: dict[int, dict[str, str]] = {}

    @property
    def content(self) -> str:
        return self.assembled.content()

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.assembled.usage

    def add_chunk(self, chunk: dict[str, Any]) -> list[tuple[int, str]]:
        """Fold one chat.completion.chunk in; returns the (index, text) argument deltas."""
        self.chunk_count += 1
        self.response = chunk
        return self.assembled.add(chunk)

    def add_completion(self, response: dict[str, Any]) -> None:
        """Take a whole chat.completion."""
        self.response = response
        self.assembled.add_completion(response)

    def tool_call(self, index: int) -> tuple[str, str]:
        """(name, id) of one tool call so far (either may still be empty)."""
        call = self.assembled.tool_calls().get(index, {})
        return str(call.get("function", {}).get("name", "")), str(call.get("id", ""))

    def argument_delta(self, index: int) -> tuple[str, str]:
        """Best-effort per-argument view of a call's streamed JSON: (argument name, new text)."""
        call = self.assembled.tool_calls().get(index, {})
        arguments = str(call.get("function", {}).get("arguments", ""))
        return argument_delta(arguments, self._emitted.setdefault(index, {}))

    def tool_calls(self, agent_call_id: str = "", call_number: int = 0) -> list[dict[str, Any]]:
        """The calls in OpenAI shape, in the model's order (ids made up if missing)."""
        if not self.keep_tool_calls:
            return []
        calls = []
        for index, call in sorted(self.assembled.tool_calls().items()):
            function = call.get("function", {})
            calls.append(
                {
                    "id": call.get("id") or f"call_{agent_call_id}_{call_number}_{index}",
                    "type": "function",
                    "function": {
                        "name": function.get("name", ""),
                        "arguments": function.get("arguments", ""),
                    },
                }
            )
        return calls

    def assistant_message(self, tool_calls: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The assistant message to append (None when the model said nothing at all)."""
        if tool_calls:
            # "" not None: strict servers (llama.cpp) refuse content null beside tool_calls.
            return {"role": "assistant", "content": self.content, "tool_calls": tool_calls}
        if self.content:
            return {"role": "assistant", "content": self.content}
        return None


def argument_delta(arguments: str, emitted: dict[str, str]) -> tuple[str, str]:
    """Best-effort per-argument view of streamed JSON: (argument name, new text).
    `emitted` holds each argument's text as last reported, and is updated."""
    parsed = _parse_partial_object(arguments)
    for name, value in parsed.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        before = emitted.get(name, "")
        if text == before or (before and before.startswith(text)):
            continue
        emitted[name] = text
        return name, text[len(before) :] if text.startswith(before) else text
    return "", ""


def _parse_partial_object(text: str) -> dict[str, Any]:
    for suffix in ("", '"}', "}", '""}', "]}", '"]}'):
        try:
            value = json.loads(text + suffix)
        except ValueError:
            continue
        return value if isinstance(value, dict) else {}
    return {}


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Chunks:
    """A model's chunk stream whose `next()` returns `_ABORTED` as soon as the abort
    signal fires (and `_END` after the last chunk).

    With a signal the stream is read by a task of its own into a queue that the signal
    also writes to, so a turn costs two tasks per model call, not two per chunk (as racing
    each read against the signal would). `aclose()` stops the reading and closes the
    stream (an in-flight HTTP read is cancelled)."""

    def __init__(self, stream: AsyncIterator[Any], abort: AbortSignal | None) -> None:
        self._stream = stream
        self._abort = abort
        self._queue: asyncio.Queue[Any] | None = None
        self._tasks: list[asyncio.Future[Any]] = []
        if abort is not None and not abort.is_aborted:
            self._queue = asyncio.Queue()
            waiter = asyncio.ensure_future(abort.wait())
            waiter.add_done_callback(self._on_abort)
            self._tasks = [asyncio.ensure_future(self._read()), waiter]

    def _on_abort(self, waiter: asyncio.Future[Any]) -> None:
        if self._queue is not None and not waiter.cancelled():
            self._queue.put_nowait(_ABORTED)

    async def _read(self) -> None:
        assert self._queue is not None
        try:
            async for chunk in self._stream:
                self._queue.put_nowait(chunk)
            self._queue.put_nowait(_END)
        except Exception as exc:  # raised by next(), in the turn's task
            self._queue.put_nowait(_Failed(exc))
        except asyncio.CancelledError as exc:
            # aclose() cancelled the reader (nobody waits), or the stream raised it on its
            # own: then next() must not wait for a chunk that never comes.
            self._queue.put_nowait(_Failed(exc))
            raise
        finally:
            await self._close_stream()

    async def next(self) -> Any:
        if self._abort is not None and self._abort.is_aborted:
            return _ABORTED
        if self._queue is None:
            try:
                return await anext(self._stream)
            except StopAsyncIteration:
                return _END
        item = await self._queue.get()
        if isinstance(item, _Failed):
            raise item.error
        return item

    async def _close_stream(self) -> None:
        closer = getattr(self._stream, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()

    async def aclose(self) -> None:
        if not self._tasks:
            await self._close_stream()
            return
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_stream()  # the reader may have been cancelled before it started


def _call_id(call: dict[str, Any]) -> str:
    return str(call.get("id", ""))


def _call_name(call: dict[str, Any]) -> str:
    return str(call.get("function", {}).get("name", ""))


def _arguments_or_empty(call: dict[str, Any]) -> dict[str, Any]:
    try:
        return parse_arguments(call.get("function", {}).get("arguments"))
    except ToolError:
        return {}


def _as_json(content: str) -> Any:
    """What a tool result looks like in events: its JSON value, or the text itself."""
    try:
        value = json.loads(content)
    except ValueError:
        return content
    return value if isinstance(value, dict | list | str) else content


def _error_outcome(call_id: str, name: str, exc: Exception) -> ToolOutcome:
    error_type = type(exc).__name__
    return ToolOutcome(
        tool_call_id=call_id,
        tool_name=name,
        content=json.dumps({"error": f"{error_type}: {exc}"}, ensure_ascii=False),
        success=False,
        error=str(exc),
        error_type=error_type,
    )


def _result_summary(outcome: ToolOutcome) -> ToolCallResult:
    return ToolCallResult(
        tool_name=outcome.tool_name,
        tool_call_id=outcome.tool_call_id,
        result=outcome.result if outcome.success else outcome.content,
        execution_time=outcome.execution_time,
        success=outcome.success,
        error=outcome.error,
    )


def _resumed_error(error: TurnError) -> Exception:
    if error.type == OutputParseError.__name__:
        return OutputParseError(error.message)
    return LLMError(f"{error.type}: {error.message}")
