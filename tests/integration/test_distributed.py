"""Distributed turns end to end: the real Redis, real `orchestrator worker` subprocesses
(killed with SIGKILL or stopped with SIGTERM where the test says so), and the scripted
model over HTTP.

Workers run with a 3 s lease and a 0.5 s reaper (workerproc.TEST_WORKER_SETTINGS), so a
SIGKILLed worker's turn resumes elsewhere within about 4 s.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from orchestrator.client import Client, Output, Run, connect
from orchestrator.events import (
    EventYield,
    LLMCallEndEvent,
    LLMChunkArriveEvent,
    ReactEndEvent,
    ReactStartEvent,
    ResponseYield,
    ToolCallEndEvent,
    ToolCallsBatchStartEvent,
    ToolCallStartEvent,
)
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunRecord, RunRequest, RunStatus, StreamEntry
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis
from orchestrator.store.queue import job_id
from tests.fixtures_llm import MockLLMFactory
from tests.integration.workerproc import (
    WorkerPool,
    WorkerProcess,
    drop_arq_keys,
    drop_job_keys,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(45)]

ASSISTANT = "tests.integration.agents_for_tests:assistant"
CHATTER = "tests.integration.agents_for_tests:chatter"

STORY = " ".join(f"word{i}" for i in range(300))
SLOW_TOOL_S = 3.0  # the second step of "twostep": long enough to kill a worker during it

SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 5},
    "rules": [
        {
            "name": "twostep-weather",
            "match": {"last_user_contains": "twostep", "tool_results_since_user": 0},
            "reply": {
                "content": "First the weather.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
            },
        },
        {
            "name": "twostep-slow",
            "match": {"last_user_contains": "twostep", "tool_results_since_user": 1},
            "reply": {
                "content": "Now the slow part.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": SLOW_TOOL_S}}],
            },
        },
        {
            "name": "twostep-answer",
            "match": {"last_user_contains": "twostep", "tool_results_since_user": 2},
            "reply": {"content": "Both done: {tool_results}"},
        },
        {
            "name": "slow-call",
            "match": {"last_user_contains": "slowtool", "last_role": "user"},
            "reply": {
                "content": "Working on it.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 30}}],
            },
        },
        {
            "name": "slow-answer",
            "match": {"last_user_contains": "slowtool", "last_role": "tool"},
            "reply": {"content": "Slow work done: {last_tool_result}"},
        },
        {
            "name": "weather-call",
            "match": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {
                "content": "Let me check.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
            },
        },
        {
            "name": "weather-answer",
            "match": {"last_user_contains": "weather", "last_role": "tool"},
            "reply": {"content": "It is {last_tool_result} in Paris."},
            "latency": {"first_token_ms": 0, "token_ms": 30},
        },
        {
            "name": "story",
            "match": {"last_user_contains": "story"},
            "reply": {"content": STORY},
            "latency": {"first_token_ms": 0, "token_ms": 40},
        },
    ],
    "fallback": {"content": "Hello from the scripted model."},
}


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
def tool_log(tmp_path: Path) -> Path:
    path = tmp_path / "tools.log"
    path.touch()
    return path


def _settings(redis_url: str, keys: Keys) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=keys.prefix)


@pytest.fixture
async def workers(
    client: Client, redis_url: str, keys: Keys, llm: MockLLMThread, tool_log: Path, tmp_path: Path
) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(client, redis_url, keys.prefix, worker_env(llm.base_url, tool_log), tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()
        print(pool.logs())  # shown by pytest when the test failed
        await drop_arq_keys(client)


# -- helpers ----------------------------------------------------------------------------------


async def collect(run: Run, from_id: str | None = None, timeout: float = 20.0) -> list[Output]:
    async with asyncio.timeout(timeout):
        return [output async for output in run.stream(from_id)]


async def collect_entries(
    run: Run, from_id: str | None = None, timeout: float = 20.0
) -> list[StreamEntry]:
    async with asyncio.timeout(timeout):
        return [entry async for entry in run.entries(from_id)]


def events(outputs: list[Output]) -> list[EventYield]:
    return [o for o in outputs if isinstance(o, EventYield)]


def of_type(outputs: list[Output], kind: type[Any]) -> list[Any]:
    return [o.event for o in events(outputs) if isinstance(o.event, kind)]


def assert_gap_free(outputs: list[Output]) -> None:
    """Every agent call's event_seq runs 0, 1, 2, ... with no gap and no repeat."""
    by_call: dict[str, list[int]] = {}
    for output in events(outputs):
        by_call.setdefault(output.origin.agent_call_id, []).append(output.origin.event_seq)
    assert by_call, "no events at all"
    for call, seqs in by_call.items():
        assert seqs == list(range(len(seqs))), f"event_seq of {call} not gap-free: {seqs}"


def assert_history_valid(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is answered by exactly one tool message after it."""
    answered = [m["tool_call_id"] for m in messages if m.get("role") == "tool"]
    asked = [
        c["id"] for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or []
    ]
    assert sorted(asked) == sorted(answered), (asked, answered)
    assert len(set(answered)) == len(answered)


def tool_runs(tool_log: Path) -> list[tuple[str, int]]:
    """(tool name, pid) of every tool execution so far, in order."""
    lines = tool_log.read_text().splitlines()
    return [(line.split()[0], int(line.split()[1])) for line in lines if line.strip()]


def count_runs(tool_log: Path, name: str) -> int:
    return sum(1 for tool, _ in tool_runs(tool_log) if tool == name)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def owner(run: Run, pool: WorkerPool) -> WorkerProcess:
    record = await run.status()
    assert record.status is RunStatus.RUNNING, record
    return pool.owner_of(record.worker_id)


def response_of(outputs: list[Output]) -> ResponseYield:
    responses = [o for o in outputs if isinstance(o, ResponseYield)]
    assert len(responses) == 1, f"expected one ResponseYield, got {len(responses)}"
    assert outputs[-1] is responses[0], "the ResponseYield must be the last output"
    return responses[0]


# -- submit, stream, resume, fan-out ------------------------------------------------------------


async def test_a_submitted_turn_streams_its_events_in_order_and_completes(
    client: Client, workers: WorkerPool, tool_log: Path
) -> None:
    await workers.start(1)
    run = await client.submit(ASSISTANT, "What is the weather in Paris?")

    outputs = await collect(run)

    assert_gap_free(outputs)
    assert {e.origin.agent_call_id for e in events(outputs)} == {run.run_id}
    assert isinstance(events(outputs)[0].event, ReactStartEvent)
    assert isinstance(events(outputs)[-1].event, ReactEndEvent)
    (start,) = of_type(outputs, ToolCallStartEvent)
    (end,) = of_type(outputs, ToolCallEndEvent)
    assert start.tool_name == end.tool_name == "get_weather"
    assert end.success
    final = response_of(outputs)
    assert "light rain" in final.response
    assert "Paris" in final.response
    roles = [m["role"] for m in final.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert final.messages[-1]["content"] == final.response
    streamed = "".join(
        (c.chunk["choices"][0]["delta"].get("content") or "")
        for c in of_type(outputs, LLMChunkArriveEvent)
        if c.chunk.get("choices")
    )
    assert streamed == "Let me check." + final.response

    result = await asyncio.wait_for(run.result(), 10)
    assert result.status is RunStatus.COMPLETED
    assert result.ok
    assert result.response == final.response
    assert result.messages == final.messages
    calls = of_type(outputs, LLMCallEndEvent)
    assert len(calls) == 2
    summed: dict[str, int] = {}
    for call in calls:
        for key, value in (call.usage or {}).items():
            summed[key] = summed.get(key, 0) + value
    assert summed
    assert result.usage == summed
    (react_end,) = of_type(outputs, ReactEndEvent)
    assert react_end.total_token_usage == summed
    assert count_runs(tool_log, "get_weather") == 1


async def test_a_stream_resumed_from_the_middle_yields_exactly_the_rest(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(1)
    run = await client.submit(ASSISTANT, "What is the weather in Paris?")

    # Read a few entries live, then "disconnect" mid-run and resume after the last one.
    head: list[StreamEntry] = []
    async with asyncio.timeout(20):
        async for entry in run.entries():
            head.append(entry)
            if len(head) == 6:
                break
    assert run.last_stream_id == head[-1].id
    tail = await collect_entries(run, from_id=run.last_stream_id)

    everything = await collect_entries(run)
    assert [e.id for e in head + tail] == [e.id for e in everything]
    assert tail[-1].kind == "status"
    assert tail[-1].status is not None
    assert tail[-1].status.status is RunStatus.COMPLETED

    # And from an arbitrary entry in the middle of the finished run: exactly the rest.
    middle = len(everything) // 2
    rest = await collect(run, from_id=everything[middle].id)
    expected = [e.output for e in everything[middle + 1 :] if e.output is not None]
    assert [o.stream_id for o in rest] == [o.stream_id for o in expected]
    assert rest == expected


async def test_two_readers_of_one_session_get_identical_sequences(
    client: Client, workers: WorkerPool, redis_url: str, keys: Keys
) -> None:
    await workers.start(1)
    other = await connect(redis_url, settings=_settings(redis_url, keys))
    try:
        run = await client.submit(ASSISTANT, "What is the weather in Paris?")
        elsewhere = other.run(run.run_id, run.session_id)

        async def whole_session() -> list[Output]:
            outputs: list[Output] = []
            async for output in other.tail(run.session_id):
                outputs.append(output)
                if isinstance(output, ResponseYield):
                    return outputs
            return outputs

        async with asyncio.timeout(20):
            first, second, third = await asyncio.gather(
                collect(run), collect(elsewhere), whole_session()
            )
    finally:
        await other.close()

    def key(outputs: list[Output]) -> list[tuple[str | None, str]]:
        return [(o.stream_id, o.model_dump_json()) for o in outputs]

    assert len(first) > 10
    assert key(first) == key(second) == key(third)
    assert_gap_free(first)


async def test_tuple_mode_yields_text_chunks_then_the_whole_history(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(1)
    run = await client.submit(ASSISTANT, "What is the weather in Paris?")

    async with asyncio.timeout(20):
        pairs = [pair async for pair in run.stream_tuples()]

    result = await asyncio.wait_for(run.result(), 10)
    assert result.ok
    chunks = [chunk for chunk, _ in pairs[:-1]]
    assert all(chunks), "only the end marker may be empty"
    assert "".join(chunks) == "Let me check." + (result.response or "")
    assert pairs[-1] == ("", result.messages)


# -- abort ------------------------------------------------------------------------------------


async def test_an_abort_mid_stream_stops_the_reply_fast_and_keeps_the_partial_text(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(1)
    run = await client.submit(CHATTER, "Tell me a long story")  # ~12 s of streaming

    outputs: list[Output] = []
    aborted_at = None
    async with asyncio.timeout(20):
        async for output in run.stream():
            outputs.append(output)
            chunks = of_type(outputs, LLMChunkArriveEvent)
            if aborted_at is None and len(chunks) >= 5:
                aborted_at = time.monotonic()
                await run.abort("user_interrupt")
    assert aborted_at is not None
    assert time.monotonic() - aborted_at < 5.0, "the run must end soon after the abort"

    result = await asyncio.wait_for(run.result(), 10)
    assert result.status is RunStatus.ABORTED
    assert result.abort_reason == "user_interrupt"
    (end,) = of_type(outputs, ReactEndEvent)
    assert end.extra["aborted"] is True
    assert end.extra["abort_reason"] == "user_interrupt"
    partial = result.response or ""
    assert partial
    assert STORY.startswith(partial)
    assert len(partial) < len(STORY)
    assert result.messages is not None
    assert result.messages[-1] == {"role": "assistant", "content": partial}
    assert response_of(outputs).response == partial
    assert_gap_free(outputs)


async def test_an_abort_mid_tool_cancels_the_tool_and_leaves_a_valid_history(
    client: Client, workers: WorkerPool, tool_log: Path, llm: MockLLMThread
) -> None:
    await workers.start(1)
    run = await client.submit(ASSISTANT, "Please run the slowtool")  # a 30 s tool

    outputs: list[Output] = []
    aborted_at = None
    async with asyncio.timeout(20):
        async for output in run.stream():
            outputs.append(output)
            started = of_type(outputs, ToolCallStartEvent)
            if aborted_at is None and started:
                await wait_until(lambda: count_runs(tool_log, "slow_tool") == 1, 5, "slow_tool")
                aborted_at = time.monotonic()
                await run.abort("stop the tool")
    assert aborted_at is not None
    assert time.monotonic() - aborted_at < 5.0, "the in-flight tool must be cancelled"

    result = await asyncio.wait_for(run.result(), 10)
    assert result.status is RunStatus.ABORTED
    assert result.abort_reason == "stop the tool"
    assert result.messages is not None
    assert_history_valid(result.messages)
    tool_message = result.messages[-1]
    assert tool_message["role"] == "tool"
    assert "cancelled" in tool_message["content"]
    (end,) = of_type(outputs, ReactEndEvent)
    assert end.extra["aborted"] is True

    # The history left behind is good for the next turn of the same session.
    before = len(llm.requests())
    follow_up = await client.submit(
        ASSISTANT, "hello again", history=result.messages, session_id=run.session_id
    )
    after = await asyncio.wait_for(follow_up.result(), 15)
    assert after.status is RunStatus.COMPLETED, after
    sent = llm.requests()[before]["body"]["messages"]
    assert [m["role"] for m in sent][-3:] == ["assistant", "tool", "user"]
    assert count_runs(tool_log, "slow_tool") == 1


async def test_waiting_for_a_result_gives_up_after_the_timeout(client: Client) -> None:
    run = await client.submit(ASSISTANT, "What is the weather in Paris?")  # no worker runs
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=run.run_id):
        await run.result(timeout=0.5)
    assert time.monotonic() - started < 5
    assert (await run.status()).status is RunStatus.QUEUED


async def test_an_aborted_queued_run_never_starts(
    client: Client, workers: WorkerPool, llm: MockLLMThread
) -> None:
    run = await client.submit(ASSISTANT, "What is the weather in Paris?")
    await run.abort("changed my mind")
    record = await run.status()
    assert record.status is RunStatus.ABORTED

    await workers.start(1)
    await wait_until(lambda: _queue_empty(client), 10, "the worker to take the job")
    await asyncio.sleep(0.5)  # give a wrongly started run time to show itself

    record = await run.status()
    assert record.status is RunStatus.ABORTED
    assert record.abort_reason == "changed my mind"
    assert record.started_at is None
    assert record.worker_id is None
    assert llm.requests() == []
    entries = await collect_entries(run, timeout=5)
    assert [(e.kind, e.status.status if e.status else None) for e in entries] == [
        ("status", RunStatus.ABORTED)
    ]


async def _queue_empty(client: Client) -> bool:
    return await client.queue.depth() == 0


# -- crash recovery ---------------------------------------------------------------------------


async def test_a_sigkilled_workers_turn_resumes_on_another_worker_without_rerunning_tools(
    client: Client, workers: WorkerPool, tool_log: Path
) -> None:
    await workers.start(2)
    run = await client.submit(ASSISTANT, "Do the twostep")

    await wait_until(lambda: count_runs(tool_log, "slow_tool") == 1, 15, "the slow tool")
    victim = await owner(run, workers)
    assert tool_runs(tool_log)[-1] == ("slow_tool", victim.pid)
    victim.kill()
    killed_at = time.monotonic()

    result = await asyncio.wait_for(run.result(), 20)
    recovered_in = time.monotonic() - killed_at
    assert result.status is RunStatus.COMPLETED, result
    assert recovered_in < 15.0
    record = await run.status()
    assert record.attempt == 2
    survivor = workers.owner_of(record.worker_id)
    assert survivor is not victim
    assert survivor.alive

    # The completed first tool ran once; only the interrupted one ran again.
    assert count_runs(tool_log, "get_weather") == 1
    assert [pid for name, pid in tool_runs(tool_log) if name == "slow_tool"] == [
        victim.pid,
        survivor.pid,
    ]

    outputs = await collect(run)
    assert_gap_free(outputs)
    seen = [(e.origin.agent_call_id, e.origin.event_seq) for e in events(outputs)]
    assert len(seen) == len(set(seen))
    assert len(of_type(outputs, ReactStartEvent)) == 1
    assert len(of_type(outputs, ReactEndEvent)) == 1
    # Each of the two tool batches is announced once, even the one the crash interrupted.
    assert len(of_type(outputs, ToolCallsBatchStartEvent)) == 2
    weather_ends = [e for e in of_type(outputs, ToolCallEndEvent) if e.tool_name == "get_weather"]
    assert len(weather_ends) == 1
    final = response_of(outputs)
    assert final.response == result.response
    assert "light rain" in final.response
    assert f"worked for {SLOW_TOOL_S} s" in final.response
    assert_history_valid(final.messages)
    assert [m["role"] for m in final.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]


async def test_a_run_whose_worker_died_between_pick_and_start_runs_again(
    client: Client, workers: WorkerPool, redis: Redis
) -> None:
    """A worker can die in the milliseconds after it took a run's job from the queue and
    before the run started: the run is still queued, no lease exists yet to lapse, and
    arq keeps the job in progress for its timeout (24 h). That state is made here exactly
    as a pick leaves it (the job marked in progress, nobody starting it)."""
    run = await client.submit(ASSISTANT, "hello")
    jid = job_id(run.run_id, 1)
    await redis.psetex(in_progress_key_prefix + jid, 86_400_000, b"1")
    await workers.start(1)

    result = await asyncio.wait_for(run.result(), 35)
    assert result.status is RunStatus.COMPLETED, result
    record = await run.status()
    assert record.attempt == 2  # the lost attempt counts, like a lost lease
    assert not await redis.exists(in_progress_key_prefix + jid)


async def test_a_turn_that_keeps_losing_its_worker_ends_with_a_clear_error(
    client: Client, workers: WorkerPool, tool_log: Path
) -> None:
    await workers.start(3)
    run = await client.submit(ASSISTANT, "Please run the slowtool", max_attempts=2)

    for attempt in (1, 2):
        await wait_until(
            lambda n=attempt: count_runs(tool_log, "slow_tool") == n, 15, f"attempt {attempt}"
        )
        victim = await owner(run, workers)
        assert (await run.status()).attempt == attempt
        victim.kill()

    result = await asyncio.wait_for(run.result(), 15)
    assert result.status is RunStatus.ERROR
    assert result.error_type == "WorkerLost"
    assert result.error is not None
    assert "max_attempts" in result.error
    entries = await collect_entries(run, timeout=5)
    last = entries[-1]
    assert last.status is not None
    assert last.status.status is RunStatus.ERROR
    assert last.status.error == result.error
    assert count_runs(tool_log, "slow_tool") == 2
    assert sum(w.alive for w in workers.started) == 1


async def test_sigterm_lets_a_running_turn_finish_or_hands_it_to_another_worker(
    client: Client, workers: WorkerPool, tool_log: Path
) -> None:
    await workers.start(2)
    run = await client.submit(ASSISTANT, "Do the twostep")

    await wait_until(lambda: count_runs(tool_log, "slow_tool") == 1, 15, "the slow tool")
    stopping = await owner(run, workers)
    stopping.terminate()
    assert await stopping.wait_exit(10) == 0, stopping.log()

    result = await asyncio.wait_for(run.result(), 20)
    assert result.status is RunStatus.COMPLETED, result
    assert count_runs(tool_log, "get_weather") == 1
    live = {int(w["pid"]) for w in await client.workers.list()}
    assert stopping.pid not in live, "a stopped worker deregisters"
    outputs = await collect(run)
    assert_gap_free(outputs)
    assert_history_valid(response_of(outputs).messages)


async def test_a_completed_turns_job_is_finished_with_its_end_and_keeps_no_arq_result(
    client: Client, workers: WorkerPool, redis: Redis, keys: Keys
) -> None:
    """The run's record is the job's result: a turn that ends its run finishes its arq job
    in the end's round trip, and no copy of the job (arq's result, kept an hour) is left."""
    await workers.start(1)
    run = await client.submit(ASSISTANT, "hello")
    assert (await asyncio.wait_for(run.result(), 10)).status is RunStatus.COMPLETED
    jid = job_id(run.run_id, 1)

    async def finished() -> bool:
        left = await redis.exists(job_key_prefix + jid, in_progress_key_prefix + jid)
        return left == 0 and await redis.zscore(keys.queue(), jid) is None

    await wait_until(finished, 10, "the job to be finished")
    await asyncio.sleep(0.2)  # a finish of its own after the job returned would come now
    assert not await redis.exists(result_key_prefix + jid)


# -- bad input --------------------------------------------------------------------------------


async def test_an_unknown_agent_ends_the_run_with_an_error_naming_it_and_the_worker_serves_on(
    client: Client, workers: WorkerPool
) -> None:
    (worker,) = await workers.start(1)
    missing_function = await client.submit("tests.integration.agents_for_tests:nope", "hi")
    missing_module = await client.submit("no_such_package.agents:chat", "hi")

    for run, name in (
        (missing_function, "agents_for_tests:nope"),
        (missing_module, "no_such_package"),
    ):
        result = await asyncio.wait_for(run.result(), 10)
        assert result.status is RunStatus.ERROR
        assert result.error_type == "UnknownAgent"
        assert result.error is not None
        assert name in result.error
        (entry,) = await collect_entries(run, timeout=5)
        assert entry.status is not None
        assert entry.status.error == result.error

    assert worker.alive
    ok = await client.submit(ASSISTANT, "hello")
    assert (await asyncio.wait_for(ok.result(), 10)).status is RunStatus.COMPLETED


async def test_malformed_job_payloads_are_rejected_and_the_worker_keeps_serving(
    client: Client, workers: WorkerPool, redis: Redis, keys: Keys
) -> None:
    (worker,) = await workers.start(1)
    suffix = uuid.uuid4().hex
    garbage, not_a_request, bad_field = (
        f"garbage-{suffix}",
        f"badreq-{suffix}",
        f"badfield-{suffix}",
    )
    # A queued run whose job payload carries a field RunRequest does not allow.
    victim_id = f"victim{suffix}"
    request = RunRequest(run_id=victim_id, session_id=victim_id, agent=ASSISTANT, message="hi")
    await client.runs.create(
        RunRecord(
            run_id=victim_id,
            session_id=victim_id,
            agent=ASSISTANT,
            status=RunStatus.QUEUED,
            request=request.model_dump(mode="json"),
        )
    )
    now_ms = int(time.time() * 1000)

    def envelope(payload: Any) -> bytes:
        return json.dumps({"t": 1, "f": "run_turn", "a": [payload], "k": {}, "et": now_ms}).encode()

    jobs = {
        garbage: b"\x80\x04\x95 this is not json \xff",
        not_a_request: envelope({"run_id": 42, "agent": "not an address"}),
        bad_field: envelope({**request.model_dump(mode="json"), "evil": True}),
    }
    try:
        for jid, body in jobs.items():
            await redis.set(job_key_prefix + jid, body, ex=600)
            await redis.zadd(keys.queue(), {jid: now_ms})
        await redis.publish(keys.wake(), "x")

        await wait_until(lambda: _queue_empty(client), 10, "the worker to take the jobs")
        await wait_until(
            lambda: _has_all(redis, [result_key_prefix + j for j in jobs]), 10, "job results"
        )
        garbage_result = json.loads(await redis.get(result_key_prefix + garbage))
        assert garbage_result["s"] is False  # arq could not decode it: failed, not run
        rejected = json.loads(await redis.get(result_key_prefix + not_a_request))
        assert rejected["r"]["status"] == "rejected"
        assert "invalid run request" in rejected["r"]["error"]
        assert "session_id" in rejected["r"]["error"]  # it names what is wrong

        victim = await client.runs.get(victim_id)
        assert victim.status is RunStatus.ERROR
        assert victim.error_type == "PayloadError"
        assert victim.error is not None
        assert "evil" in victim.error

        assert worker.alive
        ok = await client.submit(ASSISTANT, "hello")
        assert (await asyncio.wait_for(ok.result(), 10)).status is RunStatus.COMPLETED
    finally:
        await drop_job_keys(redis, list(jobs))


async def _has_all(redis: Redis, names: list[str]) -> bool:
    return bool(await redis.exists(*names) == len(names))
