"""The agents `orchestrator bench` runs, in-process and on worker processes.

Like any agents module it builds its LLM interface at import from its own configuration:
ORCHESTRATOR_BENCH_LLM_URL, which the bench sets to the scripted model it starts. What the
model answers depends on the message (see `orchestrator.bench.core.bench_script` and
`orchestrator.bench.forks.fork_script`): a one-word reply at zero latency, a long fast
stream, a very long stream to abort, or, for `bench_forker`, a fan-out of forks.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from orchestrator import OpenAICompatible, SelfReference, llm_chat, tool

# The bench's workers serve this module (`--agents`).
MODULE = __name__
LLM_URL_ENV = "ORCHESTRATOR_BENCH_LLM_URL"
# The task every fork of `bench_fan_out` gets, numbered; the scripted model's fork rule
# matches "Task: <this>" in the fork's last user message.
FORK_TASK = "bench-leaf"
# The task of a node of `bench_tree`'s fork tree: "<this> <level>" (level 1..TREE_DEPTH).
TREE_TASK = "bench-tree-node"
TREE_DEPTH = 3
# The message that makes `bench_loop` call its tool once, then answer.
LOOP_TASK = "bench-loop"

llm = OpenAICompatible(
    api_keys="scripted-no-key-needed",
    model_name="scripted",
    base_url=os.environ.get(LLM_URL_ENV, "http://127.0.0.1:8765/v1"),
    retry_delay=0.05,
)


@llm_chat(llm_interface=llm, stream=True)
async def bench_chat(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are the benchmark agent. Answer as briefly as you can."""
    pass  # the body never runs: the docstring is the prompt


SPAWN_CONCURRENCY = 32


@tool(name="bench_fan_out", description="Spawn forks from tool code and gather them all")
async def bench_fan_out(count: int, runtime: Any) -> dict[str, Any]:
    """Spawn `count` forks, up to SPAWN_CONCURRENCY at a time (as a model's batch of spawn
    calls runs concurrently), then gather them all.

    The gather suspends the turn until the last fork ends; the turn then resumes and this
    tool runs again, its spawns finding the forks they started the first time.

    Args:
        count: How many forks to spawn.
    """
    limit = asyncio.Semaphore(SPAWN_CONCURRENCY)

    async def spawn(i: int) -> None:
        async with limit:
            await runtime.selfref.fork.spawn(f"{FORK_TASK} {i}")

    # Spawn names follow the call order, so a re-run finds the same forks in any order.
    await asyncio.gather(*(spawn(i) for i in range(count)))
    results = await runtime.selfref.fork.gather_all()
    completed = sum(1 for r in results.values() if r.get("status") == "completed")
    return {"gathered": len(results), "completed": completed}


@tool(name="bench_tree", description="Spawn the next level of a fork tree and gather it")
async def bench_tree(level: int, width: int, runtime: Any) -> dict[str, Any]:
    """Spawn `width` forks one level down (tasks "bench-tree-node <level+1>"), gather them.

    Args:
        level: This agent's level in the tree (the root is 0).
        width: How many forks each agent spawns.
    """
    for _ in range(width):
        await runtime.selfref.fork.spawn(f"{TREE_TASK} {level + 1} {width}")
    results = await runtime.selfref.fork.gather_all()
    return {"gathered": len(results)}


@tool(name="bench_lookup", description="Look a key up (the loop bench's one tool call)")
async def bench_lookup(key: str) -> str:
    """Return a value for the key.

    Args:
        key: What to look up.
    """
    return f"value-of-{key}"


@llm_chat(llm_interface=llm, toolkit=[bench_lookup], stream=True, enable_event=True)
async def bench_loop(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are the loop benchmark agent: call bench_lookup once, then answer."""
    pass  # the body never runs: the docstring is the prompt


@llm_chat(
    llm_interface=llm,
    toolkit=[bench_fan_out, bench_tree],
    self_reference=SelfReference(),
    self_reference_key="bench",
    stream=True,
)
async def bench_forker(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are the benchmark agent that fans work out to forks. Answer briefly."""
    pass  # the body never runs: the docstring is the prompt
