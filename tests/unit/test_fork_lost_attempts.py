"""A fork whose every attempt is lost before its turn's save (SIGKILL, OOM in a tool,
max_attempts times) is ended by the reaper (`Reaper._give_up` -> `end_run`, status
ERROR, "WorkerLost"): no turn code runs on that path, so its memory keeps what its start
wrote, its context. (With the start's write deferred to the turn's save, round 7, it
stayed empty.)

What the reaper leaves is exactly what a fork's start leaves, so that is what is
checked: the start of the fork (its state made, its first checkpoint), then nothing."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.keys import Keys
from orchestrator.runtime import agent_spec
from orchestrator.store.memory import RedisMemoryStore

pytestmark = pytest.mark.timeout(20)

KEY = "agent::fork::1"
CONTEXT = [
    {"role": "system", "content": "You are a test agent."},
    {"role": "user", "content": "split the work"},
    {"role": "assistant", "content": "I will split it."},
]


async def test_a_fork_whose_attempts_are_all_lost_keeps_its_context(
    fake_redis: Any, keys: Keys
) -> None:
    llm = OpenAICompatible(api_keys="k", model_name="m", base_url="http://127.0.0.1:9/v1")

    @llm_chat(llm_interface=llm, self_reference=SelfReference(), stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    store = RedisMemoryStore(fake_redis, keys)
    await agent_spec(agent).fork_state(
        CONTEXT,
        "do part one",
        fork_id="fork_1",
        depth=1,
        memory_key=KEY,
        session_id="s1",
        agent_call_id="root.fork_1",
        memory=store,
    )
    await llm.aclose()
    # ... the worker is killed mid-turn, max_attempts times; the reaper gives up.
    assert (await store.load(KEY)).messages == CONTEXT
