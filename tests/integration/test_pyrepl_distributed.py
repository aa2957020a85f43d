"""PyRepl on real workers: sessions, streaming, abort, forks, and turns that move workers.

Real `orchestrator worker` processes serve `tests.integration.agents_pyrepl:analyst` (a
SelfReference agent with a PyRepl); the scripted model decides what code it runs. The
interpreter of a session lives on one worker; its inputs are journaled in Redis, so the
next turn on another worker (or after the worker died) rebuilds it by replay.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client, Run
from orchestrator.events import CustomEvent, EventYield, ToolCallEndEvent, ToolCallStartEvent
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunStatus
from orchestrator.store.connection import Redis
from orchestrator.store.memory import MemoryScope, RedisMemoryStore
from tests.fixtures_llm import MockLLMFactory
from tests.integration.test_distributed import wait_until
from tests.integration.workerproc import WorkerPool, WorkerProcess, drop_arq_keys, worker_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated sandbox needs root"),
]

ANALYST = "tests.integration.agents_pyrepl:analyst"
AGENTS = "tests.integration.agents_pyrepl"


def run_code(code: str) -> dict[str, Any]:
    return {"name": "execute_code", "arguments": {"code": code}}


def on_user(name: str, text: str, code: str) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"last_user_contains": text, "last_role": "user"},
        "reply": {"content": f"Running {name}.", "tool_calls": [run_code(code)]},
    }


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 1},
    "rules": [
        # A fork (spawned from the root's REPL) runs code in an interpreter of its own.
        {
            "name": "fork-code",
            "match": {"last_user_contains": "task: sum in python", "tool_results_since_user": 0},
            "reply": {
                "content": "Computing.",
                "tool_calls": [run_code("print('fork sees x:', 'x' in dir())\nsum(range(10))")],
            },
        },
        {
            "name": "fork-answer",
            "match": {"last_user_contains": "task: sum in python", "tool_results_since_user": 1},
            "reply": {"content": "fork result {last_tool_result}"},
        },
        {
            "name": "fork-spawn",
            "match": {"last_user_contains": "forkwork", "tool_results_since_user": 0},
            "reply": {
                "content": "Spawning.",
                "tool_calls": [
                    run_code(
                        "x = 'root only'\n"
                        "handle = runtime.selfref.fork.spawn('sum in python')\n"
                        "handle['fork_id']"
                    )
                ],
            },
        },
        {
            "name": "fork-gather",
            "match": {"last_user_contains": "forkwork", "tool_results_since_user": 1},
            "reply": {
                "content": "Gathering.",
                "tool_calls": [
                    run_code(
                        "results = runtime.selfref.fork.gather_all()\n"
                        "[r['response'] for r in results.values()]"
                    )
                ],
            },
        },
        {
            "name": "fork-done",
            "match": {"last_user_contains": "forkwork", "tool_results_since_user": 2},
            "reply": {"content": "gathered: {last_tool_result}"},
        },
        on_user("define", "define x", "x = 41\nprint('x is defined')"),
        on_user("bump", "bump x", "x = x + 1"),
        on_user("use", "use x", "x + 1"),
        on_user(
            "slow", "slow x", "import time\nprint('working', flush=True)\ntime.sleep(6)\nx * 2"
        ),
        on_user(
            "stream", "stream", "import time\nprint('tick 1')\ntime.sleep(1.5)\nprint('tick 2')"
        ),
        on_user("spin", "spin", "print('spinning', flush=True)\nwhile True:\n    pass"),
        on_user("remember", "remember", "runtime.selfref.context.remember('the answer is 42')"),
        on_user(
            "recall",
            "recall",
            "[e['text'] for e in runtime.selfref.context.inspect()['experiences']]",
        ),
        {
            "name": "answer",
            "match": {"last_role": "tool"},
            "reply": {"content": "result: {last_tool_result}"},
        },
    ],
    "fallback": {"content": "nothing to do"},
}


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
async def workers(
    client: Client, redis_url: str, keys: Keys, llm: MockLLMThread, tmp_path: Path
) -> AsyncIterator[WorkerPool]:
    env = worker_env(llm.base_url, tmp_path / "tools.log")
    pool = WorkerPool(client, redis_url, keys.prefix, env, tmp_path, agents=AGENTS)
    try:
        yield pool
    finally:
        for worker in pool.started:
            if worker.alive:
                os.kill(worker.pid, signal.SIGCONT)
        await pool.stop_all()
        print(pool.logs())  # shown by pytest when the test failed
        await drop_arq_keys(client)


async def turn(client: Client, message: str, session_id: str | None = None) -> tuple[Run, str]:
    run = await client.submit(ANALYST, message, session_id=session_id)
    result = await run.result(timeout=60)
    assert result.status is RunStatus.COMPLETED, (result.status, result.error)
    return run, result.response or ""


def tool_result(response: str) -> dict[str, Any]:
    """The execute_code result the scripted answer quotes ("result: {json}")."""
    value: dict[str, Any] = json.loads(response.removeprefix("result: "))
    return value


def sandbox_cpu(worker: WorkerProcess) -> float:
    """CPU seconds of the sandbox processes (uid >= 1,000,000) below a worker."""
    total = 0.0
    todo = [worker.pid]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
        uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
        if uid >= 1_000_000:
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def sandbox_processes_of(uids: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) in uids:
                found.append(int(entry.name))
    return found


async def until_output(run: Run, text: str, timeout: float = 30) -> float:
    """Read the run's stream until a kernel_stdout event carries `text`; when it came."""
    async with asyncio.timeout(timeout):
        async for output in run.stream():
            if isinstance(output, EventYield) and isinstance(output.event, CustomEvent):
                data = output.event.data
                if isinstance(data, dict) and text in str(data.get("text")):
                    return time.monotonic()
    raise AssertionError(f"the run ended without printing {text!r}")


# -- sessions ------------------------------------------------------------------------------


async def test_variables_persist_across_turns_of_a_session_but_not_into_another(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(1)
    first, response = await turn(client, "define x")
    assert tool_result(response)["stdout"] == "x is defined\n"
    _, response = await turn(client, "use x", session_id=first.session_id)
    assert tool_result(response)["return_value"] == "42"
    _, response = await turn(client, "use x")  # a new session
    other = tool_result(response)
    assert other["success"] is False
    assert other["error"].startswith("NameError")


async def test_stdout_arrives_as_events_before_the_call_ends(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(1)
    run = await client.submit(ANALYST, "stream please")
    tick: float | None = None
    ended: float | None = None
    async with asyncio.timeout(60):
        async for output in run.stream():
            if not isinstance(output, EventYield):
                continue
            event = output.event
            if isinstance(event, CustomEvent) and event.event_name == "kernel_stdout":
                assert event.tool_name == "execute_code"
                if "tick 1" in event.data["text"] and tick is None:
                    tick = time.monotonic()
            if isinstance(event, ToolCallEndEvent) and event.tool_name == "execute_code":
                ended = time.monotonic()
    assert tick is not None
    assert ended is not None
    assert ended - tick >= 1.0, f"tick 1 arrived only {ended - tick:.2f} s before the end"


async def test_runtime_memory_is_reachable_from_the_code(
    client: Client, workers: WorkerPool, redis: Redis, keys: Keys
) -> None:
    await workers.start(1)
    first, _ = await turn(client, "remember this")
    _, response = await turn(client, "recall it", session_id=first.session_id)
    assert tool_result(response)["return_value"] == "['the answer is 42']"
    store = RedisMemoryStore(
        redis, keys, scope=MemoryScope(tenant=None, session_id=first.session_id)
    )
    assert [e.text for e in (await store.load("analyst")).experiences] == ["the answer is 42"]
    journals = [k async for k in redis.scan_iter(match=f"{keys.prefix}:*journal*")]
    assert journals
    assert [await redis.pttl(k) > 0 for k in journals] == [True] * len(journals), "no TTL"


# -- across workers ------------------------------------------------------------------------


async def test_the_next_turn_on_another_worker_rebuilds_the_interpreter(
    client: Client, workers: WorkerPool
) -> None:
    (first_worker,) = await workers.start(1)
    run, _ = await turn(client, "define x")
    assert first_worker.owns((await run.status()).worker_id)
    (second_worker,) = await workers.start(1)
    first_worker.kill()
    run, response = await turn(client, "use x", session_id=run.session_id)
    assert second_worker.owns((await run.status()).worker_id)
    result = tool_result(response)
    assert result["return_value"] == "42"
    assert result["replayed"] == 1
    assert "re-created on this worker" in result["note"]


async def test_an_interpreter_left_behind_catches_up_with_other_workers(
    client: Client, workers: WorkerPool
) -> None:
    (first_worker,) = await workers.start(1)
    run, _ = await turn(client, "define x")
    (second_worker,) = await workers.start(1)
    os.kill(first_worker.pid, signal.SIGSTOP)
    bumped, response = await turn(client, "bump x", session_id=run.session_id)
    assert second_worker.owns((await bumped.status()).worker_id)
    assert tool_result(response)["replayed"] == 1
    os.kill(first_worker.pid, signal.SIGCONT)
    os.kill(second_worker.pid, signal.SIGSTOP)
    used, response = await turn(client, "use x", session_id=run.session_id)
    assert first_worker.owns((await used.status()).worker_id)
    result = tool_result(response)
    assert result["return_value"] == "43"  # 41, bumped on the other worker, plus one
    assert result["replayed"] == 1
    assert "up to date" in result["note"]


async def test_a_worker_dying_mid_call_resumes_the_call_on_another_with_its_state(
    client: Client, workers: WorkerPool
) -> None:
    (owner,) = await workers.start(1)
    first, _ = await turn(client, "define x")
    run = await client.submit(ANALYST, "slow x", session_id=first.session_id)
    await until_output(run, "working")
    assert owner.owns((await run.status()).worker_id)
    await workers.start(1)  # the worker the call moves to: it never saw this session
    doomed_uids = {1_000_000 + int(pid) for pid in _children(owner.pid)}
    owner.kill()
    await wait_until(lambda: not sandbox_processes_of(doomed_uids), 5, "its sandbox to go")
    result = await run.result(timeout=60)
    assert result.status is RunStatus.COMPLETED, result.error
    record = await run.status()
    assert record.attempt == 2
    assert not owner.owns(record.worker_id)
    value = tool_result(result.response or "")
    assert value["return_value"] == "82"
    assert value["replayed"] == 1


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


# -- abort ---------------------------------------------------------------------------------


async def test_abort_stops_the_running_code(client: Client, workers: WorkerPool) -> None:
    (worker,) = await workers.start(1)
    run = await client.submit(ANALYST, "spin forever")
    await until_output(run, "spinning")
    await asyncio.sleep(0.5)
    assert sandbox_cpu(worker) > 0.1, "the code is not running"
    asked = time.monotonic()
    await run.abort("user_abort")
    result = await run.result(timeout=30)
    latency = time.monotonic() - asked
    assert result.status is RunStatus.ABORTED
    print(f"abort to run end: {latency * 1000:.0f} ms")
    assert latency < 5.0
    before = sandbox_cpu(worker)
    await asyncio.sleep(1.0)
    assert sandbox_cpu(worker) - before < 0.2, "the code kept running after the abort"


# -- forks ---------------------------------------------------------------------------------


async def test_code_spawns_a_fork_whose_own_code_runs_and_is_gathered(
    client: Client, workers: WorkerPool
) -> None:
    await workers.start(1)
    run = await client.submit(ANALYST, f"forkwork {uuid.uuid4().hex[:6]}")
    outputs = []
    async with asyncio.timeout(60):
        outputs = [o async for o in run.stream()]
    result = await run.result(timeout=30)
    assert result.status is RunStatus.COMPLETED, result.error
    fork_calls = [
        o.event
        for o in outputs
        if isinstance(o, EventYield)
        and o.origin.fork_id is not None
        and isinstance(o.event, ToolCallEndEvent)
        and o.event.tool_name == "execute_code"
    ]
    assert len(fork_calls) == 1
    assert fork_calls[0].result["return_value"] == "45"
    assert fork_calls[0].result["stdout"] == "fork sees x: False\n"
    gathered = (result.response or "").removeprefix("gathered: ")
    assert "45" in gathered
    # The gather waited without holding the worker: the turn suspended and resumed.
    root_starts = [
        o
        for o in outputs
        if isinstance(o, EventYield)
        and o.origin.fork_id is None
        and isinstance(o.event, ToolCallStartEvent)
    ]
    assert len(root_starts) == 2
    assert any(
        isinstance(o, EventYield)
        and isinstance(o.event, CustomEvent)
        and o.event.event_name == "fork_gather_waiting"
        for o in outputs
    )
