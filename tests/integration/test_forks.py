"""SelfReference forks across real worker processes and the real Redis.

Every fork is its own arq job; the scripted model decides who forks what. The agent is
`agents_for_tests:forker` (a SelfReference agent). Fork messages reach the model as a
user message "... Task: <message>", which is what the rules below match on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client, Output, Run
from orchestrator.events import (
    CustomEvent,
    EventYield,
    ReactEndEvent,
    ReactStartEvent,
    ToolCallEndEvent,
    ToolCallErrorEvent,
)
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunStatus
from orchestrator.store.connection import Redis
from orchestrator.store.memory import MemoryScope, RedisMemoryStore
from orchestrator.store.streams import StreamReader
from tests.fixtures_llm import MockLLMFactory
from tests.integration.test_distributed import (
    assert_gap_free,
    assert_history_valid,
    count_runs,
    events,
    wait_until,
)
from tests.integration.workerproc import WorkerPool, drop_arq_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FORKER = "tests.integration.agents_for_tests:forker"


def spawn(message: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": message}}


GATHER: dict[str, Any] = {"name": "selfref_fork_gather_all", "arguments": {}}


def _tree_level(level: int) -> dict[str, Any]:
    """At `level` (the root is 0), spawn three forks of the next level and gather them,
    all in one batch: the gather is a barrier, so it sees the three spawns."""
    here = "tree-root" if level == 0 else f"task: tree-l{level}"
    return {
        "name": f"tree-level-{level}",
        "match": {"last_user_contains": here, "last_role": "user"},
        "reply": {
            "content": f"Splitting level {level}.",
            "tool_calls": [*(spawn(f"tree-l{level + 1} part {i}") for i in range(3)), GATHER],
        },
    }


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 1},
    "rules": [
        {
            "name": "tree-leaf",
            "match": {"last_user_contains": "task: tree-l3"},
            "reply": {"content": "leaf done"},
        },
        _tree_level(2),
        _tree_level(1),
        _tree_level(0),
        {
            "name": "tree-gathered",
            "match": {"last_user_contains": "tree-", "last_role": "tool"},
            "reply": {"content": "gathered: {last_tool_result}"},
        },
        # fan-out from the model's tools, one fork failing
        {
            "name": "fan-fork-fails",
            "match": {"last_user_contains": "task: fan part 1"},
            "reply": {"content": "never"},
            "fault": {"type": "http_400", "times": 100},
        },
        {
            "name": "fan-fork",
            "match": {"last_user_contains": "task: fan part"},
            "reply": {"content": "fork answer for {last_user}"},
            # Slow enough that one worker cannot take every fork before the other is free.
            "latency": {"first_token_ms": 400, "token_ms": 1},
        },
        {
            "name": "fan-root",
            "match": {"last_user_contains": "fan-root", "tool_results_since_user": 0},
            "reply": {
                "content": "Fanning out.",
                "tool_calls": [spawn(f"fan part {i}") for i in range(3)],
            },
        },
        {
            "name": "fan-gather",
            "match": {"last_user_contains": "fan-root", "tool_results_since_user": 3},
            "reply": {"content": "Gathering.", "tool_calls": [GATHER]},
        },
        {
            "name": "fan-done",
            "match": {"last_user_contains": "fan-root", "tool_results_since_user": 4},
            "reply": {"content": "fan done: {last_tool_result}"},
        },
        # limits: the root spawns three (the limit is two); each fork tries to fork again
        {
            "name": "limit-fork",
            "match": {"last_user_contains": "task: limit part", "last_role": "user"},
            "reply": {"content": "Trying deeper.", "tool_calls": [spawn("limit deeper")]},
        },
        {
            "name": "limit-fork-answer",
            "match": {"last_user_contains": "task: limit part", "last_role": "tool"},
            "reply": {"content": "fork saw: {last_tool_result}"},
        },
        {
            "name": "limit-root",
            "match": {"last_user_contains": "limit-root", "last_role": "user"},
            "reply": {
                "content": "Three forks.",
                "tool_calls": [*(spawn(f"limit part {i}") for i in range(3)), GATHER],
            },
        },
        {
            "name": "limit-root-answer",
            "match": {"last_user_contains": "limit-root", "last_role": "tool"},
            "reply": {"content": "root saw: {tool_results}"},
        },
        # abort through the tree: root -> l1 -> l2 -> three slow leaves at depth 3
        {
            "name": "abort-leaf",
            "match": {"last_user_contains": "task: abort-l3", "last_role": "user"},
            "reply": {
                "content": "Slow leaf.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 30}}],
            },
        },
        {
            "name": "abort-l2",
            "match": {"last_user_contains": "task: abort-l2", "last_role": "user"},
            "reply": {
                "content": "Three leaves.",
                "tool_calls": [*(spawn(f"abort-l3 leaf {i}") for i in range(3)), GATHER],
            },
        },
        {
            "name": "abort-l1",
            "match": {"last_user_contains": "task: abort-l1", "last_role": "user"},
            "reply": {"content": "One child.", "tool_calls": [spawn("abort-l2 mid"), GATHER]},
        },
        {
            "name": "abort-root",
            "match": {"last_user_contains": "abort-root", "last_role": "user"},
            "reply": {"content": "One child.", "tool_calls": [spawn("abort-l1 top"), GATHER]},
        },
        # a fork whose worker is killed mid-tool
        {
            "name": "kill-fork-tool",
            "match": {"last_user_contains": "task: kill-fork", "last_role": "user"},
            "reply": {
                "content": "Slow work in the fork.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 3}}],
            },
        },
        {
            "name": "kill-fork-answer",
            "match": {"last_user_contains": "task: kill-fork", "last_role": "tool"},
            "reply": {"content": "fork survived: {last_tool_result}"},
        },
        {
            "name": "kill-root",
            "match": {"last_user_contains": "kill-root", "last_role": "user"},
            "reply": {"content": "Forking.", "tool_calls": [spawn("kill-fork once"), GATHER]},
        },
        # forks spawned by tool code (runtime.selfref.fork)
        {
            "name": "code-fork",
            "match": {"last_user_contains": "task: code part"},
            "reply": {"content": "code fork done"},
        },
        {
            "name": "code-root",
            "match": {"last_user_contains": "code-root", "last_role": "user"},
            "reply": {
                "content": "From tool code.",
                "tool_calls": [{"name": "fan_out", "arguments": {"count": 4, "task": "code part"}}],
            },
        },
        # the root ends without gathering; its forks are still working
        {
            "name": "orphan-fork",
            "match": {"last_user_contains": "task: orphan", "last_role": "user"},
            "reply": {
                "content": "Working after my parent ended.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 1.5}}],
            },
        },
        {
            "name": "orphan-root",
            "match": {"last_user_contains": "orphan-root", "last_role": "user"},
            "reply": {
                "content": "Two forks, no gather.",
                "tool_calls": [spawn("orphan one"), spawn("orphan two")],
            },
        },
        {
            "name": "orphan-root-answer",
            "match": {"last_user_contains": "orphan-root", "last_role": "tool"},
            "reply": {"content": "I am done; my forks are not."},
        },
        {
            "name": "any-tool-answer",
            "match": {"last_role": "tool"},
            "reply": {"content": "done: {tool_results}"},
        },
    ],
    "fallback": {"content": "Hello from the scripted model."},
}


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
def tool_log(tmp_path: Path) -> Path:
    path = tmp_path / "tools.log"
    path.touch()
    return path


def _pool(
    client: Client,
    redis_url: str,
    keys: Keys,
    llm: MockLLMThread,
    tool_log: Path,
    tmp_path: Path,
    **settings: str,
) -> WorkerPool:
    env = worker_env(llm.base_url, tool_log)
    env.update({f"ORCHESTRATOR_{k.upper()}": v for k, v in settings.items()})
    return WorkerPool(client, redis_url, keys.prefix, env, tmp_path)


@pytest.fixture
async def workers(
    client: Client, redis_url: str, keys: Keys, llm: MockLLMThread, tool_log: Path, tmp_path: Path
) -> AsyncIterator[WorkerPool]:
    pool = _pool(client, redis_url, keys, llm, tool_log, tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()
        print(pool.logs())
        await drop_arq_keys(client)


async def collect_tree(run: Run, timeout: float = 60.0) -> list[Output]:
    async with asyncio.timeout(timeout):
        return [output async for output in run.stream()]


def react_ends(outputs: list[Output]) -> list[EventYield]:
    return [o for o in events(outputs) if isinstance(o.event, ReactEndEvent)]


def gather_results(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of the last gather's tool message in a history."""
    gathers = {
        c["id"]
        for m in messages
        if m.get("role") == "assistant"
        for c in m.get("tool_calls") or []
        if c["function"]["name"] == "selfref_fork_gather_all"
    }
    contents = [m["content"] for m in messages if m.get("tool_call_id") in gathers]
    assert contents, "no gather result in the history"
    result: dict[str, Any] = json.loads(contents[-1])
    return result


# -- tests --------------------------------------------------------------------------------


async def test_fan_out_and_gather_across_workers(client: Client, workers: WorkerPool) -> None:
    """Three forks spread over two one-slot workers; one fails. The gather returns all
    three. (The root's worker is busy until the root suspends, so the other worker takes
    the first fork, and the root's worker a later one.)"""
    await workers.start(2, concurrency=1)
    run = await client.submit(FORKER, "fan-root")
    outputs = await collect_tree(run)
    result = await run.result(timeout=10)
    assert result.status is RunStatus.COMPLETED, result.error

    gathered = gather_results(result.messages or [])
    assert sorted(gathered) == ["fork_1", "fork_2", "fork_3"]
    # The three spawns of one batch run concurrently: numbering follows who came first.
    assert sorted(r["status"] for r in gathered.values()) == ["completed", "completed", "error"]
    (failed,) = [r for r in gathered.values() if r["status"] == "error"]
    assert "400" in failed["error_message"]
    assert failed["error_type"]
    assert failed["response"] is None
    ok = next(r for r in gathered.values() if r["status"] == "completed")
    assert "fork answer for" in ok["response"]
    assert ok["result"] == ok["response"]
    assert ok["depth"] == 1
    assert ok["source_memory_key"] == "forker"
    number = ok["fork_id"].removeprefix("fork_")
    assert ok["memory_key"] == f"forker::fork::{number}"
    assert ok["history_included"] is False
    assert ok["history_count"] >= 3
    assert ok["history"] is None

    # One consumer sees the whole tree: every agent's events, each gap-free, each
    # with its origin; the root's ReactEnd is the one with fork_id None.
    assert_gap_free(outputs)
    ends = react_ends(outputs)
    assert len(ends) == 4
    assert [e.origin.fork_id for e in ends if e.origin.fork_id is None] == [None]
    root_call = run.run_id
    spawn_calls = {
        o.event.tool_call_id: o.event.result
        for o in events(outputs)
        if isinstance(o.event, ToolCallEndEvent) and o.event.tool_name == "selfref_fork_spawn"
    }
    assert len(spawn_calls) == 3
    for output in events(outputs):
        origin = output.origin
        assert origin.session_id == run.session_id
        if origin.fork_id is None:
            assert origin.agent_call_id == root_call
            assert origin.fork_depth == 0
            continue
        assert origin.parent_agent_call_id == root_call
        assert origin.fork_depth == 1
        assert origin.fork_seq in (1, 2, 3)
        assert origin.source_memory_key == "forker"
        assert origin.memory_key == f"forker::fork::{origin.fork_id.removeprefix('fork_')}"
        assert origin.tool_name == "selfref_fork_spawn"
        assert spawn_calls[origin.tool_call_id]["fork_id"] == origin.fork_id
        assert origin.selfref_instance_id == run.run_id
    handle = next(iter(spawn_calls.values()))
    assert set(handle) == {
        "fork_id",
        "parent_fork_id",
        "depth",
        "source_memory_key",
        "memory_key",
        "status",
    }
    assert handle["status"] == "running"
    assert handle["parent_fork_id"] is None
    forks = await client.runs.list(include_forks=True)
    assert {r.fork.fork_id for r in forks if r.fork} == {"fork_1", "fork_2", "fork_3"}
    assert len({r.worker_id for r in forks}) == 2, "the work did not spread over both workers"
    assert [r.run_id for r in await client.list_runs()] == [run.run_id]


async def test_three_levels_of_forks_finish_on_one_worker_with_two_slots(
    client: Client, workers: WorkerPool
) -> None:
    """40 agents (3 levels x 3 forks) on ONE worker process limited to 2 concurrent jobs:
    a gathering parent holds no slot, so its children always get one."""
    await workers.start(1, concurrency=2)
    run = await client.submit(FORKER, "tree-root")
    outputs = await collect_tree(run, timeout=80)
    result = await run.result(timeout=10)
    assert result.status is RunStatus.COMPLETED, result.error

    ends = react_ends(outputs)
    assert len(ends) == 40
    depths = sorted(e.origin.fork_depth for e in ends)
    assert depths == [0] + [1] * 3 + [2] * 9 + [3] * 27
    assert_gap_free(outputs)
    forks = await client.runs.list(include_forks=True, limit=100)
    assert len(forks) == 40
    assert all(r.status is RunStatus.COMPLETED for r in forks)
    gathered = gather_results(result.messages or [])
    assert sorted(r["status"] for r in gathered.values()) == ["completed"] * 3
    # Each parent suspended in its gather and came back: the waiting event says so.
    waits = [o for o in events(outputs) if isinstance(o.event, CustomEvent)]
    assert len([w for w in waits if w.event.event_name == "fork_gather_waiting"]) >= 1
    for record in forks:
        if record.fork is None or record.fork.depth < 3:
            assert_history_valid(record.messages or [])


async def test_depth_and_fan_out_limits_are_tool_errors(
    client: Client,
    redis_url: str,
    keys: Keys,
    llm: MockLLMThread,
    tool_log: Path,
    tmp_path: Path,
) -> None:
    pool = _pool(
        client,
        redis_url,
        keys,
        llm,
        tool_log,
        tmp_path,
        max_fork_depth="1",
        max_forks_per_agent="2",
    )
    try:
        await pool.start(1)
        run = await client.submit(FORKER, "limit-root")
        outputs = await collect_tree(run)
    finally:
        await pool.stop_all()
        await drop_arq_keys(client)
    result = await run.result(timeout=5)
    assert result.status is RunStatus.COMPLETED
    errors = [o.event for o in events(outputs) if isinstance(o.event, ToolCallErrorEvent)]
    fan_out = [e for e in errors if "fork limit reached" in e.error]
    depth = [e for e in errors if "fork depth limit reached" in e.error]
    assert len(fan_out) == 1, [e.error for e in errors]
    assert "at most 2 forks" in fan_out[0].error
    assert len(depth) == 2  # each of the two forks tried to go deeper
    assert "root saw:" in (result.response or "")
    assert "fork limit reached" in result.response
    assert len(gather_results(result.messages or [])) == 2


async def test_abort_reaches_every_fork_at_every_depth(
    client: Client, workers: WorkerPool, tool_log: Path
) -> None:
    """root -> l1 -> l2 -> three slow leaves (depth 3) on one worker with two slots: two
    leaves run, one is queued. An abort stops the running ones, the queued one never
    starts, and every gather reports its forks aborted."""
    await workers.start(1, concurrency=2)
    run = await client.submit(FORKER, "abort-root")
    await wait_until(lambda: count_runs(tool_log, "slow_tool") >= 2, 30, "two leaves running")
    await run.abort("stop the tree")
    outputs = await collect_tree(run, timeout=30)
    result = await run.result(timeout=5)
    assert result.status is RunStatus.ABORTED

    records = await client.runs.list(include_forks=True)
    assert len(records) == 6
    assert {r.status for r in records} == {RunStatus.ABORTED}
    started = {
        o.origin.agent_call_id for o in events(outputs) if isinstance(o.event, ReactStartEvent)
    }
    leaves = [r for r in records if r.fork and r.fork.depth == 3]
    assert len(leaves) == 3
    assert sum(1 for leaf in leaves if leaf.run_id in started) == 2, "queued leaf started"
    assert count_runs(tool_log, "slow_tool") == 2

    ends = {o.origin.agent_call_id: o.event for o in react_ends(outputs)}
    assert len(ends) == 5  # every agent that started ended, aborted
    assert all(e.extra.get("aborted") for e in ends.values())
    gathered = gather_results(result.messages or [])
    assert [r["status"] for r in gathered.values()] == ["aborted"]
    assert_history_valid(result.messages or [])
    for record in records:
        if record.fork is not None and record.fork.depth in (1, 2):
            assert {r["status"] for r in gather_results(record.messages or []).values()} == {
                "aborted"
            }


async def test_a_fork_whose_worker_is_killed_resumes_elsewhere_and_is_gathered(
    client: Client, workers: WorkerPool, tool_log: Path
) -> None:
    await workers.start(2)
    run = await client.submit(FORKER, "kill-root")
    fork_run = f"{run.run_id}.fork_1"
    await wait_until(lambda: count_runs(tool_log, "slow_tool") >= 1, 20, "fork's slow tool")
    record = await client.runs.get(fork_run)
    workers.owner_of(record.worker_id).kill()
    result = await run.result(timeout=40)
    assert result.status is RunStatus.COMPLETED, result.error
    gathered = gather_results(result.messages or [])
    assert gathered["fork_1"]["status"] == "completed"
    assert "fork survived" in gathered["fork_1"]["response"]
    fork = await client.runs.get(fork_run)
    assert fork.attempt == 2


async def test_tool_code_forks_and_memory_across_workers_and_turns(
    client: Client, workers: WorkerPool, redis: Redis, keys: Keys, tool_log: Path
) -> None:
    """Forks spawned from tool code (`runtime.selfref.fork`): the tool suspends in its
    gather and runs again on resume, and its spawns are not repeated. Each fork's memory
    is its own key in Redis; the parent's key holds only the parent's turn, and a second
    turn in the session (on whichever worker) starts from it."""
    await workers.start(2)
    run = await client.submit(FORKER, "code-root", session_id="code-session")
    result = await run.result(timeout=40)
    assert result.status is RunStatus.COMPLETED, result.error
    assert '"gathered": 4' in (result.response or "")
    forks = [r for r in await client.runs.list(include_forks=True) if r.fork]
    assert len(forks) == 4, "a re-run tool spawned its forks again"
    assert count_runs(tool_log, "fan_out") == 2  # first run, then once more on resume

    # The run's memory lives in its session (no tenant): read it through that scope.
    memory = RedisMemoryStore(
        redis, keys, scope=MemoryScope(tenant=None, session_id="code-session")
    )
    root = await memory.load("forker")
    assert any("code-root" in str(m.get("content")) for m in root.messages)
    assert not any("forked sub-agent" in str(m.get("content")) for m in root.messages)
    for record in forks:
        assert record.fork is not None
        assert record.fork.memory_key is not None
        child = await memory.load(record.fork.memory_key)
        assert any("code part" in str(m.get("content")) for m in child.messages)
        assert child.messages[-1] == {"role": "assistant", "content": "code fork done"}

    second = await client.submit(FORKER, "hello again", session_id="code-session")
    again = await second.result(timeout=20)
    assert again.status is RunStatus.COMPLETED
    assert any("code-root" in str(m.get("content")) for m in again.messages or [])


async def test_events_of_forks_still_running_after_the_root_ends_are_not_lost(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(1)
    run = await client.submit(FORKER, "orphan-root")
    outputs = await collect_tree(run, timeout=30)
    ends = react_ends(outputs)
    assert ends[0].origin.fork_id is None, "the root should end first"
    assert sorted(str(e.origin.fork_id) for e in ends[1:]) == ["fork_1", "fork_2"]
    assert all("slow_tool" in str(e.event.final_messages) for e in ends[1:])
    assert_gap_free(outputs)
    result = await run.result(timeout=5)
    assert result.status is RunStatus.COMPLETED


async def test_each_runs_entries_end_with_its_response_then_its_terminal_entry(
    client: Client, workers: WorkerPool, redis: Redis, keys: Keys
) -> None:
    """The session stream of a fan-out (one fork failing) reads as it did when a run's
    last events were flushed before its end, though they now ride in the end's script:
    each run's events gap-free and in stream order, its `waiting` entry after its gather
    started waiting, and, last of the run's entries, its ReactEnd, its response (a run
    that completed), then its one terminal entry."""
    await workers.start(1, concurrency=4)
    run = await client.submit(FORKER, "fan-root")
    result = await run.result(timeout=30)
    assert result.status is RunStatus.COMPLETED, result.error
    entries = await StreamReader(redis, keys).read(run.session_id, count=10_000)
    by_run: dict[str, list[str]] = {}
    seqs: dict[str, list[int]] = {}
    for entry in entries:
        if entry.status is not None:
            label = entry.status.status.value
        elif isinstance(entry.output, EventYield):
            event = entry.output.event
            label = event.event_name if isinstance(event, CustomEvent) else event.event_type
            seqs.setdefault(entry.run_id, []).append(entry.output.origin.event_seq)
        else:
            label = "response"
        by_run.setdefault(entry.run_id, []).append(label)
    assert len(by_run) == 4
    for run_id, labels in by_run.items():
        assert seqs[run_id] == list(range(len(seqs[run_id]))), run_id
        terminal = [s.value for s in RunStatus if s.terminal]
        assert [x for x in labels if x in terminal] == [labels[-1]], labels
        if labels[-1] == "completed":
            assert labels[-3:-1] == ["react_end", "response"], labels
        else:
            assert labels[-2] == "react_end", labels
        if run_id == run.run_id:
            waiting = labels.index("waiting")
            assert labels[waiting - 1] == "fork_gather_waiting", labels
            assert "react_start" not in labels[waiting:]
        else:
            assert labels[:3] == ["queued", "react_start", "llm_call_start"], labels


async def test_an_answered_turns_last_events_ride_with_its_end(
    client: Client, workers: WorkerPool, redis: Redis, keys: Keys
) -> None:
    """A SelfReference agent that has answered saves its memory before its ReactEnd; the
    events it published since (its last model call's end) are not written on their own
    during that save but with the run's end, in the end's one stream entry: every run
    of a fan-out that completed has its last LLMCallEnd, its ReactEnd and its response
    in one entry (item ids `<entry id>.<i>`, the last item the entry id itself)."""
    await workers.start(1, concurrency=4)
    run = await client.submit(FORKER, "fan-root")
    result = await run.result(timeout=30)
    assert result.status is RunStatus.COMPLETED, result.error
    entries = await StreamReader(redis, keys).read(run.session_id, count=10_000)
    last_call_end: dict[str, str] = {}
    react_end: dict[str, str] = {}
    response: dict[str, str] = {}
    for entry in entries:
        base = entry.id.split(".")[0]
        if isinstance(entry.output, EventYield):
            kind = entry.output.event.event_type
            if kind == "llm_call_end":
                last_call_end[entry.run_id] = base
            elif kind == "react_end":
                react_end[entry.run_id] = base
        elif entry.output is not None:
            response[entry.run_id] = base
    assert len(response) == 3  # the root and the two forks that completed
    for run_id, entry_id in response.items():
        assert last_call_end[run_id] == react_end[run_id] == entry_id, run_id
