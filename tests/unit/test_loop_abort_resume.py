"""Abort and crash recovery of the ReAct loop (`run_turn`), over the scripted model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import AbortSignal, OpenAICompatible, llm_chat, tool
from orchestrator.events import EventYield, ResponseYield
from orchestrator.runtime import AgentSpec, TurnState, agent_spec, run_turn
from orchestrator.runtime.tools import Tool

StartServer = Callable[..., Any]
MakeLLM = Callable[[Any], OpenAICompatible]


@pytest.fixture
async def make_llm() -> AsyncIterator[MakeLLM]:
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


def make_spec(llm: OpenAICompatible, tools: list[Tool], **options: Any) -> AgentSpec:
    @llm_chat(llm_interface=llm, toolkit=tools, **options)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    return agent_spec(agent)


async def new_state(spec: AgentSpec, message: str, **kwargs: Any) -> TurnState:
    return await spec.initial_state((message,), kwargs, session_id="s1", agent_call_id="a1")


def kinds(events: list[EventYield]) -> list[str]:
    return [e.event.event_type.value for e in events]


def assert_history_sendable(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is answered by a tool message before anything else."""
    pending: set[str] = set()
    for message in messages:
        if message["role"] == "tool":
            pending.discard(message["tool_call_id"])
            continue
        assert not pending, f"unanswered tool calls {pending}"
        pending = {c["id"] for c in message.get("tool_calls") or []}
    assert not pending


async def run_aborting(
    spec: AgentSpec,
    state: TurnState,
    abort: AbortSignal,
    when: Callable[[EventYield], bool],
) -> tuple[list[EventYield], ResponseYield]:
    events: list[EventYield] = []
    response: ResponseYield | None = None
    async for output in run_turn(spec, state, abort=abort):
        if isinstance(output, ResponseYield):
            response = output
            continue
        events.append(output)
        if when(output):
            abort.abort("user_interrupt")
    assert response is not None
    return events, response


LONG_REPLY = " ".join(f"word{i}" for i in range(60))


async def test_abort_mid_stream_stops_at_once_and_keeps_partial_text(
    mock_llm: StartServer, make_llm: MakeLLM
) -> None:
    server = mock_llm(
        {
            "model": "scripted",
            "latency": {"token_ms": 30},
            "rules": [{"reply": {"content": LONG_REPLY}}],
        }
    )
    spec = make_spec(make_llm(server), [], stream=True)
    abort = AbortSignal()
    started = time.monotonic()
    events, response = await run_aborting(
        spec,
        await new_state(spec, "talk"),
        abort,
        lambda e: "word2" in getattr(e.event, "accumulated_content", ""),
    )
    assert time.monotonic() - started < 1.0, "the stream stops without waiting for the rest"
    end = events[-1].event
    assert end.event_type.value == "react_end"
    assert end.extra == {"aborted": True, "abort_reason": "user_interrupt"}
    last = response.messages[-1]
    assert last["role"] == "assistant"
    assert last["content"].startswith("word0 word1 word2")
    assert len(last["content"]) < len(LONG_REPLY)


async def test_abort_mid_tool_cancels_and_leaves_a_sendable_history(
    mock_llm: StartServer, make_llm: MakeLLM
) -> None:
    server = mock_llm(
        {
            "model": "scripted",
            "rules": [
                {
                    "match": {"last_user_contains": "sleep", "last_role": "user"},
                    "reply": {
                        "content": "Sleeping.",
                        "tool_calls": [{"name": "nap", "arguments": {"seconds": 30}}],
                    },
                },
                {"reply": {"content": "ok"}},
            ],
        }
    )
    cancelled: list[bool] = []

    @tool(name="nap", description="Sleep a while")
    async def nap(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "rested"

    llm = make_llm(server)
    spec = make_spec(llm, [nap], stream=True)
    abort = AbortSignal()
    events, response = await run_aborting(
        spec,
        await new_state(spec, "please sleep"),
        abort,
        lambda e: e.event.event_type.value == "tool_call_start",
    )
    assert cancelled == [True]
    errors = [e.event for e in events if e.event.event_type.value == "tool_call_error"]
    assert [e.error_type for e in errors] == ["CancelledError"]
    assert events[-1].event.extra["aborted"] is True
    assert_history_sendable(response.messages)
    assert "aborted" in response.messages[-1]["content"]

    # The next turn sends that history and the API accepts it.
    next_spec = make_spec(llm, [nap], stream=False)
    next_state = await next_spec.initial_state(
        ("hello again",), {"history": response.messages}, session_id="s2", agent_call_id="a2"
    )
    outputs = [o async for o in run_turn(next_spec, next_state)]
    final = outputs[-1]
    assert isinstance(final, ResponseYield)
    assert final.response == "ok"
    assert_history_sendable(server.requests()[-1]["body"]["messages"])


async def test_abort_before_start_ends_at_once_with_the_user_message(
    mock_llm: StartServer, make_llm: MakeLLM
) -> None:
    server = mock_llm({"model": "scripted", "rules": [{"reply": {"content": "never"}}]})
    spec = make_spec(make_llm(server), [], stream=True)
    abort = AbortSignal()
    abort.abort("too late")
    events, response = await run_aborting(spec, await new_state(spec, "hi"), abort, lambda e: False)
    assert kinds(events) == ["react_start", "react_end"]
    assert events[-1].event.extra == {"aborted": True, "abort_reason": "too late"}
    assert response.messages[-1] == {"role": "user", "content": "message: hi"}
    assert server.requests() == []


class RecordingCheckpointer:
    """Keeps a JSON copy of every state saved, as a Redis checkpointer would."""

    def __init__(self) -> None:
        self.saved: list[str] = []

    async def save(self, state: Any) -> None:
        assert isinstance(state, TurnState)
        self.saved.append(state.to_json())


async def test_resume_from_checkpoint_skips_completed_tools(
    mock_llm: StartServer, make_llm: MakeLLM
) -> None:
    server = mock_llm(
        {
            "model": "scripted",
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {
                        "tool_calls": [
                            {"name": "slow", "arguments": {"label": "a"}},
                            {"name": "fast", "arguments": {"label": "b"}},
                        ]
                    },
                },
                {"match": {"last_role": "tool"}, "reply": {"content": "done: {tool_results}"}},
            ],
        }
    )
    runs: list[str] = []

    @tool(name="slow", description="Slow tool")
    async def slow(label: str) -> str:
        runs.append("slow")
        await asyncio.sleep(0.1)
        return f"slow:{label}"

    @tool(name="fast", description="Fast tool")
    async def fast(label: str) -> str:
        runs.append("fast")
        return f"fast:{label}"

    spec = make_spec(make_llm(server), [slow, fast], stream=True)
    checkpointer = RecordingCheckpointer()
    [_ async for _ in run_turn(spec, await new_state(spec, "go"), checkpointer=checkpointer)]
    assert runs == ["slow", "fast"]

    states = [TurnState.from_json(raw) for raw in checkpointer.saved]
    partial = next(s for s in states if s.phase == "tools" and len(s.tool_results) == 1)
    assert set(partial.tool_results) == {partial.pending_tool_calls[1]["id"]}, "fast done"
    runs.clear()

    resumed_from = partial.next_event_seq
    events: list[EventYield] = []
    final: ResponseYield | None = None
    async for output in run_turn(spec, partial):
        if isinstance(output, EventYield):
            events.append(output)
        else:
            final = output
    assert runs == ["slow"], "the completed tool is not run again"
    assert "react_start" not in kinds(events)
    assert "tool_calls_batch_start" not in kinds(events)
    seqs = [e.origin.event_seq for e in events]
    assert seqs == list(range(resumed_from, resumed_from + len(events)))
    assert final is not None
    assert final.response == "done: slow:a; fast:b"
    end = events[-1].event
    assert end.event_type.value == "react_end"
    assert end.total_tool_calls == 2
    assert end.total_llm_calls == 2


class DeferringRecorder:
    """A DeferringCheckpointer noting each state as written at once (`save`) or left to
    ride with the next outputs (`save_later`), with the phase it was in."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, bool]] = []

    async def save(self, state: Any) -> None:
        self.writes.append(("save", state.phase, state.aborted))

    def save_later(self, state: Any) -> None:
        self.writes.append(("later", state.phase, state.aborted))


async def test_an_aborted_batch_is_checkpointed_with_the_turns_end(
    mock_llm: StartServer, make_llm: MakeLLM
) -> None:
    """Aborted mid-tool, the turn waits for no checkpoint write of its own before its end:
    the cancelled results and the folded batch ride with the end's outputs (on workers,
    in the end's one script), and the last state is the aborted end's."""
    server = mock_llm(
        {
            "model": "scripted",
            "rules": [
                {
                    "match": {"last_role": "user"},
                    "reply": {"tool_calls": [{"name": "nap", "arguments": {"seconds": 30}}]},
                },
                {"reply": {"content": "ok"}},
            ],
        }
    )

    @tool(name="nap", description="Sleep a while")
    async def nap(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    spec = make_spec(make_llm(server), [nap], stream=True)
    checkpointer = DeferringRecorder()
    abort = AbortSignal()
    aborted_at: int | None = None
    events: list[EventYield] = []
    async for output in run_turn(
        spec, await new_state(spec, "sleep"), abort=abort, checkpointer=checkpointer
    ):
        if isinstance(output, EventYield):
            events.append(output)
            if output.event.event_type.value == "tool_call_start":
                aborted_at = len(checkpointer.writes)
                abort.abort("user_interrupt")
    assert aborted_at is not None
    assert events[-1].event.extra["aborted"] is True
    after = checkpointer.writes[aborted_at:]
    assert after, "the aborted end is checkpointed"
    assert [kind for kind, _, _ in after] == ["later"] * len(after)
    assert after[-1][1:] == ("done", True)


async def test_a_stream_aborted_mid_reply_is_checkpointed_with_the_turns_end(
    mock_llm: StartServer, make_llm: MakeLLM
) -> None:
    """Aborted mid-stream (no memory to save), the turn waits for no checkpoint write
    before its end: the aborted call's state rides with the end's outputs."""
    server = mock_llm(
        {
            "model": "scripted",
            "latency": {"token_ms": 30},
            "rules": [{"reply": {"content": LONG_REPLY}}],
        }
    )
    spec = make_spec(make_llm(server), [], stream=True)
    checkpointer = DeferringRecorder()
    abort = AbortSignal()
    aborted_at: int | None = None
    async for output in run_turn(
        spec, await new_state(spec, "talk"), abort=abort, checkpointer=checkpointer
    ):
        content = getattr(getattr(output, "event", None), "accumulated_content", "")
        if aborted_at is None and "word2" in (content or ""):
            aborted_at = len(checkpointer.writes)
            abort.abort("user_interrupt")
    assert aborted_at is not None
    after = checkpointer.writes[aborted_at:]
    assert after, "the aborted end is checkpointed"
    assert [kind for kind, _, _ in after] == ["later"] * len(after)
    assert after[-1][1:] == ("done", True)
