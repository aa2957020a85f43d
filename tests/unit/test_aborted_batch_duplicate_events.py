"""A cancelled tool call's result is reported once, even if the worker
dies between the abort and the aborted end.

fc42b8e records the cancelled results of an aborted batch without a checkpoint of their
own (`_record(save=False)`); their ToolCallError events still go out at once
(`EventPublisher.publish` starts the background flusher). When anything in the aborted
end awaits before the end's write — a later call's `on_abort` hook (gather_all's does a
Redis read), a SelfReference agent's compaction read and memory save — the flusher
delivers those events without the state that records the results. A worker that dies
there leaves a stream that reports the cancellation, and a checkpoint that does not: the
resumed attempt cancels the call again and publishes a second ToolCallError for the same
tool call (on the code before, each cancelled result was checkpointed with its event).

This drives the loop as a worker does (`RunCheckpointer` on an `EventPublisher`, on
fakeredis), kills attempt 1 inside the hook, resumes as attempt 2 and reads the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import AbortSignal, OpenAICompatible, llm_chat, tool
from orchestrator.events import EventYield, ToolCallErrorEvent
from orchestrator.keys import Keys
from orchestrator.runtime import AgentSpec, TurnState, agent_spec, run_turn
from orchestrator.runtime.tools import Tool
from orchestrator.store.streams import EventPublisher, StreamReader
from workers.turns import RunCheckpointer

pytestmark = pytest.mark.timeout(30)

StartServer = Callable[..., Any]


@pytest.fixture
async def llm() -> AsyncIterator[Callable[[Any], OpenAICompatible]]:
    clients: list[OpenAICompatible] = []

    def make(server: Any) -> OpenAICompatible:
        client = OpenAICompatible(
            api_keys="scripted", model_name="scripted", base_url=server.base_url, retry_delay=0.01
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def _publisher(redis: Any, keys: Keys, attempt: int) -> EventPublisher:
    return EventPublisher(redis, keys, session_id="s1", run_id="a1", attempt=attempt)


async def test_a_cancelled_call_is_reported_once_across_a_crash_in_the_aborted_end(
    fake_redis: Any, keys: Keys, mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    hook_entered = asyncio.Event()
    hook_calls = 0

    @tool(name="nap", description="Sleep a while")
    async def nap(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    async def guarded_run(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "guarded"

    async def on_abort(arguments: dict[str, Any]) -> str:
        # A hook that does I/O (as gather_all's `gather_now` reads Redis).
        nonlocal hook_calls
        hook_calls += 1
        hook_entered.set()
        await asyncio.sleep(0.2 if hook_calls == 1 else 0)
        return "stopped cleanly"

    guarded = Tool(name="guarded", description="Run guarded", func=guarded_run, on_abort=on_abort)
    server = mock_llm(
        {
            "model": "scripted",
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {
                        "tool_calls": [
                            {"name": "nap", "arguments": {"seconds": 30}},
                            {"name": "guarded", "arguments": {"seconds": 30}},
                        ]
                    },
                },
            ],
            "fallback": {"content": "ok"},
        }
    )

    @llm_chat(llm_interface=llm(server), toolkit=[nap, guarded], stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    spec: AgentSpec = agent_spec(agent)

    # Attempt 1, as `TurnExecutor._drive_with` runs it; killed inside the hook.
    first = _publisher(fake_redis, keys, attempt=1)
    await first.take_over_and_load()
    state = await spec.initial_state(("go",), {}, session_id="s1", agent_call_id="a1")
    abort = AbortSignal()

    async def drive() -> None:
        async for output in run_turn(
            spec, state, abort=abort, checkpointer=RunCheckpointer(first), copy_outputs=False
        ):
            first.publish(output)
            if (
                isinstance(output, EventYield)
                and output.event.event_type.value == "tool_call_start"
                and getattr(output.event, "tool_name", "") == "guarded"
            ):
                abort.abort("user_interrupt")

    task = asyncio.create_task(drive())
    await asyncio.wait_for(hook_entered.wait(), 10)
    await asyncio.sleep(0.1)  # the hook's I/O: the publisher's flusher runs meanwhile
    task.cancel()  # SIGKILL
    await asyncio.gather(task, return_exceptions=True)
    first.abandon()

    # Attempt 2 resumes from the checkpoint; the run tree's abort flag is set.
    second = _publisher(fake_redis, keys, attempt=2)
    last, saved = await second.take_over_and_load()
    assert saved is not None
    resumed = TurnState.model_validate_json(saved)
    if last is not None and last + 1 > resumed.next_event_seq:
        resumed.next_event_seq = last + 1
    again = AbortSignal()
    again.abort("user_interrupt")
    async for output in run_turn(
        spec, resumed, abort=again, checkpointer=RunCheckpointer(second), copy_outputs=False
    ):
        second.publish(output)
    await second.flush()

    entries = await StreamReader(fake_redis, keys).read("s1")
    errors = [
        e.output.event.tool_call_id
        for e in entries
        if isinstance(e.output, EventYield) and isinstance(e.output.event, ToolCallErrorEvent)
    ]
    nap_call = next(
        c["id"]
        for m in resumed.messages
        for c in m.get("tool_calls") or []
        if c["function"]["name"] == "nap"
    )
    assert errors.count(nap_call) == 1, (
        f"the cancelled call {nap_call} is reported {errors.count(nap_call)} times: {errors}"
    )
    await second.close(expire=False)


async def test_a_selfref_agents_cancelled_call_is_reported_once_across_a_crash(
    fake_redis: Any, keys: Keys, mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    """The same with no hook at all: any SelfReference agent reads Redis in the aborted
    fold (`_apply_compaction`: is a compaction pending?), and the flusher delivers the
    cancelled call's ToolCallError then, without the state recording it. The worker is
    killed when the turn hands over the batch's end (after that read, before the fold's
    checkpoint is even queued). The memory store's read takes 20 ms here, as a Redis
    across a network does; fakeredis answers at once."""
    from orchestrator import SelfReference
    from orchestrator.store.memory import RedisMemoryStore

    @tool(name="nap", description="Sleep a while")
    async def nap(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    server = mock_llm(
        {
            "model": "scripted",
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {"tool_calls": [{"name": "nap", "arguments": {"seconds": 30}}]},
                },
            ],
            "fallback": {"content": "ok"},
        }
    )

    @llm_chat(
        llm_interface=llm(server), toolkit=[nap], self_reference=SelfReference(), stream=False
    )
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    spec: AgentSpec = agent_spec(agent)

    class SlowerRedisMemoryStore(RedisMemoryStore):
        """Redis a few ms away (fakeredis answers within the same loop turn): the
        publisher's flusher, started by the cancelled call's event, lands meanwhile."""

        async def pending_compaction(self, key: str) -> Any:
            await asyncio.sleep(0.02)
            return await super().pending_compaction(key)

    memory = SlowerRedisMemoryStore(fake_redis, keys)

    first = _publisher(fake_redis, keys, attempt=1)
    await first.take_over_and_load()
    state = await spec.initial_state(
        ("go",), {}, session_id="s1", agent_call_id="a1", memory=memory
    )
    abort = AbortSignal()
    async for output in run_turn(
        spec,
        state,
        abort=abort,
        checkpointer=RunCheckpointer(first),
        memory=memory,
        copy_outputs=False,
    ):
        assert isinstance(output, EventYield)
        kind = output.event.event_type.value
        if kind == "tool_calls_batch_end":
            break  # SIGKILL (the fold's checkpoint is queued after this event)
        first.publish(output)
        if kind == "tool_call_start":
            abort.abort("user_interrupt")
    first.abandon()

    second = _publisher(fake_redis, keys, attempt=2)
    last, saved = await second.take_over_and_load()
    assert saved is not None
    resumed = TurnState.model_validate_json(saved)
    if last is not None and last + 1 > resumed.next_event_seq:
        resumed.next_event_seq = last + 1
    again = AbortSignal()
    again.abort("user_interrupt")
    async for output in run_turn(
        spec,
        resumed,
        abort=again,
        checkpointer=RunCheckpointer(second),
        memory=memory,
        copy_outputs=False,
    ):
        second.publish(output)
    await second.flush()

    entries = await StreamReader(fake_redis, keys).read("s1")
    errors = [
        e.output.event.tool_call_id
        for e in entries
        if isinstance(e.output, EventYield) and isinstance(e.output.event, ToolCallErrorEvent)
    ]
    assert len(errors) == 1, f"the cancelled call is reported {len(errors)} times: {errors}"
    await second.close(expire=False)
