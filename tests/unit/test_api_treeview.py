"""The tree summary (`build_tree`) and the compact lane view (`compact_payloads`), built
from records, scans and entries in memory."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.api.laneview import compact_payloads, full_payloads
from orchestrator.api.treeview import build_tree
from orchestrator.events import (
    CustomEvent,
    EventOrigin,
    EventYield,
    LLMCallEndEvent,
    LLMCallStartEvent,
    LLMChunkArriveEvent,
    ReactIterationStartEvent,
    ResponseYield,
    ToolCallArgumentsDeltaEvent,
    ToolCallStartEvent,
)
from orchestrator.runs import ForkInfo, RunRecord, RunStatus, StatusEntry, StreamEntry
from orchestrator.store.trees import AgentTrace, TreeScan

pytestmark = pytest.mark.timeout(10)


def fork(run_id: str, parent: str, depth: int, seq: int, **fields: Any) -> RunRecord:
    info = ForkInfo(
        fork_id=run_id.rpartition(".")[2],
        root_run_id="r",
        parent_run_id=parent,
        depth=depth,
        fork_seq=seq,
    )
    return RunRecord(run_id=run_id, session_id="s", agent="m:f", fork=info, **fields)


def trace(entries: int, *waits: tuple[float, float | None]) -> AgentTrace:
    return AgentTrace(entries=entries, first_id=f"{entries}-0", waits=list(waits))


def test_the_tree_lists_every_agent_with_its_place_and_the_totals() -> None:
    records = [
        RunRecord(
            run_id="r",
            session_id="s",
            agent="m:f",
            status=RunStatus.WAITING,
            usage={"total_tokens": 10},
            waiting_for=["r.fork_1", "r.fork_2"],
        ),
        fork("r.fork_1", "r", 1, 1, status=RunStatus.COMPLETED, usage={"total_tokens": 5}),
        fork("r.fork_2", "r", 1, 2, status=RunStatus.ERROR, error="boom"),
        fork("r.fork_3", "r.fork_1", 2, 1, status=RunStatus.COMPLETED),
    ]
    scan = TreeScan(agents={"r": trace(4, (100.0, None)), "r.fork_1": trace(3)}, last_id="9-0")

    tree = build_tree(records, scan, generated_at=200.0)

    assert [(a.run_id, a.parent_run_id, a.depth, a.seq, a.forks) for a in tree.agents] == [
        ("r", None, 0, None, 2),
        ("r.fork_1", "r", 1, 1, 1),
        ("r.fork_2", "r", 1, 2, 0),
        ("r.fork_3", "r.fork_1", 2, 1, 0),
    ]
    assert tree.last_id == "9-0"
    assert tree.agents[0].waiting_for == ["r.fork_1", "r.fork_2"]
    assert tree.agents[0].waits == [(100.0, None)]  # still waiting: open
    assert tree.agents[2].error == "boom"
    assert tree.totals.by_status == {
        "queued": 0,
        "running": 0,
        "waiting": 1,
        "completed": 2,
        "error": 1,
        "aborted": 0,
    }
    assert (tree.totals.agents, tree.totals.depth, tree.totals.tokens) == (4, 2, 15)
    assert tree.totals.entries == 7
    assert tree.totals.cost is None  # nobody's usage carries a cost


def test_costs_add_up_when_the_usage_carries_them() -> None:
    records = [
        RunRecord(run_id="r", session_id="s", agent="m:f", usage={"cost": 0.25}),
        fork("r.fork_1", "r", 1, 1, usage={"cost": 0.5, "total_tokens": 3}),
    ]
    tree = build_tree(records, TreeScan(), generated_at=0.0)
    assert tree.totals.cost == pytest.approx(0.75)


def test_a_wait_the_stream_has_not_closed_ends_with_the_record() -> None:
    record = RunRecord(
        run_id="r",
        session_id="s",
        agent="m:f",
        status=RunStatus.COMPLETED,
        started_at=90.0,
        finished_at=130.0,
    )
    tree = build_tree([record], TreeScan(agents={"r": trace(2, (100.0, None))}), generated_at=0)
    assert tree.agents[0].waits == [(100.0, 130.0)]


def test_an_agent_known_only_to_the_stream_is_listed_from_its_entries() -> None:
    root = RunRecord(run_id="r", session_id="s", agent="m:f")
    gone = AgentTrace(entries=2, statuses=[(RunStatus.QUEUED, 5.0), (RunStatus.ERROR, 9.0)])
    tree = build_tree([root], TreeScan(agents={"r.fork_7": gone}), generated_at=0)
    assert [(a.run_id, a.fork_id, a.parent_run_id, a.status) for a in tree.agents] == [
        ("r", None, None, RunStatus.QUEUED),
        ("r.fork_7", "fork_7", "r", RunStatus.ERROR),
    ]
    assert (tree.agents[1].submitted_at, tree.agents[1].finished_at) == (5.0, 9.0)


# ---- the compact lane view

ORIGIN = EventOrigin(session_id="s", agent_call_id="a", event_seq=0)


def event_entry(n: int, event: Any) -> StreamEntry:
    return StreamEntry(
        id=f"{n}-0", run_id="a", kind="event", output=EventYield(event=event, origin=ORIGIN)
    )


def chunk(n: int, text: str) -> StreamEntry:
    body = {"choices": [{"delta": {"content": text}}]}
    return event_entry(n, LLMChunkArriveEvent(chunk=body, accumulated_content="lots"))


def kinds(payloads: list[dict[str, Any]]) -> list[str]:
    return [
        p["output"]["event"]["event_type"] if p["kind"] == "event" else p["kind"] for p in payloads
    ]


def test_the_compact_view_keeps_what_a_lane_draws_in_order() -> None:
    history = [{"role": "user", "content": "x" * 1000}]
    entries = [
        event_entry(1, LLMCallStartEvent(messages=history, tools=[{"name": "t"}])),
        chunk(2, "Hel"),
        chunk(3, "lo"),
        event_entry(4, ToolCallArgumentsDeltaEvent(tool_call_id="c1", tool_name="t", delta="{")),
        event_entry(5, LLMCallEndEvent(content="Hello", messages=history, response={"id": 1})),
        event_entry(6, ReactIterationStartEvent(current_messages=history)),
        event_entry(7, ToolCallStartEvent(tool_call_id="c1", tool_name="t", arguments={"x": 1})),
        event_entry(8, ToolCallArgumentsDeltaEvent(tool_call_id="c2", tool_name="t", delta="{")),
        event_entry(9, LLMCallStartEvent(messages=history)),
        chunk(10, "still streaming"),
        StreamEntry(
            id="11-0",
            run_id="a",
            kind="status",
            status=StatusEntry(run_id="a", status=RunStatus.RUNNING),
        ),
    ]
    compact = compact_payloads(entries)
    assert kinds(compact) == [
        "llm_call_start",
        "llm_call_end",  # its chunks left out: the end has the text
        "tool_call_start",  # its argument pieces left out
        "tool_call_arguments_delta",  # a call not started yet keeps them
        "llm_call_start",
        "llm_chunk_arrive",  # a call still streaming keeps its chunks
        "status",
    ]
    first, end = compact[0]["output"]["event"], compact[1]["output"]["event"]
    assert "messages" not in first
    assert "tools" not in first
    assert end["content"] == "Hello"
    assert "response" not in end
    assert "accumulated_content" not in compact[5]["output"]["event"]
    assert [p["id"] for p in full_payloads(entries)] == [f"{n}-0" for n in range(1, 12)]


def test_a_range_cut_mid_call_keeps_the_chunks_it_holds() -> None:
    entries = [chunk(1, "tail of a call"), event_entry(2, LLMCallEndEvent(content="whole"))]
    assert kinds(compact_payloads(entries)) == ["llm_chunk_arrive", "llm_call_end"]


def test_a_response_keeps_its_text_but_not_its_history() -> None:
    response = ResponseYield(response="done", messages=[{"role": "user", "content": "hi"}])
    entries = [
        StreamEntry(id="1-0", run_id="a", kind="response", output=response),
        event_entry(2, CustomEvent(event_name="x", data={"y": 1})),
    ]
    compact = compact_payloads(entries)
    assert compact[0]["output"]["response"] == "done"
    assert "messages" not in compact[0]["output"]
    assert compact[1]["output"]["event"]["data"] == {"y": 1}
