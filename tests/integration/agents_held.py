"""An agent module for test_pick_start: `held`, whose first turn while the file named by
TEST_HOLD_FILE exists holds before its first event (the file is removed, and the
worker's pid written to `<file>.held`), so a test can kill the worker right there.

    TEST_LLM_URL    base URL of the scripted model the test started
    TEST_HOLD_FILE  the file whose presence makes the next turn hold
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from orchestrator import OpenAICompatible, llm_chat
from orchestrator.runtime.agent import agent_spec

llm = OpenAICompatible(
    "sk-scripted", "scripted", os.environ.get("TEST_LLM_URL", "http://127.0.0.1:9/v1")
)


@llm_chat(llm_interface=llm, stream=True)
async def held(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a test assistant."""


_spec = agent_spec(held)
_initial_state = _spec.initial_state


def _hold_now() -> bool:
    """The hold file exists: remove it, say which process holds (in `<file>.held`)."""
    hold = os.environ.get("TEST_HOLD_FILE", "")
    if not hold or not os.path.exists(hold):
        return False
    os.remove(hold)
    with open(hold + ".held", "w", encoding="utf-8") as marker:
        marker.write(str(os.getpid()))
    return True


async def _held_initial_state(*args: Any, **kwargs: Any) -> Any:
    if _hold_now():
        await asyncio.sleep(60)
    return await _initial_state(*args, **kwargs)


_spec.initial_state = _held_initial_state  # type: ignore[method-assign]
