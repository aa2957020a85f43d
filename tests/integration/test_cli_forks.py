"""The CLI renders a forking run as an indented tree (`orchestrator tail`).

A real worker subprocess runs `agents_for_tests:forker` against the scripted model: the
root spawns three forks and gathers them; one fork forks again, one fails. Then
`python -m orchestrator.cli tail RUN --no-follow` runs as a subprocess (stdout is a pipe,
so it prints plain lines) and must show every agent at its depth and the gather's bar.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.runs import RunRecord, RunStatus
from tests.fixtures_llm import MockLLMFactory
from tests.integration.workerproc import PROJECT_ROOT, WorkerPool, drop_arq_keys, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FORKER = "tests.integration.agents_for_tests:forker"
GATHER: dict[str, Any] = {"name": "selfref_fork_gather_all", "arguments": {}}


def spawn(message: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": message}}


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "latency": {"first_token_ms": 0, "token_ms": 1},
    "rules": [
        {
            "name": "part-fails",
            "match": {"last_user_contains": "task: cli-part 1"},
            "reply": {"content": "never"},
            # Not before the root's gather has started waiting (its first bar is 0/3).
            "fault": {"type": "http_400", "times": 100, "after_ms": 500},
        },
        {
            "name": "part-forks",
            "match": {"last_user_contains": "task: cli-part 0", "last_role": "user"},
            "reply": {
                "content": "Part 0 needs help.\nForking once more.",
                "tool_calls": [spawn("cli-nested leaf"), GATHER],
            },
        },
        {
            "name": "part-forks-answer",
            "match": {"last_user_contains": "task: cli-part 0", "last_role": "tool"},
            "reply": {"content": "part 0 done with its leaf"},
        },
        {
            "name": "part",
            "match": {"last_user_contains": "task: cli-part"},
            "reply": {"content": "part answer"},
            "latency": {"first_token_ms": 500},
        },
        {
            "name": "nested",
            "match": {"last_user_contains": "task: cli-nested"},
            "reply": {"content": "leaf answer"},
        },
        {
            "name": "root",
            "match": {"last_user_contains": "cli-root", "last_role": "user"},
            "reply": {
                "content": "Splitting the work.\nThree parts.",
                "tool_calls": [*(spawn(f"cli-part {i}") for i in range(3)), GATHER],
            },
        },
        {
            "name": "root-answer",
            "match": {"last_user_contains": "cli-root", "last_role": "tool"},
            "reply": {"content": "All parts gathered."},
        },
    ],
    "fallback": {"content": "Hello from the scripted model."},
}


@pytest.fixture
def llm(mock_llm: MockLLMFactory) -> MockLLMThread:
    return mock_llm(SCRIPT)


@pytest.fixture
async def workers(
    client: Client, redis_url: str, keys: Keys, llm: MockLLMThread, tmp_path: Path
) -> AsyncIterator[WorkerPool]:
    tool_log = tmp_path / "tools.log"
    tool_log.touch()
    pool = WorkerPool(client, redis_url, keys.prefix, worker_env(llm.base_url, tool_log), tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()
        print(pool.logs())
        await drop_arq_keys(client)


async def run_cli(redis_url: str, keys: Keys, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m orchestrator.cli ARGS` as an operator runs it, its stdout a pipe."""
    command = [sys.executable, "-m", "orchestrator.cli", *args]
    command += ["--redis", redis_url, "--prefix", keys.prefix]
    env = {k: v for k, v in os.environ.items() if k not in _TERMINAL_HINTS}
    env.update({"COLUMNS": "100", "PYTHONPATH": str(PROJECT_ROOT)})
    return await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=40,
    )


# Variables that make rich treat a pipe as a terminal.
_TERMINAL_HINTS = {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}


def assert_fork_tree(output: str, run_id: str, forks: list[RunRecord]) -> None:
    """Each fork's lane at its depth, labelled; the gathers' bars; the root's answer."""
    lines = output.splitlines()
    assert "\x1b" not in output, "a pipe gets plain lines"
    by_depth = {r.fork.fork_id: r.fork for r in forks if r.fork is not None}
    for fork_id, info in by_depth.items():
        indent = "  " * info.depth
        source = "root" if info.parent_fork_id is None else info.parent_fork_id
        opening = f"{indent}{fork_id} ┌ (queued|running) · depth {info.depth} · from {source}"
        assert any(re.fullmatch(opening, line) for line in lines), (opening, output)
        own = [line for line in lines if line.lstrip().startswith(f"{fork_id} ")]
        assert all(line.startswith(f"{indent}{fork_id} ") for line in own), own
        status = next(r.status.value for r in forks if r.fork and r.fork.fork_id == fork_id)
        closing = f"{indent}{fork_id} └ {status} · depth {info.depth}"
        assert any(line.startswith(closing) for line in lines), (closing, output)
    bars = [line for line in lines if line.startswith(("⧗ gather [", "✓ gather ["))]
    assert bars[0].endswith("] 0/3 · waiting for fork_1, fork_2, fork_3"), bars
    assert [bar.split("] ")[1][:3] for bar in bars] == ["0/3", "1/3", "2/3", "3/3", "3/3"]
    assert bars[-1].startswith("✓ gather [████████████████████] 3/3"), bars
    assert "assistant: All parts gathered." in lines
    assert f"run {run_id}: completed" in [line.rstrip() for line in lines]
    tree = lines[lines.index("root forker completed") :]
    assert any(re.fullmatch(r"[│ ]   └── fork_4 d2 completed", line) for line in tree), tree


async def test_follow_and_tail_render_forks_as_an_indented_tree(
    client: Client, workers: WorkerPool, redis_url: str, keys: Keys
) -> None:
    """Root -> three forks (one fails, one forks fork_4 at depth 2), gathered; rendered
    live by `submit --follow`, then replayed by `tail RUN --no-follow`."""
    await workers.start(1)
    follow = await run_cli(redis_url, keys, "submit", FORKER, "cli-root", "--follow")
    assert follow.returncode == 0, follow.stderr
    (root,) = await client.list_runs()
    assert root.status is RunStatus.COMPLETED, root.error
    forks = [r for r in await client.runs.list(include_forks=True) if r.fork is not None]
    assert sorted(r.status.value for r in forks) == ["completed", "completed", "completed", "error"]
    (nested,) = [r for r in forks if r.fork is not None and r.fork.depth == 2]
    assert nested.fork is not None
    assert nested.fork.fork_id == "fork_4"
    assert_fork_tree(follow.stdout, root.run_id, forks)

    replay = await run_cli(redis_url, keys, "tail", root.run_id, "--no-follow")
    assert replay.returncode == 0, replay.stderr
    assert_fork_tree(replay.stdout, root.run_id, forks)
    print(replay.stdout)
