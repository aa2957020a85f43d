"""Forks in the runtime: the loop suspends a gather and resumes it, spawns are idempotent,
the abort path reports forks aborted. The fork backend here is an in-memory stand-in for
the port (the Redis/arq backend is exercised by tests/integration/test_forks.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from orchestrator import AbortSignal, OpenAICompatible, SelfReference, llm_chat, tool
from orchestrator.errors import ToolError
from orchestrator.events import (
    CustomEvent,
    EventYield,
    ReactEndEvent,
    ResponseYield,
    ToolCallEndEvent,
    ToolCallStartEvent,
)
from orchestrator.ports import SpawnRequest
from orchestrator.runtime import AgentSpec, TurnState, agent_spec, run_turn
from orchestrator.runtime.forks import inherited_context
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)


class FakeForks:
    """ForkBackend port in memory: forks "run" until the test finishes them."""

    def __init__(self) -> None:
        self.spawned: dict[str, SpawnRequest] = {}
        self.by_key: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {}

    async def spawn(self, request: SpawnRequest) -> dict[str, Any]:
        key = f"{request.parent_agent_call_id}/{request.spawn_key}"
        if key not in self.by_key:
            fork_id = f"fork_{len(self.by_key) + 1}"
            self.by_key[key] = fork_id
            self.spawned[fork_id] = request
        return {"fork_id": self.by_key[key], "status": "running"}

    async def collect(
        self, parent_agent_call_id: str, fork_ids: Sequence[str] | None, include_history: bool
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        wanted = list(self.spawned) if fork_ids is None else list(fork_ids)
        unknown = [f for f in wanted if f not in self.spawned]
        if unknown:
            raise ToolError(f"unknown fork id(s) {unknown}")
        done = {f: self.results[f] for f in wanted if f in self.results}
        return done, [f for f in wanted if f not in self.results]

    def finish_all(self) -> None:
        for fork_id, request in self.spawned.items():
            self.results[fork_id] = {"fork_id": fork_id, "status": "completed", "response": ""}
            self.results[fork_id]["response"] = f"did: {request.message}"


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "name": "split",
            "match": {"last_user_contains": "split", "last_role": "user"},
            "reply": {
                "content": "Splitting.",
                "tool_calls": [
                    {"name": "selfref_fork_gather_all", "arguments": {}},
                    {"name": "selfref_fork_spawn", "arguments": {"message": "part A"}},
                    {"name": "selfref_fork_spawn", "arguments": {"message": "part B"}},
                ],
            },
        },
        {
            "name": "code",
            "match": {"last_user_contains": "code", "last_role": "user"},
            "reply": {"content": "", "tool_calls": [{"name": "two_forks", "arguments": {}}]},
        },
        {"name": "answer", "match": {"last_role": "tool"}, "reply": {"content": "{tool_results}"}},
    ],
}

RUNS: list[int] = []


@tool(name="two_forks", description="Spawn two forks from code and gather them")
async def two_forks(runtime: Any) -> dict[str, Any]:
    RUNS.append(1)
    first = await runtime.selfref.fork.spawn("from code 1")
    second = await runtime.selfref.fork.spawn("from code 2")
    results = await runtime.selfref.fork.gather_all()
    return {"handles": [first["fork_id"], second["fork_id"]], "gathered": sorted(results)}


@pytest.fixture
async def spec(mock_llm: MockLLMFactory) -> AsyncIterator[AgentSpec]:
    server = mock_llm(SCRIPT)
    llm = OpenAICompatible("k", "scripted", server.base_url, retry_delay=0.01)

    @llm_chat(llm_interface=llm, toolkit=[two_forks], self_reference=SelfReference())
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    yield agent_spec(agent)
    await llm.aclose()


async def drive(
    spec: AgentSpec, state: TurnState, forks: FakeForks, abort: AbortSignal | None = None
) -> tuple[list[EventYield], ResponseYield | None]:
    events: list[EventYield] = []
    response = None
    async for output in run_turn(spec, state, forks=forks, abort=abort):
        if isinstance(output, ResponseYield):
            response = output
        else:
            events.append(output)
    return events, response


async def start(spec: AgentSpec, message: str) -> TurnState:
    return await spec.initial_state((message,), {}, session_id="s", agent_call_id="root")


def of(events: list[EventYield], kind: type[Any]) -> list[Any]:
    return [e.event for e in events if isinstance(e.event, kind)]


async def test_a_gather_suspends_the_turn_and_resumes_with_every_result(spec: AgentSpec) -> None:
    forks = FakeForks()
    state = await start(spec, "split the work")
    events, response = await drive(spec, state, forks)

    # The gather came first in the batch but ran last (a barrier), after both spawns.
    assert response is None, "a suspended turn has no response yet"
    assert state.waiting_for == ["fork_1", "fork_2"]
    assert state.phase == "tools"
    assert [r.message for r in forks.spawned.values()] == ["part A", "part B"]
    waiting = of(events, CustomEvent)
    assert [w.event_name for w in waiting] == ["fork_gather_waiting"]
    assert waiting[0].data["waiting_for"] == ["fork_1", "fork_2"]
    assert not of(events, ReactEndEvent)
    recorded = {o.tool_name for o in state.tool_results.values()}
    assert recorded == {"selfref_fork_spawn"}
    # The fork inherits the context without the assistant message that spawns it.
    context = forks.spawned["fork_1"].context
    assert context[-1]["role"] == "user"
    assert "split the work" in context[-1]["content"]

    forks.finish_all()
    resumed = TurnState.from_json(state.to_json())  # as another worker would load it
    more, final = await drive(spec, resumed, forks)
    assert final is not None
    assert "did: part A" in final.response
    assert "did: part B" in final.response
    starts = [e for e in of(events + more, ToolCallStartEvent) if "gather" in e.tool_name]
    assert len(starts) == 1, "the resumed gather was announced twice"
    gather_end = next(e for e in of(more, ToolCallEndEvent) if "gather" in e.tool_name)
    assert set(gather_end.result) == {"fork_1", "fork_2"}
    seqs = [e.origin.event_seq for e in events + more]
    assert seqs == list(range(len(seqs)))


async def test_tool_code_that_gathers_reruns_without_spawning_again(spec: AgentSpec) -> None:
    RUNS.clear()
    forks = FakeForks()
    state = await start(spec, "code please")
    _, response = await drive(spec, state, forks)
    assert response is None
    assert len(forks.spawned) == 2
    keys = sorted(forks.by_key)
    assert keys[0].endswith("#0")
    assert keys[1].endswith("#1")
    forks.finish_all()
    _, final = await drive(spec, TurnState.from_json(state.to_json()), forks)
    assert final is not None
    assert len(RUNS) == 2
    assert len(forks.spawned) == 2, "a re-run tool spawned new forks"
    assert '"gathered": ["fork_1", "fork_2"]' in final.response


async def test_a_turn_aborted_while_waiting_reports_its_forks_aborted(spec: AgentSpec) -> None:
    forks = FakeForks()
    state = await start(spec, "split the work")
    await drive(spec, state, forks)
    abort = AbortSignal()
    abort.abort("stop")
    events, final = await drive(spec, TurnState.from_json(state.to_json()), forks, abort)
    assert final is not None
    (end,) = of(events, ReactEndEvent)
    assert end.extra == {"aborted": True, "abort_reason": "stop"}
    gather = next(e for e in of(events, ToolCallEndEvent) if "gather" in e.tool_name)
    assert {r["status"] for r in gather.result.values()} == {"aborted"}


def test_a_fork_inherits_the_context_minus_the_spawning_message() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "do it"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
    ]
    assert inherited_context(messages) == messages[:2]
    plain = messages[:2]
    assert inherited_context(plain) == plain
