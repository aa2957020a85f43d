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


@llm_chat(
    llm_interface=llm,
    toolkit=[bench_fan_out],
    self_reference=SelfReference(),
    self_reference_key="bench",
    stream=True,
)
async def bench_forker(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are the benchmark agent that fans work out to forks. Answer briefly."""
    pass  # the body never runs: the docstring is the prompt
